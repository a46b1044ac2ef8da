package netns

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// PollInterval is the pause between attempts of Poll and Until.
const PollInterval = 50 * time.Millisecond

// Poll calls fn until it returns nil or timeout passes; then it fails the
// test with fn's last error. It is the harness's only way to wait.
func Poll(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := Until(ctx, fn); err != nil {
		t.Fatalf("after %v: %v", timeout, err)
	}
}

// Until calls fn until it returns nil or ctx ends, and returns fn's last
// error wrapped with ctx's.
func Until(ctx context.Context, fn func() error) error {
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		err := fn()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}
