package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
)

func cpuTime(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestProbeCost measures what probing costs the prober: 10,000 tcp targets
// with the default settings (20,000 probes/s) against one listener in a
// separate process (so that RUSAGE_SELF counts the prober alone). It logs,
// it does not assert, and it is opt-in because it loads both cores:
//
//	XLB_HEALTH_COST=1 go test ./internal/health -run TestProbeCost -v
func TestProbeCost(t *testing.T) {
	if os.Getenv("XLB_HEALTH_COST") == "" {
		t.Skip("set XLB_HEALTH_COST=1 to measure the prober's cost")
	}
	const nTargets = 10000
	measure := 5 * time.Second
	_, dst := startHelper(t, "", "tcp", "127.0.0.1:0")

	targets := make([]Target, nTargets)
	for i := range targets {
		targets[i] = Target{Service: fmt.Sprintf("s%05d", i), Backend: dst, Probe: api.Probe{Type: "tcp"}}
	}
	m := New(Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := m.Set(ctx, targets); err != nil {
		t.Fatal(err)
	}

	sum := func() (probes, failures uint64, maxLag time.Duration) {
		for _, s := range m.States() {
			probes += s.Probes
			failures += s.Failures
			maxLag = max(maxLag, s.Lag)
		}
		return
	}
	// Let the first, jittered round of probes spread out.
	poll(t, 30*time.Second, func() error {
		if p, _, _ := sum(); p < nTargets {
			return fmt.Errorf("%d probes so far", p)
		}
		return nil
	})
	p0, f0, _ := sum()
	c0, w0 := cpuTime(t), time.Now()
	time.Sleep(measure) // the measurement window, not synchronisation
	p1, f1, lag := sum()
	c1, w1 := cpuTime(t), time.Now()

	errs := map[string]int{}
	for _, st := range m.States() {
		if st.LastError != "" {
			errs[st.LastError]++
		}
	}
	i := 0
	for e, n := range errs {
		if i++; i > 3 {
			break
		}
		t.Logf("sample failure (%d targets): %s", n, e)
	}
	probes := p1 - p0
	cpu := c1 - c0
	wall := w1.Sub(w0)
	t.Logf("%d targets, interval %v: %d probes in %v = %.0f probes/s (ideal %.0f), failures %d",
		nTargets, DefaultInterval, probes, wall.Round(time.Millisecond), float64(probes)/wall.Seconds(),
		float64(nTargets)/DefaultInterval.Seconds(), f1-f0)
	t.Logf("prober CPU %v = %.1f µs per probe = %.0f%% of one core; max schedule lag %v",
		cpu.Round(time.Millisecond), float64(cpu.Microseconds())/float64(probes), 100*cpu.Seconds()/wall.Seconds(), lag)
}

// BenchmarkTCPProbe is the cost of one tcp probe over loopback (connect,
// RST close), measured by the Go benchmark harness.
func BenchmarkTCPProbe(b *testing.B) {
	benchProbe(b, api.Probe{Type: "tcp"})
}

// BenchmarkHTTPProbe is one http probe (fresh connection, GET /) over
// loopback against an in-process server.
func BenchmarkHTTPProbe(b *testing.B) {
	benchProbe(b, api.Probe{Type: "http"})
}

func benchProbe(b *testing.B, p api.Probe) {
	dst := benchServer(b, p.Type)
	s, err := normalize(p)
	if err != nil {
		b.Fatal(err)
	}
	pr := newProber(s, nil)
	ctx := context.Background()
	c0 := cpuTime(b)
	b.ResetTimer()
	for b.Loop() {
		if err := pr.probe(ctx, dst); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Includes the in-process server's share.
	b.ReportMetric(float64((cpuTime(b)-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// benchServer listens on loopback in this process; its CPU is counted in
// cpu-ns/op too, so the figure is an upper bound of the prober's share.
func benchServer(b *testing.B, typ string) netip.AddrPort {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	if typ == TypeHTTP {
		srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(l) }()
		b.Cleanup(func() { srv.Close() })
	} else {
		serveTCP(l)
	}
	return netip.MustParseAddrPort(l.Addr().String())
}
