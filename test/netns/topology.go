package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Address plan. Every topology lives in its own namespaces, so every topology
// uses the same addresses; only names carry the per-test prefix. The ranges
// are the benchmarking block 198.18.0.0/15 (RFC 2544) and a ULA /48.
var (
	ClientNet4  = netip.MustParsePrefix("198.18.0.0/24")
	ClientNet6  = netip.MustParsePrefix("fd78:6c62:0:0::/64")
	BackendNet4 = netip.MustParsePrefix("198.18.1.0/24")
	BackendNet6 = netip.MustParsePrefix("fd78:6c62:0:1::/64")
	// VIPNet4/6 hold service VIPs: the client routes them to the LB.
	VIPNet4 = netip.MustParsePrefix("198.19.0.0/24")
	VIPNet6 = netip.MustParsePrefix("fd78:6c62:ff:0::/64")
	// SNATNet4/6 hold fullnat source addresses: backends route them (by
	// their default route) to the LB.
	SNATNet4 = netip.MustParsePrefix("198.19.1.0/24")
	SNATNet6 = netip.MustParsePrefix("fd78:6c62:ff:1::/64")
)

// VIP4 returns the i-th IPv4 VIP (198.19.0.10+i), VIP6 the i-th IPv6 VIP.
func VIP4(i int) netip.Addr { return nth(VIPNet4, 10+i) }
func VIP6(i int) netip.Addr { return nth(VIPNet6, 10+i) }

// SNAT4 / SNAT6 return the i-th fullnat source address.
func SNAT4(i int) netip.Addr { return nth(SNATNet4, 10+i) }
func SNAT6(i int) netip.Addr { return nth(SNATNet6, 10+i) }

