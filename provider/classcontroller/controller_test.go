package classcontroller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	servicehelper "k8s.io/cloud-provider/service/helpers"
)

// fakeLB records every LoadBalancer call. Pure logic under test, so a fake is right here; the
// real provider is exercised by test/e2e against a real apiserver.
type fakeLB struct {
	mu        sync.Mutex
	calls     []string // "ensure ns/name n1,n2", "update ...", "delete ns/name"
	exists    map[string]bool
	ensureErr error
}

func newFakeLB() *fakeLB { return &fakeLB{exists: map[string]bool{}} }

func (f *fakeLB) record(op string, svc *corev1.Service, nodes []*corev1.Node) {
	s := op + " " + svc.Namespace + "/" + svc.Name
	if op != "delete" {
		s += " " + strings.Join(names(nodes), ",")
	}
	f.calls = append(f.calls, s)
}

func (f *fakeLB) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeLB) SetEnsureErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ensureErr = err
}

func (f *fakeLB) GetLoadBalancer(_ context.Context, _ string, svc *corev1.Service) (*corev1.LoadBalancerStatus, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists[key(svc)] {
		return nil, false, nil
	}
	return status(), true, nil
}

func (f *fakeLB) GetLoadBalancerName(_ context.Context, _ string, svc *corev1.Service) string {
	return "a" + strings.ReplaceAll(string(svc.UID), "-", "")
}

func (f *fakeLB) EnsureLoadBalancer(_ context.Context, _ string, svc *corev1.Service, nodes []*corev1.Node) (*corev1.LoadBalancerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("ensure", svc, nodes)
	if f.ensureErr != nil {
		return nil, f.ensureErr
	}
	f.exists[key(svc)] = true
	return status(), nil
}

func (f *fakeLB) UpdateLoadBalancer(_ context.Context, _ string, svc *corev1.Service, nodes []*corev1.Node) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("update", svc, nodes)
	return nil
}

func (f *fakeLB) EnsureLoadBalancerDeleted(_ context.Context, _ string, svc *corev1.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("delete", svc, nil)
	delete(f.exists, key(svc))
	return nil
}

func status() *corev1.LoadBalancerStatus {
	mode := corev1.LoadBalancerIPModeVIP
	return &corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "192.0.2.10", IPMode: &mode}}}
}

type env struct {
	t        *testing.T
	ctx      context.Context
	client   *fake.Clientset
	lb       *fakeLB
	recorder *record.FakeRecorder
}

func start(t *testing.T, objs ...any) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	client := fake.NewClientset()
	e := &env{t: t, ctx: ctx, client: client, lb: newFakeLB(), recorder: record.NewFakeRecorder(1000)}
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Node:
			e.createNode(o)
		case *corev1.Service:
			e.createService(o)
		}
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	c, err := New(client, e.lb, factory.Core().V1().Services(), factory.Core().V1().Nodes(),
		Options{ClusterName: "test", Recorder: e.recorder, MinRetryDelay: 10 * time.Millisecond, MaxRetryDelay: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() {
		c.Run(ctx, 2)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		factory.Shutdown()
	})
	return e
}

func node(name, ip string, mutate ...func(*corev1.Node)) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}},
	}
	for _, m := range mutate {
		m(n)
	}
	return n
}

func service(name string, class *string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: class,
			Ports:             []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 30080}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func (e *env) createNode(n *corev1.Node) {
	e.t.Helper()
	if _, err := e.client.CoreV1().Nodes().Create(e.ctx, n, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("create node: %v", err)
	}
}

func (e *env) createService(s *corev1.Service) {
	e.t.Helper()
	if _, err := e.client.CoreV1().Services(s.Namespace).Create(e.ctx, s, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("create service: %v", err)
	}
}

func (e *env) getService(name string) *corev1.Service {
	e.t.Helper()
	s, err := e.client.CoreV1().Services("default").Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get service: %v", err)
	}
	return s
}

func (e *env) updateService(name string, mutate func(*corev1.Service)) {
	e.t.Helper()
	s := e.getService(name)
	mutate(s)
	if _, err := e.client.CoreV1().Services("default").Update(e.ctx, s, metav1.UpdateOptions{}); err != nil {
		e.t.Fatalf("update service: %v", err)
	}
}

// eventually polls cond until it returns nil or the deadline passes.
func (e *env) eventually(what string, cond func() error) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: %v (LB calls: %q)", what, err, e.lb.Calls())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) waitCalls(want ...string) {
	e.t.Helper()
	e.eventually("load balancer calls", func() error {
		if got := e.lb.Calls(); !slices.Equal(got, want) {
			return fmt.Errorf("calls %q, want %q", got, want)
		}
		return nil
	})
}

