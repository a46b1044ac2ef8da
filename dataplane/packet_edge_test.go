package dataplane

// Edge cases: truncated and malformed packets, fragments, ICMP errors.

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// TestPacketTruncated runs every prefix of valid packets to a VIP: the
// datapath never translates them (bytes unchanged), never crashes, and
// creates no conntrack entry. Prefixes that still show the ports are dropped
// as malformed for the service; shorter ones pass.
func TestPacketTruncated(t *testing.T) {
	h := newHarness(t)
	for _, f := range families {
		for _, pr := range protos {
			h.addService(svcSpec{vip: f.vip, proto: pr.proto, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
		}
	}
	for _, p := range h.progs() {
		for _, f := range families {
			for _, pr := range protos {
				full := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags})
				for n := 0; n < len(full); n++ {
					in := full[:n]
					ret, out, err := tryRun(p, in, 0)
					if err != nil {
						// The kernel refuses frames shorter than an Ethernet
						// header, and skbs whose network header it cannot pull.
						if n >= 14 && (p.xdp || n >= 14+40) {
							t.Fatalf("%s %s/%s len %d: %v", p.name, f.name, pr.name, n, err)
						}
						continue
					}
					if ret != p.pass && ret != p.drop {
						t.Errorf("%s %s/%s len %d: verdict %d", p.name, f.name, pr.name, n, ret)
					}
					sameBytes(t, "truncated", out, in)
				}
			}
		}
	}
	if n := h.ctCount(); n != 0 {
		t.Errorf("%d conntrack entries from truncated packets", n)
	}
	if g := h.global(); g.Malformed == 0 || g.FwdNat != 0 {
		t.Errorf("global %+v", g)
	}
}

// TestPacketMalformed: IHL < 5 passes untouched; a total length beyond the
// frame is dropped and counted on the service it is addressed to.
func TestPacketMalformed(t *testing.T) {
	h := newHarness(t)
	f := families[0]
	svc := h.addService(svcSpec{vip: f.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
	good := build(t, pktSpec{src: f.client, dst: f.vip, proto: protoTCP, flags: "S"})

	ihl4 := append([]byte(nil), good...)
	ihl4[14] = 0x44
	badLen := append([]byte(nil), good...)
	binary.BigEndian.PutUint16(badLen[16:], uint16(len(good)-14+1))
	shortLen := append([]byte(nil), good...)
	binary.BigEndian.PutUint16(shortLen[16:], 20+10) // TCP header cut by the IP length
	v6bad := build(t, pktSpec{src: families[1].client, dst: families[1].vip, proto: protoTCP, flags: "S"})
	binary.BigEndian.PutUint16(v6bad[18:], 200)

	cases := []struct {
		name string
		in   []byte
		drop bool
	}{
		{"ihl<5", ihl4, false},
		{"tot_len>frame", badLen, true},
		{"tot_len<l4", shortLen, true},
		{"v6 plen>frame", v6bad, false}, // no v6 service: not attributable
	}
	for _, p := range h.progs() {
		for _, c := range cases {
			ret, out := run(t, p, c.in, 0)
			want := p.pass
			if c.drop {
				want = p.drop
			}
			if ret != want {
				t.Errorf("%s/%s: verdict %d, want %d", p.name, c.name, ret, want)
			}
			sameBytes(t, p.name+"/"+c.name, out, c.in)
		}
	}
	if d := h.svcStats(svc.id).Drops[dropMalformed]; d != 4 {
		t.Errorf("malformed drops %d, want 4", d)
	}
	if g := h.global(); g.Malformed != 8 {
		t.Errorf("global malformed %d, want 8", g.Malformed)
	}
}

func fragV4(t *testing.T, src, dst netip.AddrPort, mf bool, off uint16) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 7, Protocol: layers.IPProtocolTCP,
		SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), FragOffset: off}
	if mf {
		ip.Flags = layers.IPv4MoreFragments
	}
	tcp := tcpLayer(pktSpec{src: src, dst: dst, flags: "S"})
	tcp.SetNetworkLayerForChecksum(ip)
	eth := &layers.Ethernet{SrcMAC: macClient, DstMAC: macLB, EthernetType: layers.EthernetTypeIPv4}
	if off != 0 {
		return serialize(t, eth, ip, gopacket.Payload(make([]byte, 24)))
	}
	return serialize(t, eth, ip, tcp, gopacket.Payload(make([]byte, 24)))
}

