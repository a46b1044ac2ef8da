package dataplane

import (
	"testing"
	"time"
)

// TestReaperPause checks that the reaper keeps its interval for short walks
// and pauses reaperDuty times a long walk, so that walking a 10M-flow table
// (longer than the interval) does not run back to back.
func TestReaperPause(t *testing.T) {
	for _, c := range []struct {
		interval, took, want time.Duration
		long                 bool
	}{
		{10 * time.Second, 100 * time.Millisecond, 9900 * time.Millisecond, false},
		{10 * time.Second, 2 * time.Second, 8 * time.Second, false},
		{10 * time.Second, 5 * time.Second, 20 * time.Second, true},
		{10 * time.Second, 20 * time.Second, 80 * time.Second, true},
	} {
		if got, long := reaperPause(c.interval, c.took); got != c.want || long != c.long {
			t.Errorf("reaperPause(%v, %v) = %v, %v; want %v, %v", c.interval, c.took, got, long, c.want, c.long)
		}
	}
}
