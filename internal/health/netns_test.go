package health

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A private, tiny namespace helper: one namespace "xhNNNN" joined to the
// test's namespace by a veth pair, with an IPv4 /30 and an IPv6 /64. The
// test process keeps the host end; servers run inside the namespace on
// sockets created there (a socket stays in the namespace it was made in).
//
// Address plan: 100.70.0.0/16 cut into /30s and fd68:6c74:ID::/64, both
// indexed by the 14-bit ID that also names the namespace, so parallel tests
// never collide.
type tnet struct {
	name         string
	hostIf, nsIf string
	host4, ns4   netip.Addr
	host6, ns6   netip.Addr
}

func newTNet(t *testing.T) *tnet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	var n *tnet
	for range 20 {
		id := mrand.N(1 << 14)
		name := fmt.Sprintf("xh%04x", id)
		if _, err := os.Stat("/var/run/netns/" + name); err == nil {
			continue
		}
		n = &tnet{
			name:   name,
			hostIf: name + "-h",
			nsIf:   name + "-n",
			host4:  netip.AddrFrom4([4]byte{100, 70, byte(id >> 6), byte(id&63)<<2 | 1}),
			ns4:    netip.AddrFrom4([4]byte{100, 70, byte(id >> 6), byte(id&63)<<2 | 2}),
			host6:  netip.MustParseAddr(fmt.Sprintf("fd68:6c74:%x::1", id)),
			ns6:    netip.MustParseAddr(fmt.Sprintf("fd68:6c74:%x::2", id)),
		}
		break
	}
	if n == nil {
		t.Fatal("no free namespace name")
	}
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("cleanup: ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	run(t, "ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", n.nsIf, "netns", n.name)
	// The namespace's own teardown is asynchronous (and waits for every
	// socket made in it); deleting our end removes both ends now.
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", n.hostIf).Run() })
	run(t, "ip", "addr", "add", n.host4.String()+"/30", "dev", n.hostIf)
	run(t, "ip", "-6", "addr", "add", n.host6.String()+"/64", "dev", n.hostIf, "nodad")
	run(t, "ip", "link", "set", n.hostIf, "up")
	run(t, "ip", "-n", n.name, "link", "set", "lo", "up")
	run(t, "ip", "-n", n.name, "addr", "add", n.ns4.String()+"/30", "dev", n.nsIf)
	run(t, "ip", "-n", n.name, "-6", "addr", "add", n.ns6.String()+"/64", "dev", n.nsIf, "nodad")
	run(t, "ip", "-n", n.name, "link", "set", n.nsIf, "up")
	return n
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// setNSLink sets the namespace end of the veth up or down: down makes every
// address in the namespace a dead host (no RST, no ICMP, just silence).
func (n *tnet) setNSLink(t *testing.T, up bool) {
	state := "down"
	if up {
		state = "up"
	}
	run(t, "ip", "-n", n.name, "link", "set", n.nsIf, state)
}

// do runs fn on an OS thread switched into the namespace. It uses a fresh
// goroutine so that a thread that cannot switch back is simply never
// unlocked, and Go discards it when the goroutine exits.
func (n *tnet) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/var/run/netns/" + n.name)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return // thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func (n *tnet) listenTCP(t *testing.T, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := n.do(func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen tcp %s in %s: %v", addr, n.name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// serveTCP accepts and closes connections until l is closed.
func serveTCP(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// serveUDP answers each datagram with reply(req); nil means stay silent.
func (n *tnet) serveUDP(t *testing.T, addr string, reply func([]byte) []byte) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	if err := n.do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, n.name, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if r := reply(buf[:k]); r != nil {
				_, _ = pc.WriteTo(r, from)
			}
		}
	}()
	return pc
}

// httpServer serves h in the namespace; with cert it serves TLS.
type httpServer struct {
	l     net.Listener
	srv   *http.Server
	mu    sync.Mutex
	conns int // connections accepted, to check there is no reuse
	addr  netip.AddrPort
}

func (n *tnet) serveHTTP(t *testing.T, addr string, h http.Handler, cert *tls.Certificate) *httpServer {
	t.Helper()
	s := &httpServer{l: n.listenTCP(t, addr)}
	s.addr = netip.MustParseAddrPort(s.l.Addr().String())
	s.srv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0), // TLS handshake failures are the point of some tests
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.mu.Lock()
				s.conns++
				s.mu.Unlock()
			}
		}}
	l := s.l
	if cert != nil {
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*cert}})
	}
	go func() { _ = s.srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(ctx)
	})
	return s
}

func (s *httpServer) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// selfSigned makes a certificate for the given IPs and DNS names, signed by
// itself: no client trusts it without InsecureSkipVerify.
func selfSigned(t *testing.T, ips []netip.Addr, names ...string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "xlb health test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     names,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// poll calls fn until it returns nil or timeout passes.
func poll(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Helper process: the test binary re-executed inside a namespace as a real
// server process, so that a test can kill it by PID.
const helperEnv = "XLB_HEALTH_HELPER"

func TestHelperProcess(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper process only")
	}
	kind, addr, _ := strings.Cut(spec, ":")
	switch kind {
	case "tcp":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("ready", l.Addr())
		for {
			c, err := l.Accept()
			if err != nil {
				os.Exit(1)
			}
			c.Close()
		}
	default:
		fmt.Println("error: unknown helper", kind)
		os.Exit(1)
	}
}

// startHelper starts a helper server process (in namespace ns, or in the
// test's own namespace when ns is "") and returns it with the address it
// listens on. It is killed at cleanup if still running.
func startHelper(t *testing.T, ns, kind, addr string) (*exec.Cmd, netip.AddrPort) {
	t.Helper()
	args := []string{os.Args[0], "-test.run=^TestHelperProcess$"}
	var cmd *exec.Cmd
	if ns != "" {
		// ip netns exec execs the binary, so cmd.Process.Pid is the server.
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	} else {
		cmd = exec.Command(args[0], args[1:]...)
	}
	cmd.Env = append(os.Environ(), helperEnv+"="+kind+":"+addr)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case line := <-lines:
		a, ok := strings.CutPrefix(line, "ready ")
		if !ok {
			t.Fatalf("helper: %q", line)
		}
		return cmd, netip.MustParseAddrPort(a)
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not become ready in 10s")
	}
	return nil, netip.AddrPort{}
}
