package dataplane

// Packet tests of the eBPF datapath through BPF_PROG_TEST_RUN: packet in,
// verdict and exact bytes out, for both entry points (xlb_tc and xlb_xdp).
// Run with: go test ./dataplane/ -run Packet -v   (as root)

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

type family_ struct {
	name                 string
	client, client2, vip netip.AddrPort
	be1, be2             netip.AddrPort
	snat, other          netip.Addr
}

var families = []family_{
	{name: "v4", client: ap("10.0.0.1:40000"), client2: ap("10.0.0.2:40001"), vip: ap("10.96.0.10:80"),
		be1: ap("10.1.0.1:8080"), be2: ap("10.1.0.2:8080"), snat: netip.MustParseAddr("10.2.0.1"),
		other: netip.MustParseAddr("10.50.0.1")},
	{name: "v6", client: ap("[fd00::1]:40000"), client2: ap("[fd00::2]:40001"), vip: ap("[fd00:96::10]:80"),
		be1: ap("[fd00:1::1]:8080"), be2: ap("[fd00:1::2]:8080"), snat: netip.MustParseAddr("fd00:2::1"),
		other: netip.MustParseAddr("fd00:50::1")},
}

var protos = []struct {
	name  string
	proto uint8
	flags string
}{{"tcp", protoTCP, "S"}, {"udp", protoUDP, ""}}

func replyFlags(proto uint8) string {
	if proto == protoTCP {
		return "SA"
	}
	return ""
}

// TestPacketDNAT: default mode (DNAT only), forward and reply, exact bytes.
func TestPacketDNAT(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for _, pr := range protos {
			for _, pi := range []int{0, 1} {
				h := newHarness(t)
				p := h.progs()[pi]
				t.Run(fmt.Sprintf("%s/%s/%s", p.name, f.name, pr.name), func(t *testing.T) {
					svc := h.addService(svcSpec{vip: f.vip, proto: pr.proto, mode: natDefault, algo: algoRR,
						backends: []beSpec{{addr: f.be1}}})
					in := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags})
					want := build(t, pktSpec{src: f.client, dst: f.be1, proto: pr.proto, flags: pr.flags})
					ret, out := run(t, p, in, 0)
					if ret != p.fwd {
						t.Fatalf("forward verdict %d, want %d", ret, p.fwd)
					}
					sameBytes(t, "forward", out, want)
					checkChecksums(t, out)

					// The backend answers the client directly (default mode routes
					// replies back through the LB).
					rin := build(t, pktSpec{src: f.be1, dst: f.client, proto: pr.proto, flags: replyFlags(pr.proto)})
					rwant := build(t, pktSpec{src: f.vip, dst: f.client, proto: pr.proto, flags: replyFlags(pr.proto)})
					ret, out = run(t, p, rin, 0)
					if ret != p.fwd {
						t.Fatalf("reply verdict %d, want %d", ret, p.fwd)
					}
					sameBytes(t, "reply", out, rwant)
					checkChecksums(t, out)

					// Counters: one new flow, two CT entries, one forward packet
					// counted on service and backend, one reverse translation.
					ss := h.svcStats(svc.id)
					if ss.NewFlows != 1 || ss.Packets != 1 || ss.Bytes != uint64(len(in)) {
						t.Errorf("svc stats %+v", ss)
					}
					bs := h.beStats(svc.bes[0])
					if bs.NewFlows != 1 || bs.Packets != 1 {
						t.Errorf("backend stats %+v", bs)
					}
					g := h.global()
					if g.Rx != 2 || g.FwdNat != 1 || g.RevNat != 1 || g.CtCreated != 2 || g.Passed != 0 {
						t.Errorf("global stats %+v", g)
					}
					if a := h.active(svc.bes[0]); a != 1 {
						t.Errorf("backend_active %d, want 1", a)
					}
					fe, ok := h.ct(f.client, f.vip, pr.proto)
					if !ok || fe.Flags != ctFRewriteDst || fe.BackendId != svc.bes[0] || fe.BackendGen != 7 {
						t.Errorf("forward entry %+v ok=%v", fe, ok)
					}
					wantLife := uint32(240)
					if pr.proto == protoUDP {
						wantLife = 60
					}
					if fe.LifetimeS != wantLife {
						t.Errorf("lifetime %d, want %d", fe.LifetimeS, wantLife)
					}
					re, ok := h.ct(f.be1, f.client, pr.proto)
					if !ok || re.Flags != ctFReply|ctFRewriteSrc || wordsAddr(re.NatSrc, family(f.vip.Addr())) != f.vip.Addr() ||
						fromBe16(re.NatSport) != f.vip.Port() {
						t.Errorf("reply entry %+v ok=%v", re, ok)
					}

					// A second packet of the flow (established) is translated the same way.
					in2 := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: "A", payload: []byte("more")})
					want2 := build(t, pktSpec{src: f.client, dst: f.be1, proto: pr.proto, flags: "A", payload: []byte("more")})
					ret, out = run(t, p, in2, 0)
					if ret != p.fwd {
						t.Fatalf("established verdict %d", ret)
					}
					sameBytes(t, "established", out, want2)
					if ss := h.svcStats(svc.id); ss.NewFlows != 1 || ss.Packets != 2 {
						t.Errorf("svc stats after 2nd packet %+v", ss)
					}
				})
			}
		}
	}
}

