// Package kube starts a real Kubernetes control plane (etcd + kube-apiserver, built from Go
// modules by tools/kube/build.sh) on free loopback ports for tests and the demo.
//
// The apiserver runs with RBAC, a static token in system:masters, and service-account keys
// generated here, so clients authenticate exactly as they would against a real cluster.
// Processes are started by this package and stopped by PID; nothing else is touched.
package kube

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// EnvBinDir names the environment variable that overrides where the binaries are found.
const EnvBinDir = "XLB_KUBE_BIN_DIR"

// ServiceClusterIPRange is the range ClusterIPs are allocated from.
const ServiceClusterIPRange = "10.96.0.0/16"

// Cluster is a running etcd + kube-apiserver pair.
type Cluster struct {
	// Dir holds everything the cluster writes: etcd data, certs, keys, logs, kubeconfig.
	Dir string
	// Config authenticates as a member of system:masters.
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file equivalent to Config.
	Kubeconfig string
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Token is the bearer token of the system:masters user.
	Token string
	// Host is the apiserver URL, e.g. https://127.0.0.1:41234.
	Host string
	// BinDir is where etcd, kube-apiserver and kubectl were found.
	BinDir string

	procs []*process
}

// Options tunes Start. The zero value is fine.
type Options struct {
	// BinDir overrides the binary directory (default: $XLB_KUBE_BIN_DIR or <module root>/bin).
	BinDir string
	// ExtraAPIServerArgs are appended to the kube-apiserver command line.
	ExtraAPIServerArgs []string
	// ReadyTimeout bounds the wait for etcd and the apiserver (default 90s: the cores are shared).
	ReadyTimeout time.Duration
}

// BinDir returns the directory holding the control-plane binaries, or an error telling the
// caller how to build them.
func BinDir() (string, error) {
	dir := os.Getenv(EnvBinDir)
	if dir == "" {
		root, err := ModuleRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "bin")
	}
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return "", fmt.Errorf("control-plane binary %s not found in %s (set %s or run tools/kube/build.sh): %w",
				name, dir, EnvBinDir, err)
		}
	}
	return dir, nil
}

// Binary returns the path of one binary (etcd, etcdctl, kube-apiserver, kubectl) in BinDir.
func Binary(name string) (string, error) {
	dir, err := BinDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found in %s (run tools/kube/build.sh): %w", name, dir, err)
	}
	return p, nil
}

// ModuleRoot walks up from the working directory to the directory whose go.mod declares
// module github.com/xlb-dev/xlb (tests run in their package directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/xlb-dev/xlb\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root of github.com/xlb-dev/xlb not found above the working directory")
		}
		dir = parent
	}
}

