package foldin

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/lbclient/lbclienttest"
	"github.com/xlb-dev/xlb/provider"
)

// TestAcmeServesLoadBalancersThroughXLB drives acme's LoadBalancer() the
// way the service controller does, against an httptest xlbd fake.
func TestAcmeServesLoadBalancersThroughXLB(t *testing.T) {
	xlbd := lbclienttest.NewFake()
	url := xlbd.Start(t)
	c, err := New(strings.NewReader("clusterName: acme-prod\ndataplanes: [{name: lb1, endpoint: '" + url + "'}]\npools: [{name: vips, cidrs: [203.0.113.0/28]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	client, err := lbclient.New(lbclient.Config{Endpoint: url, Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	c.dataplanes = []provider.NamedDataplane{{Name: "lb1", Dataplane: client}}
	if _, ok := c.LoadBalancer(); ok {
		t.Fatal("LoadBalancer before Initialize")
	}
	stop := make(chan struct{})
	defer close(stop)
	kube := fake.NewClientset()
	rec := record.NewFakeRecorder(100)
	if err := c.init(kube, rec, stop); err != nil {
		t.Fatal(err)
	}
	lb, ok := c.LoadBalancer()
	if !ok {
		t.Fatal("no LoadBalancer")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", UID: "6d1c-web"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, Ports: []v1.ServicePort{
			{Name: "http", Port: 80, NodePort: 30080, Protocol: v1.ProtocolTCP}}},
	}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "m1"}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.1.0.1"}}}}
	if _, err := kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := lb.EnsureLoadBalancer(ctx, "acme-prod", svc, []*v1.Node{node})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Ingress) != 1 || st.Ingress[0].IP != "203.0.113.1" || *st.Ingress[0].IPMode != v1.LoadBalancerIPModeVIP {
		t.Fatalf("status %+v", st)
	}
	names := xlbd.Names()
	if len(names) != 1 || !strings.HasPrefix(names[0], "acme-prod-default-web-80-tcp-") {
		t.Fatalf("xlbd holds %v", names)
	}
	s, _ := xlbd.Service(names[0])
	if s.Spec.Backends[0].Address != "10.1.0.1" || s.Spec.Backends[0].Port != 30080 {
		t.Fatalf("backends %+v", s.Spec.Backends)
	}
	if err := lb.EnsureLoadBalancerDeleted(ctx, "acme-prod", svc); err != nil {
		t.Fatal(err)
	}
	if n := xlbd.Names(); len(n) != 0 {
		t.Fatalf("left behind %v", n)
	}
	if _, exists, err := lb.GetLoadBalancer(ctx, "acme-prod", svc); exists || err != nil {
		t.Fatalf("exists=%v err=%v after delete", exists, err)
	}
	// acme keeps its own instances.
	inst, _ := c.InstancesV2()
	md, _ := inst.InstanceMetadata(ctx, node)
	if md.ProviderID != "acme://m1" {
		t.Fatalf("provider id %s", md.ProviderID)
	}
}
