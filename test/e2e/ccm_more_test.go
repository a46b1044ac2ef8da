package e2e

// More end-to-end scenarios of the CCM against a real etcd + kube-apiserver:
//   - the fold-in example's own CCM binary (examples/foldin/cmd/acme-ccm) with a fake xlbd;
//   - externalTrafficPolicy: Local with real xlbd and whoami "nodes" answering the Service's
//     healthCheckNodePort;
//   - a rebuilt xlbd node (state dir and bpffs pins wiped, new boot ID) re-synced by xlb-ccm;
//   - BGP settings pushed by xlb-ccm from the cloud-config to xlbd, announcing the VIP to BIRD.
//
// Run: go test ./test/e2e/ -run TestMore -v   (the last three as root; BGP needs bird)

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/test/netns"
)

// TestMoreFoldinAcmeCCM runs the fold-in example as a real CCM: the toy provider "acme"
// (examples/foldin) returns xlb's LoadBalancer from its LoadBalancer(), built into its own
// binary on k8s.io/cloud-provider/app. Create a LoadBalancer Service → a VIP from the pool in
// its status, the dataplane holds the service with the nodes as backends; delete → gone. acme's
// own InstancesV2 initializes a new node (provider ID acme://NAME) in the same process.
func TestMoreFoldinAcmeCCM(t *testing.T) {
	e := newCCMEnv(t, ccmOptions{})
	bin := moreBuild(t, "github.com/xlb-dev/xlb/examples/foldin/cmd/acme-ccm")
	e.startCCMBinary(bin, "acme", "service,cloud-node")
	e.waitHealthy()

	e.createNode("node-a", "10.0.0.1", nil)
	e.createNode("node-b", "10.0.0.2", nil)
	e.createService("web", nil, nil)
	vip := e.waitVIP("web")
	svc, err := e.getService("web")
	if err != nil {
		t.Fatal(err)
	}
	np := svc.Spec.Ports[0].NodePort
	ds := e.waitBackends(svc, vip, fmt.Sprintf("10.0.0.1:%d", np), fmt.Sprintf("10.0.0.2:%d", np))
	if !strings.HasPrefix(ds.Name, "e2e-default-web-80-tcp-") || ds.Labels[api.LabelCluster] != "e2e" {
		t.Errorf("dataplane service %s labels %v, want e2e-default-web-80-tcp-* of cluster e2e", ds.Name, ds.Labels)
	}
	ing := svc.Status.LoadBalancer.Ingress
	if len(ing) != 1 || ing[0].IPMode == nil || *ing[0].IPMode != corev1.LoadBalancerIPModeVIP {
		t.Errorf("ingress %+v, want one VIP with ipMode VIP", ing)
	}
	t.Logf("acme-ccm: web got VIP %s, dataplane service %s", vip, ds.Name)

	// acme keeps its own instances: the cloud-node controller initializes a tainted node with
	// acme's provider ID.
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-new"},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{
			Key: "node.cloudprovider.kubernetes.io/uninitialized", Value: "true", Effect: corev1.TaintEffectNoSchedule,
		}}},
	}
	if _, err := e.cluster.Client.CoreV1().Nodes().Create(e.ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("node-new initialized by acme", 30*time.Second, func() error {
		n, err := e.cluster.Client.CoreV1().Nodes().Get(e.ctx, "node-new", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Spec.ProviderID != "acme://node-new" {
			return fmt.Errorf("providerID %q", n.Spec.ProviderID)
		}
		return nil
	})

	moreDeleteService(e, "web")
	e.waitGone(svc)
	if names := e.dp.Names(); len(names) != 0 {
		t.Errorf("fake xlbd not empty after the delete: %v", names)
	}
}

// TestMoreCCMETPLocal: a Service with externalTrafficPolicy: Local in a real apiserver (which
// assigns spec.healthCheckNodePort), real xlb-ccm, real xlbd; three "nodes" are backend
// namespaces running whoami on the NodePort with kube-proxy's /healthz semantics on the
// healthCheckNodePort. xlb-ccm must map it to an http probe of /healthz on that port with DNAT
// only: a node answering 503 (no local endpoint) gets no new connection, and the nodes see the
// real client address.
func TestMoreCCMETPLocal(t *testing.T) {
	netns.RequireRoot(t)
	const nodePort = 30081
	x := newXlbdEnv(t, 3)
	bin := healthBuildWhoami(t)
	x.start()

	e := newCCMEnv(t, ccmOptions{Endpoint: x.endpoint, TokenFile: x.tokFile, Pool: netns.VIPNet4.String()})
	e.startCCM("service")
	for _, b := range x.topo.Backends {
		e.createNode("node-"+b.Label, b.Link.Addr4.String(), nil)
	}
	svc := moreCreateService(e, "local", nodePort, corev1.ServiceExternalTrafficPolicyLocal, map[string]string{
		// Fast probes keep the test short; type/port/path come from ETP=Local.
		"xlb.dev/probe-interval": "300ms", "xlb.dev/probe-timeout": "200ms",
	})
	hc := uint16(svc.Spec.HealthCheckNodePort)
	if hc == 0 {
		t.Fatalf("the apiserver assigned no healthCheckNodePort: %+v", svc.Spec)
	}
	t.Logf("local: nodePort %d, healthCheckNodePort %d", nodePort, hc)

	// The nodes: whoami answering on the NodePort (and healthWhoamiPort, which the helper
	// polls for readiness), /healthz on the healthCheckNodePort.
	var ws []*healthWhoami
	for _, b := range x.topo.Backends {
		ws = append(ws, healthStartWhoami(t, bin, x.topo, b,
			"-listen", fmt.Sprintf(":%d,:%d", healthWhoamiPort, nodePort),
			"-health-listen", fmt.Sprintf(":%d", hc)))
	}

	vip := e.waitVIP("local")
	ds := moreWaitXlbdService(e, x.client, string(svc.UID), vip.String())
	if p := ds.Spec.Probe; p == nil || p.Type != "http" || p.Port != hc || p.Path != "/healthz" {
		t.Fatalf("xlbd service %s probe %+v, want http /healthz on port %d", ds.Name, p, hc)
	}
	if ds.Spec.NATMode != "" && ds.Spec.NATMode != "default" {
		t.Fatalf("xlbd service %s NAT mode %q, want default (client IP kept)", ds.Name, ds.Spec.NATMode)
	}
	target := netip.AddrPortFrom(vip, 80)
	client := x.topo.Client.Link.Addr4
	var peerErr error
	hitsPeers := func(n int) map[string]int {
		got := map[string]int{}
		for i := 0; i < n; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			r, err := x.topo.Client.Get(ctx, netip.Addr{}, target)
			cancel()
			if err != nil {
				got[""]++
				continue
			}
			if r.Peer.Addr() != client && peerErr == nil {
				peerErr = fmt.Errorf("node %s saw the client as %s, want %s (client IP preserved)", r.Backend, r.Peer, client)
			}
			got[r.Backend]++
		}
		return got
	}
	b0, b1, b2 := x.topo.Backends[0], x.topo.Backends[1], x.topo.Backends[2]
	healthWaitStates(t, x, ds.Name, 30*time.Second, map[*netns.Host]string{b0: "active", b1: "active", b2: "active"})
	healthWaitOnly(t, target.String(), 30, hitsPeers, "b0", "b1", "b2")

	// b1 loses its local endpoint: kube-proxy's /healthz answers 503 there.
	ws[1].setHealthzOn(x.topo, hc, 503)
	healthWaitStates(t, x, ds.Name, 15*time.Second, map[*netns.Host]string{b0: "active", b1: "down", b2: "active"})
	const n = 40
	got := hitsPeers(n)
	t.Logf("b1 without a local endpoint, %d requests: %v", n, got)
	if got["b1"] != 0 || got[""] != 0 || got["b0"]+got["b2"] != n {
		t.Errorf("after b1 went down: %v, want all %d answered by b0 and b2 only", got, n)
	}

	// Back to 200: b1 gets traffic again.
	ws[1].setHealthzOn(x.topo, hc, 200)
	healthWaitStates(t, x, ds.Name, 15*time.Second, map[*netns.Host]string{b0: "active", b1: "active", b2: "active"})
	healthWaitOnly(t, target.String(), 30, hitsPeers, "b0", "b1", "b2")
	if peerErr != nil {
		t.Error(peerErr)
	}

	moreDeleteService(e, "local")
	moreWaitXlbdEmpty(e, x.client, string(svc.UID))
	moreWaitServiceObjectGone(e, "local")
}

