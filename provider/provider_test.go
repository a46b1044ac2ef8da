package provider

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/lbclient/lbclienttest"
	"github.com/xlb-dev/xlb/provider/annotations"
	"github.com/xlb-dev/xlb/provider/config"
)

// testDP wraps a real lbclient talking to an httptest xlbd fake, and can
// simulate an outage and record bulk-replace selectors.
type testDP struct {
	Dataplane
	fake *lbclienttest.Fake
	down atomic.Bool

	mu    sync.Mutex
	bulks []map[string]string
}

var errDown = errors.New("connection refused (simulated outage)")

func (d *testDP) BulkReplace(ctx context.Context, b api.BulkReplace) (api.BulkResult, error) {
	if d.down.Load() {
		return api.BulkResult{}, errDown
	}
	d.mu.Lock()
	d.bulks = append(d.bulks, b.Selector)
	d.mu.Unlock()
	return d.Dataplane.BulkReplace(ctx, b)
}

func (d *testDP) Status(ctx context.Context) (api.Status, error) {
	if d.down.Load() {
		return api.Status{}, errDown
	}
	return d.Dataplane.Status(ctx)
}

func (d *testDP) ListServices(ctx context.Context, sel map[string]string) (api.ServiceList, error) {
	if d.down.Load() {
		return api.ServiceList{}, errDown
	}
	return d.Dataplane.ListServices(ctx, sel)
}

// clusterBulks counts full re-syncs (bulk replaces with the cluster selector only).
func (d *testDP) clusterBulks() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, s := range d.bulks {
		if len(s) == 1 && s[api.LabelCluster] != "" {
			n++
		}
	}
	return n
}

func newDP(t *testing.T) *testDP {
	t.Helper()
	f := lbclienttest.NewFake()
	url := f.Start(t)
	c, err := lbclient.New(lbclient.Config{Endpoint: url, Retries: -1, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return &testDP{Dataplane: c, fake: f}
}

const testConfig = `
clusterName: test
dataplanes:
- {name: dp1, endpoint: "http://127.0.0.1:1"}
- {name: dp2, endpoint: "http://127.0.0.1:2"}
- {name: dp3, endpoint: "http://127.0.0.1:3"}
pools:
- name: main
  cidrs: [192.0.2.0/29, "2001:db8::/125"]
  default: true
- name: team
  ranges: [198.51.100.10-198.51.100.11]
  namespaces: [team]
`

type env struct {
	lb   *LoadBalancer
	kube *fake.Clientset
	dps  []*testDP
	rec  *record.FakeRecorder
}

func newEnv(t *testing.T, extraConfig string, ndp int, objs ...*v1.Service) *env {
	t.Helper()
	cfg, err := config.Parse(strings.NewReader(testConfig + extraConfig))
	if err != nil {
		t.Fatal(err)
	}
	kube := fake.NewClientset()
	for _, s := range objs {
		if _, err := kube.CoreV1().Services(s.Namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes() {
		if _, err := kube.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{kube: kube, rec: record.NewFakeRecorder(1000)}
	var named []NamedDataplane
	for i := 0; i < ndp; i++ {
		d := newDP(t)
		e.dps = append(e.dps, d)
		named = append(named, NamedDataplane{Name: fmt.Sprintf("dp%d", i+1), Dataplane: d})
	}
	e.lb, err = NewLoadBalancer(cfg, Deps{Kube: kube, Dataplanes: named, Recorder: e.rec})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func nodes() []*v1.Node {
	mk := func(name, ip4, ip6 string) *v1.Node {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: ip4}, {Type: v1.NodeInternalIP, Address: ip6}}
		return n
	}
	return []*v1.Node{mk("n1", "10.0.0.1", "fd00::1"), mk("n2", "10.0.0.2", "fd00::2")}
}

var uidSeq atomic.Int64

func lbService(ns, name string, ann map[string]string, ports ...int32) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(fmt.Sprintf("uid-%d", uidSeq.Add(1))), Annotations: ann},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer},
	}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: fmt.Sprintf("p%d", p), Port: p, NodePort: 30000 + p, Protocol: v1.ProtocolTCP})
	}
	return s
}

