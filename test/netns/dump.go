package netns

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Dump returns the addresses, routes, neighbours and link counters of every
// namespace of the topology, for failure diagnostics.
func (tp *Topology) Dump(ctx context.Context) string {
	var b strings.Builder
	for _, n := range tp.namespaces {
		fmt.Fprintf(&b, "=== %s\n", n.Name)
		for _, args := range [][]string{
			{"-br", "addr"},
			{"route"},
			{"-6", "route"},
			{"neigh"},
			{"-s", "-s", "link"},
		} {
			out, err := n.Run(ctx, "ip", args...)
			if err != nil {
				fmt.Fprintf(&b, "ip %s: %v\n", strings.Join(args, " "), err)
				continue
			}
			fmt.Fprintf(&b, "$ ip %s\n%s", strings.Join(args, " "), out)
		}
	}
	return b.String()
}

// DumpOnFailure logs Dump when the test has failed by the time its cleanup
// runs. Call it right after New so that it runs after the test's own
// cleanups registered later (cleanups run last-in, first-out).
func (tp *Topology) DumpOnFailure(t testing.TB) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		t.Logf("topology %s state:\n%s", tp.Prefix, tp.Dump(ctx))
	})
}
