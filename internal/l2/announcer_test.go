package l2

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type segment struct {
	ns           string // the client's namespace
	ourIf, cliIf string
	vip4, vip6   netip.Addr
	mac          string
	sub          byte   // third octet of the IPv4 subnet
	id           string // the random part of every name
}

// createLink (re-)creates the veth pair with its addresses, both ends up,
// and records our end's MAC (a re-created veth gets a new one).
func (s *segment) createLink(t *testing.T) {
	t.Helper()
	run(t, "ip", "link", "add", s.ourIf, "type", "veth", "peer", "name", s.cliIf)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", s.ourIf).Run() })
	run(t, "ip", "link", "set", s.cliIf, "netns", s.ns)
	// No DAD: link-local addresses must be usable at once for NDP.
	run(t, "sysctl", "-qw", "net.ipv6.conf."+s.ourIf+".accept_dad=0")
	run(t, "ip", "netns", "exec", s.ns, "sysctl", "-qw", "net.ipv6.conf."+s.cliIf+".accept_dad=0")
	run(t, "ip", "addr", "add", fmt.Sprintf("100.66.%d.1/24", s.sub), "dev", s.ourIf)
	run(t, "ip", "addr", "add", fmt.Sprintf("fd66:%s::1/64", s.id), "dev", s.ourIf, "nodad")
	run(t, "ip", "link", "set", s.ourIf, "up")
	run(t, "ip", "-n", s.ns, "addr", "add", fmt.Sprintf("100.66.%d.2/24", s.sub), "dev", s.cliIf)
	run(t, "ip", "-n", s.ns, "addr", "add", fmt.Sprintf("fd66:%s::2/64", s.id), "dev", s.cliIf, "nodad")
	run(t, "ip", "-n", s.ns, "link", "set", s.cliIf, "up")
	ifi, err := net.InterfaceByName(s.ourIf)
	if err != nil {
		t.Fatal(err)
	}
	s.mac = ifi.HardwareAddr.String()
	// Wait until the link-local address exists (it is what NDP sends from).
	poll(t, 5*time.Second, "link-local address", func() bool {
		out, _ := exec.Command("ip", "-6", "addr", "show", "dev", s.ourIf, "scope", "link").CombinedOutput()
		return strings.Contains(string(out), "fe80")
	})
}

// newSegment connects a client namespace to the root namespace (where the
// Announcer runs) with a veth pair on one subnet per family.
func newSegment(t *testing.T) *segment {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	s := &segment{
		ns: "xl" + id + "c", ourIf: "xl" + id + "a", cliIf: "xl" + id + "b",
		vip4: netip.AddrFrom4([4]byte{100, 66, b[0], 100}),
		vip6: netip.MustParseAddr(fmt.Sprintf("fd66:%s::100", id)),
	}
	run(t, "ip", "netns", "add", s.ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", s.ns).Run() })
	s.sub = b[0]
	s.id = id
	s.createLink(t)
	return s
}

func poll(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// neighborMAC makes the client resolve ip (a ping that nobody answers still
// resolves the neighbor first) and returns the cached link-layer address.
func (s *segment) neighborMAC(t *testing.T, ip netip.Addr) string {
	t.Helper()
	fam := "-4"
	if ip.Is6() {
		fam = "-6"
	}
	_ = exec.Command("ip", "netns", "exec", s.ns, "ping", fam, "-c", "1", "-W", "1", ip.String()).Run()
	out, _ := exec.Command("ip", "-n", s.ns, fam, "neigh", "show", ip.String()).CombinedOutput()
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

func TestAnswersARPAndNDP(t *testing.T) {
	s := newSegment(t)
	a := New(slog.Default())
	t.Cleanup(a.Close)
	if err := a.Set(context.Background(), map[string][]netip.Addr{s.ourIf: {s.vip4, s.vip6}}); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "client resolves the v4 VIP to our MAC", func() bool { return s.neighborMAC(t, s.vip4) == s.mac })
	poll(t, 10*time.Second, "client resolves the v6 VIP to our MAC", func() bool { return s.neighborMAC(t, s.vip6) == s.mac })

	// A VIP we do not own is not answered.
	other := s.vip4.Next()
	if got := s.neighborMAC(t, other); got == s.mac {
		t.Fatalf("answered ARP for %s which is not ours", other)
	}

	// Removing the VIP stops the answers.
	if err := a.Set(context.Background(), map[string][]netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", s.ns, "neigh", "flush", "dev", s.cliIf)
	if got := s.neighborMAC(t, s.vip4); got == s.mac {
		t.Fatal("still answering ARP after the VIP was removed")
	}
}

func TestGratuitousARPOnOwnership(t *testing.T) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("tcpdump not installed (make deps)")
	}
	s := newSegment(t)
	// Capture in the client namespace before the VIP is taken.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", s.ns, "tcpdump", "-i", s.cliIf, "-nn", "-l", "-c", "1",
		"arp and arp[6:2] == 2 and arp[14:4] == arp[24:4]")
	stderr, _ := cmd.StderrPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// tcpdump prints "listening on" once its socket is open.
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(ready)
				_, _ = io.Copy(io.Discard, stderr)
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatal("tcpdump did not start")
	}
	a := New(slog.Default())
	t.Cleanup(a.Close)
	if err := a.Set(context.Background(), map[string][]netip.Addr{s.ourIf: {s.vip4}}); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("no gratuitous ARP captured: %v", err)
	}
	if !strings.Contains(line, s.vip4.String()) || !strings.Contains(line, s.mac) {
		t.Fatalf("captured %q, want a reply for %s is-at %s", line, s.vip4, s.mac)
	}
}

