package e2e

// Helpers of the xlb-ccm end-to-end tests: a real etcd + kube-apiserver (test/kube), the real
// xlb-ccm binary built from this checkout, running with exactly the RBAC permissions of
// manifests/ccm-rbac.yaml, and a dataplane speaking xlbd's REST API.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/lbclient/lbclienttest"
	"github.com/xlb-dev/xlb/test/kube"
)

// ccmServiceAccount is the identity the manifests give xlb-ccm; the tests impersonate it so a
// missing permission in manifests/ccm-rbac.yaml fails them.
const ccmServiceAccount = "system:serviceaccount:kube-system:xlb-ccm"

const cleanupFinalizer = "service.kubernetes.io/load-balancer-cleanup"

// ccmEnv is one control plane, one fake dataplane and (re)startable xlb-ccm processes.
type ccmEnv struct {
	t          *testing.T
	ctx        context.Context
	cluster    *kube.Cluster
	dp         *lbclienttest.Fake // nil with a real dataplane
	dir        string
	bin        string
	kubeconfig string // impersonates ccmServiceAccount
	cloudCfg   string
	ccm        *ccmProc
	healthz    string // URL of the running xlb-ccm's /healthz
	pool       netip.Prefix
	// dpEndpoint and dpTokenFile reach the dataplane (fake or real).
	dpEndpoint, dpTokenFile string
	starts                  int
}

type ccmProc struct {
	cmd    *exec.Cmd
	log    string
	exited <-chan struct{}
}

// ccmOptions shape a ccmEnv. The zero value: classless mode, a fake dataplane, pool
// 192.0.2.0/28.
type ccmOptions struct {
	// Class is the cloud-config's loadBalancerClass (empty: classless mode).
	Class string
	// Endpoint and TokenFile name a real dataplane (xlbd); empty: a fake one is started.
	Endpoint, TokenFile string
	// Pool is the VIP pool CIDR.
	Pool string
}

func ccmCloudConfig(o ccmOptions) string {
	return fmt.Sprintf(`clusterName: e2e
loadBalancerClass: %q
dataplanes:
  - name: dp1
    endpoint: %s
    tokenFile: %s
pools:
  - name: default
    cidrs: [%s]
statusPollPeriod: 200ms
resyncPeriod: 10s
`, o.Class, o.Endpoint, o.TokenFile, o.Pool)
}

// newCCMEnv starts the control plane (and a fake dataplane unless o names a real one),
// applies the manifests' RBAC and builds xlb-ccm. It does not start xlb-ccm.
func newCCMEnv(t *testing.T, o ccmOptions) *ccmEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &ccmEnv{t: t, ctx: ctx, dir: t.TempDir()}
	if o.Pool == "" {
		o.Pool = "192.0.2.0/28"
	}
	e.pool = netip.MustParsePrefix(o.Pool)

	// Build first: it is the slow part and needs no cluster.
	e.bin = filepath.Join(e.dir, "xlb-ccm")
	build := exec.CommandContext(ctx, "go", "build", "-o", e.bin, "github.com/xlb-dev/xlb/cmd/xlb-ccm")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/xlb-ccm: %v\n%s", err, out)
	}

	e.cluster = kube.StartT(t, kube.Options{})
	root, err := kube.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	e.kubectl("apply", "-f", filepath.Join(root, "manifests", "ccm-rbac.yaml"))
	e.kubeconfig = filepath.Join(e.dir, "ccm.kubeconfig")
	if err := e.cluster.WriteKubeconfig(e.kubeconfig, ccmServiceAccount); err != nil {
		t.Fatal(err)
	}

	if o.Endpoint == "" {
		const token = "e2e-dataplane-token"
		e.dp = lbclienttest.NewFake()
		e.dp.SetToken(token)
		e.dp.SetStatus(api.Status{Version: "fake", BootID: "boot-1", Ready: true})
		o.Endpoint = e.dp.Start(t)
		o.TokenFile = filepath.Join(e.dir, "token")
		if err := os.WriteFile(o.TokenFile, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.dpEndpoint, e.dpTokenFile = o.Endpoint, o.TokenFile
	e.cloudCfg = filepath.Join(e.dir, "cloud-config.yaml")
	if err := os.WriteFile(e.cloudCfg, []byte(ccmCloudConfig(o)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Registered before stopCCM so it runs after it: the logs are complete.
		// Any RBAC denial means manifests/ccm-rbac.yaml is missing a permission xlb-ccm uses.
		for i := 1; i <= e.starts; i++ {
			data, _ := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("xlb-ccm.%d.log", i)))
			var denied []string
			for _, line := range strings.Split(string(data), "\n") {
				if strings.Contains(line, "forbidden") {
					denied = append(denied, line)
				}
			}
			if len(denied) > 0 {
				t.Errorf("xlb-ccm run %d was denied by RBAC %d times, first: %s", i, len(denied), denied[0])
			}
		}
	})
	t.Cleanup(e.stopCCM)
	t.Cleanup(func() {
		if t.Failed() {
			for i := 1; i <= e.starts; i++ {
				data, _ := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("xlb-ccm.%d.log", i)))
				t.Logf("xlb-ccm run %d log (tail):\n%s", i, tail(string(data), 60))
			}
		}
	})
	return e
}

