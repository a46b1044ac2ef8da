package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/xlb-dev/xlb/test/netns"
)

// ppsNet is what the packets/s benchmark needs to know about a topology:
// where the generator sends from, the LB namespace and the interfaces xlb
// attaches to, and the backends (namespace, sink interface, address).
type ppsNet struct {
	name      string // for logs and the report
	client    *netns.NS
	clientIf  int              // generator's ifindex in client
	clientMAC net.HardwareAddr // generator's source MAC
	clientIP  netip.Addr
	lbMAC     net.HardwareAddr // the LB's client-facing MAC (frame destination)
	lb        *netns.NS
	lbIfaces  []string // xlb attaches here
	backends  []ppsBackend
	// napiIf is the LB's client-facing link (where the floor drops).
	napiIf string
	// fwd is the forwarding floor's egress towards backend 0: the LB's
	// ifindex, and the destination and source MACs of the frames.
	fwdIndex       int
	fwdDst, fwdSrc net.HardwareAddr
}

type ppsBackend struct {
	ns    *netns.NS
	index int // the backend's link (the sink attaches here)
	addr  netip.Addr
}

// bridgeNet adapts the shared e2e topology (client → LB → bridge in a
// segment namespace → backends).
func bridgeNet(tp *netns.Topology) *ppsNet {
	n := &ppsNet{name: "bridge", client: tp.Client.NS, clientIf: tp.Client.Link.Index,
		clientMAC: tp.Client.Link.MAC, clientIP: tp.Client.Link.Addr4, lbMAC: tp.LB.ClientLink.MAC,
		lb: tp.LB.NS, lbIfaces: tp.LB.Interfaces(), napiIf: tp.LB.ClientLink.Name,
		fwdIndex: tp.LB.BackendLink.Index, fwdDst: tp.Backends[0].Link.MAC, fwdSrc: tp.LB.BackendLink.MAC}
	for _, b := range tp.Backends {
		n.backends = append(n.backends, ppsBackend{ns: b.NS, index: b.Link.Index, addr: b.Link.Addr4})
	}
	return n
}

// directTopo is the bench-only topology of the packets/s benchmark:
//
//	client ns ──veth── LB ns ──veth── backend ns 0
//	                         ──veth── backend ns 1 ...
//
// one point-to-point veth pair (a /30) per backend, so a packet crosses
// exactly two veth pairs and the LB, and nothing else: no bridge, no
// segment namespace. Client 198.18.0.2/24, LB 198.18.0.1/24 towards it;
// backend i is 198.18.1.(4i+2)/30 behind LB 198.18.1.(4i+1)/30. Every
// veth end runs GRO, which gives it the NAPI context that native
// XDP_REDIRECT (and the generator's XDP_TX) into its peer needs; the
// backends' ends also carry the counting-drop sink XDP program.
type directTopo struct {
	net        ppsNet
	namespaces []*netns.NS
}

