package e2e

// Helpers of ccm_more_test.go. Every name here starts with "more" so it cannot clash with the
// other helpers of the package; they build on the ccmEnv (real apiserver + CCM processes),
// xlbdEnv (real xlbd in a test/netns topology) and bgpTopo (xlbd + BIRD) helpers.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/test/kube"
	"github.com/xlb-dev/xlb/test/netns"
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

// moreStartCCM is ccmEnv.startCCM for another CCM binary and --cloud-provider name (the
// fold-in example's acme-ccm). It uses the same flags, log files and bookkeeping, so
// e.stopCCM, e.waitHealthy, e.eventually and the RBAC check of newCCMEnv apply to it.
func moreStartCCM(e *ccmEnv, bin, cloudProvider, controllers string) {
	e.t.Helper()
	e.starts++
	port := freePort(e.t)
	logPath := filepath.Join(e.dir, fmt.Sprintf("xlb-ccm.%d.log", e.starts))
	logFile, err := os.Create(logPath)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--cloud-provider="+cloudProvider,
		"--cloud-config="+e.cloudCfg,
		"--kubeconfig="+e.kubeconfig,
		"--controllers="+controllers,
		"--cluster-name=e2e",
		"--leader-elect=true",
		"--leader-elect-resource-namespace=kube-system",
		"--leader-elect-resource-name=xlb-ccm",
		"--leader-elect-lease-duration=4s",
		"--leader-elect-renew-deadline=3s",
		"--leader-elect-retry-period=1s",
		"--use-service-account-credentials=false",
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--configure-cloud-routes=false",
		"--v=2",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	exited, err := kube.StartProcess(cmd, nil)
	logFile.Close()
	if err != nil {
		e.t.Fatalf("start %s: %v", bin, err)
	}
	e.ccm = &ccmProc{cmd: cmd, log: logPath, exited: exited}
	e.healthz = fmt.Sprintf("https://127.0.0.1:%d/healthz", port)
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

// moreHealthzCode fetches http://HOST:port/healthz from the LB namespace (where xlbd's probes
// come from) and returns the status code; healthzCode of the health tests is fixed to
// kube-proxy's port, an ETP=Local Service uses its healthCheckNodePort.
func moreHealthzCode(topo *netns.Topology, host *netns.Host, port uint16) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	target := netns.AddrPort(host.Link.Addr4, port)
	c, err := topo.LB.DialContext(ctx, "tcp", target)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, fmt.Errorf("healthz %s: bad status line %q", target, line)
	}
	return strconv.Atoi(f[1])
}

// moreSetHealthz toggles whoami (SIGUSR1) until its /healthz on port answers want.
func moreSetHealthz(t *testing.T, w *healthWhoami, topo *netns.Topology, port uint16, want int) {
	t.Helper()
	code, err := moreHealthzCode(topo, w.host, port)
	if err != nil {
		t.Fatalf("healthz of %s: %v", w.host.Label, err)
	}
	if code == want {
		return
	}
	w.toggle()
	netns.Poll(t, 10*time.Second, func() error {
		code, err := moreHealthzCode(topo, w.host, port)
		if err != nil {
			return err
		}
		if code != want {
			return fmt.Errorf("healthz of %s is %d, want %d", w.host.Label, code, want)
		}
		return nil
	})
}