// TestPacketNoMatch: traffic that is not for a service passes byte-identical.
func TestPacketNoMatch(t *testing.T) {
	h := newHarness(t)
	for _, f := range families {
		h.addService(svcSpec{vip: f.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
	}
	arp := serialize(t, &layers.Ethernet{SrcMAC: macClient, DstMAC: macLB, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6,
			ProtAddressSize: 4, Operation: 1, SourceHwAddress: macClient, SourceProtAddress: []byte{10, 0, 0, 1},
			DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 0, 0, 2}})
	for _, p := range h.progs() {
		cases := map[string][]byte{"arp": arp}
		for _, f := range families {
			other := netip.AddrPortFrom(f.other, 80)
			cases[f.name+"/other-addr"] = build(t, pktSpec{src: f.client, dst: other, proto: protoTCP, flags: "S"})
			cases[f.name+"/vip-other-port"] = build(t, pktSpec{src: f.client, dst: netip.AddrPortFrom(f.vip.Addr(), 81), proto: protoTCP, flags: "S"})
			cases[f.name+"/vip-udp"] = build(t, pktSpec{src: f.client, dst: f.vip, proto: protoUDP})
		}
		for name, in := range cases {
			ret, out := run(t, p, in, 0)
			if ret != p.pass {
				t.Errorf("%s/%s: verdict %d, want pass", p.name, name, ret)
			}
			sameBytes(t, p.name+"/"+name, out, in)
		}
	}
	if n := h.ctCount(); n != 0 {
		t.Errorf("%d conntrack entries created for unmatched traffic", n)
	}
	if g := h.global(); g.Passed != g.Rx || g.FwdNat != 0 {
		t.Errorf("global %+v", g)
	}
}

// natOut returns the source a fullnat/onearm forward packet got, read from
// the output frame.
func natSource(t *testing.T, out []byte, fam uint8) netip.AddrPort {
	t.Helper()
	if fam == afInet {
		a := netip.AddrFrom4([4]byte(out[26:30]))
		l4 := 14 + ipHdrLen(out)
		return netip.AddrPortFrom(a, uint16(out[l4])<<8|uint16(out[l4+1]))
	}
	a := netip.AddrFrom16([16]byte(out[22:38]))
	return netip.AddrPortFrom(a, uint16(out[54])<<8|uint16(out[55]))
}

// TestPacketFullNAT: source rewritten to the SNAT address and a port of the
// configured range; the backend's reply to that address is translated back.
func TestPacketFullNAT(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for _, pr := range protos {
			for pi := range 2 {
				h := newHarness(t)
				p := h.progs()[pi]
				t.Run(fmt.Sprintf("%s/%s/%s", p.name, f.name, pr.name), func(t *testing.T) {
					h.addService(svcSpec{vip: f.vip, proto: pr.proto, mode: natFullNAT, algo: algoRandom,
						backends: []beSpec{{addr: f.be1}}, snat: f.snat, snatMin: 20000, snatMax: 20099})
					in := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags})
					ret, out := run(t, p, in, 0)
					if ret != p.fwd {
						t.Fatalf("verdict %d", ret)
					}
					ns := natSource(t, out, family(f.vip.Addr()))
					if ns.Addr() != f.snat || ns.Port() < 20000 || ns.Port() > 20099 {
						t.Fatalf("SNAT source %v, want %v:20000-20099", ns, f.snat)
					}
					want := build(t, pktSpec{src: ns, dst: f.be1, proto: pr.proto, flags: pr.flags})
					sameBytes(t, "forward", out, want)
					checkChecksums(t, out)

					rin := build(t, pktSpec{src: f.be1, dst: ns, proto: pr.proto, flags: replyFlags(pr.proto)})
					rwant := build(t, pktSpec{src: f.vip, dst: f.client, proto: pr.proto, flags: replyFlags(pr.proto)})
					ret, out = run(t, p, rin, 0)
					if ret != p.fwd {
						t.Fatalf("reply verdict %d", ret)
					}
					sameBytes(t, "reply", out, rwant)
					checkChecksums(t, out)

					re, ok := h.ct(f.be1, ns, pr.proto)
					if !ok || re.Flags != ctFReply|ctFRewriteSrc|ctFRewriteDst {
						t.Errorf("reply entry %+v", re)
					}
				})
			}
		}
	}
}