// Start starts etcd and kube-apiserver with all state under dir (which must exist) and waits
// until the apiserver is ready. On error everything started is stopped again.
func Start(ctx context.Context, dir string, opts Options) (*Cluster, error) {
	binDir := opts.BinDir
	if binDir == "" {
		var err error
		if binDir, err = BinDir(); err != nil {
			return nil, err
		}
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	c := &Cluster{Dir: dir, BinDir: binDir}
	ok := false
	defer func() {
		if !ok {
			_ = c.Stop()
		}
	}()

	// A free port found by listening and closing can be taken by someone else before the
	// process binds it; retry with fresh ports when a process exits during start-up.
	var etcdURL string
	var err error
	for attempt := 1; ; attempt++ {
		etcdURL, err = c.startEtcd(ctx, opts.ReadyTimeout)
		if err == nil || attempt == 3 || !errors.Is(err, errExited) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if err := c.writeAuth(); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		err = c.startAPIServer(ctx, etcdURL, opts)
		if err == nil || attempt == 3 || !errors.Is(err, errExited) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

var errExited = errors.New("process exited during start-up")

func (c *Cluster) startEtcd(ctx context.Context, timeout time.Duration) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	dataDir := filepath.Join(c.Dir, "etcd")
	if err := os.RemoveAll(dataDir); err != nil {
		return "", fmt.Errorf("clean etcd data dir: %w", err)
	}
	p, err := c.start("etcd", filepath.Join(c.BinDir, "etcd"),
		"--name=xlb-test",
		"--data-dir="+dataDir,
		"--listen-client-urls="+client,
		"--advertise-client-urls="+client,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=xlb-test="+peer,
		// Test data is thrown away; fsync only costs time on shared disks.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	)
	if err != nil {
		return "", err
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	err = p.poll(ctx, timeout, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, client+"/health", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"health":"true"`)) {
			return fmt.Errorf("etcd /health: %d %s", resp.StatusCode, body)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return client, nil
}

func (c *Cluster) writeAuth() error {
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("generate token: %w", err)
	}
	c.Token = hex.EncodeToString(tok)
	// Static token file format: token,user,uid,"group1,group2".
	line := fmt.Sprintf("%s,xlb-admin,xlb-admin,\"system:masters\"\n", c.Token)
	if err := os.WriteFile(filepath.Join(c.Dir, "tokens.csv"), []byte(line), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate service-account key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal service-account key: %w", err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(filepath.Join(c.Dir, "sa.key"), pemKey, 0o600); err != nil {
		return fmt.Errorf("write service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("marshal service-account public key: %w", err)
	}
	pemPub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	if err := os.WriteFile(filepath.Join(c.Dir, "sa.pub"), pemPub, 0o600); err != nil {
		return fmt.Errorf("write service-account public key: %w", err)
	}
	return nil
}

func (c *Cluster) startAPIServer(ctx context.Context, etcdURL string, opts Options) error {
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	certDir := filepath.Join(c.Dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return fmt.Errorf("create cert dir: %w", err)
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[0]),
		"--cert-dir=" + certDir,
		"--service-account-key-file=" + filepath.Join(c.Dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(c.Dir, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		"--token-auth-file=" + filepath.Join(c.Dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		// The default reconciler refuses 127.0.0.1 as the advertise address and exits.
		"--endpoint-reconciler-type=none",
		// Manifests under test include a privileged DaemonSet (xlbd).
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}
	args = append(args, opts.ExtraAPIServerArgs...)
	p, err := c.start("kube-apiserver", filepath.Join(c.BinDir, "kube-apiserver"), args...)
	if err != nil {
		return err
	}
	c.Host = fmt.Sprintf("https://127.0.0.1:%d", ports[0])

	// The serving certificate is self-signed by the apiserver at start-up; until it exists,
	// probe without verification, then trust exactly that certificate.
	insecure := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // only until the cert exists
	}}
	err = p.poll(ctx, opts.ReadyTimeout, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Host+"/readyz", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := insecure.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", resp.StatusCode, lastLines(string(body), 5))
		}
		return nil
	})
	if err != nil {
		return err
	}

	c.Config = &rest.Config{
		Host:            c.Host,
		BearerToken:     c.Token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(certDir, "apiserver.crt")},
		QPS:             100,
		Burst:           200,
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := c.WriteKubeconfig(c.Kubeconfig, ""); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return fmt.Errorf("build clientset: %w", err)
	}
	c.Client = cs
	// /readyz can pass a moment before the system namespaces exist; tests create objects in
	// "default" and "kube-system" right away.
	return p.poll(ctx, opts.ReadyTimeout, func(ctx context.Context) error {
		for _, ns := range []string{metav1.NamespaceDefault, metav1.NamespaceSystem} {
			if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
				return fmt.Errorf("namespace %s: %w", ns, err)
			}
		}
		return nil
	})
}

// WriteKubeconfig writes a kubeconfig for this cluster to path. With impersonate set (e.g.
// "system:serviceaccount:kube-system:xlb-ccm") the admin identity impersonates that user, so a
// client runs with exactly the RBAC permissions of that identity.
func (c *Cluster) WriteKubeconfig(path, impersonate string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["xlb-test"] = &clientcmdapi.Cluster{
		Server:               c.Host,
		CertificateAuthority: c.Config.TLSClientConfig.CAFile,
	}
	cfg.AuthInfos["xlb-test"] = &clientcmdapi.AuthInfo{Token: c.Token, Impersonate: impersonate}
	cfg.Contexts["xlb-test"] = &clientcmdapi.Context{Cluster: "xlb-test", AuthInfo: "xlb-test"}
	cfg.CurrentContext = "xlb-test"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// EnsureNamespace creates ns if it does not exist.
func (c *Cluster) EnsureNamespace(ctx context.Context, ns string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return nil
}

// Logs returns the last n lines of each process's log, for failure reports.
func (c *Cluster) Logs(n int) string {
	var b strings.Builder
	for _, p := range c.procs {
		data, _ := os.ReadFile(p.logPath)
		fmt.Fprintf(&b, "==> %s (%s) <==\n%s\n", p.name, p.logPath, lastLines(string(data), n))
	}
	return b.String()
}

// Stop stops the apiserver then etcd (SIGTERM, SIGKILL after 10s), by PID. It is safe to call
// more than once. The directory is left for the caller (t.TempDir removes it).
func (c *Cluster) Stop() error {
	var errs []error
	for i := len(c.procs) - 1; i >= 0; i-- {
		if err := c.procs[i].stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	c.procs = nil
	return errors.Join(errs...)
}

type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	log     *os.File
	exited  <-chan struct{} // closed when the process has exited
	waitErr error           // valid after exited is closed
}

// start runs a binary with its output in <dir>/<name>.log.
//
// The process is started from a goroutine locked to its OS thread for the process's whole life,
// with Pdeathsig=SIGKILL: if the test binary dies (panic, timeout, kill -9) the kernel kills the
// child instead of orphaning it. Pdeathsig fires when the *thread* that forked exits, which is
// why that thread must stay alive exactly as long as the child.
func (c *Cluster) start(name, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(c.Dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = c.Dir
	p := &process{name: name, cmd: cmd, logPath: logPath, log: logFile}
	exited, err := StartProcess(cmd, &p.waitErr)
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.exited = exited
	c.procs = append(c.procs, p)
	return p, nil
}

// StartProcess starts cmd so that the kernel kills it (SIGKILL) if the test process dies, and
// returns a channel closed once it has exited and been reaped; *waitErr then holds Wait's
// result. Use it for every long-running child of a test.
//
// On Linux, Pdeathsig is tied to the OS *thread* that forked the child, not to the process,
// and Go may discard threads (e.g. when a goroutine locked to one, as network-namespace code
// is, returns). Not to depend on the runtime's thread management, the child is started from a
// goroutine that locks its own thread and stays in Wait for the child's whole life.
func StartProcess(cmd *exec.Cmd, waitErr *error) (<-chan struct{}, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	// Its own process group: a Ctrl-C in the terminal reaches the test, whose cleanup stops
	// the child in order, rather than killing the child first.
	cmd.SysProcAttr.Setpgid = true
	exited := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: when this goroutine returns the thread is discarded, which is
		// harmless because the child has exited by then.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		err := cmd.Wait()
		if waitErr != nil {
			*waitErr = err
		}
		close(exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return exited, nil
}

// poll calls check every 200ms until it succeeds, the process exits, ctx ends or timeout passes.
func (p *process) poll(ctx context.Context, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s: %w (%v); log tail:\n%s", p.name, errExited, p.waitErr, p.tail(30))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v; log tail:\n%s", p.name, timeout, last, p.tail(30))
		case <-tick.C:
		}
	}
}

func (p *process) tail(n int) string {
	data, _ := os.ReadFile(p.logPath)
	return lastLines(string(data), n)
}

func (p *process) stop(grace time.Duration) error {
	defer p.log.Close()
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s (pid %d): %w", p.name, p.cmd.Process.Pid, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(grace):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", p.name, p.cmd.Process.Pid, err)
	}
	<-p.exited
	return nil
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
