package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/test/netns"
)

// TestCCMTrafficThroughXlbd is the whole product end to end: a Service of type LoadBalancer in
// a real kube-apiserver, the real xlb-ccm allocating its VIP and programming the real xlbd (eBPF
// datapath in the LB namespace), and HTTP from the client namespace to the VIP answered by the
// "nodes" (backend namespaces serving the Service's NodePort, as kube-proxy would). Root only.
func TestCCMTrafficThroughXlbd(t *testing.T) {
	netns.RequireRoot(t)
	const nodePort = 30080
	x := newXlbdEnv(t, 2)
	for _, b := range x.topo.Backends {
		b.ServeHTTP(t, nodePort)
	}
	x.start()

	e := newCCMEnv(t, ccmOptions{Endpoint: x.endpoint, TokenFile: x.tokFile, Pool: netns.VIPNet4.String()})
	e.startCCM("service")
	var nodes []string
	for _, b := range x.topo.Backends {
		e.createNode("node-"+b.Label, b.Link.Addr4.String(), nil)
		nodes = append(nodes, b.Label)
	}
	// TCP probes of the NodePort: the namespaces run no kube-proxy to answer the default
	// kube-proxy health check.
	svc := e.createServiceSpec("web", nil, map[string]string{"xlb.dev/probe-type": "tcp"}, nodePort)
	vip := e.waitVIP("web")
	target := netip.AddrPortFrom(vip, 80)
	t.Logf("web: VIP %s", vip)

	get := func() (netns.Reply, error) {
		ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
		defer cancel()
		return x.topo.Client.Get(ctx, netip.Addr{}, target)
	}
	seen := map[string]bool{}
	e.eventually("HTTP through the VIP reaches every node", 60*time.Second, func() error {
		r, err := get()
		if err != nil {
			return err
		}
		// Default NAT mode keeps the client's address.
		if r.Peer.Addr() != x.topo.Client.Link.Addr4 {
			t.Errorf("backend %s saw client %s, want %s (client IP preserved)", r.Backend, r.Peer.Addr(), x.topo.Client.Link.Addr4)
		}
		seen[r.Backend] = true
		for _, n := range nodes {
			if !seen[n] {
				return fmt.Errorf("answered so far by %v", seen)
			}
		}
		return nil
	})

	// Delete the Service: xlbd is emptied, the VIP stops answering, the object goes.
	if err := e.cluster.Client.CoreV1().Services("default").Delete(e.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("xlbd emptied", 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
		defer cancel()
		l, err := x.client.ListServices(ctx, map[string]string{api.LabelServiceUID: string(svc.UID)})
		if err != nil {
			return err
		}
		if len(l.Items) != 0 {
			var names []string
			for _, s := range l.Items {
				names = append(names, s.Name)
			}
			slices.Sort(names)
			return fmt.Errorf("xlbd still holds %v", names)
		}
		return nil
	})
	e.eventually("VIP stops answering", 30*time.Second, func() error {
		if r, err := get(); err == nil {
			return fmt.Errorf("VIP still answered by %s", r.Backend)
		}
		return nil
	})
	e.eventually("Service deleted", 30*time.Second, func() error {
		if _, err := e.getService("web"); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
}