func (e *env) waitEvent(substr string) {
	e.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-e.recorder.Events:
			if strings.Contains(ev, substr) {
				return
			}
		case <-deadline:
			e.t.Fatalf("no event containing %q", substr)
		}
	}
}

func TestEnsureFiltersNodesAndPublishesStatus(t *testing.T) {
	e := start(t,
		node("n1", "10.0.0.1"),
		node("n2", "10.0.0.2", func(n *corev1.Node) { n.Labels[corev1.LabelNodeExcludeBalancers] = "true" }),
		node("n3", "10.0.0.3", func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: ToBeDeletedTaint, Effect: corev1.TaintEffectNoSchedule}}
		}),
		node("n4", "10.0.0.4", func(n *corev1.Node) { n.Labels[corev1.LabelNodeExcludeBalancers] = "false" }),
		node("n5", "10.0.0.5", func(n *corev1.Node) { n.Labels[corev1.LabelNodeExcludeBalancers] = "garbage" }),
		service("web", ptr(DefaultClass)),
	)
	e.waitCalls("ensure default/web n1,n4")
	e.eventually("status and finalizer", func() error {
		s := e.getService("web")
		if !servicehelper.HasLBFinalizer(s) {
			return fmt.Errorf("finalizers %v", s.Finalizers)
		}
		if len(s.Status.LoadBalancer.Ingress) != 1 || s.Status.LoadBalancer.Ingress[0].IP != "192.0.2.10" {
			return fmt.Errorf("status %+v", s.Status.LoadBalancer)
		}
		return nil
	})
	e.waitEvent(ReasonEnsured)
}

func TestIgnoresOtherServices(t *testing.T) {
	e := start(t, node("n1", "10.0.0.1"),
		service("upstream", nil),                   // the upstream service controller's
		service("other", ptr("example.com/other")), // another implementation's
		service("mine", ptr(DefaultClass)),
	)
	cip := service("clusterip", nil)
	cip.Spec.Type = corev1.ServiceTypeClusterIP
	e.createService(cip)
	// A Service of another class that carries the shared finalizer must not be cleaned by us.
	fin := service("other-fin", ptr("example.com/other"))
	fin.Finalizers = []string{servicehelper.LoadBalancerCleanupFinalizer}
	e.createService(fin)
	e.waitCalls("ensure default/mine n1")
	// Touch the others; still nothing for them.
	e.updateService("other", func(s *corev1.Service) { s.Annotations = map[string]string{"x": "y"} })
	e.updateService("mine", func(s *corev1.Service) { s.Annotations = map[string]string{"x": "y"} })
	e.waitCalls("ensure default/mine n1", "ensure default/mine n1")
	if s := e.getService("other-fin"); !servicehelper.HasLBFinalizer(s) {
		t.Errorf("finalizer of another class's Service removed")
	}
}

