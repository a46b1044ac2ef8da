package kube

import (
	"context"
	"testing"
	"time"
)

// StartT starts a cluster for one test: state in t.TempDir(), stopped (by PID) in t.Cleanup,
// with the processes' log tails printed when the test failed. It fails the test with a clear
// message when the binaries have not been built (run tools/kube/build.sh).
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx, t.TempDir(), opts)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control-plane logs:\n%s", c.Logs(40))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	return c
}