func nth(p netip.Prefix, i int) netip.Addr {
	b := p.Addr().AsSlice()
	carry := i
	for j := len(b) - 1; j >= 0 && carry > 0; j-- {
		sum := int(b[j]) + carry
		b[j] = byte(sum)
		carry = sum >> 8
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Iface is one interface end of the topology.
type Iface struct {
	Name    string
	Index   int
	MAC     net.HardwareAddr
	Addr4   netip.Addr
	Addr6   netip.Addr
	Prefix4 netip.Prefix // on-link prefix of Addr4
	Prefix6 netip.Prefix
}

// Host is a client or backend namespace with one interface.
type Host struct {
	*NS
	// Label is the short logical name: "client", "b0", "b1", ...
	Label string
	Link  Iface
	// Addrs4 are extra IPv4 client addresses (Options.ClientAddrs) after Link.Addr4.
	Addrs4 []netip.Addr
}

// LB is the load balancer namespace: one interface towards the client, one
// towards the backend segment; IPv4 and IPv6 forwarding are on.
type LB struct {
	*NS
	ClientLink  Iface // faces the client
	BackendLink Iface // faces the backend segment
}

// Interfaces returns the LB's interface names (client side first).
func (l *LB) Interfaces() []string { return []string{l.ClientLink.Name, l.BackendLink.Name} }

// Options shape a topology. The zero value is two backends, one client address.
type Options struct {
	// Backends is the number of backend namespaces (default 2, at most 200).
	Backends int
	// ClientAddrs is the number of IPv4 addresses on the client (default 1):
	// 198.18.0.2, .3, ...
	ClientAddrs int
	// KeepTxChecksum leaves TX checksum offload on for the client and backend
	// veths. By default it is turned off there: a veth hands locally
	// generated TCP to its peer with only a partial checksum, native
	// XDP_REDIRECT drops that metadata, and the receiver then discards the
	// packet (shared notes, veth fact 3). A real NIC computes the checksum on
	// the wire, so "off" is the faithful emulation; benchmarks of TCP
	// throughput keep it on to keep TSO.
	KeepTxChecksum bool
}

// Topology is
//
//	client ns ──veth── LB ns ──veth── segment ns (bridge) ──veth── backend ns ×N
//
// The client and the LB share 198.18.0.0/24 + fd78:6c62::/64 (LB .1/::1,
// client .2/::2). The LB and the backends share 198.18.1.0/24 +
// fd78:6c62:0:1::/64 through a Linux bridge in the segment namespace (LB .1,
// backend i .10+i). The backend segment is one L2 network, as behind a real
// LB's second NIC, so the LB has a single backend-facing address (the
// onearm source) and a single egress for XDP_REDIRECT. The client's and the
// backends' default routes point at the LB, so VIPs and SNAT addresses route
// through it and default-mode (DNAT-only) replies return through it.
// GRO is on for every veth end that an XDP program may redirect into (NAPI,
// veth facts 1 and 2) and off on the segment's backend-facing ports, so the
// LB's XDP program sees wire-sized packets from the backends.
type Topology struct {
	Prefix   string
	Client   *Host
	LB       *LB
	Segment  *NS
	Backends []*Host

	namespaces []*NS
	opts       Options
}

// New builds a topology with a fresh prefix and registers its teardown with
// t.Cleanup (registered before anything is created, so a failure halfway
// still removes what exists). It skips the test when not root.
func New(t testing.TB, opts Options) *Topology {
	t.Helper()
	RequireRoot(t)
	topo := &Topology{Prefix: NewPrefix()}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("topology %s teardown: %v", topo.Prefix, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := topo.build(ctx, opts); err != nil {
		t.Fatalf("topology %s: %v", topo.Prefix, err)
	}
	return topo
}

// Build is New without testing.TB (for benchmarks and tools). The caller
// must Close the topology.
func Build(ctx context.Context, opts Options) (*Topology, error) {
	topo := &Topology{Prefix: NewPrefix()}
	if err := topo.build(ctx, opts); err != nil {
		return nil, errors.Join(fmt.Errorf("topology %s: %w", topo.Prefix, err), topo.Close())
	}
	return topo, nil
}

// Close deletes every namespace of the topology (and so every veth and the
// bridge). Safe to call more than once.
func (tp *Topology) Close() error {
	var errs []error
	for i := len(tp.namespaces) - 1; i >= 0; i-- {
		if err := tp.namespaces[i].Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	tp.namespaces = nil
	return errors.Join(errs...)
}

// Namespaces returns the names of all namespaces of the topology.
func (tp *Topology) Namespaces() []string {
	var names []string
	for _, n := range tp.namespaces {
		names = append(names, n.Name)
	}
	return names
}

// Backend returns the backend with the given label ("b0", ...) or nil.
func (tp *Topology) Backend(label string) *Host {
	for _, b := range tp.Backends {
		if b.Label == label {
			return b
		}
	}
	return nil
}

func (tp *Topology) newNS(suffix string) (*NS, error) {
	n, err := CreateNS(tp.Prefix + "-" + suffix)
	if err != nil {
		return nil, err
	}
	tp.namespaces = append(tp.namespaces, n)
	// Addresses must be usable at once: no duplicate address detection (we
	// also set nodad per address), no reverse-path filter surprises.
	for _, kv := range [][2]string{
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
	} {
		if err := n.Sysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	return n, nil
}

func (tp *Topology) build(ctx context.Context, opts Options) error {
	if opts.Backends == 0 {
		opts.Backends = 2
	}
	if opts.Backends < 0 || opts.Backends > 200 {
		return fmt.Errorf("options.Backends=%d: allowed 1..200", opts.Backends)
	}
	if opts.ClientAddrs == 0 {
		opts.ClientAddrs = 1
	}
	tp.opts = opts
	if opts.ClientAddrs < 0 || opts.ClientAddrs > 200 {
		return fmt.Errorf("options.ClientAddrs=%d: allowed 1..200", opts.ClientAddrs)
	}
	p := tp.Prefix
	cli, err := tp.newNS("cli")
	if err != nil {
		return err
	}
	lbNS, err := tp.newNS("lb")
	if err != nil {
		return err
	}
	seg, err := tp.newNS("seg")
	if err != nil {
		return err
	}
	tp.Segment = seg
	tp.Client = &Host{NS: cli, Label: "client", Link: Iface{Name: p + "c"}}
	tp.LB = &LB{NS: lbNS, ClientLink: Iface{Name: p + "lc"}, BackendLink: Iface{Name: p + "lb"}}
	for i := 0; i < opts.Backends; i++ {
		bns, err := tp.newNS(fmt.Sprintf("b%d", i))
		if err != nil {
			return err
		}
		tp.Backends = append(tp.Backends, &Host{NS: bns, Label: fmt.Sprintf("b%d", i), Link: Iface{Name: fmt.Sprintf("%sb%d", p, i)}})
	}
	for _, n := range tp.namespaces {
		if err := n.Sysctl("net.ipv6.conf.all.forwarding", "0"); err != nil {
			return err
		}
	}
	if err := lbNS.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if err := lbNS.Sysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
		return err
	}

	// Links.
	if err := addVeth(cli, tp.Client.Link.Name, lbNS, tp.LB.ClientLink.Name); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: p + "br"}}
	if err := seg.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("segment: add bridge %s: %w", br.Name, err)
	}
	segPorts := []string{p + "sl"}
	if err := addVeth(lbNS, tp.LB.BackendLink.Name, seg, p+"sl"); err != nil {
		return err
	}
	for i, b := range tp.Backends {
		port := fmt.Sprintf("%ss%d", p, i)
		if err := addVeth(b.NS, b.Link.Name, seg, port); err != nil {
			return err
		}
		segPorts = append(segPorts, port)
	}
	for _, name := range segPorts {
		l, err := seg.nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("segment: %s: %w", name, err)
		}
		if err := seg.nl.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("segment: enslave %s to %s: %w", name, br.Name, err)
		}
	}

	// Addresses.
	tp.LB.ClientLink.set(nth(ClientNet4, 1), nth(ClientNet6, 1), ClientNet4, ClientNet6)
	tp.Client.Link.set(nth(ClientNet4, 2), nth(ClientNet6, 2), ClientNet4, ClientNet6)
	tp.LB.BackendLink.set(nth(BackendNet4, 1), nth(BackendNet6, 1), BackendNet4, BackendNet6)
	for i, b := range tp.Backends {
		b.Link.set(nth(BackendNet4, 10+i), nth(BackendNet6, 10+i), BackendNet4, BackendNet6)
	}
	for i := 1; i < opts.ClientAddrs; i++ {
		tp.Client.Addrs4 = append(tp.Client.Addrs4, nth(ClientNet4, 2+i))
	}
	ifaces := []struct {
		ns    *NS
		iface *Iface
		extra []netip.Addr
	}{
		{cli, &tp.Client.Link, tp.Client.Addrs4},
		{lbNS, &tp.LB.ClientLink, nil},
		{lbNS, &tp.LB.BackendLink, nil},
	}
	for _, b := range tp.Backends {
		ifaces = append(ifaces, struct {
			ns    *NS
			iface *Iface
			extra []netip.Addr
		}{b.NS, &b.Link, nil})
	}
	for _, f := range ifaces {
		if err := configureIface(f.ns, f.iface, f.extra); err != nil {
			return err
		}
	}
	for _, name := range segPorts {
		if err := setUp(seg, name); err != nil {
			return err
		}
	}
	if err := setUp(seg, br.Name); err != nil {
		return err
	}

	// Routes: everything beyond the on-link prefix goes through the LB.
	if err := defaultVia(cli, tp.LB.ClientLink); err != nil {
		return err
	}
	for _, b := range tp.Backends {
		if err := defaultVia(b.NS, tp.LB.BackendLink); err != nil {
			return err
		}
	}

	// Offloads. GRO gives a veth end the NAPI context that native
	// XDP_REDIRECT/XDP_TX into it needs (veth facts 1 and 2): on for the
	// client, both LB ends and the segment's LB-facing port. It stays off
	// on the segment's backend-facing ports: GRO there would merge the
	// backends' segments into 64 KiB packets before they reach the LB's
	// XDP program, which no NIC does and which an XDP program without
	// frags support drops. TX checksum goes off on traffic sources unless
	// asked to keep it (see Options.KeepTxChecksum).
	type feat struct {
		ns   *NS
		link string
		gro  bool
		tx   bool
	}
	feats := []feat{
		{cli, tp.Client.Link.Name, true, true},
		{lbNS, tp.LB.ClientLink.Name, true, false},
		{lbNS, tp.LB.BackendLink.Name, true, false},
		{seg, p + "sl", true, false},
	}
	for i, b := range tp.Backends {
		feats = append(feats, feat{seg, fmt.Sprintf("%ss%d", p, i), false, false})
		feats = append(feats, feat{b.NS, b.Link.Name, true, true})
	}
	for _, f := range feats {
		args := []string{"-K", f.link, "gro", map[bool]string{true: "on", false: "off"}[f.gro]}
		if f.tx && !opts.KeepTxChecksum {
			args = append(args, "tx", "off")
		}
		if _, err := f.ns.Run(ctx, "ethtool", args...); err != nil {
			return err
		}
	}
	// The kernel reports carrier (and IPv6 starts link-local addressing)
	// through linkwatch, up to ~1 s after a veth's peer came up. Wait for
	// every end to be operationally up so that tests start on a settled
	// network.
	return Until(ctx, func() error {
		for _, f := range feats {
			l, err := f.ns.nl.LinkByName(f.link)
			if err != nil {
				return fmt.Errorf("netns %s: link %s: %w", f.ns.Name, f.link, err)
			}
			if st := l.Attrs().OperState; st != netlink.OperUp {
				return fmt.Errorf("netns %s: link %s is %s, want up", f.ns.Name, f.link, st)
			}
		}
		return nil
	})
}