func buildDirect(ctx context.Context, backends int) (_ *directTopo, err error) {
	if backends < 1 || backends > 60 {
		return nil, fmt.Errorf("direct topology: backends=%d: allowed 1..60", backends)
	}
	p := netns.NewPrefix()
	t := &directTopo{}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()
	newNS := func(suffix string) (*netns.NS, error) {
		n, err := netns.CreateNS(p + "-" + suffix)
		if err != nil {
			return nil, err
		}
		t.namespaces = append(t.namespaces, n)
		for _, kv := range [][2]string{
			{"net.ipv4.conf.all.rp_filter", "0"},
			{"net.ipv4.conf.default.rp_filter", "0"},
			{"net.ipv6.conf.all.disable_ipv6", "1"}, // no ND/MLD chatter
			{"net.ipv6.conf.default.disable_ipv6", "1"},
		} {
			if err := n.Sysctl(kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
		return n, nil
	}
	cli, err := newNS("cli")
	if err != nil {
		return nil, err
	}
	lb, err := newNS("lb")
	if err != nil {
		return nil, err
	}
	if err := lb.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	t.net = ppsNet{name: "direct", client: cli, lb: lb, napiIf: p + "lc"}

	type end struct {
		ns   *netns.NS
		name string
		addr netip.Prefix
	}
	type pair struct{ a, b end }
	pairs := []pair{{
		end{lb, p + "lc", netip.MustParsePrefix("198.18.0.1/24")},
		end{cli, p + "c", netip.MustParsePrefix("198.18.0.2/24")},
	}}
	for i := range backends {
		bns, err := newNS(fmt.Sprintf("b%d", i))
		if err != nil {
			return nil, err
		}
		base := netip.AddrFrom4([4]byte{198, 18, 1, byte(4 * i)})
		pairs = append(pairs, pair{
			end{lb, fmt.Sprintf("%sl%d", p, i), netip.PrefixFrom(base.Next(), 30)},
			end{bns, fmt.Sprintf("%sb%d", p, i), netip.PrefixFrom(base.Next().Next(), 30)},
		})
	}
	links := map[string]netlink.Link{}
	for _, pr := range pairs {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: pr.a.name}, PeerName: pr.b.name,
			PeerNamespace: netlink.NsFd(int(pr.b.ns.Handle()))}
		if err := pr.a.ns.Netlink().LinkAdd(v); err != nil {
			return nil, fmt.Errorf("add veth %s <-> %s: %w", pr.a.name, pr.b.name, err)
		}
		for _, e := range []end{pr.a, pr.b} {
			l, err := e.ns.Netlink().LinkByName(e.name)
			if err != nil {
				return nil, fmt.Errorf("netns %s: link %s: %w", e.ns.Name, e.name, err)
			}
			ipn := &net.IPNet{IP: net.IP(e.addr.Addr().AsSlice()), Mask: net.CIDRMask(e.addr.Bits(), 32)}
			if err := e.ns.Netlink().AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
				return nil, fmt.Errorf("netns %s: add %s to %s: %w", e.ns.Name, e.addr, e.name, err)
			}
			if err := e.ns.Netlink().LinkSetUp(l); err != nil {
				return nil, fmt.Errorf("netns %s: set %s up: %w", e.ns.Name, e.name, err)
			}
			if _, err := e.ns.Run(ctx, "ethtool", "-K", e.name, "gro", "on"); err != nil {
				return nil, err
			}
			links[e.name] = l
		}
	}
	// Default routes towards the LB (backends need none for a sink, but a
	// real backend would have one; it costs nothing on the measured path).
	for _, pr := range pairs {
		gw := net.IP(pr.a.addr.Addr().AsSlice())
		r := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: gw}
		if err := pr.b.ns.Netlink().RouteAdd(r); err != nil {
			return nil, fmt.Errorf("netns %s: default route via %s: %w", pr.b.ns.Name, gw, err)
		}
	}
	// VIPs route to the LB through the client's default route.
	cl := links[p+"c"].Attrs()
	t.net.clientIf, t.net.clientMAC, t.net.clientIP = cl.Index, cl.HardwareAddr, pairs[0].b.addr.Addr()
	t.net.lbMAC = links[p+"lc"].Attrs().HardwareAddr
	for i, pr := range pairs {
		t.net.lbIfaces = append(t.net.lbIfaces, pr.a.name)
		if i == 0 {
			continue
		}
		t.net.backends = append(t.net.backends, ppsBackend{ns: pr.b.ns, index: links[pr.b.name].Attrs().Index, addr: pr.b.addr.Addr()})
		if i == 1 {
			t.net.fwdIndex = links[pr.a.name].Attrs().Index
			t.net.fwdSrc = links[pr.a.name].Attrs().HardwareAddr
			t.net.fwdDst = links[pr.b.name].Attrs().HardwareAddr
		}
	}
	// Wait for carrier on every end (linkwatch reports it asynchronously).
	err = netns.Until(ctx, func() error {
		for _, pr := range pairs {
			for _, e := range []end{pr.a, pr.b} {
				l, err := e.ns.Netlink().LinkByName(e.name)
				if err != nil {
					return err
				}
				if st := l.Attrs().OperState; st != netlink.OperUp {
					return fmt.Errorf("netns %s: link %s is %s, want up", e.ns.Name, e.name, st)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Close deletes the namespaces (and with them every veth).
func (t *directTopo) Close() error {
	var errs []error
	for i := len(t.namespaces) - 1; i >= 0; i-- {
		errs = append(errs, t.namespaces[i].Delete())
	}
	t.namespaces = nil
	return errors.Join(errs...)
}