func (e *ccmEnv) kubectl(args ...string) string {
	e.t.Helper()
	bin, err := kube.Binary("kubectl")
	if err != nil {
		e.t.Fatal(err)
	}
	args = append([]string{"--kubeconfig", e.cluster.Kubeconfig}, args...)
	out, err := exec.CommandContext(e.ctx, bin, args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// startCCM starts xlb-ccm with the given --controllers value.
func (e *ccmEnv) startCCM(controllers string) {
	e.t.Helper()
	e.startCCMBinary(e.bin, "xlb", controllers)
}

// startCCMBinary starts a CCM binary (xlb-ccm, or the fold-in example's
// acme-ccm) with --cloud-provider=cloudProvider and the flags of
// manifests/ccm-deployment.yaml; stopCCM, waitHealthy and the RBAC check
// apply to it alike.
func (e *ccmEnv) startCCMBinary(bin, cloudProvider, controllers string) {
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
		// Leader election and the secure port as in manifests/ccm-deployment.yaml, so the
		// Lease and delegated-authentication permissions of the manifests are exercised.
		"--leader-elect=true",
		"--leader-elect-resource-namespace=kube-system",
		"--leader-elect-resource-name=xlb-ccm",
		// A stopped xlb-ccm does not release the Lease; short terms keep restarts quick.
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
	// Killed by the kernel if the test binary dies, rather than left running.
	exited, err := kube.StartProcess(cmd, nil)
	logFile.Close() // the child has its own descriptor
	if err != nil {
		e.t.Fatalf("start %s: %v", bin, err)
	}
	e.ccm = &ccmProc{cmd: cmd, log: logPath, exited: exited}
	e.healthz = fmt.Sprintf("https://127.0.0.1:%d/healthz", port)
}

// waitHealthy waits until xlb-ccm's secure port answers /healthz with 200.
func (e *ccmEnv) waitHealthy() {
	e.t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		// xlb-ccm serves a self-signed certificate; only reachability and the answer matter.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // test of a self-signed local endpoint
	}}
	e.eventually("xlb-ccm /healthz", 60*time.Second, func() error {
		resp, err := hc.Get(e.healthz)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return nil
	})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// stopCCM stops the running xlb-ccm by PID (SIGTERM, then SIGKILL).
func (e *ccmEnv) stopCCM() {
	p := e.ccm
	if p == nil {
		return
	}
	e.ccm = nil
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// eventually polls cond every 100ms until it returns nil; on the deadline it fails the test
// with the last error.
func (e *ccmEnv) eventually(what string, timeout time.Duration, cond func() error) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if e.ccm != nil {
			select {
			case <-e.ccm.exited:
				data, _ := os.ReadFile(e.ccm.log)
				e.t.Fatalf("%s: xlb-ccm exited: %s", what, tail(string(data), 40))
			default:
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *ccmEnv) createNode(name, ip string, labels map[string]string) {
	e.t.Helper()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}
	n, err := e.cluster.Client.CoreV1().Nodes().Create(e.ctx, n, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create node %s: %v", name, err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
	if _, err := e.cluster.Client.CoreV1().Nodes().UpdateStatus(e.ctx, n, metav1.UpdateOptions{}); err != nil {
		e.t.Fatalf("set node %s addresses: %v", name, err)
	}
}

func (e *ccmEnv) createService(name string, class *string, annotations map[string]string) *corev1.Service {
	e.t.Helper()
	return e.createServiceSpec(name, class, annotations, 0)
}

// createServiceSpec creates a TCP port 80 Service; nodePort 0 lets the apiserver choose.
func (e *ccmEnv) createServiceSpec(name string, class *string, annotations map[string]string, nodePort int32) *corev1.Service {
	e.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: annotations},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: class,
			Selector:          map[string]string{"app": name},
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

func (e *ccmEnv) getService(name string) (*corev1.Service, error) {
	return e.cluster.Client.CoreV1().Services("default").Get(e.ctx, name, metav1.GetOptions{})
}

func (e *ccmEnv) updateService(name string, mutate func(*corev1.Service)) {
	e.t.Helper()
	e.eventually("update service "+name, 10*time.Second, func() error {
		svc, err := e.getService(name)
		if err != nil {
			return err
		}
		mutate(svc)
		_, err = e.cluster.Client.CoreV1().Services("default").Update(e.ctx, svc, metav1.UpdateOptions{})
		return err // conflicts are retried
	})
}

// waitVIP waits until the Service has exactly one ingress IP, inside the test pool, and the
// cleanup finalizer, and returns the IP.
func (e *ccmEnv) waitVIP(name string) netip.Addr {
	e.t.Helper()
	pool := e.pool
	var vip netip.Addr
	e.eventually("VIP of "+name, 60*time.Second, func() error {
		svc, err := e.getService(name)
		if err != nil {
			return err
		}
		ing := svc.Status.LoadBalancer.Ingress
		if len(ing) != 1 {
			return fmt.Errorf("ingress %+v", ing)
		}
		ip, err := netip.ParseAddr(ing[0].IP)
		if err != nil || !pool.Contains(ip) {
			return fmt.Errorf("ingress IP %q not in %s", ing[0].IP, pool)
		}
		if !slices.Contains(svc.Finalizers, cleanupFinalizer) {
			return fmt.Errorf("finalizers %v", svc.Finalizers)
		}
		vip = ip
		return nil
	})
	return vip
}

// dataplaneServices returns what the fake dataplane holds for a Service UID.
func (e *ccmEnv) dataplaneServices(uid string) []api.Service {
	var out []api.Service
	for _, n := range e.dp.Names() {
		if s, ok := e.dp.Service(n); ok && s.Labels[api.LabelServiceUID] == uid {
			out = append(out, s)
		}
	}
	return out
}

// waitBackends waits until the dataplane holds exactly one service for the Service (one port),
// with the VIP and exactly the given backends (addr:port, any order), and returns it.
func (e *ccmEnv) waitBackends(svc *corev1.Service, vip netip.Addr, want ...string) api.Service {
	e.t.Helper()
	slices.Sort(want)
	var got api.Service
	e.eventually("dataplane backends of "+svc.Name, 30*time.Second, func() error {
		ss := e.dataplaneServices(string(svc.UID))
		if len(ss) != 1 {
			return fmt.Errorf("%d dataplane services for uid %s (all: %v)", len(ss), svc.UID, e.dp.Names())
		}
		s := ss[0]
		if !slices.Contains(s.Spec.VIPs, vip.String()) {
			return fmt.Errorf("VIPs %v, want %s", s.Spec.VIPs, vip)
		}
		var have []string
		for _, b := range s.Spec.Backends {
			have = append(have, fmt.Sprintf("%s:%d", b.Address, b.Port))
		}
		slices.Sort(have)
		if !slices.Equal(have, want) {
			return fmt.Errorf("backends %v, want %v", have, want)
		}
		got = s
		return nil
	})
	return got
}

// waitWarning waits for a Warning event on the Service whose message contains substr.
func (e *ccmEnv) waitWarning(name, substr string) corev1.Event {
	e.t.Helper()
	var found corev1.Event
	e.eventually("warning event on "+name, 30*time.Second, func() error {
		evs, err := e.cluster.Client.CoreV1().Events("default").List(e.ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Service,involvedObject.name=" + name + ",type=Warning",
		})
		if err != nil {
			return err
		}
		var msgs []string
		for _, ev := range evs.Items {
			if strings.Contains(ev.Message, substr) {
				found = ev
				return nil
			}
			msgs = append(msgs, ev.Reason+": "+ev.Message)
		}
		return fmt.Errorf("warnings so far: %q", msgs)
	})
	return found
}

// waitGone waits until the Service object is deleted (its finalizer removed) and the dataplane
// holds nothing for its UID.
func (e *ccmEnv) waitGone(svc *corev1.Service) {
	e.t.Helper()
	e.eventually("deletion of "+svc.Name, 30*time.Second, func() error {
		if _, err := e.getService(svc.Name); !apierrors.IsNotFound(err) {
			return fmt.Errorf("service still there (err %v)", err)
		}
		if ss := e.dataplaneServices(string(svc.UID)); len(ss) != 0 {
			return fmt.Errorf("dataplane still holds %d services", len(ss))
		}
		return nil
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logContains checks the log of the current xlb-ccm run.
func logContains(e *ccmEnv, substr string) error {
	data, err := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("xlb-ccm.%d.log", e.starts)))
	if err != nil {
		return err
	}
	if !strings.Contains(string(data), substr) {
		return fmt.Errorf("log has no %q", substr)
	}
	return nil
}

// restartFakeDataplane makes the fake dataplane look restarted with an empty state: every
// service deleted (through its API) and a new boot ID.
func (e *ccmEnv) restartFakeDataplane(bootID string) {
	e.t.Helper()
	c, err := lbclient.New(lbclient.Config{Endpoint: e.dpEndpoint, TokenFile: e.dpTokenFile, Retries: -1, Timeout: 5 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, n := range e.dp.Names() {
		if err := c.DeleteService(e.ctx, n); err != nil {
			e.t.Fatalf("empty fake dataplane: delete %s: %v", n, err)
		}
	}
	if n := e.dp.Names(); len(n) != 0 {
		e.t.Fatalf("fake dataplane not empty: %v", n)
	}
	e.dp.SetStatus(api.Status{Version: "fake", BootID: bootID, Ready: true})
}
