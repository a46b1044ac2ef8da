package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/test/netns"
)

// Interface churn (issue 9, item 6): the load balancer's uplink veth is
// deleted and re-created with the same name, addresses and routes while a
// client keeps opening connections through the VIP. While the link is gone
// /readyz must fail naming it and the metrics must say "not attached";
// once it is back xlbd re-attaches (new ifindex) and every connection
// opened after /readyz is ok again gets a backend's answer.
func TestXlbdInterfaceChurnTCX(t *testing.T) { testInterfaceChurn(t, "tcx") }
func TestXlbdInterfaceChurnXDP(t *testing.T) { testInterfaceChurn(t, "xdp") }

type churnAttempt struct {
	start time.Time
	label string
	err   error
}

func testInterfaceChurn(t *testing.T, hook string) {
	e := newXlbdEnv(t, 2)
	e.hook = hook
	e.start()
	b0, b1 := e.topo.Backends[0], e.topo.Backends[1]
	e.apply("web", []api.Service{httpService("web", netns.VIP4(0), vipHTTP, httpPort, []*netns.Host{b0, b1}, nil, nil)})
	target := netip.AddrPortFrom(netns.VIP4(0), vipHTTP)
	waitBalanced(t, e.topo, target, 8, "b0", "b1")
	uplink := e.topo.LB.ClientLink.Name
	attachedLabels := map[string]string{"interface": uplink}

	// Client traffic: one new connection every 10 ms, bounded in count
	// and time, until stopped.
	var (
		mu       sync.Mutex
		attempts []churnAttempt
	)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		deadline := time.Now().Add(3 * time.Minute)
		for i := 0; i < 10000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			a := churnAttempt{start: time.Now()}
			r, err := e.topo.Client.Get(ctx, netip.Addr{}, target)
			cancel()
			a.label, a.err = r.Backend, err
			mu.Lock()
			attempts = append(attempts, a)
			mu.Unlock()
		}
	}()
	stopTraffic := sync.OnceFunc(func() { close(stop); <-done })
	t.Cleanup(stopTraffic)
	countSince := func(since time.Time) (n, failed int) {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range attempts {
			if !a.start.Before(since) {
				n++
				if a.err != nil {
					failed++
				}
			}
		}
		return n, failed
	}
	began := time.Now()
	netns.Poll(t, 30*time.Second, func() error {
		if n, _ := countSince(began); n < 20 {
			return fmt.Errorf("%d connections so far, want 20 before the churn", n)
		}
		return nil
	})

	if err := e.topo.DeleteClientLink(); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	netns.Poll(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err := e.client.Readyz(ctx)
		if err == nil {
			return fmt.Errorf("/readyz is ok while %s is deleted", uplink)
		}
		if !strings.Contains(err.Error(), uplink) {
			return fmt.Errorf("/readyz fails without naming %s: %v", uplink, err)
		}
		return nil
	})
	if v, ok, err := healthMetric(e, "xlb_interface_attached", attachedLabels); err != nil || !ok || v != 0 {
		t.Errorf("xlb_interface_attached{interface=%q} = %v (present %v, err %v) while the link is gone; want 0", uplink, v, ok, err)
	}
	if out := e.mustXlbctl("get", "status"); !slices.Equal(firstFields(lineWith(out, uplink), 2), []string{uplink, "no"}) {
		t.Errorf("xlbctl status does not show %s as not attached:\n%s", uplink, out)
	}

	if err := e.topo.RecreateClientLink(context.Background()); err != nil {
		t.Fatal(err)
	}
	recreated := time.Now()
	e.waitReady(e.proc)
	ready := time.Now()
	t.Logf("%s: deleted, re-created %v later, /readyz ok %v after re-creation", uplink, recreated.Sub(deleted).Round(time.Millisecond), ready.Sub(recreated).Round(time.Millisecond))

	netns.Poll(t, 30*time.Second, func() error {
		if n, _ := countSince(ready); n < 50 {
			return fmt.Errorf("%d connections since ready, want 50", n)
		}
		return nil
	})
	stopTraffic()
	var during, after, afterFailed int
	mu.Lock()
	for _, a := range attempts {
		switch {
		case a.start.Before(deleted):
		case a.start.Before(ready):
			during++
		default:
			after++
			if a.err != nil || (a.label != "b0" && a.label != "b1") {
				afterFailed++
				if afterFailed <= 5 {
					t.Errorf("connection at +%v after ready: label %q, err %v", a.start.Sub(ready).Round(time.Millisecond), a.label, a.err)
				}
			}
		}
	}
	mu.Unlock()
	t.Logf("connections: %d while the link was missing or unattached, %d after ready (%d failed)", during, after, afterFailed)
	if afterFailed > 0 {
		t.Fatalf("%d of %d connections opened after re-creation and readiness failed", afterFailed, after)
	}
	if v, _, err := healthMetric(e, "xlb_interface_attached", attachedLabels); err != nil || v != 1 {
		t.Errorf("xlb_interface_attached{interface=%q} = %v (err %v) after re-creation; want 1", uplink, v, err)
	}
	if v, _, err := healthMetric(e, "xlb_interface_reattaches_total", attachedLabels); err != nil || v != 1 {
		t.Errorf("xlb_interface_reattaches_total{interface=%q} = %v (err %v); want 1", uplink, v, err)
	}
	waitBalanced(t, e.topo, target, 8, "b0", "b1")
}

// firstFields returns the first n whitespace-separated fields of line.
func firstFields(line string, n int) []string {
	f := strings.Fields(line)
	return f[:min(n, len(f))]
}