// TestMoreCCMXlbdRebuiltResync: a Service programmed by xlb-ccm into a real xlbd; xlbd is
// stopped, its state directory and bpffs pins wiped (a rebuilt node) and started again with a
// new boot ID and nothing in it. xlb-ccm notices the new boot ID at its next status poll and
// re-syncs it in full: the service is back and traffic through the VIP works, without any
// change in Kubernetes.
func TestMoreCCMXlbdRebuiltResync(t *testing.T) {
	netns.RequireRoot(t)
	const nodePort = 30082
	x := newXlbdEnv(t, 2)
	for _, b := range x.topo.Backends {
		b.ServeHTTP(t, nodePort)
	}
	x.start()
	e := newCCMEnv(t, ccmOptions{Endpoint: x.endpoint, TokenFile: x.tokFile, Pool: netns.VIPNet4.String()})
	e.startCCM("service")
	for _, b := range x.topo.Backends {
		e.createNode("node-"+b.Label, b.Link.Addr4.String(), nil)
	}
	svc := moreCreateService(e, "web", nodePort, "", map[string]string{"xlb.dev/probe-type": "tcp"})
	vip := e.waitVIP("web")
	before := moreWaitXlbdService(e, x.client, string(svc.UID), vip.String())
	target := netip.AddrPortFrom(vip, 80)
	waitBalanced(t, x.topo, target, 16, "b0", "b1")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st0, err := x.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// The rebuilt node: no state, no pins.
	x.stop()
	pins := filepath.Join(x.bpffs, "xlb")
	for _, p := range []string{x.stateDir, pins} {
		if err := os.RemoveAll(p); err != nil {
			t.Fatalf("wipe %s: %v", p, err)
		}
	}
	// (The bpffs root keeps the kernel's own maps.debug and progs.debug.)
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Fatalf("pins %s still there after the wipe: %v", pins, err)
	}
	restart := time.Now()
	x.start()
	st1, err := x.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st1.BootID == st0.BootID {
		t.Fatalf("boot ID %q unchanged across the restart", st1.BootID)
	}

	after := moreWaitXlbdService(e, x.client, string(svc.UID), vip.String())
	t.Logf("rebuilt xlbd (boot %s → %s) re-synced after %s", st0.BootID, st1.BootID, time.Since(restart).Round(10*time.Millisecond))
	if specKey(after) != specKey(before) || after.Name != before.Name {
		t.Errorf("re-synced service differs:\nbefore %s %s\nafter  %s %s", before.Name, specKey(before), after.Name, specKey(after))
	}
	e.eventually("xlb-ccm logged the re-sync of the new boot", 10*time.Second, func() error {
		return logContains(e, st1.BootID)
	})
	waitBalanced(t, x.topo, target, 16, "b0", "b1")

	moreDeleteService(e, "web")
	moreWaitXlbdEmpty(e, x.client, string(svc.UID))
	moreWaitServiceObjectGone(e, "web")
}

