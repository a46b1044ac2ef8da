package dataplane

// Tests whose outcome depends on the kernel's routing (bpf_fib_lookup): they
// run BPF_PROG_TEST_RUN from a private network namespace with a veth pair,
// because the test run uses the calling thread's namespace.

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

type testNet struct {
	client, backend *net.Interface // xpktc faces clients, xpktb faces backends
	backendMAC      net.HardwareAddr
}

// inNetns runs fn on a locked OS thread inside a fresh, unnamed network
// namespace (it disappears with its last reference, links included):
//
//	xpktc 10.0.0.254/24 fd00::fe/64   <- clients
//	xpktb 10.1.0.254/24 fd00:1::fe/64 -> backends (veth peers of each other)
//
// with forwarding on and a static neighbour for 10.1.0.1 / fd00:1::1.
func inNetns(t *testing.T, fn func(tn testNet)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// No UnlockOSThread: if restoring the namespace fails the thread
		// must die with the goroutine rather than be reused.
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		defer func() {
			if err := netns.Set(orig); err != nil {
				t.Error(err)
			} else {
				runtime.UnlockOSThread()
			}
		}()
		tn, err := setupTestNet()
		if err != nil {
			t.Error(err)
			return
		}
		fn(tn)
	}()
	<-done
	if t.Failed() {
		t.FailNow()
	}
}

func setupTestNet() (testNet, error) {
	var tn testNet
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return tn, err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return tn, err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "xpktc"}, PeerName: "xpktb"}
	if err := netlink.LinkAdd(veth); err != nil {
		return tn, err
	}
	for name, addrs := range map[string][]string{
		"xpktc": {"10.0.0.254/24", "fd00::fe/64"},
		"xpktb": {"10.1.0.254/24", "fd00:1::fe/64"},
	} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return tn, err
		}
		for _, a := range addrs {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = 0x80 // IFA_F_NODAD: usable at once
			if err := netlink.AddrAdd(l, addr); err != nil {
				return tn, err
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return tn, err
		}
	}
	for _, f := range []string{"/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			return tn, err
		}
	}
	tn.backendMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xaa}
	bl, _ := netlink.LinkByName("xpktb")
	for _, ip := range []string{"10.1.0.1", "fd00:1::1"} {
		n := &netlink.Neigh{LinkIndex: bl.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP(ip), HardwareAddr: tn.backendMAC}
		if err := netlink.NeighAdd(n); err != nil {
			return tn, err
		}
	}
	if tn.client, err = net.InterfaceByName("xpktc"); err != nil {
		return tn, err
	}
	if tn.backend, err = net.InterfaceByName("xpktb"); err != nil {
		return tn, err
	}
	return tn, nil
}

