package e2e

// End-to-end tests of VIP announcement: real xlbd processes (go build) in
// load-balancer namespaces, a real BIRD 2 router in its own namespace, a
// client behind the router and backends behind the load balancers:
//
//	client ──veth── router (BIRD; bridge "up") ──veth── lb1 (xlbd) ──┐
//	                                       └────veth── lb2 (xlbd) ──┴─ segment bridge ── b0, b1
//
// Services use onearm NAT, so each load balancer's backend traffic returns
// to it whatever path the router chose. The router hashes ECMP on L4
// (fib_multipath_hash_policy=1), so different client ports use both paths.
//
// Run: go test ./test/e2e/ -run 'BGP|L2' -v   (as root, with bird installed)

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/test/netns"
)

// Address plan of the BGP topology (private to its namespaces).
var (
	bgpVIP4  = netip.MustParseAddr("203.0.113.10")
	bgpVIP6  = netip.MustParseAddr("2001:db8:113::10")
	quietVIP = netip.MustParseAddr("203.0.113.11")
	cliAddr4 = netip.MustParseAddr("10.200.0.2")
	rtrCli4  = netip.MustParseAddr("10.200.0.1")
	rtrUp4   = netip.MustParseAddr("10.201.0.1")
	rtrUp6   = netip.MustParseAddr("fd00:201::1")
)

