package e2e

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xlb-dev/xlb/api"
)

// TestCCMServiceLifecycle runs the real xlb-ccm (upstream service controller + xlb provider)
// against a real kube-apiserver, with the permissions of manifests/ccm-rbac.yaml, and a
// dataplane speaking xlbd's API. Services without a loadBalancerClass.
//
// It runs every default controller (--controllers=*), as manifests/ccm-deployment.yaml does,
// so the node controllers' use of InstancesV2 and their RBAC are covered too.
func TestCCMServiceLifecycle(t *testing.T) {
	e := newCCMEnv(t, ccmOptions{})
	e.startCCM("*")
	e.waitHealthy()
	e.eventually("leader lease kube-system/xlb-ccm held", 30*time.Second, func() error {
		l, err := e.cluster.Client.CoordinationV1().Leases("kube-system").Get(e.ctx, "xlb-ccm", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
			return fmt.Errorf("lease has no holder: %+v", l.Spec)
		}
		return nil
	})
	nodeInitialization(t, e)
	lifecycle(t, e, nil, "*")
}

// nodeInitialization: a node registered by a kubelet with --cloud-provider=external carries the
// uninitialized taint and its --node-ip as an annotation; xlb-ccm must initialize it (provider
// ID, addresses) and remove the taint, and must not delete it.
func nodeInitialization(t *testing.T, e *ccmEnv) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-new", Annotations: map[string]string{
			"alpha.kubernetes.io/provided-node-ip": "10.0.0.50",
		}},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{
			Key: "node.cloudprovider.kubernetes.io/uninitialized", Value: "true", Effect: corev1.TaintEffectNoSchedule,
		}}},
	}
	if _, err := e.cluster.Client.CoreV1().Nodes().Create(e.ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("node-new initialized", 60*time.Second, func() error {
		n, err := e.cluster.Client.CoreV1().Nodes().Get(e.ctx, "node-new", metav1.GetOptions{})
		if err != nil {
			return err
		}
		// (The apiserver's admission adds node.kubernetes.io/not-ready; that one stays.)
		for _, taint := range n.Spec.Taints {
			if taint.Key == "node.cloudprovider.kubernetes.io/uninitialized" {
				return fmt.Errorf("still tainted: %v", n.Spec.Taints)
			}
		}
		if n.Spec.ProviderID != "xlb://node-new" {
			return fmt.Errorf("providerID %q", n.Spec.ProviderID)
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && a.Address == "10.0.0.50" {
				return nil
			}
		}
		return fmt.Errorf("addresses %v", n.Status.Addresses)
	})
	// Remove it again so the load-balancer flow below starts from known nodes.
	if err := e.cluster.Client.CoreV1().Nodes().Delete(e.ctx, "node-new", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// lifecycle is the flow shared by the classless and the loadBalancerClass tests.
func lifecycle(t *testing.T, e *ccmEnv, class *string, controllers string) {
	e.createNode("node-a", "10.0.0.1", nil)
	e.createNode("node-b", "10.0.0.2", nil)
	e.createNode("node-x", "10.0.0.9", map[string]string{corev1.LabelNodeExcludeBalancers: "true"})

	// Create → a VIP from the pool, the finalizer, and one dataplane service whose backends
	// are the eligible nodes' InternalIP:NodePort.
	e.createService("web", class, nil)
	vip := e.waitVIP("web")
	svc, err := e.getService("web")
	if err != nil {
		t.Fatal(err)
	}
	np := svc.Spec.Ports[0].NodePort
	if np == 0 {
		t.Fatalf("service has no nodePort: %+v", svc.Spec.Ports)
	}
	be := func(ip string) string { return fmt.Sprintf("%s:%d", ip, np) }
	ds := e.waitBackends(svc, vip, be("10.0.0.1"), be("10.0.0.2"))
	if ds.Spec.Port != 80 || ds.Spec.Protocol != "tcp" {
		t.Errorf("dataplane service port/protocol %d/%s, want 80/tcp", ds.Spec.Port, ds.Spec.Protocol)
	}
	if ds.Labels[api.LabelCluster] != "e2e" || ds.Labels[api.LabelNamespace] != "default" || ds.Labels[api.LabelName] != "web" {
		t.Errorf("dataplane service labels %v", ds.Labels)
	}
	t.Logf("web: VIP %s, dataplane service %s", vip, ds.Name)

	// A new node → UpdateLoadBalancer pushes it.
	e.createNode("node-c", "10.0.0.3", nil)
	e.waitBackends(svc, vip, be("10.0.0.1"), be("10.0.0.2"), be("10.0.0.3"))

	// The dataplane restarts empty (new boot ID) → xlb-ccm notices and re-pushes the Service
	// with the same VIP, without any change in Kubernetes.
	if e.dp != nil {
		e.restartFakeDataplane("boot-2")
		e.waitBackends(svc, vip, be("10.0.0.1"), be("10.0.0.2"), be("10.0.0.3"))
	}

	// A bad xlb.dev annotation → a Warning event naming it, and nothing changes: not the
	// dataplane, not the status.
	before := e.waitBackends(svc, vip, be("10.0.0.1"), be("10.0.0.2"), be("10.0.0.3"))
	e.updateService("web", func(s *corev1.Service) {
		s.Annotations = map[string]string{"xlb.dev/algorithm": "bogus"}
	})
	ev := e.waitWarning("web", "xlb.dev/algorithm")
	t.Logf("bad annotation event: %s: %s", ev.Reason, ev.Message)
	after := e.dataplaneServices(string(svc.UID))
	if len(after) != 1 || !reflect.DeepEqual(after[0].Spec, before.Spec) {
		t.Errorf("dataplane changed by a rejected annotation:\nbefore %+v\nafter  %+v", before.Spec, after)
	}
	if got := e.waitVIP("web"); got != vip {
		t.Errorf("VIP changed by a rejected annotation: %s → %s", vip, got)
	}

	// Restart xlb-ccm → the same VIP (IPAM is rebuilt, not re-allocated), even after the
	// Service is changed again; a second Service gets a different address.
	e.stopCCM()
	e.updateService("web", func(s *corev1.Service) { s.Annotations = map[string]string{"xlb.dev/algorithm": "rr"} })
	e.startCCM(controllers)
	e.waitHealthy()
	e.eventually("algorithm rr applied after restart", 30*time.Second, func() error {
		ss := e.dataplaneServices(string(svc.UID))
		if len(ss) != 1 || ss[0].Spec.Algorithm != "rr" {
			return fmt.Errorf("dataplane services %+v", ss)
		}
		return nil
	})
	if got := e.waitVIP("web"); got != vip {
		t.Errorf("VIP changed across an xlb-ccm restart: %s → %s", vip, got)
	}
	e.waitBackends(svc, vip, be("10.0.0.1"), be("10.0.0.2"), be("10.0.0.3"))
	other := e.createService("api", class, nil)
	otherVIP := e.waitVIP("api")
	if otherVIP == vip {
		t.Errorf("second Service got the VIP of the first: %s", vip)
	}

	// Delete → the dataplane service is removed, then the finalizer, so the object goes.
	for _, s := range []*corev1.Service{svc, other} {
		if err := e.cluster.Client.CoreV1().Services("default").Delete(e.ctx, s.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete %s: %v", s.Name, err)
		}
	}
	e.waitGone(svc)
	e.waitGone(other)
	if names := e.dp.Names(); len(names) != 0 {
		t.Errorf("dataplane not empty after deleting every Service: %v", names)
	}
}