// TestPacketOneArm: the source becomes the address of the interface the
// kernel routes toward the backend (if_addrs[egress ifindex]); replies to
// it are translated back. Without an if_addrs entry the flow is dropped.
func TestPacketOneArm(t *testing.T) {
	h := newHarness(t)
	inNetns(t, func(tn testNet) {
		for _, f := range families {
			ifa := netip.MustParseAddr("10.1.0.254")
			if f.name == "v6" {
				ifa = netip.MustParseAddr("fd00:1::fe")
			}
			svc := h.addService(svcSpec{vip: f.vip, proto: protoTCP, mode: natOneArm, algo: algoRR,
				backends: []beSpec{{addr: f.be1}}, snatMin: 41000, snatMax: 41999})
			for _, p := range h.progs() {
				// No address known for the egress interface yet.
				if err := h.objs.IfAddrs.Put(uint32(tn.backend.Index), xlbIfAddr{}); err != nil {
					t.Fatal(err)
				}
				h.ctFlush()
				in := build(t, pktSpec{src: f.client, dst: f.vip, proto: protoTCP, flags: "S"})
				ret, _ := run(t, p, in, uint32(tn.client.Index))
				if ret != p.drop {
					t.Fatalf("%s/%s without if_addrs: verdict %d, want drop", p.name, f.name, ret)
				}
				ia := xlbIfAddr{V4: addrWords(netip.MustParseAddr("10.1.0.254"))[0], V6: addrWords(netip.MustParseAddr("fd00:1::fe"))}
				if err := h.objs.IfAddrs.Put(uint32(tn.backend.Index), ia); err != nil {
					t.Fatal(err)
				}
				ret, out := run(t, p, in, uint32(tn.client.Index))
				if ret != p.fwd {
					t.Fatalf("%s/%s: verdict %d", p.name, f.name, ret)
				}
				ns := natSource(t, out, family(f.vip.Addr()))
				if ns.Addr() != ifa || ns.Port() < 41000 || ns.Port() > 41999 {
					t.Fatalf("%s/%s: onearm source %v", p.name, f.name, ns)
				}
				sameBytes(t, "onearm forward", out, build(t, pktSpec{src: ns, dst: f.be1, proto: protoTCP, flags: "S"}))
				ret, out = run(t, p, build(t, pktSpec{src: f.be1, dst: ns, proto: protoTCP, flags: "SA"}), uint32(tn.backend.Index))
				if ret != p.fwd {
					t.Fatalf("%s/%s reply: verdict %d", p.name, f.name, ret)
				}
				sameBytes(t, "onearm reply", out, build(t, pktSpec{src: f.vip, dst: f.client, proto: protoTCP, flags: "SA"}))
			}
			if d := h.svcStats(svc.id).Drops[dropNoIfAddr]; d != 2 {
				t.Errorf("%s: no_ifaddr drops %d, want 2", f.name, d)
			}
		}
	})
}

// TestPacketRedirect: with routing in BPF (the default), a rewritten packet
// whose next hop is resolved leaves through XDP_REDIRECT / bpf_redirect with
// the MACs of the egress interface and the neighbour; without a neighbour
// TC uses bpf_redirect_neigh and XDP passes the original packet, marked for
// its tc companion.
func TestPacketRedirect(t *testing.T) {
	h := newHarness(t)
	h.setConfig(xlbXlbCfg{})
	inNetns(t, func(tn testNet) {
		for _, f := range families {
			h.addService(svcSpec{vip: f.vip, proto: protoUDP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
			for _, p := range h.progs() {
				h.ctFlush()
				in := build(t, pktSpec{src: f.client, dst: f.vip, proto: protoUDP})
				want := build(t, pktSpec{src: f.client, dst: f.be1, proto: protoUDP})
				copy(want[0:6], tn.backendMAC)
				copy(want[6:12], tn.backend.HardwareAddr)
				ret, out := run(t, p, in, uint32(tn.client.Index))
				if ret != p.redirect {
					t.Fatalf("%s/%s: verdict %d, want redirect %d", p.name, f.name, ret, p.redirect)
				}
				sameBytes(t, p.name+"/"+f.name+" redirect", out, want)
			}
		}
		// No neighbour for be2.
		f := families[0]
		h.addService(svcSpec{vip: ap("10.96.0.20:53"), proto: protoUDP, algo: algoRR, backends: []beSpec{{addr: f.be2}}})
		for _, p := range h.progs() {
			in := build(t, pktSpec{src: f.client, dst: ap("10.96.0.20:53"), proto: protoUDP})
			ret, out := run(t, p, in, uint32(tn.client.Index))
			want := p.pass
			if !p.xdp {
				want = tcRedirect // bpf_redirect_neigh
			}
			if ret != want {
				t.Fatalf("%s no neighbour: verdict %d, want %d", p.name, ret, want)
			}
			if p.xdp {
				// XDP cannot resolve a neighbour: the ORIGINAL packet is
				// passed with the hand-over mark in its metadata (the test
				// run returns the metadata in front of the frame), for the
				// tc companion.
				g := h.global()
				before := g.XdpToTc
				sameBytes(t, "xdp no neighbour", out, append(binary.LittleEndian.AppendUint32(nil, xlbMetaToTC), in...))
				if before == 0 {
					t.Errorf("xdp no neighbour: xdp_to_tc not counted")
				}
				continue
			}
			sameBytes(t, p.name+" no neighbour", out, build(t, pktSpec{src: f.client, dst: f.be2, proto: protoUDP}))
		}
	})
}