func fragV6(t *testing.T, src, dst netip.AddrPort, off uint16, more bool) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment,
		SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	fh := make([]byte, 8)
	fh[0] = protoTCP
	v := off << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], v)
	binary.BigEndian.PutUint32(fh[4:], 0xabcd)
	body := make([]byte, 32)
	binary.BigEndian.PutUint16(body[0:], src.Port())
	binary.BigEndian.PutUint16(body[2:], dst.Port())
	eth := &layers.Ethernet{SrcMAC: macClient, DstMAC: macLB, EthernetType: layers.EthernetTypeIPv6}
	return serialize(t, eth, ip, gopacket.Payload(append(fh, body...)))
}

// TestPacketFragments: fragments of datagrams whose first fragment was not
// translated. To a VIP, a later fragment nobody saw the first of is dropped
// (frag_dropped; it has no ports, no service to count it on); to any other
// address fragments pass untouched. A first fragment to a VIP port that is
// no service passes, and so do its later fragments. (Tracked datagrams:
// packet_frag_test.go.)
func TestPacketFragments(t *testing.T) {
	h := newHarness(t)
	v4, v6 := families[0], families[1]
	s4 := h.addService(svcSpec{vip: v4.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: v4.be1}}})
	s6 := h.addService(svcSpec{vip: v6.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: v6.be1}}})
	other4 := netip.AddrPortFrom(v4.other, 80)
	other6 := netip.AddrPortFrom(v6.other, 80)
	noSvc4 := netip.AddrPortFrom(v4.vip.Addr(), 81)
	withID := func(b []byte, id uint16) []byte {
		b = clone(b)
		put16(b, 18, id)
		return fixIPv4Csum(b)
	}
	cases := []struct {
		name string
		in   []byte
		drop bool
	}{
		{"v4 middle to VIP", fragV4(t, v4.client, v4.vip, true, 100), true},
		{"v4 last to VIP", fragV4(t, v4.client, v4.vip, false, 100), true},
		{"v4 first to other", fragV4(t, v4.client, other4, true, 0), false},
		{"v4 last to other", fragV4(t, v4.client, other4, false, 100), false},
		{"v4 first to VIP, no service on the port", withID(fragV4(t, v4.client, noSvc4, true, 0), 8), false},
		{"v4 last to VIP after a passed first", withID(fragV4(t, v4.client, noSvc4, false, 100), 8), false},
		{"v6 last to VIP", fragV6(t, v6.client, v6.vip, 100, false), true},
		{"v6 first to other", fragV6(t, v6.client, other6, 0, true), false},
	}
	for _, p := range h.progs() {
		for _, c := range cases {
			ret, out := run(t, p, c.in, 0)
			want := p.pass
			if c.drop {
				want = p.drop
			}
			if ret != want {
				t.Errorf("%s/%s: verdict %d, want %d", p.name, c.name, ret, want)
			}
			sameBytes(t, p.name+"/"+c.name, out, c.in)
		}
	}
	// Untracked later fragments carry no ports: not attributed to a service.
	for _, s := range []uint32{s4.id, s6.id} {
		if d := h.svcStats(s).Drops[dropFragment]; d != 0 {
			t.Errorf("fragment drops on service %d: %d, want 0", s, d)
		}
	}
	if g := h.global(); g.Fragments != 16 || g.FragDropped != 6 || g.FwdNat != 0 || g.FragNat != 0 {
		t.Errorf("global %+v", g)
	}
	if n := h.ctCount(); n != 0 {
		t.Errorf("%d conntrack entries from fragments", n)
	}
}

// quote returns the IP header + first 8 L4 bytes of a frame, as an ICMP
// error quotes it.
func quote(frame []byte) []byte {
	if frame[12] == 0x08 {
		hl := ipHdrLen(frame)
		return append([]byte(nil), frame[14:14+hl+8]...)
	}
	return append([]byte(nil), frame[14:14+40+8]...)
}