func (e *env) events() []string {
	var out []string
	for {
		select {
		case ev := <-e.rec.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

func hasEvent(evs []string, substr ...string) bool {
outer:
	for _, ev := range evs {
		for _, s := range substr {
			if !strings.Contains(ev, s) {
				continue outer
			}
		}
		return true
	}
	return false
}

func ingressIPs(st *v1.LoadBalancerStatus) string {
	var s []string
	for _, in := range st.Ingress {
		s = append(s, in.IP+"/"+string(*in.IPMode))
	}
	return strings.Join(s, ",")
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestEnsureProgramsEveryDataplane(t *testing.T) {
	e := newEnv(t, "", 2)
	svc := lbService("shop", "web", nil, 80, 443)
	st, err := e.lb.EnsureLoadBalancer(ctx(t), "c", svc, nodes())
	if err != nil {
		t.Fatal(err)
	}
	// One VIP for both ports; default NAT mode → ipMode VIP.
	if got := ingressIPs(st); got != "192.0.2.1/VIP" {
		t.Fatalf("status %s", got)
	}
	for i, d := range e.dps {
		names := d.fake.Names()
		if len(names) != 2 {
			t.Fatalf("dp%d holds %v", i+1, names)
		}
		s, _ := d.fake.Service(names[0])
		if s.Spec.VIPs[0] != "192.0.2.1" || len(s.Spec.Backends) != 2 || s.Labels[api.LabelServiceUID] != string(svc.UID) {
			t.Fatalf("dp%d service %+v", i+1, s)
		}
	}
	evs := e.events()
	if !hasEvent(evs, "Normal", ReasonIPAllocated, "192.0.2.1") || !hasEvent(evs, "Normal", ReasonProgrammed) {
		t.Fatalf("events %v", evs)
	}
	// Idempotent: same VIP, no new allocation event.
	st, err = e.lb.EnsureLoadBalancer(ctx(t), "c", svc, nodes())
	if err != nil || ingressIPs(st) != "192.0.2.1/VIP" {
		t.Fatalf("second ensure %v %v", st, err)
	}
	if hasEvent(e.events(), ReasonIPAllocated) {
		t.Fatal("re-ensure re-allocated")
	}
	name := func() string { return e.dps[0].fake.Names()[0] }
	// GetLoadBalancer and the name.
	got, exists, err := e.lb.GetLoadBalancer(ctx(t), "c", svc)
	if err != nil || !exists || ingressIPs(got) != "192.0.2.1/VIP" {
		t.Fatalf("get %v %v %v", got, exists, err)
	}
	if n := e.lb.GetLoadBalancerName(ctx(t), "c", svc); n != "auid"+strings.TrimPrefix(string(svc.UID), "uid-") {
		t.Fatalf("name %s", n)
	}

	// UpdateLoadBalancer pushes a node change.
	if err := e.lb.UpdateLoadBalancer(ctx(t), "c", svc, nodes()[:1]); err != nil {
		t.Fatal(err)
	}
	s, _ := e.dps[1].fake.Service(name())
	if len(s.Spec.Backends) != 1 || s.Spec.Backends[0].Name != "n1" {
		t.Fatalf("update not pushed: %+v", s.Spec.Backends)
	}

	// Removing a port removes its dataplane service.
	svc.Spec.Ports = svc.Spec.Ports[:1]
	if _, err := e.lb.EnsureLoadBalancer(ctx(t), "c", svc, nodes()); err != nil {
		t.Fatal(err)
	}
	if n := e.dps[0].fake.Names(); len(n) != 1 || !strings.Contains(n[0], "-80-tcp-") {
		t.Fatalf("after port removal %v", n)
	}

	// Delete: gone everywhere, VIP free, idempotent, Get says absent.
	for i := 0; i < 2; i++ {
		if err := e.lb.EnsureLoadBalancerDeleted(ctx(t), "c", svc); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range e.dps {
		if n := d.fake.Names(); len(n) != 0 {
			t.Fatalf("left behind %v", n)
		}
	}
	svc.Status = v1.ServiceStatus{}
	if st, exists, err := e.lb.GetLoadBalancer(ctx(t), "c", svc); st != nil || exists || err != nil {
		t.Fatalf("get after delete: %v %v %v", st, exists, err)
	}
	st, err = e.lb.EnsureLoadBalancer(ctx(t), "c", lbService("shop", "next", nil, 80), nodes())
	if err != nil || ingressIPs(st) != "192.0.2.1/VIP" {
		t.Fatalf("VIP not freed: %v %v", st, err)
	}
}

func TestInvalidAnnotationLeavesLoadBalancerUntouched(t *testing.T) {
	e := newEnv(t, "", 1)
	svc := lbService("shop", "web", nil, 80)
	if _, err := e.lb.EnsureLoadBalancer(ctx(t), "c", svc, nodes()); err != nil {
		t.Fatal(err)
	}
	before := e.dps[0].fake.Names()
	bulks := len(e.dps[0].bulks)
	e.events()
	for _, ann := range []map[string]string{
		{annotations.NATMode: "dsr"},
		{"xlb.dev/algoritm": "rr"},
		{annotations.Pool: "nope"},
	} {
		bad := svc.DeepCopy()
		bad.Annotations = ann
		if _, err := e.lb.EnsureLoadBalancer(ctx(t), "c", bad, nodes()); err == nil {
			t.Fatalf("%v accepted", ann)
		}
		if len(e.dps[0].bulks) != bulks {
			t.Fatalf("%v: dataplane touched", ann)
		}
		if got := e.dps[0].fake.Names(); len(got) != len(before) || got[0] != before[0] {
			t.Fatalf("%v: services changed %v", ann, got)
		}
		if ips := e.lb.alloc.Lookup("shop/web"); len(ips) != 1 || ips[0].String() != "192.0.2.1" {
			t.Fatalf("%v: allocation changed %v", ann, ips)
		}
	}
	evs := e.events()
	if !hasEvent(evs, "Warning", ReasonInvalidConfiguration, annotations.NATMode, "default, fullnat, onearm") ||
		!hasEvent(evs, "Warning", "xlb.dev/algoritm") || !hasEvent(evs, "Warning", ReasonAllocationFailed, `pool "nope"`) {
		t.Fatalf("events %v", evs)
	}
}

func TestIPModeAndDualStack(t *testing.T) {
	e := newEnv(t, "", 1)
	full := lbService("shop", "full", map[string]string{annotations.NATMode: "fullnat"}, 80)
	pol := v1.IPFamilyPolicyRequireDualStack
	full.Spec.IPFamilyPolicy = &pol
	st, err := e.lb.EnsureLoadBalancer(ctx(t), "c", full, nodes())
	if err != nil {
		t.Fatal(err)
	}
	if got := ingressIPs(st); got != "192.0.2.1/Proxy,2001:db8::1/Proxy" {
		t.Fatalf("status %s", got)
	}
	s, _ := e.dps[0].fake.Service(e.dps[0].fake.Names()[0])
	if len(s.Spec.VIPs) != 2 || len(s.Spec.Backends) != 4 {
		t.Fatalf("dual-stack service %+v", s.Spec)
	}
	// A v6 static IP on a single-stack v4 Service is an error.
	bad := lbService("shop", "bad", map[string]string{annotations.LoadBalancerIPs: "2001:db8::5"}, 80)
	if _, err := e.lb.EnsureLoadBalancer(ctx(t), "c", bad, nodes()); err == nil || !strings.Contains(err.Error(), "no IPv6 family") {
		t.Fatalf("err %v", err)
	}
	// A Service of another class is refused (a full re-sync would undo it).
	cls := "other.example/lb"
	classed := lbService("shop", "classed", nil, 80)
	classed.Spec.LoadBalancerClass = &cls
	if _, err := e.lb.EnsureLoadBalancer(ctx(t), "c", classed, nodes()); err == nil || !strings.Contains(err.Error(), "not handled by this xlb") {
		t.Fatalf("classed: %v", err)
	}
	// Namespace rule picks the team pool.
	st, err = e.lb.EnsureLoadBalancer(ctx(t), "c", lbService("team", "x", nil, 80), nodes())
	if err != nil || ingressIPs(st) != "198.51.100.10/VIP" {
		t.Fatalf("team %v %v", st, err)
	}
}

func TestSharingClashIsAnError(t *testing.T) {
	e := newEnv(t, "", 1)
	a := lbService("shop", "a", map[string]string{annotations.AllowSharedIP: "k"}, 80)
	b := lbService("shop", "b", map[string]string{annotations.AllowSharedIP: "k"}, 443)
	c := lbService("shop", "c", map[string]string{annotations.AllowSharedIP: "k"}, 80)
	sa, err := e.lb.EnsureLoadBalancer(ctx(t), "c", a, nodes())
	if err != nil {
		t.Fatal(err)
	}
	sb, err := e.lb.EnsureLoadBalancer(ctx(t), "c", b, nodes())
	if err != nil || ingressIPs(sa) != ingressIPs(sb) {
		t.Fatalf("not shared: %v %v %v", sa, sb, err)
	}
	if _, err := e.lb.EnsureLoadBalancer(ctx(t), "c", c, nodes()); err == nil {
		t.Fatal("clash accepted")
	}
	if !hasEvent(e.events(), "Warning", ReasonAllocationFailed, "already serves 80/TCP") {
		t.Fatal("no warning event for the clash")
	}
	// Both sharers' entries coexist in the dataplane.
	if n := e.dps[0].fake.Names(); len(n) != 2 {
		t.Fatalf("dataplane %v", n)
	}
}

func TestSuccessPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy string
		down   int
		ok     bool
	}{
		{"all", 0, true}, {"all", 1, false},
		{"quorum", 1, true}, {"quorum", 2, false},
		{"any", 2, true}, {"any", 3, false},
	} {
		t.Run(fmt.Sprintf("%s-%ddown", tc.policy, tc.down), func(t *testing.T) {
			e := newEnv(t, "successPolicy: "+tc.policy+"\n", 3)
			for i := 0; i < tc.down; i++ {
				e.dps[i].down.Store(true)
			}
			_, err := e.lb.EnsureLoadBalancer(ctx(t), "c", lbService("shop", "web", nil, 80), nodes())
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.down > 0 && !hasEvent(e.events(), "Warning", ReasonProgrammingFailed, "dataplane dp1") {
				t.Fatal("no warning naming the failed dataplane")
			}
		})
	}
}

// A dataplane that was down catches up with ONE bulk replace when it
// answers again; a restart (new bootID) does the same; stale entries of
// deleted Services are garbage-collected.
func TestResyncAfterOutageRestartAndGC(t *testing.T) {
	e := newEnv(t, "successPolicy: any\n", 2)
	c := ctx(t)
	e.lb.PollOnce(c) // first contact: full sync of both (nothing yet)
	for i, d := range e.dps {
		if d.clusterBulks() != 1 {
			t.Fatalf("dp%d initial syncs %d", i+1, d.clusterBulks())
		}
	}
	e.dps[1].down.Store(true)
	e.lb.PollOnce(c)
	svcs := []*v1.Service{lbService("shop", "a", nil, 80), lbService("shop", "b", nil, 80, 81)}
	for _, s := range svcs {
		if _, err := e.kube.CoreV1().Services(s.Namespace).Create(c, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.lb.EnsureLoadBalancer(c, "c", s, nodes()); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.dps[1].fake.Names(); len(n) != 0 {
		t.Fatalf("down dataplane got %v", n)
	}
	// Recovery: one full re-sync brings all three services.
	e.dps[1].down.Store(false)
	e.lb.PollOnce(c)
	if n := e.dps[1].fake.Names(); len(n) != 3 || e.dps[1].clusterBulks() != 2 {
		t.Fatalf("after recovery %v (%d full syncs)", n, e.dps[1].clusterBulks())
	}
	// Nothing changed: no further full sync.
	e.lb.PollOnce(c)
	if e.dps[0].clusterBulks() != 1 || e.dps[1].clusterBulks() != 2 {
		t.Fatalf("unneeded full syncs %d %d", e.dps[0].clusterBulks(), e.dps[1].clusterBulks())
	}
	// Restart of dp1: new bootID, empty tables.
	e.dps[0].fake.SetStatus(api.Status{BootID: "boot-2", Ready: true})
	if _, err := e.dps[0].Dataplane.BulkReplace(c, api.BulkReplace{Selector: map[string]string{api.LabelCluster: "test"}, Services: []api.Service{}}); err != nil {
		t.Fatal(err)
	}
	e.lb.PollOnce(c)
	if n := e.dps[0].fake.Names(); len(n) != 3 || e.dps[0].clusterBulks() != 2 {
		t.Fatalf("after restart %v (%d full syncs)", n, e.dps[0].clusterBulks())
	}
	// GC: service b vanishes from the API without a delete call (e.g. the
	// CCM was down); a periodic full sync removes its entries.
	if err := e.kube.CoreV1().Services("shop").Delete(c, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.lb.alloc.Release("shop/b")
	if err := e.lb.FullSync(c, nil); err != nil {
		t.Fatal(err)
	}
	for i, d := range e.dps {
		if n := d.fake.Names(); len(n) != 1 {
			t.Fatalf("dp%d after GC %v", i+1, n)
		}
	}
}

// A full sync keeps a Service whose annotations became invalid as it was.
func TestFullSyncKeepsInvalidServiceAsItWas(t *testing.T) {
	e := newEnv(t, "", 1)
	c := ctx(t)
	s := lbService("shop", "a", nil, 80)
	if _, err := e.kube.CoreV1().Services("shop").Create(c, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.lb.EnsureLoadBalancer(c, "c", s, nodes()); err != nil {
		t.Fatal(err)
	}
	s.Annotations = map[string]string{annotations.NATMode: "bogus"}
	if _, err := e.kube.CoreV1().Services("shop").Update(c, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, fresh := range []bool{false, true} {
		if fresh { // a new process has no last-good state: carried over from the dataplane
			e.lb.goodMu.Lock()
			e.lb.lastGood = map[types.UID][]api.Service{}
			e.lb.goodMu.Unlock()
		}
		if err := e.lb.FullSync(c, nil); err != nil {
			t.Fatal(err)
		}
		if n := e.dps[0].fake.Names(); len(n) != 1 {
			t.Fatalf("fresh=%v: invalid service dropped: %v", fresh, n)
		}
	}
}

func TestRestartRebuildsIPAM(t *testing.T) {
	withStatus := func(s *v1.Service, ips ...string) *v1.Service {
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
		return s
	}
	old1 := withStatus(lbService("shop", "old1", nil, 80), "192.0.2.1")
	old2 := withStatus(lbService("shop", "old2", nil, 80), "192.0.2.2")
	other := withStatus(lbService("shop", "other", nil, 80), "192.0.2.3")
	cls := "someone-else"
	other.Spec.LoadBalancerClass = &cls // not ours: its status is not a holding
	e := newEnv(t, "", 1, old1, old2, other)
	st, err := e.lb.EnsureLoadBalancer(ctx(t), "c", lbService("shop", "new", nil, 80), nodes())
	if err != nil || ingressIPs(st) != "192.0.2.3/VIP" {
		t.Fatalf("new service got %v %v", st, err)
	}
	st, err = e.lb.EnsureLoadBalancer(ctx(t), "c", old2, nodes())
	if err != nil || ingressIPs(st) != "192.0.2.2/VIP" {
		t.Fatalf("old2 moved: %v %v", st, err)
	}
}

func TestConcurrentEnsure(t *testing.T) {
	e := newEnv(t, "", 2)
	// main has 6 v4 addresses (/29 minus network and broadcast).
	var wg sync.WaitGroup
	res := make([]string, 6)
	errs := make([]error, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st, err := e.lb.EnsureLoadBalancer(ctx(t), "c", lbService("shop", fmt.Sprintf("s%d", i), nil, 80), nodes())
			if err == nil {
				res[i] = ingressIPs(st)
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range res {
		if errs[i] != nil || seen[res[i]] {
			t.Fatalf("%d: %v %q (dup=%v)", i, errs[i], res[i], seen[res[i]])
		}
		seen[res[i]] = true
	}
	_, err := e.lb.EnsureLoadBalancer(ctx(t), "c", lbService("shop", "s7", nil, 80), nodes())
	if err == nil || !strings.Contains(err.Error(), "pool main has no free IPv4") {
		t.Fatalf("exhaustion: %v", err)
	}
}

func TestInstances(t *testing.T) {
	i := &Instances{}
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{ProvidedNodeIPAnnotation: "10.0.0.1,fd00::1"},
		Labels: map[string]string{v1.LabelTopologyZone: "rack-1"}}}
	n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "172.17.0.1"}, {Type: v1.NodeExternalIP, Address: "203.0.113.1"}, {Type: v1.NodeHostName, Address: "n1.example"}}
	md, err := i.InstanceMetadata(ctx(t), n)
	if err != nil {
		t.Fatal(err)
	}
	want := []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.0.1"}, {Type: v1.NodeInternalIP, Address: "fd00::1"}, {Type: v1.NodeExternalIP, Address: "203.0.113.1"}, {Type: v1.NodeHostName, Address: "n1.example"}}
	if md.ProviderID != "xlb://n1" || md.InstanceType != "bare-metal" || md.Zone != "rack-1" || fmt.Sprint(md.NodeAddresses) != fmt.Sprint(want) {
		t.Fatalf("metadata %+v", md)
	}
	plain := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}}
	plain.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.0.2"}}
	md, _ = i.InstanceMetadata(ctx(t), plain)
	if fmt.Sprint(md.NodeAddresses) != fmt.Sprint([]v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.0.2"}, {Type: v1.NodeHostName, Address: "n2"}}) {
		t.Fatalf("plain %+v", md.NodeAddresses)
	}
	if ok, _ := i.InstanceExists(ctx(t), plain); !ok {
		t.Fatal("exists")
	}
	if down, _ := i.InstanceShutdown(ctx(t), plain); down {
		t.Fatal("shutdown without taint")
	}
	plain.Spec.Taints = []v1.Taint{{Key: OutOfServiceTaint, Effect: v1.TaintEffectNoExecute}}
	if down, _ := i.InstanceShutdown(ctx(t), plain); !down {
		t.Fatal("out-of-service not reported as shutdown")
	}
}

func TestCloudInterface(t *testing.T) {
	d := newDP(t)
	cfg, err := config.Parse(strings.NewReader(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	c := NewCloudWith(cfg, []NamedDataplane{{Name: "dp1", Dataplane: d}})
	if _, ok := c.LoadBalancer(); ok {
		t.Fatal("load balancer before Initialize")
	}
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.InitializeWith(cctx, Deps{Kube: fake.NewClientset()}); err != nil {
		t.Fatal(err)
	}
	lb, ok := c.LoadBalancer()
	if !ok || lb == nil || c.ProviderName() != "xlb" || !c.HasClusterID() {
		t.Fatal("interface")
	}
	for _, ok := range []bool{second(c.Instances()), second(c.Zones()), second(c.Routes()), second(c.Clusters())} {
		if ok {
			t.Fatal("unexpected optional interface")
		}
	}
	if _, ok := c.InstancesV2(); !ok {
		t.Fatal("no InstancesV2")
	}
	// The background loop made first contact with the dataplane.
	deadline := time.Now().Add(10 * time.Second)
	for d.clusterBulks() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no initial full sync")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func second[T any](_ T, ok bool) bool { return ok }

func TestNewCloudErrors(t *testing.T) {
	if _, err := NewCloud(strings.NewReader("clusterName: x\nbogus: 1\n")); err == nil || !strings.Contains(err.Error(), `unknown field "bogus"`) {
		t.Fatalf("err %v", err)
	}
	c, err := NewCloud(strings.NewReader(testConfig))
	if err != nil || c.ProviderName() != ProviderName {
		t.Fatalf("NewCloud: %v", err)
	}
	Register()
	Register() // idempotent
}
