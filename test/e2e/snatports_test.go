package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/test/netns"
)

// TestSNATPortsVsHostConnections (issue 9, item 2): an onearm service sends
// thousands of client flows to one backend, SNATed to the load balancer's
// own address, while the load-balancer namespace itself opens thousands of
// TCP connections to the same backend address and port, and xlbd's TCP
// probe checks that backend. With SNAT ports inside the host's ephemeral
// range, a host connection whose source port equals a live flow's SNAT port
// has its SYN-ACK taken for that flow's reply and rewritten towards the
// client (12.6 % of host connections failed at 3,000 flows, and the probe
// marked the backend down). xlbd's default range lies outside the ephemeral
// range and is reserved in ip_local_reserved_ports: every host connection
// must get the backend's own answer, and the probe must never fail over.
func TestSNATPortsVsHostConnections(t *testing.T) {
	e := newXlbdEnv(t, 1)
	b0 := e.topo.Backends[0]
	e.start()

	const name = "snatports"
	// The shortest interval, so that the probe runs often during the load
	// (its connections are host connections too).
	probe := &api.Probe{Type: "tcp", Port: httpPort, IntervalMillis: api.MinProbeIntervalMs, TimeoutMillis: api.MinProbeIntervalMs}
	svc := healthService(name, netns.VIP4(0), vipHTTP, "tcp", httpPort, probe, b0)
	svc.Spec.NATMode = "onearm"
	healthPut(t, e, svc)
	vip := netip.AddrPortFrom(netns.VIP4(0), vipHTTP)
	direct := netip.AddrPortFrom(b0.Link.Addr4, httpPort)
	netns.Poll(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := e.topo.Client.Get(ctx, netip.Addr{}, vip)
		return err
	})
	probeLabels := map[string]string{"service": name, "backend": direct.String()}
	netns.Poll(t, 10*time.Second, func() error {
		if p := healthMustMetric(t, e, "xlb_backend_probes_total", probeLabels); p < 2 {
			return fmt.Errorf("b0 probed %v times, want >= 2", p)
		}
		return nil
	})
	probesBefore := healthMustMetric(t, e, "xlb_backend_probes_total", probeLabels)
	failuresBefore := healthMustMetric(t, e, "xlb_backend_probe_failures_total", probeLabels)

	// Both loads are bounded in count (3,000 each), in time (3 minutes in
	// all, 2 s per connection) and, for the host side, in failures: after
	// maxHostFailures the verdict is clear and waiting out more timeouts
	// would only slow the failing run down.
	const (
		clientFlows     = 3000
		hostConns       = 3000
		maxHostFailures = 30
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var (
		mu          sync.Mutex
		clientErrs  []string
		hostErrs    []string
		clientDone  atomic.Int64
		hostDone    atomic.Int64
		hostFailed  atomic.Int64
		clientNext  atomic.Int64
		hostNext    atomic.Int64
		wg          sync.WaitGroup
		clientsOver = make(chan struct{})
	)
	record := func(list *[]string, s string) {
		mu.Lock()
		defer mu.Unlock()
		if len(*list) < 10 {
			*list = append(*list, s)
		}
	}
	var clientWG sync.WaitGroup
	for w := 0; w < 4; w++ {
		clientWG.Add(1)
		go func() {
			defer clientWG.Done()
			for ctx.Err() == nil && clientNext.Add(1) <= clientFlows {
				c, cc := context.WithTimeout(ctx, 2*time.Second)
				r, err := e.topo.Client.Get(c, netip.Addr{}, vip)
				cc()
				clientDone.Add(1)
				if err != nil {
					record(&clientErrs, err.Error())
				} else if r.Backend != b0.Label {
					record(&clientErrs, fmt.Sprintf("answered by %q", r.Backend))
				}
			}
		}()
	}
	go func() { clientWG.Wait(); close(clientsOver) }()
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && hostFailed.Load() < maxHostFailures && hostNext.Add(1) <= hostConns {
				// Start once a few hundred client flows exist, so
				// that most host connections meet many live flows.
				if clientDone.Load() < 300 {
					select {
					case <-clientsOver:
					case <-time.After(10 * time.Millisecond):
						hostNext.Add(-1)
						continue
					}
				}
				c, cc := context.WithTimeout(ctx, 2*time.Second)
				r, err := e.topo.LB.Get(c, netip.Addr{}, direct)
				cc()
				hostDone.Add(1)
				switch {
				case err != nil:
					hostFailed.Add(1)
					record(&hostErrs, err.Error())
				case r.Backend != b0.Label:
					hostFailed.Add(1)
					record(&hostErrs, fmt.Sprintf("answered by %q", r.Backend))
				}
			}
		}()
	}
	wg.Wait()
	<-clientsOver
	t.Logf("%d client flows through %s (%d failed), %d host connections to %s (%d failed)",
		clientDone.Load(), vip, len(clientErrs), hostDone.Load(), direct, hostFailed.Load())
	if n := hostFailed.Load(); n > 0 {
		t.Errorf("%d of %d connections from the load balancer's own namespace to %s failed (first: %s)",
			n, hostDone.Load(), direct, strings.Join(hostErrs, "; "))
	}
	if hostDone.Load() < hostConns && hostFailed.Load() < maxHostFailures {
		t.Errorf("only %d of %d host connections ran before the deadline", hostDone.Load(), hostConns)
	}
	if len(clientErrs) > 0 || clientDone.Load() < clientFlows {
		t.Errorf("%d of %d client flows done, failures (first 10): %s", clientDone.Load(), clientFlows, strings.Join(clientErrs, "; "))
	}

	// The probe ran during the load and never failed over.
	probes := healthMustMetric(t, e, "xlb_backend_probes_total", probeLabels) - probesBefore
	failures := healthMustMetric(t, e, "xlb_backend_probe_failures_total", probeLabels) - failuresBefore
	downs := healthMustMetric(t, e, "xlb_backend_health_transitions_total", map[string]string{"service": name, "state": "down"})
	t.Logf("probes of b0 during the load: %v, failed: %v, down transitions: %v", probes, failures, downs)
	if probes < 5 {
		t.Errorf("only %v probes of b0 ran during the load, want >= 5", probes)
	}
	if downs != 0 {
		t.Errorf("the probe marked the healthy backend down %v times", downs)
	}
	st, err := healthStates(e, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := healthCompareStates(st, map[*netns.Host]string{b0: "active"}); err != nil {
		t.Error(err)
	}

	// The range is reported and reserved inside the LB namespace.
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	status, err := e.client.Status(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.SNATPortRange != "10000-29999" || !status.SNATPortsReserved || status.EphemeralPortRange != "32768-60999" {
		t.Errorf("status: snatPortRange %q reserved %v ephemeralPortRange %q; want 10000-29999, true, 32768-60999",
			status.SNATPortRange, status.SNATPortsReserved, status.EphemeralPortRange)
	}
	out, err := e.topo.LB.Run(sctx, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports")
	if err != nil || strings.TrimSpace(out) != "10000-29999" {
		t.Errorf("ip_local_reserved_ports in the LB namespace = %q (%v), want 10000-29999", out, err)
	}
}
