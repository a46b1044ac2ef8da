package dataplane

// The outcomes of forwarding after a rewrite that are not a redirect
// (bpf/README.md, "Forwarding after a rewrite"): the MTU check (per segment
// for a GSO skb), and a failed lookup with a local rewritten source. They
// depend on the kernel's routing, so they run in inNetns (xpktb has MTU 1500).

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// runGSO runs the tc program on pkt as if it were a GSO skb (gso_size
// bytes of payload per segment, as GRO leaves a merged skb).
func runGSO(t *testing.T, p prog, pkt []byte, ifindex uint32, gsoSize, gsoSegs uint32) (uint32, []byte) {
	t.Helper()
	var sk skBuff
	binary.NativeEndian.PutUint32(sk[36:], ifindex)
	binary.NativeEndian.PutUint32(sk[40:], ifindex)
	binary.NativeEndian.PutUint32(sk[164:], gsoSegs) // offsetof(struct __sk_buff, gso_segs)
	binary.NativeEndian.PutUint32(sk[176:], gsoSize) // offsetof(struct __sk_buff, gso_size)
	in := append([]byte(nil), pkt...)
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(pkt)+512), Context: sk}
	ret, err := p.p.Run(opts)
	if err != nil {
		t.Fatalf("%s: run: %v", p.name, err)
	}
	return ret, opts.DataOut
}

// TestPacketFIBMTU: a translated packet longer than the egress MTU is
// dropped and counted (never handed to the kernel, which would drop it as
// a martian when its new source is local); a GSO skb (tc) is checked per
// segment, so a GRO-merged stream is forwarded.
func TestPacketFIBMTU(t *testing.T) {
	h := newHarness(t)
	h.setConfig(xlbXlbCfg{})
	inNetns(t, func(tn testNet) {
		for _, f := range families {
			svc := h.addService(svcSpec{vip: f.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
			hdr := 40 // IPv4 + TCP
			if f.name == "v6" {
				hdr = 60
			}
			big := build(t, pktSpec{src: f.client, dst: f.vip, proto: protoTCP, flags: "A", payload: make([]byte, 2800)})
			for _, p := range h.progs() {
				h.ctFlush()
				g0, d0 := h.global().FibFragNeeded, h.svcStats(svc.id).Drops[dropMTU]
				ret, _ := run(t, p, big, uint32(tn.client.Index))
				if ret != p.drop {
					t.Fatalf("%s/%s: %d-byte packet, MTU 1500: verdict %d, want drop", p.name, f.name, len(big)-14, ret)
				}
				if g, d := h.global().FibFragNeeded-g0, h.svcStats(svc.id).Drops[dropMTU]-d0; g != 1 || d != 1 {
					t.Errorf("%s/%s: fib_frag_needed +%d, drops[mtu] +%d; want +1, +1", p.name, f.name, g, d)
				}
				if p.xdp {
					continue // XDP frames are never GSO
				}
				// Segments of 1500 - hdr bytes fit; one byte more does not.
				ret, _ = runGSO(t, p, big, uint32(tn.client.Index), uint32(1500-hdr), 2)
				if ret != p.redirect {
					t.Errorf("%s/%s: GSO skb, segments of exactly the MTU: verdict %d, want redirect", p.name, f.name, ret)
				}
				ret, _ = runGSO(t, p, big, uint32(tn.client.Index), uint32(1500-hdr+1), 2)
				if ret != p.drop {
					t.Errorf("%s/%s: GSO skb, segments one byte over the MTU: verdict %d, want drop", p.name, f.name, ret)
				}
			}
		}
	})
}

// TestPacketFIBNoRouteLocalSource: when the translated IPv4 packet has no
// route and its new source is an address of the LB (fullnat with a local
// SNAT address; onearm and replies from a plumbed VIP likewise), the kernel
// would drop it as a martian: it is dropped and counted instead. With a
// source that is not local (default mode: the client), and for IPv6 (no
// such input check), it is still left to the kernel, which can answer it
// (ICMP unreachable) or deliver it.
func TestPacketFIBNoRouteLocalSource(t *testing.T) {
	h := newHarness(t)
	h.setConfig(xlbXlbCfg{})
	inNetns(t, func(tn testNet) {
		for _, f := range families {
			// No route to 10.9.0.0/16 / fd00:9::/32 in the namespace.
			be, local := ap("10.9.0.1:8080"), netip.MustParseAddr("10.1.0.254")
			vipD, vipF := ap("10.96.0.31:80"), ap("10.96.0.32:80")
			if f.name == "v6" {
				be, local = ap("[fd00:9::1]:8080"), netip.MustParseAddr("fd00:1::fe")
				vipD, vipF = ap("[fd00:96::31]:80"), ap("[fd00:96::32]:80")
			}
			h.addService(svcSpec{vip: vipD, proto: protoUDP, algo: algoRR, backends: []beSpec{{addr: be}}})
			fn := h.addService(svcSpec{vip: vipF, proto: protoUDP, mode: natFullNAT, snat: local, algo: algoRR,
				backends: []beSpec{{addr: be}}})
			for _, p := range h.progs() {
				h.ctFlush()
				ret, out := run(t, p, build(t, pktSpec{src: f.client, dst: vipD, proto: protoUDP}), uint32(tn.client.Index))
				if ret != p.pass {
					t.Errorf("%s/%s default mode, no route: verdict %d, want pass", p.name, f.name, ret)
				}
				sameBytes(t, p.name+"/"+f.name+" default no route", out, build(t, pktSpec{src: f.client, dst: be, proto: protoUDP}))

				g0, d0 := h.global().FibDropped, h.svcStats(fn.id).Drops[dropNoRoute]
				in := build(t, pktSpec{src: f.client, dst: vipF, proto: protoUDP})
				ret, _ = run(t, p, in, uint32(tn.client.Index))
				if f.name == "v6" {
					// IPv6 input does not reject a local source: left to
					// the kernel, as before.
					if ret != p.pass {
						t.Errorf("%s/v6 fullnat with local SNAT, no route: verdict %d, want pass", p.name, ret)
					}
					continue
				}
				if ret != p.drop {
					t.Errorf("%s/%s fullnat with local SNAT %v, no route: verdict %d, want drop", p.name, f.name, local, ret)
				}
				if g, d := h.global().FibDropped-g0, h.svcStats(fn.id).Drops[dropNoRoute]-d0; g != 1 || d != 1 {
					t.Errorf("%s/%s: fib_dropped +%d, drops[no_route] +%d; want +1, +1", p.name, f.name, g, d)
				}
			}
		}
	})
}
