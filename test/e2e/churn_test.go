package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
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

// TestXlbdL2InterfaceChurn: the interface an L2 VIP is answered on is
// deleted and re-created (same name and addresses, new ifindex and MAC).
// The ARP responder must follow it: a gratuitous ARP with the new MAC is
// seen by the neighbour, the neighbour's ARP requests for the VIP are
// answered again (traffic through the VIP), and the status and metrics
// say not ready while the interface is gone, ready (one re-open) after.
func TestXlbdL2InterfaceChurn(t *testing.T) {
	e := newXlbdEnv(t, 2)
	vip := netip.MustParseAddr("198.18.0.100") // inside the client's on-link prefix
	e.start()
	uplink := e.topo.LB.ClientLink.Name
	svc := httpService("l2web", vip, 80, httpPort, e.topo.Backends, nil, nil)
	svc.Spec.L2 = &api.ServiceL2{Interface: uplink}
	if _, _, err := e.client.PutService(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	target := netip.AddrPortFrom(vip, 80)
	waitBalanced(t, e.topo, target, 8, "b0", "b1")
	labels := map[string]string{"interface": uplink}
	if v, ok, err := healthMetric(e, "xlb_l2_interface_ready", labels); err != nil || !ok || v != 1 {
		t.Fatalf("xlb_l2_interface_ready{interface=%q} = %v (present %v, err %v) before the churn; want 1", uplink, v, ok, err)
	}

	// A packet socket on every interface of the client's namespace (also
	// the ones created later) sees the announcement on the new link.
	arp := startCapture(t, e.topo.Client.NS, "any", "arp")
	if err := e.topo.DeleteClientLink(); err != nil {
		t.Fatal(err)
	}
	netns.Poll(t, 10*time.Second, func() error {
		v, ok, err := healthMetric(e, "xlb_l2_interface_ready", labels)
		if err != nil || !ok || v != 0 {
			return fmt.Errorf("xlb_l2_interface_ready{interface=%q} = %v (present %v, err %v) while the link is gone; want 0", uplink, v, ok, err)
		}
		return nil
	})
	if err := e.topo.RecreateClientLink(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := "Reply " + vip.String() + " is-at " + e.topo.LB.ClientLink.MAC.String()
	netns.Poll(t, 10*time.Second, func() error {
		if !strings.Contains(arp.String(), want) {
			return fmt.Errorf("no gratuitous ARP %q (the re-created link's MAC) captured:\n%s", want, arp.String())
		}
		return nil
	})
	// The client's neighbour entry went with its interface: reaching the
	// VIP needs a fresh ARP answer from the re-opened responder.
	waitBalanced(t, e.topo, target, 8, "b0", "b1")
	neigh := sh(t, "ip", "-n", e.topo.Client.Name, "neigh", "show", vip.String())
	if !strings.Contains(neigh, e.topo.LB.ClientLink.MAC.String()) {
		t.Fatalf("client resolves %s to %q, want the re-created link's %s", vip, neigh, e.topo.LB.ClientLink.MAC)
	}
	if v, _, err := healthMetric(e, "xlb_l2_interface_ready", labels); err != nil || v != 1 {
		t.Errorf("xlb_l2_interface_ready{interface=%q} = %v (err %v) after re-creation; want 1", uplink, v, err)
	}
	if v, _, err := healthMetric(e, "xlb_l2_reopens_total", labels); err != nil || v != 1 {
		t.Errorf("xlb_l2_reopens_total{interface=%q} = %v (err %v); want 1", uplink, v, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := e.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.L2) != 1 || st.L2[0].Name != uplink || !st.L2[0].Ready || st.L2[0].VIPs != 1 || st.L2[0].Reopens != 1 {
		t.Errorf("/v1/status l2 = %+v, want %s ready with 1 VIP and 1 re-open", st.L2, uplink)
	}
}

// TestXlbdPlumbVIPsLinkRecreated: with --plumb-vips, deleting xlb0 gets it
// re-created with every VIP at once (driven by the link event, not by the
// next service change), and the host answers for the VIP again.
func TestXlbdPlumbVIPsLinkRecreated(t *testing.T) {
	e := newXlbdEnv(t, 2)
	e.start("--plumb-vips")
	vip := netns.VIP4(0)
	e.apply("web", []api.Service{httpService("web", vip, vipHTTP, httpPort, e.topo.Backends, nil, nil)})
	waitBalanced(t, e.topo, netip.AddrPortFrom(vip, vipHTTP), 8, "b0", "b1")
	onLink := func() error {
		out, err := exec.Command("ip", "-n", e.topo.LB.Name, "-4", "addr", "show", "dev", "xlb0").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip addr show dev xlb0: %v: %s", err, out)
		}
		if !strings.Contains(string(out), vip.String()+"/32") {
			return fmt.Errorf("%s not on xlb0:\n%s", vip, out)
		}
		return nil
	}
	netns.Poll(t, 10*time.Second, onLink)
	sh(t, "ip", "-n", e.topo.LB.Name, "link", "del", "xlb0")
	netns.Poll(t, 5*time.Second, onLink)
	// The host answers ICMP echo for the VIP again (it is local).
	netns.Poll(t, 10*time.Second, func() error {
		out, err := exec.Command("ip", "netns", "exec", e.topo.Client.Name, "ping", "-c", "1", "-W", "1", vip.String()).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ping %s: %v: %s", vip, err, out)
		}
		return nil
	})
}