// TestFollowsRecreatedInterface: the interface is deleted and re-created
// under the same name and addresses (new ifindex and MAC). Reconcile (what
// xlbd runs on every link event) re-opens the sockets on the new ifindex,
// announces the VIPs with the new MAC, and answers ARP and NDP again; the
// status says not ready while the interface is gone.
func TestFollowsRecreatedInterface(t *testing.T) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("tcpdump not installed (make deps)")
	}
	s := newSegment(t)
	a := New(slog.Default())
	t.Cleanup(a.Close)
	ctx := context.Background()
	if err := a.Set(ctx, map[string][]netip.Addr{s.ourIf: {s.vip4, s.vip6}}); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "client resolves the v4 VIP", func() bool { return s.neighborMAC(t, s.vip4) == s.mac })
	oldMAC := s.mac

	// A packet socket on every interface of the client's namespace sees
	// the re-created link's frames too.
	capCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(capCtx, "ip", "netns", "exec", s.ns, "tcpdump", "-i", "any", "-nn", "-l",
		"arp and arp[6:2] == 2 and arp[14:4] == arp[24:4]")
	stderr, _ := cmd.StderrPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(ready)
				_, _ = io.Copy(io.Discard, stderr)
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-capCtx.Done():
		t.Fatal("tcpdump did not start")
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	run(t, "ip", "link", "del", s.ourIf)
	a.Reconcile(ctx)
	if st := a.Status(); len(st) != 1 || st[0].Ready || st[0].Ifindex != 0 || !strings.Contains(st[0].Error, "not found") {
		t.Fatalf("status while the interface is gone: %+v", st)
	}
	s.createLink(t)
	if s.mac == oldMAC {
		t.Fatalf("re-created veth kept MAC %s; the test needs a new one", s.mac)
	}
	a.Reconcile(ctx)
	if st := a.Status(); len(st) != 1 || !st[0].Ready || st[0].Reopens != 1 || st[0].VIPs != 2 {
		t.Fatalf("status after re-creation: %+v (want ready, 2 VIPs, 1 re-open)", st)
	}
	deadline := time.After(10 * time.Second)
	for found := false; !found; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("tcpdump ended without the gratuitous ARP")
			}
			found = strings.Contains(l, s.vip4.String()) && strings.Contains(l, s.mac)
		case <-deadline:
			t.Fatalf("no gratuitous ARP for %s is-at %s captured after re-creation", s.vip4, s.mac)
		}
	}
	poll(t, 10*time.Second, "client resolves the v4 VIP to the new MAC", func() bool { return s.neighborMAC(t, s.vip4) == s.mac })
	poll(t, 10*time.Second, "client resolves the v6 VIP to the new MAC", func() bool { return s.neighborMAC(t, s.vip6) == s.mac })
}