func (f *Iface) set(a4, a6 netip.Addr, p4, p6 netip.Prefix) {
	f.Addr4, f.Addr6, f.Prefix4, f.Prefix6 = a4, a6, p4, p6
}

func addVeth(a *NS, nameA string, b *NS, nameB string) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: nameA},
		PeerName:      nameB,
		PeerNamespace: netlink.NsFd(int(b.handle)),
	}
	if err := a.nl.LinkAdd(v); err != nil {
		return fmt.Errorf("add veth %s(%s) <-> %s(%s): %w", nameA, a.Name, nameB, b.Name, err)
	}
	return nil
}

func setUp(n *NS, name string) error {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("netns %s: link %s: %w", n.Name, name, err)
	}
	if err := n.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("netns %s: set %s up: %w", n.Name, name, err)
	}
	return nil
}

func configureIface(n *NS, f *Iface, extra4 []netip.Addr) error {
	l, err := n.nl.LinkByName(f.Name)
	if err != nil {
		return fmt.Errorf("netns %s: link %s: %w", n.Name, f.Name, err)
	}
	addrs := []*netlink.Addr{
		{IPNet: prefixNet(f.Addr4, f.Prefix4.Bits())},
		{IPNet: prefixNet(f.Addr6, f.Prefix6.Bits()), Flags: unix.IFA_F_NODAD},
	}
	for _, a := range extra4 {
		addrs = append(addrs, &netlink.Addr{IPNet: prefixNet(a, f.Prefix4.Bits())})
	}
	for _, a := range addrs {
		if err := n.nl.AddrAdd(l, a); err != nil {
			return fmt.Errorf("netns %s: add %s to %s: %w", n.Name, a.IPNet, f.Name, err)
		}
	}
	if err := n.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("netns %s: set %s up: %w", n.Name, f.Name, err)
	}
	f.Index = l.Attrs().Index
	f.MAC = l.Attrs().HardwareAddr
	return nil
}