func lbUp4(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 201, 0, byte(11 + i)}) }
func lbUp6(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00:201::%d", 11+i)) }
func lbBe4(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 202, 0, byte(11 + i)}) }
func lbBe6(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00:202::%d", 11+i)) }
func be4(i int) netip.Addr   { return netip.AddrFrom4([4]byte{10, 202, 0, byte(21 + i)}) }
func be6(i int) netip.Addr   { return netip.MustParseAddr(fmt.Sprintf("fd00:202::%d", 21+i)) }

const (
	bgpHTTPPort = 8080
	lbASN       = 65001
	rtrASN      = 65000
)

// bgpTopo is the router topology with nLB load balancers.
type bgpTopo struct {
	prefix   string
	client   *netns.Host
	router   *netns.NS
	lbs      []*lbNode
	backends []*netns.Host
	birdCtl  string
}

// lbNode is one load balancer namespace with its xlbd.
type lbNode struct {
	t        *testing.T
	i        int
	ns       *netns.NS
	upIf     string
	beIf     string
	dir      string
	stateDir string
	bpffs    string
	tokFile  string
	endpoint string
	client   *lbclient.Client
	proc     *xlbdProc
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNS creates a namespace deleted at cleanup, with DAD and rp_filter off.
func newNS(t *testing.T, name string) *netns.NS {
	t.Helper()
	n, err := netns.CreateNS(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Delete() })
	for _, kv := range [][2]string{{"net.ipv6.conf.all.accept_dad", "0"}, {"net.ipv6.conf.default.accept_dad", "0"},
		{"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.default.rp_filter", "0"}} {
		if err := n.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// veth creates a veth pair between two namespaces and brings both ends up.
func veth(t *testing.T, a *netns.NS, aName string, b *netns.NS, bName string) {
	t.Helper()
	sh(t, "ip", "-n", a.Name, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
	sh(t, "ip", "-n", a.Name, "link", "set", aName, "up")
	sh(t, "ip", "-n", b.Name, "link", "set", bName, "up")
	// GRO gives the veth peers NAPI (XDP redirect targets); TX checksum
	// off makes locally generated TCP carry full checksums (shared notes).
	sh(t, "ip", "netns", "exec", a.Name, "ethtool", "-K", aName, "gro", "on", "tx", "off")
	sh(t, "ip", "netns", "exec", b.Name, "ethtool", "-K", bName, "gro", "on", "tx", "off")
}

func addAddr(t *testing.T, n *netns.NS, dev string, a netip.Addr, bits int) {
	t.Helper()
	args := []string{"ip", "-n", n.Name, "addr", "add", fmt.Sprintf("%s/%d", a, bits), "dev", dev}
	if a.Is6() {
		args = append(args, "nodad")
	}
	sh(t, args...)
}

func newBGPTopo(t *testing.T, nLB int) *bgpTopo {
	t.Helper()
	netns.RequireRoot(t)
	if _, err := exec.LookPath("bird"); err != nil {
		t.Skip("bird not installed (apt-get install bird2)")
	}
	p := netns.NewPrefix()
	tp := &bgpTopo{prefix: p}
	t.Logf("bgp topology %s", p)
	cli := newNS(t, p+"-cli")
	tp.router = newNS(t, p+"-rtr")
	seg := newNS(t, p+"-seg")
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"},
		{"net.ipv4.fib_multipath_hash_policy", "1"}, {"net.ipv6.fib_multipath_hash_policy", "1"}} {
		if err := tp.router.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	// client <-> router
	veth(t, cli, p+"c", tp.router, p+"rc")
	addAddr(t, cli, p+"c", cliAddr4, 24)
	addAddr(t, cli, p+"c", netip.MustParseAddr("fd00:200::2"), 64)
	addAddr(t, tp.router, p+"rc", rtrCli4, 24)
	addAddr(t, tp.router, p+"rc", netip.MustParseAddr("fd00:200::1"), 64)
	sh(t, "ip", "-n", cli.Name, "route", "add", "default", "via", rtrCli4.String())
	sh(t, "ip", "-n", cli.Name, "-6", "route", "add", "default", "via", "fd00:200::1")
	tp.client = &netns.Host{NS: cli, Label: "client"}

	// router "up" bridge and segment bridge
	sh(t, "ip", "-n", tp.router.Name, "link", "add", p+"up", "type", "bridge")
	sh(t, "ip", "-n", tp.router.Name, "link", "set", p+"up", "up")
	addAddr(t, tp.router, p+"up", rtrUp4, 24)
	addAddr(t, tp.router, p+"up", rtrUp6, 64)
	sh(t, "ip", "-n", seg.Name, "link", "add", p+"br", "type", "bridge")
	sh(t, "ip", "-n", seg.Name, "link", "set", p+"br", "up")

	for i := 0; i < 2; i++ {
		bns := newNS(t, fmt.Sprintf("%s-b%d", p, i))
		name := fmt.Sprintf("%sb%d", p, i)
		veth(t, bns, name, seg, fmt.Sprintf("%ss%d", p, i))
		sh(t, "ip", "-n", seg.Name, "link", "set", fmt.Sprintf("%ss%d", p, i), "master", p+"br")
		addAddr(t, bns, name, be4(i), 24)
		addAddr(t, bns, name, be6(i), 64)
		tp.backends = append(tp.backends, &netns.Host{NS: bns, Label: fmt.Sprintf("b%d", i)})
	}
	for i := 0; i < nLB; i++ {
		n := newNS(t, fmt.Sprintf("%s-lb%d", p, i))
		for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
			if err := n.Sysctl(kv[0], kv[1]); err != nil {
				t.Fatal(err)
			}
		}
		lb := &lbNode{t: t, i: i, ns: n, upIf: fmt.Sprintf("%sl%du", p, i), beIf: fmt.Sprintf("%sl%db", p, i)}
		veth(t, n, lb.upIf, tp.router, fmt.Sprintf("%sr%d", p, i))
		sh(t, "ip", "-n", tp.router.Name, "link", "set", fmt.Sprintf("%sr%d", p, i), "master", p+"up")
		veth(t, n, lb.beIf, seg, fmt.Sprintf("%ss%d", p, 10+i))
		sh(t, "ip", "-n", seg.Name, "link", "set", fmt.Sprintf("%ss%d", p, 10+i), "master", p+"br")
		addAddr(t, n, lb.upIf, lbUp4(i), 24)
		addAddr(t, n, lb.upIf, lbUp6(i), 64)
		addAddr(t, n, lb.beIf, lbBe4(i), 24)
		addAddr(t, n, lb.beIf, lbBe6(i), 64)
		sh(t, "ip", "-n", n.Name, "route", "add", "default", "via", rtrUp4.String())
		sh(t, "ip", "-n", n.Name, "-6", "route", "add", "default", "via", rtrUp6.String())
		tp.lbs = append(tp.lbs, lb)
	}
	tp.startBIRD(t)
	for _, lb := range tp.lbs {
		lb.prepare(t)
	}
	return tp
}

// startBIRD runs BIRD in the router namespace with one session per load
// balancer and family; kernel export with ECMP merging.
func (tp *bgpTopo) startBIRD(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	tp.birdCtl = filepath.Join(dir, "bird.ctl")
	var b strings.Builder
	fmt.Fprintf(&b, `router id %s;
protocol device {}
protocol kernel k4 { ipv4 { export all; import none; }; merge paths yes; }
protocol kernel k6 { ipv6 { export all; import none; }; merge paths yes; }
`, rtrUp4)
	for i := range tp.lbs {
		fmt.Fprintf(&b, "protocol bgp lb%d4 { local %s as %d; neighbor %s as %d; hold time 9; ipv4 { import all; export none; }; }\n", i, rtrUp4, rtrASN, lbUp4(i), lbASN)
		fmt.Fprintf(&b, "protocol bgp lb%d6 { local %s as %d; neighbor %s as %d; hold time 9; ipv6 { import all; export none; }; }\n", i, rtrUp6, rtrASN, lbUp6(i), lbASN)
	}
	cfg := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "bird.pid")
	sh(t, "ip", "netns", "exec", tp.router.Name, "bird", "-c", cfg, "-s", tp.birdCtl, "-P", pidFile)
	t.Cleanup(func() {
		if data, err := os.ReadFile(pidFile); err == nil {
			var pid int
			if _, err := fmt.Sscan(string(data), &pid); err == nil && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("birdc", "-s", tp.birdCtl, "show", "protocols", "all").CombinedOutput()
			t.Logf("bird protocols:\n%s", out)
		}
	})
}

// prepare mounts a private bpffs, writes the token and starts the API
// forwarder; xlbd itself starts with start.
func (lb *lbNode) prepare(t *testing.T) {
	t.Helper()
	lb.dir = t.TempDir()
	lb.stateDir = filepath.Join(lb.dir, "state")
	lb.bpffs = filepath.Join(lb.dir, "bpffs")
	if err := os.MkdirAll(lb.bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", lb.bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(lb.bpffs, unix.MNT_DETACH) })
	lb.tokFile = filepath.Join(lb.dir, "token")
	if err := os.WriteFile(lb.tokFile, []byte(fmt.Sprintf("tok-%d\n", lb.i)), 0o600); err != nil {
		t.Fatal(err)
	}
	lb.endpoint = "http://" + forwardToNS(t, lb.ns, netns.AddrPort(netip.MustParseAddr("127.0.0.1"), xlbdAPIPort))
	c, err := lbclient.New(lbclient.Config{Endpoint: lb.endpoint, TokenFile: lb.tokFile, Retries: -1, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	lb.client = c
}

// start runs xlbd in the namespace and waits for /readyz.
func (lb *lbNode) start(t *testing.T, extra ...string) {
	t.Helper()
	bin := buildBinaries(t)
	args := append([]string{"netns", "exec", lb.ns.Name, bin.xlbd,
		"--interfaces", lb.upIf + "," + lb.beIf, "--hook", "tcx",
		"--api-listen", netns.AddrPort(netip.MustParseAddr("127.0.0.1"), xlbdAPIPort),
		"--api-token-file", lb.tokFile, "--state-dir", lb.stateDir,
		"--bpffs-path", filepath.Join(lb.bpffs, "xlb"), "--conntrack-flows", "65536"}, extra...)
	p := &xlbdProc{log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.signal(syscall.SIGKILL) })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("xlbd lb%d log:\n%s", lb.i, p.log.String())
		}
	})
	lb.proc = p
	netns.Poll(t, 60*time.Second, func() error {
		if p.exited() {
			t.Fatalf("xlbd lb%d exited: %v\n%s", lb.i, p.err, p.log.String())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return lb.client.Readyz(ctx)
	})
}

// stop sends SIGTERM and requires a clean exit.
func (lb *lbNode) stop(t *testing.T) {
	t.Helper()
	code, err := lb.proc.signal(syscall.SIGTERM)
	if err != nil || code != 0 {
		t.Fatalf("xlbd lb%d: exit %d after SIGTERM: %v\n%s", lb.i, code, err, lb.proc.log.String())
	}
}

// configureBGP sets the global settings and both router peers through the
// API (hold 9 s like the router).
func (lb *lbNode) configureBGP(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if _, err := lb.client.PutBGP(ctx, api.BGPGlobal{ASN: lbASN, RouterID: lbUp4(lb.i).String()}); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.client.PutBGPPeers(ctx, []api.BGPPeer{
		{Address: rtrUp4.String(), ASN: rtrASN, HoldTimeSeconds: 9},
		{Address: rtrUp6.String(), ASN: rtrASN, HoldTimeSeconds: 9},
	}); err != nil {
		t.Fatal(err)
	}
}

func (lb *lbNode) waitEstablished(t *testing.T) {
	t.Helper()
	netns.Poll(t, 60*time.Second, func() error {
		st, err := lb.client.GetBGP(context.Background())
		if err != nil {
			return err
		}
		for _, p := range st.Peers {
			if p.State != "established" {
				return fmt.Errorf("lb%d: peer %s is %s", lb.i, p.Address, p.State)
			}
		}
		if len(st.Peers) != 2 {
			return fmt.Errorf("lb%d: %d peers", lb.i, len(st.Peers))
		}
		return nil
	})
}

// routeVia returns the next hops of the router's kernel route to a.
func (tp *bgpTopo) routeVia(t *testing.T, a netip.Addr) []string {
	t.Helper()
	fam := "-4"
	if a.Is6() {
		fam = "-6"
	}
	out := sh(t, "ip", "-n", tp.router.Name, fam, "route", "show", a.String())
	hops := strings.Fields(out)
	var via []string
	for i := 0; i+1 < len(hops); i++ {
		if hops[i] == "via" {
			via = append(via, hops[i+1])
		}
	}
	if strings.TrimSpace(out) != "" && len(via) == 0 {
		via = append(via, "?")
	}
	return via
}

func (tp *bgpTopo) waitRoute(t *testing.T, a netip.Addr, want ...string) {
	t.Helper()
	netns.Poll(t, 30*time.Second, func() error {
		got := tp.routeVia(t, a)
		if len(got) != len(want) {
			return fmt.Errorf("route %s via %v, want %v", a, got, want)
		}
		for _, w := range want {
			found := false
			for _, g := range got {
				found = found || g == w || (w == "*" && g != "")
			}
			if !found {
				return fmt.Errorf("route %s via %v, want %v", a, got, want)
			}
		}
		return nil
	})
}

func (tp *bgpTopo) serveBackends(t *testing.T) []func() {
	t.Helper()
	var stops []func()
	for _, b := range tp.backends {
		stop, err := b.StartHTTP(context.Background(), bgpHTTPPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		stops = append(stops, stop)
	}
	return stops
}

// webService is dual-stack onearm over both backends with a fast tcp probe.
func bgpWebService(name string, vips ...netip.Addr) api.Service {
	s := api.Service{Name: name, Spec: api.ServiceSpec{Port: 80, Protocol: "tcp", NATMode: "onearm",
		Probe: &api.Probe{Type: "tcp", IntervalMillis: 200, TimeoutMillis: 150, FailureThreshold: 2, SuccessThreshold: 1}}}
	for _, v := range vips {
		s.Spec.VIPs = append(s.Spec.VIPs, v.String())
	}
	for _, v := range vips {
		for i := 0; i < 2; i++ {
			a := be4(i)
			if v.Is6() {
				a = be6(i)
			}
			s.Spec.Backends = append(s.Spec.Backends, api.Backend{Address: a.String(), Port: bgpHTTPPort, Name: fmt.Sprintf("b%d", i)})
		}
	}
	return s
}

// TestBGPAnnounceThroughRouter: (a) the router learns the /32 and /128 of
// a service's VIPs from xlbd and a client behind the router reaches the
// backends through them; (c) all backends down withdraws, one back
// re-announces; (d) a service with bgp.advertise=false is never announced.
func TestBGPAnnounceThroughRouter(t *testing.T) {
	tp := newBGPTopo(t, 1)
	stops := tp.serveBackends(t)
	lb := tp.lbs[0]
	lb.start(t, "--plumb-vips")
	lb.configureBGP(t)
	ctx := context.Background()
	if _, _, err := lb.client.PutService(ctx, bgpWebService("web", bgpVIP4, bgpVIP6)); err != nil {
		t.Fatal(err)
	}
	no := false
	quiet := bgpWebService("quiet", quietVIP)
	quiet.Spec.BGP = &api.ServiceBGP{Advertise: &no}
	if _, _, err := lb.client.PutService(ctx, quiet); err != nil {
		t.Fatal(err)
	}
	lb.waitEstablished(t)

	t.Run("routes and traffic", func(t *testing.T) {
		tp.waitRoute(t, bgpVIP4, lbUp4(0).String())
		tp.waitRoute(t, bgpVIP6, "*") // next hop: the global or the link-local address
		waitBalanced(t, &netns.Topology{Client: tp.client}, netip.AddrPortFrom(bgpVIP4, 80), 16, "b0", "b1")
		waitBalanced(t, &netns.Topology{Client: tp.client}, netip.AddrPortFrom(bgpVIP6, 80), 16, "b0", "b1")
		// --plumb-vips: the host answers ICMP echo for the VIP.
		sh(t, "ip", "netns", "exec", tp.client.Name, "ping", "-c", "1", "-W", "2", bgpVIP4.String())
	})

	t.Run("opt-out never announced", func(t *testing.T) {
		if via := tp.routeVia(t, quietVIP); len(via) != 0 {
			t.Fatalf("%s announced (via %v) despite bgp.advertise=false", quietVIP, via)
		}
		st, err := lb.client.GetBGP(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{bgpVIP4.String() + "/32", bgpVIP6.String() + "/128"}
		if strings.Join(st.Announced, ",") != strings.Join(want, ",") {
			t.Fatalf("announced %v, want %v", st.Announced, want)
		}
	})

	t.Run("health-aware withdrawal", func(t *testing.T) {
		for _, stop := range stops {
			stop()
		}
		tp.waitRoute(t, bgpVIP4) // gone
		tp.waitRoute(t, bgpVIP6)
		stop, err := tp.backends[1].StartHTTP(ctx, bgpHTTPPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		tp.waitRoute(t, bgpVIP4, lbUp4(0).String())
		waitBalanced(t, &netns.Topology{Client: tp.client}, netip.AddrPortFrom(bgpVIP4, 80), 8, "b1")
	})

	t.Run("clean stop withdraws and unplumbs", func(t *testing.T) {
		lb.stop(t)
		tp.waitRoute(t, bgpVIP4)
		if out, err := exec.Command("ip", "-n", lb.ns.Name, "link", "show", "xlb0").CombinedOutput(); err == nil {
			t.Fatalf("xlb0 still exists after a clean stop:\n%s", out)
		}
	})
}

// TestBGPECMPTwoNodes: (b) two xlbd nodes announce the same VIP; the router
// installs an ECMP route through both; connections from many source ports
// land on both; a clean stop of one removes its path within seconds and
// the other keeps serving.
func TestBGPECMPTwoNodes(t *testing.T) {
	tp := newBGPTopo(t, 2)
	tp.serveBackends(t)
	ctx := context.Background()
	for _, lb := range tp.lbs {
		lb.start(t)
		lb.configureBGP(t)
		if _, _, err := lb.client.PutService(ctx, bgpWebService("web", bgpVIP4, bgpVIP6)); err != nil {
			t.Fatal(err)
		}
	}
	for _, lb := range tp.lbs {
		lb.waitEstablished(t)
	}
	tp.waitRoute(t, bgpVIP4, lbUp4(0).String(), lbUp4(1).String())
	tp.waitRoute(t, bgpVIP6, "*", "*") // two next hops (global or link-local addresses)
	t.Logf("router: %s", strings.Join(strings.Fields(sh(t, "ip", "-n", tp.router.Name, "route", "show", bgpVIP4.String())), " "))

	// Every connection is a new source port; count new flows per node.
	flows := func(lb *lbNode) uint64 {
		s, err := lb.client.GetService(ctx, "web")
		if err != nil || s.Status == nil {
			t.Fatalf("lb%d: %v", lb.i, err)
		}
		return s.Status.NewFlows
	}
	target := netip.AddrPortFrom(bgpVIP4, 80)
	netns.Poll(t, 30*time.Second, func() error {
		got := hits(&netns.Topology{Client: tp.client}, target, 16)
		if got[""] > 0 {
			return fmt.Errorf("failed requests: %v", got)
		}
		if f0, f1 := flows(tp.lbs[0]), flows(tp.lbs[1]); f0 == 0 || f1 == 0 {
			return fmt.Errorf("new flows per node: lb0=%d lb1=%d (want both > 0)", f0, f1)
		}
		return nil
	})

	start := time.Now()
	tp.lbs[0].stop(t)
	tp.waitRoute(t, bgpVIP4, lbUp4(1).String())
	t.Logf("path of the stopped node removed after %s", time.Since(start).Round(100*time.Millisecond))
	before := flows(tp.lbs[1])
	if got := hits(&netns.Topology{Client: tp.client}, target, 16); got[""] > 0 {
		t.Fatalf("requests failed after one node stopped: %v", got)
	}
	if after := flows(tp.lbs[1]); after < before+16 {
		t.Fatalf("remaining node took %d of 16 new flows", after-before)
	}
}

// TestL2Announce: (e) a client on the LB's segment resolves an L2 VIP to
// the LB interface's MAC and reaches the backends; after an xlbd restart
// a gratuitous ARP for the VIP is seen on the segment.
func TestL2Announce(t *testing.T) {
	e := newXlbdEnv(t, 2)
	vip := netip.MustParseAddr("198.18.0.100") // inside the client's on-link prefix
	e.start()
	svc := httpService("l2web", vip, 80, httpPort, e.topo.Backends, nil, nil)
	svc.Spec.L2 = &api.ServiceL2{Interface: e.topo.LB.ClientLink.Name}
	ctx := context.Background()
	if _, _, err := e.client.PutService(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitBalanced(t, e.topo, netip.AddrPortFrom(vip, 80), 16, "b0", "b1")
	neigh := sh(t, "ip", "-n", e.topo.Client.Name, "neigh", "show", vip.String())
	if !strings.Contains(neigh, e.topo.LB.ClientLink.MAC.String()) {
		t.Fatalf("client resolves %s to %q, want the LB's %s", vip, neigh, e.topo.LB.ClientLink.MAC)
	}

	// Capture ARP on the client while xlbd restarts.
	arp := startCapture(t, e.topo.Client.NS, e.topo.Client.Link.Name, "arp")
	e.stop()
	e.start()
	want := "Reply " + vip.String() + " is-at " + e.topo.LB.ClientLink.MAC.String()
	netns.Poll(t, 20*time.Second, func() error {
		if !strings.Contains(arp.String(), want) {
			return fmt.Errorf("no gratuitous ARP %q captured yet:\n%s", want, arp.String())
		}
		return nil
	})
	waitBalanced(t, e.topo, netip.AddrPortFrom(vip, 80), 8, "b0", "b1")
}

// capture is a running tcpdump whose output is collected.
type capture struct {
	mu  sync.Mutex
	out strings.Builder
}

func (c *capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

func startCapture(t *testing.T, ns *netns.NS, iface, filter string) *capture {
	t.Helper()
	c := &capture{}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "tcpdump", "-l", "-n", "-e", "-i", iface, filter)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.mu.Lock()
			c.out.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		<-done
	})
	// tcpdump needs a moment to attach: wait until it sees an ARP the
	// client sends itself (neighbor cache flushed, then a ping to the LB).
	netns.Poll(t, 10*time.Second, func() error {
		flush := []string{"-n", ns.Name, "neigh", "flush", "dev", iface}
		if iface == "any" { // every interface, also ones created later
			flush = []string{"-n", ns.Name, "neigh", "flush", "all"}
		}
		_ = exec.Command("ip", flush...).Run()
		_, _ = exec.Command("ip", "netns", "exec", ns.Name, "ping", "-c", "1", "-W", "1", "198.18.0.1").CombinedOutput()
		if !strings.Contains(c.String(), "ARP") {
			return fmt.Errorf("tcpdump on %s sees nothing yet", iface)
		}
		return nil
	})
	return c
}
