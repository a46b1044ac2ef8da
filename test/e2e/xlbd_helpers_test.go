package e2e

// Helpers of the xlbd end-to-end tests (xlbd_test.go): build the binaries
// once per package run, run xlbd as a real process inside the LB namespace
// of a test/netns topology, reach its API from the test process, drive it
// with xlbctl, and stream a verifiable byte sequence through the VIP.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/test/netns"
)

// xlbdAPIPort is where xlbd listens inside the LB namespace (loopback); each
// topology has its own namespace, so the port never clashes.
const xlbdAPIPort = 7470

// Binaries built once per package run (lazily: tests that do not need them
// do not pay for the build). TestMain removes the directory.
var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type binaries struct{ xlbd, xlbctl string }

// buildBinaries builds cmd/xlbd and cmd/xlbctl with `go build` into a
// private directory, once.
func buildBinaries(t *testing.T) binaries {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "xlb-e2e-bin-")
		if binErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		for _, pkg := range []string{"xlbd", "xlbctl"} {
			cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, pkg), "github.com/xlb-dev/xlb/cmd/"+pkg)
			if out, err := cmd.CombinedOutput(); err != nil {
				binErr = fmt.Errorf("go build ./cmd/%s: %w\n%s", pkg, err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatalf("building the binaries: %v", binErr)
	}
	return binaries{xlbd: filepath.Join(binDir, "xlbd"), xlbctl: filepath.Join(binDir, "xlbctl")}
}

// xlbdEnv is one topology with everything xlbd needs around it: a state
// directory, a private bpffs, a token, and a forwarder that makes the API
// (loopback of the LB namespace) reachable from the test process.
type xlbdEnv struct {
	t        *testing.T
	bin      binaries
	topo     *netns.Topology
	dir      string
	stateDir string
	bpffs    string
	token    string
	tokFile  string
	endpoint string // http://127.0.0.1:PORT in the test's namespace
	client   *lbclient.Client
	logPath  string
	hook     string    // --hook: tcx (default) or xdp
	proc     *xlbdProc // the current process (nil when stopped)
	starts   int
}

// newXlbdEnv builds a topology with nBackends backends serving HTTP (the
// backend answers with its label) and prepares, but does not start, xlbd.
func newXlbdEnv(t *testing.T, nBackends int) *xlbdEnv {
	t.Helper()
	netns.RequireRoot(t)
	bin := buildBinaries(t)
	dir := t.TempDir()
	topo := netns.New(t, netns.Options{Backends: nBackends})
	t.Logf("topology %s", topo.Prefix)
	topo.DumpOnFailure(t)
	topo.ServeAll(t, httpPort, 0, 0)

	e := &xlbdEnv{t: t, bin: bin, topo: topo, dir: dir,
		stateDir: filepath.Join(dir, "state"), bpffs: filepath.Join(dir, "bpffs"),
		hook: "tcx", token: "e2e-" + topo.Prefix + "-token", logPath: filepath.Join(dir, "xlbd.log")}
	e.tokFile = filepath.Join(dir, "token")
	if err := os.WriteFile(e.tokFile, []byte(e.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A private bpffs: /sys/fs/bpf is not mounted on every machine, and
	// pins of parallel tests must not meet. xlbd does not mount one itself.
	if err := os.MkdirAll(e.bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", e.bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs at %s: %v", e.bpffs, err)
	}
	// Cleanups run last-in first-out: the process (registered by start,
	// later) stops first, then the pins go, then the topology.
	t.Cleanup(func() {
		if err := unix.Unmount(e.bpffs, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", e.bpffs, err)
		}
	})
	e.endpoint = "http://" + forwardToNS(t, topo.LB.NS, netns.AddrPort(netip.MustParseAddr("127.0.0.1"), xlbdAPIPort))
	c, err := lbclient.New(lbclient.Config{Endpoint: e.endpoint, TokenFile: e.tokFile, Retries: -1, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.client = c
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(e.logPath); err == nil {
				t.Logf("xlbd log (%s):\n%s", e.logPath, b)
			}
		}
	})
	return e
}