func defaultVia(n *NS, gw Iface) error {
	for _, g := range []netip.Addr{gw.Addr4, gw.Addr6} {
		r := &netlink.Route{Gw: net.IP(g.AsSlice())}
		if g.Is4() {
			r.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		} else {
			r.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		if err := n.nl.RouteAdd(r); err != nil {
			return fmt.Errorf("netns %s: default route via %s: %w", n.Name, g, err)
		}
	}
	return nil
}

func prefixNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, a.BitLen())}
}

// AddrPort formats addr:port for dialing, bracketing IPv6.
func AddrPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// DeleteClientLink deletes the LB's client-facing veth (and with it the
// client's end and the client's default routes), as when an uplink
// interface is removed. RecreateClientLink puts it back.
func (tp *Topology) DeleteClientLink() error {
	l, err := tp.LB.nl.LinkByName(tp.LB.ClientLink.Name)
	if err != nil {
		return fmt.Errorf("netns %s: link %s: %w", tp.LB.Name, tp.LB.ClientLink.Name, err)
	}
	if err := tp.LB.nl.LinkDel(l); err != nil {
		return fmt.Errorf("netns %s: delete %s: %w", tp.LB.Name, tp.LB.ClientLink.Name, err)
	}
	return nil
}

// RecreateClientLink re-creates the client↔LB veth as New built it: same
// names, addresses, offloads and client default routes (the kernel gives
// it new ifindexes and MACs, which it records in ClientLink and
// Client.Link). It waits until both ends are operationally up.
func (tp *Topology) RecreateClientLink(ctx context.Context) error {
	cli, lb := tp.Client, tp.LB
	if err := addVeth(cli.NS, cli.Link.Name, lb.NS, lb.ClientLink.Name); err != nil {
		return err
	}
	if err := configureIface(cli.NS, &cli.Link, cli.Addrs4); err != nil {
		return err
	}
	if err := configureIface(lb.NS, &lb.ClientLink, nil); err != nil {
		return err
	}
	if err := defaultVia(cli.NS, lb.ClientLink); err != nil {
		return err
	}
	// The same offloads as build: GRO on both ends, TX checksum off on the
	// client (veth fact 3).
	args := []string{"-K", cli.Link.Name, "gro", "on"}
	if !tp.opts.KeepTxChecksum {
		args = append(args, "tx", "off")
	}
	if _, err := cli.Run(ctx, "ethtool", args...); err != nil {
		return err
	}
	if _, err := lb.Run(ctx, "ethtool", "-K", lb.ClientLink.Name, "gro", "on"); err != nil {
		return err
	}
	return Until(ctx, func() error {
		for _, e := range []struct {
			ns   *NS
			name string
		}{{cli.NS, cli.Link.Name}, {lb.NS, lb.ClientLink.Name}} {
			l, err := e.ns.nl.LinkByName(e.name)
			if err != nil {
				return fmt.Errorf("netns %s: link %s: %w", e.ns.Name, e.name, err)
			}
			if st := l.Attrs().OperState; st != netlink.OperUp {
				return fmt.Errorf("netns %s: link %s is %s, want up", e.ns.Name, e.name, st)
			}
		}
		return nil
	})
}
