package lbclient

import (
	"net/http"
	"testing"
	"time"
)

func TestRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"7", 7 * time.Second},
		{" 2 ", 2 * time.Second},
		{"0", 0},
		{"-3", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"soon", 0},
	} {
		if got := retryAfter(tc.in, now); got != tc.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	c := &Client{waitMin: 100 * time.Millisecond, waitMax: 2 * time.Second}
	for attempt := 1; attempt <= 40; attempt++ {
		d := min(c.waitMax, c.waitMin<<min(attempt-1, 20))
		for range 50 {
			got := c.backoff(attempt, 0)
			if got < d/2 || got > d {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, got, d/2, d)
			}
		}
	}
	if got := c.backoff(1, 5*time.Second); got != 5*time.Second {
		t.Errorf("Retry-After 5s gave %v", got)
	}
	if got := c.backoff(1, time.Hour); got != maxRetryAfter {
		t.Errorf("Retry-After 1h gave %v, want the cap %v", got, maxRetryAfter)
	}
}