// defaultArgs is the contract command line of xlbd for this environment.
func (e *xlbdEnv) defaultArgs() []string {
	return []string{
		"--interfaces", strings.Join(e.topo.LB.Interfaces(), ","),
		"--hook", e.hook,
		"--api-listen", netns.AddrPort(netip.MustParseAddr("127.0.0.1"), xlbdAPIPort),
		"--api-token-file", e.tokFile,
		"--state-dir", e.stateDir,
		"--bpffs-path", filepath.Join(e.bpffs, "xlb"),
		"--conntrack-flows", "65536",
	}
}

// xlbdProc is one xlbd process started by a test.
type xlbdProc struct {
	cmd  *exec.Cmd
	log  *syncBuffer // this process's stderr
	done chan struct{}
	err  error // Wait's result, valid after done
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProc starts `ip netns exec LB xlbd ARGS` (ip execs xlbd, so the PID
// is xlbd's). Its stderr goes to the environment's log file and to a buffer.
// The test's cleanup kills it by PID if it still runs.
func (e *xlbdEnv) startProc(args ...string) *xlbdProc {
	e.t.Helper()
	e.starts++
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	fmt.Fprintf(logf, "===== start #%d: xlbd %s\n", e.starts, strings.Join(args, " "))
	p := &xlbdProc{log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", e.topo.LB.Name, e.bin.xlbd}, args...)...)
	p.cmd.Stdout = io.MultiWriter(logf, p.log)
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		e.t.Fatalf("start xlbd: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	e.t.Cleanup(func() { p.signal(syscall.SIGKILL) })
	return p
}

// exited reports whether the process has ended.
func (p *xlbdProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process (by PID) and waits up to a minute for it
// to end; it returns the exit code (-1 when killed by a signal).
func (p *xlbdProc) signal(sig syscall.Signal) (int, error) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(sig)
	}
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill()
		<-p.done
		return -1, fmt.Errorf("xlbd (pid %d) did not exit within 1m of %v", p.cmd.Process.Pid, sig)
	}
	return p.cmd.ProcessState.ExitCode(), nil
}

// start runs xlbd with the default arguments (plus extra) and waits until
// /readyz answers 200.
func (e *xlbdEnv) start(extra ...string) *xlbdProc {
	e.t.Helper()
	p := e.startProc(append(e.defaultArgs(), extra...)...)
	e.proc = p
	e.waitReady(p)
	return p
}

// waitReady polls /readyz through lbclient; it fails at once if xlbd exits.
func (e *xlbdEnv) waitReady(p *xlbdProc) {
	e.t.Helper()
	netns.Poll(e.t, 60*time.Second, func() error {
		if p.exited() {
			e.t.Fatalf("xlbd exited (%v) before it was ready:\n%s", p.err, p.log.String())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return e.client.Readyz(ctx)
	})
}

// stop sends SIGTERM and asserts a clean exit (code 0).
func (e *xlbdEnv) stop() {
	e.t.Helper()
	code, err := e.proc.signal(syscall.SIGTERM)
	if err != nil {
		e.t.Fatal(err)
	}
	if code != 0 {
		e.t.Fatalf("xlbd exited with code %d after SIGTERM:\n%s", code, e.proc.log.String())
	}
	e.proc = nil
}

// kill sends SIGKILL and waits for the process to be gone.
func (e *xlbdEnv) kill() {
	e.t.Helper()
	if _, err := e.proc.signal(syscall.SIGKILL); err != nil {
		e.t.Fatal(err)
	}
	e.proc = nil
}

// xlbctl runs the real CLI against xlbd (through the forwarder) with the
// token file, and returns stdout, stderr and the error of the run.
func (e *xlbdEnv) xlbctl(args ...string) (string, string, error) {
	e.t.Helper()
	return e.xlbctlWith([]string{"--server", e.endpoint, "--token-file", e.tokFile}, args...)
}

func (e *xlbdEnv) xlbctlWith(global []string, args ...string) (string, string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin.xlbctl, append(global, args...)...)
	cmd.Env = cleanEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// cleanEnv is the environment without XLB_* variables, so that a
// developer's shell cannot change what the tests send.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "XLB_") {
			env = append(env, kv)
		}
	}
	return env
}