// TestMoreCCMBGPPush: the cloud-config's bgp section (localASN, communities, the router as
// peer) and the dataplane's routerID are pushed by xlb-ccm to a real xlbd, which peers with a
// real BIRD router. A LoadBalancer Service → the router's kernel table routes the VIP /32 via
// the xlbd node (with the configured community) and a client behind the router reaches the
// nodes; deleting the Service withdraws the route.
func TestMoreCCMBGPPush(t *testing.T) {
	const nodePort = 30083
	tp := newBGPTopo(t, 1)
	for _, b := range tp.backends {
		stop, err := b.StartHTTP(context.Background(), nodePort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	lb := tp.lbs[0]
	lb.start(t)

	pool := "203.0.113.0/28"
	e := newCCMEnv(t, ccmOptions{Endpoint: lb.endpoint, TokenFile: lb.tokFile, Pool: pool})
	moreWriteCloudConfig(e, fmt.Sprintf(`clusterName: e2e
dataplanes:
  - name: dp1
    endpoint: %s
    tokenFile: %s
    bgp:
      routerID: %s
pools:
  - name: default
    cidrs: [%s]
statusPollPeriod: 200ms
resyncPeriod: 10s
bgp:
  localASN: %d
  communities: ["%d:100"]
  peers:
    - address: %s
      asn: %d
      holdTime: 9s
    - address: %s
      asn: %d
      holdTime: 9s
`, lb.endpoint, lb.tokFile, lbUp4(0), pool, lbASN, lbASN, rtrUp4, rtrASN, rtrUp6, rtrASN))
	e.startCCM("service")

	// The push happens at first contact, before any Service exists.
	e.eventually("xlb-ccm pushed the BGP settings", 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := lb.client.GetBGP(ctx)
		if err != nil {
			return err
		}
		g := st.Global
		if g == nil {
			return fmt.Errorf("no global BGP settings")
		}
		if g.ASN != lbASN || g.RouterID != lbUp4(0).String() || !slices.Equal(g.Communities, []string{fmt.Sprintf("%d:100", lbASN)}) {
			return fmt.Errorf("global %+v, want asn %d routerID %s communities [%d:100]", *g, lbASN, lbUp4(0), lbASN)
		}
		var peers []string
		for _, p := range st.Peers {
			if p.ASN != rtrASN || p.HoldTimeSeconds != 9 {
				return fmt.Errorf("peer %+v, want asn %d hold 9s", p.BGPPeer, rtrASN)
			}
			if p.State != "established" {
				return fmt.Errorf("peer %s is %s", p.Address, p.State)
			}
			peers = append(peers, p.Address)
		}
		slices.Sort(peers)
		if want := []string{rtrUp4.String(), rtrUp6.String()}; !slices.Equal(peers, want) {
			return fmt.Errorf("peers %v, want %v", peers, want)
		}
		return nil
	})

	for i, b := range tp.backends {
		e.createNode("node-"+b.Label, be4(i).String(), nil)
	}
	// onearm: the router may send the client's packets to any path, the nodes' replies must
	// come back through the load balancer.
	svc := moreCreateService(e, "web", nodePort, "", map[string]string{
		"xlb.dev/nat-mode": "onearm", "xlb.dev/probe-type": "tcp",
		"xlb.dev/probe-interval": "300ms", "xlb.dev/probe-timeout": "200ms",
	})
	vip := e.waitVIP("web")
	moreWaitXlbdService(e, lb.client, string(svc.UID), vip.String())
	tp.waitRoute(t, vip, lbUp4(0).String())
	t.Logf("router: %s", strings.Join(strings.Fields(sh(t, "ip", "-n", tp.router.Name, "route", "show", vip.String())), " "))
	e.eventually("xlbd announces the VIP", 10*time.Second, func() error {
		st, err := lb.client.GetBGP(context.Background())
		if err != nil {
			return err
		}
		if !slices.Contains(st.Announced, vip.String()+"/32") {
			return fmt.Errorf("announced %v", st.Announced)
		}
		return nil
	})
	out, err := exec.Command("birdc", "-s", tp.birdCtl, "show", "route", "for", vip.String(), "all").CombinedOutput()
	if err != nil {
		t.Fatalf("birdc: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("(%d,100)", lbASN)) {
		t.Errorf("the router's route to %s lacks the cloud-config community %d:100:\n%s", vip, lbASN, out)
	}
	waitBalanced(t, &netns.Topology{Client: tp.client}, netip.AddrPortFrom(vip, 80), 16, "b0", "b1")

	moreDeleteService(e, "web")
	moreWaitXlbdEmpty(e, lb.client, string(svc.UID))
	tp.waitRoute(t, vip) // withdrawn
	moreWaitServiceObjectGone(e, "web")
}