// icmpErr builds an ICMP "fragmentation needed" (v4) / "packet too big" (v6)
// from src to dst quoting q.
func icmpErr(t *testing.T, src, dst netip.Addr, q []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: macClient, DstMAC: macLB}
	if src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 9, Protocol: layers.IPProtocolICMPv4,
			SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4), Seq: 1400}
		return serialize(t, eth, ip, ic, gopacket.Payload(q))
	}
	eth.EthernetType = layers.EthernetTypeIPv6
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(2, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	mtu := []byte{0, 0, 0x05, 0x00}
	return serialize(t, eth, ip, ic, gopacket.Payload(append(mtu, q...)))
}

// TestPacketICMP: ICMP errors quoting a translated packet are translated
// (quote, outer addresses, all checksums), in both directions and modes.
func TestPacketICMP(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		router := netip.MustParseAddr("10.1.0.254")
		router2 := netip.MustParseAddr("10.0.0.254")
		if f.name == "v6" {
			router = netip.MustParseAddr("fd00:1::fe")
			router2 = netip.MustParseAddr("fd00::fe")
		}
		for pi := range 2 {
			for _, mode := range []uint8{natDefault, natFullNAT} {
				h := newHarness(t)
				p := h.progs()[pi]
				name := p.name + "/" + f.name + map[uint8]string{natDefault: "/default", natFullNAT: "/fullnat"}[mode]
				t.Run(name, func(t *testing.T) {
					h.addService(svcSpec{vip: f.vip, proto: protoTCP, mode: mode, algo: algoRR,
						backends: []beSpec{{addr: f.be1}}, snat: f.snat})
					in := build(t, pktSpec{src: f.client, dst: f.vip, proto: protoTCP, flags: "S"})
					ret, fwd := run(t, p, in, 0)
					if ret != p.fwd {
						t.Fatalf("forward verdict %d", ret)
					}
					nsrc := natSource(t, fwd, family(f.vip.Addr())) // client (default) or snat:port

					// 1. A router between LB and backend: "too big" about the
					// forwarded packet, sent to its source.
					icmp := icmpErr(t, router, nsrc.Addr(), quote(fwd))
					want := icmpErr(t, router, f.client.Addr(), quote(in))
					ret, out := run(t, p, icmp, 0)
					if ret != p.fwd {
						t.Fatalf("icmp toward client: verdict %d", ret)
					}
					sameBytes(t, "icmp toward client", out, want)
					checkChecksums(t, out)

					// 2. A router between client and LB: "too big" about a reply
					// (VIP -> client), sent to the VIP: goes to the backend.
					reply := build(t, pktSpec{src: f.vip, dst: f.client, proto: protoTCP, flags: "SA"})
					breply := build(t, pktSpec{src: f.be1, dst: nsrc, proto: protoTCP, flags: "SA"})
					icmp = icmpErr(t, router2, f.vip.Addr(), quote(reply))
					want = icmpErr(t, router2, f.be1.Addr(), quote(breply))
					ret, out = run(t, p, icmp, 0)
					if ret != p.fwd {
						t.Fatalf("icmp toward backend: verdict %d", ret)
					}
					sameBytes(t, "icmp toward backend", out, want)
					checkChecksums(t, out)

					// 3. The backend itself reports an error about the forwarded
					// packet: the outer source becomes the VIP too.
					icmp = icmpErr(t, f.be1.Addr(), nsrc.Addr(), quote(fwd))
					want = icmpErr(t, f.vip.Addr(), f.client.Addr(), quote(in))
					ret, out = run(t, p, icmp, 0)
					if ret != p.fwd {
						t.Fatalf("icmp from backend: verdict %d", ret)
					}
					sameBytes(t, "icmp from backend", out, want)
					checkChecksums(t, out)

					// 4. An error about an unknown flow passes untouched.
					unknown := build(t, pktSpec{src: f.client2, dst: f.be2, proto: protoTCP, flags: "S"})
					icmp = icmpErr(t, router, f.client2.Addr(), quote(unknown))
					ret, out = run(t, p, icmp, 0)
					if ret != p.pass {
						t.Fatalf("unknown icmp: verdict %d", ret)
					}
					sameBytes(t, "unknown icmp", out, icmp)

					if g := h.global(); g.IcmpNat != 3 {
						t.Errorf("icmp_nat %d, want 3", g.IcmpNat)
					}
				})
			}
		}
	}
}