// TestPacketSNATExhausted: a one-port range serves one flow per backend;
// the next client is dropped and counted.
func TestPacketSNATExhausted(t *testing.T) {
	h := newHarness(t)
	f := families[0]
	svc := h.addService(svcSpec{vip: f.vip, proto: protoTCP, mode: natFullNAT, algo: algoRR,
		backends: []beSpec{{addr: f.be1}}, snat: f.snat, snatMin: 30000, snatMax: 30000})
	for _, p := range h.progs() {
		h.ctFlush()
		ret, _ := run(t, p, build(t, pktSpec{src: f.client, dst: f.vip, proto: protoTCP, flags: "S"}), 0)
		if ret != p.fwd {
			t.Fatalf("%s: first flow verdict %d", p.name, ret)
		}
		ret, _ = run(t, p, build(t, pktSpec{src: f.client2, dst: f.vip, proto: protoTCP, flags: "S"}), 0)
		if ret != p.drop {
			t.Fatalf("%s: second flow verdict %d, want drop", p.name, ret)
		}
	}
	if d := h.svcStats(svc.id).Drops[dropSNATExhausted]; d != 2 {
		t.Errorf("snat_exhausted drops %d, want 2", d)
	}
}

// TestPacketIPv4Options: L4 is found at IHL*4 and translated; options kept.
func TestPacketIPv4Options(t *testing.T) {
	h := newHarness(t)
	f := families[0]
	h.addService(svcSpec{vip: f.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
	h.addService(svcSpec{vip: f.vip, proto: protoUDP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
	// Two NOPs + a 4-byte... keep it simple: one 8-byte option area of NOPs and EOL.
	opts := []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1},
		{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	for _, p := range h.progs() {
		for _, pr := range protos {
			h.ctFlush()
			in := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags, ipOpts: opts})
			if ipHdrLen(in) != 28 {
				t.Fatalf("test packet IHL %d", ipHdrLen(in))
			}
			want := build(t, pktSpec{src: f.client, dst: f.be1, proto: pr.proto, flags: pr.flags, ipOpts: opts})
			ret, out := run(t, p, in, 0)
			if ret != p.fwd {
				t.Fatalf("%s/%s verdict %d", p.name, pr.name, ret)
			}
			sameBytes(t, p.name+"/"+pr.name, out, want)
			checkChecksums(t, out)
		}
	}
}

// TestPacketUDPZeroChecksum: UDP/IPv4 without checksum stays without.
func TestPacketUDPZeroChecksum(t *testing.T) {
	h := newHarness(t)
	f := families[0]
	h.addService(svcSpec{vip: f.vip, proto: protoUDP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
	for _, p := range h.progs() {
		h.ctFlush()
		in := build(t, pktSpec{src: f.client, dst: f.vip, proto: protoUDP, zeroUDPCsum: true})
		want := build(t, pktSpec{src: f.client, dst: f.be1, proto: protoUDP, zeroUDPCsum: true})
		ret, out := run(t, p, in, 0)
		if ret != p.fwd {
			t.Fatalf("%s verdict %d", p.name, ret)
		}
		sameBytes(t, p.name, out, want)
		if out[40] != 0 || out[41] != 0 {
			t.Errorf("%s: UDP checksum %02x%02x, want 0000", p.name, out[40], out[41])
		}
		checkChecksums(t, out)
	}
}