// mustXlbctl runs xlbctl and fails the test on error.
func (e *xlbdEnv) mustXlbctl(args ...string) string {
	e.t.Helper()
	out, errOut, err := e.xlbctl(args...)
	if err != nil {
		e.t.Fatalf("xlbctl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// apply writes the services as a YAML list to a file and runs
// `xlbctl apply -f FILE` (plus extra flags).
func (e *xlbdEnv) apply(name string, svcs []api.Service, extra ...string) string {
	e.t.Helper()
	path := filepath.Join(e.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(servicesYAML(svcs)), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return e.mustXlbctl(append([]string{"apply", "-f", path}, extra...)...)
}

// servicesYAML renders services the way an operator writes them, as
// several YAML documents (JSON is YAML, but this exercises the YAML path).
func servicesYAML(svcs []api.Service) string {
	var b strings.Builder
	for i, s := range svcs {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, "name: %s\n", s.Name)
		if len(s.Labels) > 0 {
			b.WriteString("labels:\n")
			keys := make([]string, 0, len(s.Labels))
			for k := range s.Labels {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(&b, "  %s: %q\n", k, s.Labels[k])
			}
		}
		b.WriteString("spec:\n")
		fmt.Fprintf(&b, "  vips: [%s]\n", strings.Join(s.Spec.VIPs, ", "))
		fmt.Fprintf(&b, "  port: %d\n  protocol: %s\n", s.Spec.Port, s.Spec.Protocol)
		if s.Spec.Algorithm != "" {
			fmt.Fprintf(&b, "  algorithm: %s\n", s.Spec.Algorithm)
		}
		b.WriteString("  backends:\n")
		for _, be := range s.Spec.Backends {
			fmt.Fprintf(&b, "  - address: %s\n    port: %d\n", be.Address, be.Port)
			if be.Weight != nil {
				fmt.Fprintf(&b, "    weight: %d\n", *be.Weight)
			}
			if be.Name != "" {
				fmt.Fprintf(&b, "    name: %s\n", be.Name)
			}
		}
	}
	return b.String()
}

// httpService is a TCP service on vip:port balanced to the given backends'
// port; a non-nil weights gives each backend its weight.
func httpService(name string, vip netip.Addr, port uint16, backendPort uint16, backends []*netns.Host, weights []uint32, labels map[string]string) api.Service {
	s := api.Service{Name: name, Labels: labels, Spec: api.ServiceSpec{
		VIPs: []string{vip.String()}, Port: port, Protocol: "tcp",
	}}
	for i, b := range backends {
		be := api.Backend{Address: b.Link.Addr4.String(), Port: backendPort, Name: b.Label}
		if weights != nil {
			w := weights[i]
			be.Weight = &w
		}
		s.Spec.Backends = append(s.Spec.Backends, be)
	}
	return s
}

// servicesByName lists the services through `xlbctl get services -o json`.
func (e *xlbdEnv) servicesByName() map[string]api.Service {
	e.t.Helper()
	out := e.mustXlbctl("get", "services", "-o", "json")
	var list api.ServiceList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		e.t.Fatalf("xlbctl get services -o json: %v\n%s", err, out)
	}
	m := map[string]api.Service{}
	for _, s := range list.Items {
		m[s.Name] = s
	}
	return m
}

// specKey is what must survive a restart: VIPs, port, protocol and the
// backends with their weights, in a comparable form.
func specKey(s api.Service) string {
	var bes []string
	for _, b := range s.Spec.Backends {
		w := uint32(1)
		if b.Weight != nil {
			w = *b.Weight
		}
		bes = append(bes, fmt.Sprintf("%s:%d/w%d", b.Address, b.Port, w))
	}
	sort.Strings(bes)
	return fmt.Sprintf("%v %d/%s %s", s.Spec.VIPs, s.Spec.Port, s.Spec.Protocol, strings.Join(bes, ","))
}

// hits sends n one-connection HTTP requests from the client to target and
// counts the answering backends. Failed requests are counted under "".
func hits(topo *netns.Topology, target netip.AddrPort, n int) map[string]int {
	got := map[string]int{}
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := topo.Client.Get(ctx, netip.Addr{}, target)
		cancel()
		if err != nil {
			got[""]++
			continue
		}
		got[r.Backend]++
	}
	return got
}

// waitBalanced polls until n consecutive requests to target are all
// answered, only by backends in want, and every one of want answered.
func waitBalanced(t *testing.T, topo *netns.Topology, target netip.AddrPort, n int, want ...string) {
	t.Helper()
	allowed := map[string]bool{}
	for _, w := range want {
		allowed[w] = true
	}
	netns.Poll(t, 30*time.Second, func() error {
		got := hits(topo, target, n)
		for b, c := range got {
			if !allowed[b] {
				return fmt.Errorf("%s: %d answers from %q (want only %v): %v", target, c, b, want, got)
			}
		}
		for _, w := range want {
			if got[w] == 0 {
				return fmt.Errorf("%s: no answer from %s in %d requests: %v", target, w, n, got)
			}
		}
		return nil
	})
}

// waitSilent polls until a request to target fails (the VIP stopped
// answering), then checks that it stays silent for a few more requests.
func waitSilent(t *testing.T, topo *netns.Topology, target netip.AddrPort) {
	t.Helper()
	netns.Poll(t, 30*time.Second, func() error {
		got := hits(topo, target, 3)
		if got[""] != 3 {
			return fmt.Errorf("%s still answers: %v", target, got)
		}
		return nil
	})
}

// forwardToNS listens on 127.0.0.1:0 in the test's namespace and forwards
// every connection to target dialled from inside ns. It makes a loopback-only
// API in the LB namespace reachable to lbclient and xlbctl without adding
// links or addresses to the root namespace. Every connection is a fresh
// dial, so it survives xlbd restarts.
func forwardToNS(t *testing.T, ns *netns.NS, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			c.Close()
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			if !track(in) {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				out, err := ns.DialContext(ctx, "tcp", target)
				cancel()
				if err != nil {
					in.Close() // the client sees a reset/EOF, like a refused connection
					return
				}
				if !track(out) {
					in.Close()
					return
				}
				var cwg sync.WaitGroup
				cwg.Add(2)
				pipe := func(dst, src net.Conn) {
					defer cwg.Done()
					_, _ = io.Copy(dst, src)
					if tc, ok := dst.(*net.TCPConn); ok {
						_ = tc.CloseWrite()
					}
				}
				go pipe(out, in)
				go pipe(in, out)
				cwg.Wait()
				in.Close()
				out.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// Counter streams: the server sends an endless sequence of big-endian
// uint64 counters (0, 1, 2, ...) after a "LABEL\n" line; the client checks
// every byte in order, so a lost, duplicated or reordered byte, a reset or
// an early EOF is caught.

// counterChunk bytes are written per tick of counterTick: ~6.5 MB/s, enough
// to keep packets in flight at every instant of a restart without eating
// the shared CPUs.
const (
	counterChunk = 32 << 10
	counterTick  = 5 * time.Millisecond
	// counterMaxLife bounds a server connection whatever the test does.
	counterMaxLife = 3 * time.Minute
)

// serveCounter starts the counter server on [::]:port in every backend.
func serveCounter(t *testing.T, topo *netns.Topology, port uint16) {
	t.Helper()
	for _, b := range topo.Backends {
		label := b.Label
		b.ServeTCP(t, port, func(c net.Conn) { writeCounter(c, label) })
	}
}

func writeCounter(c net.Conn, label string) {
	if _, err := io.WriteString(c, label+"\n"); err != nil {
		return
	}
	tick := time.NewTicker(counterTick)
	defer tick.Stop()
	end := time.Now().Add(counterMaxLife)
	buf := make([]byte, counterChunk)
	var n uint64
	for time.Now().Before(end) {
		for i := 0; i < len(buf); i += 8 {
			binary.BigEndian.PutUint64(buf[i:], n)
			n++
		}
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(buf); err != nil {
			return
		}
		<-tick.C
	}
}

// counterStream is the client side of one counter connection.
type counterStream struct {
	conn    net.Conn
	Backend string
	bytes   atomic.Int64
	closed  atomic.Bool
	done    chan struct{}
	err     error // first error (valid after done); nil if closed by us
}

// openCounter connects from the client namespace and starts verifying.
func openCounter(ctx context.Context, ns *netns.NS, target netip.AddrPort) (*counterStream, error) {
	c, err := ns.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, err
	}
	// The label line, byte by byte, so no counter bytes are consumed.
	var label []byte
	one := make([]byte, 1)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := io.ReadFull(c, one); err != nil {
			c.Close()
			return nil, fmt.Errorf("counter %s: label: %w", target, err)
		}
		if one[0] == '\n' {
			break
		}
		if label = append(label, one[0]); len(label) > 64 {
			c.Close()
			return nil, fmt.Errorf("counter %s: label too long: %q", target, label)
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	s := &counterStream{conn: c, Backend: string(label), done: make(chan struct{})}
	go s.verify()
	return s, nil
}

func (s *counterStream) verify() {
	defer close(s.done)
	buf := make([]byte, 64<<10)
	var off uint64
	for {
		// A stall longer than this is a failure of its own (the server
		// writes every few milliseconds).
		_ = s.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := s.conn.Read(buf)
		for i := 0; i < n; i++ {
			want := byte((off / 8) >> (8 * (7 - off%8)))
			if buf[i] != want {
				s.err = fmt.Errorf("counter stream: byte %d is %#02x, want %#02x (counter %d)", off, buf[i], want, off/8)
				s.conn.Close()
				return
			}
			off++
		}
		s.bytes.Store(int64(off))
		if err != nil {
			if !s.closed.Load() {
				s.err = fmt.Errorf("counter stream from %s broken after %d bytes: %w", s.Backend, off, err)
			}
			return
		}
	}
}

// BackendAddr is the IPv4 address of the backend serving the stream.
func (s *counterStream) BackendAddr(topo *netns.Topology) netip.Addr {
	if b := topo.Backend(s.Backend); b != nil {
		return b.Link.Addr4
	}
	return netip.Addr{}
}

// Bytes is the number of verified bytes so far.
func (s *counterStream) Bytes() int64 { return s.bytes.Load() }

// Err is the stream's error so far (nil while healthy).
func (s *counterStream) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// waitProgress polls until the stream has verified at least `more` bytes
// beyond what it had when called; any stream error fails at once.
func (s *counterStream) waitProgress(t *testing.T, more int64) {
	t.Helper()
	target := s.Bytes() + more
	netns.Poll(t, 30*time.Second, func() error {
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		if got := s.Bytes(); got < target {
			return fmt.Errorf("stream from %s at %d bytes, want %d", s.Backend, got, target)
		}
		return nil
	})
}

// Close ends the stream from our side and returns the first error seen
// before (nil if the stream was healthy until now).
func (s *counterStream) Close() error {
	if err := s.Err(); err != nil {
		return err
	}
	s.closed.Store(true)
	s.conn.Close()
	<-s.done
	if s.err != nil {
		return s.err
	}
	return nil
}
