package e2e

// Helpers of ccm_more_test.go. Every name here starts with "more" so it cannot clash with the
// other helpers of the package; they build on the ccmEnv (real apiserver + CCM processes),
// xlbdEnv (real xlbd in a test/netns topology) and bgpTopo (xlbd + BIRD) helpers.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xlb-dev/xlb/api"
)

// moreBuild builds a main package of this module into the test's temp dir.
func moreBuild(t *testing.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// moreWriteCloudConfig replaces the cloud-config of e (before the CCM starts).
func moreWriteCloudConfig(e *ccmEnv, content string) {
	e.t.Helper()
	if err := os.WriteFile(e.cloudCfg, []byte(content), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// moreCreateService creates a TCP port-80 LoadBalancer Service named name with the given
// NodePort, annotations and externalTrafficPolicy ("" = Cluster).
func moreCreateService(e *ccmEnv, name string, nodePort int32, etp corev1.ServiceExternalTrafficPolicy, annotations map[string]string) *corev1.Service {
	e.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: annotations},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeLoadBalancer,
			ExternalTrafficPolicy: etp,
			Selector:              map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP, NodePort: nodePort,
			}},
		},
	}
	svc, err := e.cluster.Client.CoreV1().Services("default").Create(e.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create service %s: %v", name, err)
	}
	return svc
}

// moreDeleteService deletes the Service (the CCM's finalizer keeps it until cleaned up).
func moreDeleteService(e *ccmEnv, name string) {
	e.t.Helper()
	if err := e.cluster.Client.CoreV1().Services("default").Delete(e.ctx, name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatalf("delete service %s: %v", name, err)
	}
}

// moreWaitServiceObjectGone waits until the Service object is gone (finalizer removed).
func moreWaitServiceObjectGone(e *ccmEnv, name string) {
	e.t.Helper()
	e.eventually("Service "+name+" deleted", 30*time.Second, func() error {
		if _, err := e.getService(name); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
}

// moreXlbdServices lists what a real xlbd holds for a Service UID.
type moreLister interface {
	ListServices(ctx context.Context, selector map[string]string) (api.ServiceList, error)
}

func moreXlbdServices(c moreLister, uid string) ([]api.Service, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	l, err := c.ListServices(ctx, map[string]string{api.LabelServiceUID: uid})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// moreWaitXlbdService waits until a real xlbd holds exactly one service for the Service UID
// carrying vip, and returns it.
func moreWaitXlbdService(e *ccmEnv, c moreLister, uid, vip string) api.Service {
	e.t.Helper()
	var got api.Service
	e.eventually("xlbd holds the service of uid "+uid, 30*time.Second, func() error {
		items, err := moreXlbdServices(c, uid)
		if err != nil {
			return err
		}
		if len(items) != 1 {
			return fmt.Errorf("xlbd holds %d services for uid %s", len(items), uid)
		}
		for _, v := range items[0].Spec.VIPs {
			if v == vip {
				got = items[0]
				return nil
			}
		}
		return fmt.Errorf("xlbd service %s has VIPs %v, want %s", items[0].Name, items[0].Spec.VIPs, vip)
	})
	return got
}

// moreWaitXlbdEmpty waits until a real xlbd holds nothing for the Service UID.
func moreWaitXlbdEmpty(e *ccmEnv, c moreLister, uid string) {
	e.t.Helper()
	e.eventually("xlbd emptied of uid "+uid, 30*time.Second, func() error {
		items, err := moreXlbdServices(c, uid)
		if err != nil {
			return err
		}
		if len(items) != 0 {
			return fmt.Errorf("xlbd still holds %d services (first %s)", len(items), items[0].Name)
		}
		return nil
	})
}