func TestNodeChangesCallUpdate(t *testing.T) {
	e := start(t, node("n1", "10.0.0.1"), service("web", ptr(DefaultClass)))
	e.waitCalls("ensure default/web n1")

	e.createNode(node("n2", "10.0.0.2"))
	e.waitCalls("ensure default/web n1", "update default/web n1,n2")

	// Excluding a node is a change; an unrelated label is not.
	n2, err := e.client.CoreV1().Nodes().Get(e.ctx, "n2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n2.Labels["unrelated"] = "x"
	if n2, err = e.client.CoreV1().Nodes().Update(e.ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	n2.Labels[corev1.LabelNodeExcludeBalancers] = "true"
	if _, err = e.client.CoreV1().Nodes().Update(e.ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitCalls("ensure default/web n1", "update default/web n1,n2", "update default/web n1")

	// A changed address matters to xlb: backends are node addresses.
	n1, err := e.client.CoreV1().Nodes().Get(e.ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n1.Status.Addresses[0].Address = "10.0.0.11"
	if _, err = e.client.CoreV1().Nodes().UpdateStatus(e.ctx, n1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitCalls("ensure default/web n1", "update default/web n1,n2", "update default/web n1", "update default/web n1")

	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitCalls("ensure default/web n1", "update default/web n1,n2", "update default/web n1", "update default/web n1",
		"update default/web ")
	e.waitEvent(ReasonNoAvailableNodes)
}

func TestDeletionRemovesLoadBalancerThenFinalizer(t *testing.T) {
	e := start(t, node("n1", "10.0.0.1"), service("web", ptr(DefaultClass)))
	e.waitCalls("ensure default/web n1")
	e.eventually("finalizer", func() error {
		if !servicehelper.HasLBFinalizer(e.getService("web")) {
			return errors.New("no finalizer yet")
		}
		return nil
	})
	// The fake clientset does not implement graceful deletion; set the timestamp as the
	// apiserver would while the finalizer holds the object.
	e.updateService("web", func(s *corev1.Service) { s.DeletionTimestamp = ptr(metav1.Now()) })
	e.waitCalls("ensure default/web n1", "delete default/web")
	e.eventually("finalizer removed", func() error {
		if s := e.getService("web"); servicehelper.HasLBFinalizer(s) {
			return fmt.Errorf("finalizers %v", s.Finalizers)
		}
		return nil
	})
	e.waitEvent(ReasonDeleted)
}

func TestTypeChangeCleansUp(t *testing.T) {
	e := start(t, node("n1", "10.0.0.1"), service("web", ptr(DefaultClass)))
	e.waitCalls("ensure default/web n1")
	e.eventually("finalizer", func() error {
		if !servicehelper.HasLBFinalizer(e.getService("web")) {
			return errors.New("no finalizer yet")
		}
		return nil
	})
	e.updateService("web", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeClusterIP
		s.Spec.LoadBalancerClass = nil
	})
	e.waitCalls("ensure default/web n1", "delete default/web")
	e.eventually("finalizer removed and status cleared", func() error {
		s := e.getService("web")
		if servicehelper.HasLBFinalizer(s) || len(s.Status.LoadBalancer.Ingress) != 0 {
			return fmt.Errorf("finalizers %v status %+v", s.Finalizers, s.Status.LoadBalancer)
		}
		return nil
	})
}

func TestEnsureErrorIsReportedAndRetried(t *testing.T) {
	lbErr := errors.New(`annotation xlb.dev/algorithm: "bogus" is not one of rr, random, maglev, persist, lc`)
	e := start(t, node("n1", "10.0.0.1"))
	e.lb.SetEnsureErr(lbErr)
	e.createService(service("web", ptr(DefaultClass)))
	e.waitEvent("Warning " + ReasonSyncFailed)
	e.eventually("retried", func() error {
		if n := len(e.lb.Calls()); n < 2 {
			return fmt.Errorf("%d calls", n)
		}
		return nil
	})
	if s := e.getService("web"); len(s.Status.LoadBalancer.Ingress) != 0 {
		t.Fatalf("status set despite error: %+v", s.Status.LoadBalancer)
	}
	e.lb.SetEnsureErr(nil)
	e.eventually("status after recovery", func() error {
		if s := e.getService("web"); len(s.Status.LoadBalancer.Ingress) != 1 {
			return fmt.Errorf("status %+v", s.Status.LoadBalancer)
		}
		return nil
	})
}

func TestServiceGoneWithoutFinalizerIsCleanedUp(t *testing.T) {
	e := start(t, node("n1", "10.0.0.1"), service("web", ptr(DefaultClass)))
	e.waitCalls("ensure default/web n1")
	// Someone removed the finalizer and the object vanished at once: the load balancer
	// must not leak.
	if err := e.client.CoreV1().Services("default").Delete(e.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitCalls("ensure default/web n1", "delete default/web")
}

func TestRecreatedServiceGetsFreshLoadBalancer(t *testing.T) {
	e := start(t, node("n1", "10.0.0.1"), service("web", ptr(DefaultClass)))
	e.waitCalls("ensure default/web n1")
	if err := e.client.CoreV1().Services("default").Delete(e.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	again := service("web", ptr(DefaultClass))
	again.UID = "uid-web-2"
	e.createService(again)
	e.waitCalls("ensure default/web n1", "delete default/web", "ensure default/web n1")
}

func TestOrphanAfterRestartIsCleanedOnlyIfOurs(t *testing.T) {
	// Two ClusterIP Services with the cleanup finalizer, as left by a type change while the
	// controller was down: the load balancer has something for "ours" only.
	e := start(t, node("n1", "10.0.0.1"))
	e.lb.mu.Lock()
	e.lb.exists["default/ours"] = true
	e.lb.mu.Unlock()
	for _, name := range []string{"ours", "theirs"} {
		s := service(name, nil)
		s.Spec.Type = corev1.ServiceTypeClusterIP
		s.Spec.Ports[0].NodePort = 0
		s.Finalizers = []string{servicehelper.LoadBalancerCleanupFinalizer}
		e.createService(s)
	}
	e.waitCalls("delete default/ours")
	e.eventually("finalizer of ours removed", func() error {
		if s := e.getService("ours"); servicehelper.HasLBFinalizer(s) {
			return fmt.Errorf("finalizers %v", s.Finalizers)
		}
		return nil
	})
	if s := e.getService("theirs"); !servicehelper.HasLBFinalizer(s) {
		t.Errorf("finalizer of a Service that is not ours was removed")
	}
}
