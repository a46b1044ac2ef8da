package dataplane

// The malformed-input corpus (issue 9, item 5): every frame of the corpus
// runs through both entry points, once with no conntrack state and once
// after a valid packet established a flow for the tuple the frame would
// otherwise match. The policy it checks is the table "Malformed input" in
// docs/datapath.md:
//   - a malformed frame is never translated: it is dropped, or passed with
//     its bytes unchanged; DROP when its (dst, dport, proto) is attributable
//     to a service (the ports are readable inside the datagram), PASS
//     otherwise; global.malformed counts it;
//   - valid edge cases (IPv4 options, IPv6 hop-by-hop/destination options,
//     Ethernet padding) are translated as any packet;
//   - VLAN/QinQ-tagged frames and packets xlb declines to parse (routing
//     header, too many extension headers) pass unchanged;
//   - an established flow is unaffected: the next valid packet of the flow is
//     translated exactly as before.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
)

type outcome int

const (
	oPass      outcome = iota // passed, bytes unchanged
	oDrop                     // dropped
	oTranslate                // valid: translated to the backend (want holds the bytes)
)

func (o outcome) String() string {
	return [...]string{"PASS", "DROP", "TRANSLATE"}[o]
}

type corpusCase struct {
	name string
	fam  int   // index into families: the flow of the with-flow variant
	prot uint8 // protocol of that flow
	in   []byte
	out  outcome
	// malformed: global.malformed must count the frame.
	malformed bool
	// want: expected output of a oTranslate case.
	want []byte
}

// ---- raw frame editing ----

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func put16(b []byte, off int, v uint16) { binary.BigEndian.PutUint16(b[off:], v) }

// fixIPv4Csum recomputes the IPv4 header checksum of a frame in place.
func fixIPv4Csum(b []byte) []byte {
	hl := ipHdrLen(b)
	b[24], b[25] = 0, 0
	put16(b, 24, ^fold(sum16(b[14:14+hl], 0)))
	return b
}

// withIPv4Opts returns a copy of frame with opts (a multiple of 4 bytes)
// inserted as IPv4 options, IHL, total length and header checksum fixed (the
// L4 checksum does not cover the IP header).
func withIPv4Opts(frame, opts []byte) []byte {
	b := append(clone(frame[:34]), opts...)
	b = append(b, frame[34:]...)
	b[14] = 0x40 | byte((20+len(opts))/4)
	put16(b, 16, binary.BigEndian.Uint16(frame[16:])+uint16(len(opts)))
	return fixIPv4Csum(b)
}

// v6Ext is one IPv6 extension header: its protocol number and its bytes
// (the next-header byte is filled in by withV6Ext).
type v6Ext struct {
	nh   uint8
	body []byte
}

const (
	nhHopByHop = 0
	nhRouting  = 43
	nhDstOpts  = 60
)

// padExt returns an 8*n-byte option header (hop-by-hop or destination
// options) filled with a PadN option.
func padExt(nh uint8, n int) v6Ext {
	b := make([]byte, 8*n)
	b[1] = byte(n - 1)
	b[2] = 1 // PadN
	b[3] = byte(8*n - 4)
	return v6Ext{nh: nh, body: b}
}

// withV6Ext returns a copy of an IPv6 frame with the extension headers
// inserted between the fixed header and L4 (payload length and next-header
// chain fixed; the L4 checksum is unchanged: its pseudo-header holds the
// upper-layer length).
func withV6Ext(frame []byte, exts ...v6Ext) []byte {
	b := clone(frame[:54])
	last := frame[20]
	plen := binary.BigEndian.Uint16(frame[18:])
	for i, e := range exts {
		if i == 0 {
			b[20] = e.nh
		}
		body := clone(e.body)
		if i+1 < len(exts) {
			body[0] = exts[i+1].nh
		} else {
			body[0] = last
		}
		b = append(b, body...)
		plen += uint16(len(body))
	}
	put16(b, 18, plen)
	return append(b, frame[54:]...)
}

// vlanTag inserts tags (each 4 bytes: TPID, TCI) after the MAC addresses.
func vlanTag(frame []byte, tags ...uint32) []byte {
	b := clone(frame[:12])
	for _, tg := range tags {
		b = binary.BigEndian.AppendUint32(b, tg)
	}
	return append(b, frame[12:]...)
}

// icmpCut shortens the ICMP message of an ICMP error frame to quoteLen bytes
// of quote by lowering the IP length, with valid IP and ICMP checksums; the
// bytes past the new end stay in the frame (an Ethernet trailer) unless
// trim is set.
func icmpCut(frame []byte, quoteLen int, trim bool) []byte {
	b := clone(frame)
	if b[12] == 0x08 {
		hl := ipHdrLen(b)
		tot := hl + 8 + quoteLen
		put16(b, 16, uint16(tot))
		fixIPv4Csum(b)
		ic := b[14+hl : 14+tot]
		ic[2], ic[3] = 0, 0
		put16(ic, 2, ^fold(sum16(ic, 0)))
		if trim {
			b = b[:14+tot]
		}
		return b
	}
	plen := 8 + quoteLen
	put16(b, 18, uint16(plen))
	ic := b[54 : 54+plen]
	ic[2], ic[3] = 0, 0
	acc := sum16(b[22:54], 0) + 58 + uint32(plen)
	put16(ic, 2, ^fold(sum16(ic, acc)))
	if trim {
		b = b[:54+plen]
	}
	return b
}

// ---- the corpus ----

func corpus(t *testing.T) []corpusCase {
	t.Helper()
	v4, v6 := families[0], families[1]
	var cs []corpusCase
	add := func(c corpusCase) { cs = append(cs, c) }
	mal := func(name string, fam int, prot uint8, in []byte, out outcome) {
		add(corpusCase{name: name, fam: fam, prot: prot, in: in, out: out, malformed: true})
	}
	valid := func(name string, fam int, prot uint8, in, want []byte) {
		add(corpusCase{name: name, fam: fam, prot: prot, in: in, out: oTranslate, want: want})
	}
	other := func(name string, fam int, prot uint8, in []byte, out outcome) {
		add(corpusCase{name: name, fam: fam, prot: prot, in: in, out: out})
	}
	pkt := func(f family_, dst netip.AddrPort, proto uint8) []byte {
		flags := ""
		if proto == protoTCP {
			flags = "S"
		}
		return build(t, pktSpec{src: f.client, dst: dst, proto: proto, flags: flags})
	}
	tcp4, udp4 := pkt(v4, v4.vip, protoTCP), pkt(v4, v4.vip, protoUDP)
	tcp6, udp6 := pkt(v6, v6.vip, protoTCP), pkt(v6, v6.vip, protoUDP)
	xtcp4, xudp4 := pkt(v4, v4.be1, protoTCP), pkt(v4, v4.be1, protoUDP)
	xtcp6, xudp6 := pkt(v6, v6.be1, protoTCP), pkt(v6, v6.be1, protoUDP)

	// Truncation at and inside every header: the frame is cut, the IP
	// length still claims the whole datagram. Attributable (DROP) once
	// both ports are in the frame.
	for _, c := range []struct {
		name string
		fam  int
		prot uint8
		full []byte
		n    int
		out  outcome
	}{
		{"v4 cut in ethernet", 0, protoTCP, tcp4, 10, oPass},
		{"v4 cut after ethernet", 0, protoTCP, tcp4, 14, oPass},
		{"v4 cut in IPv4 header", 0, protoTCP, tcp4, 14 + 12, oPass},
		{"v4 cut after IPv4 header", 0, protoTCP, tcp4, 34, oPass},
		{"v4 cut in TCP sport", 0, protoTCP, tcp4, 34 + 1, oPass},
		{"v4 cut in TCP after ports", 0, protoTCP, tcp4, 34 + 4, oDrop},
		{"v4 cut in TCP before checksum", 0, protoTCP, tcp4, 34 + 16, oDrop},
		{"v4 cut after TCP header", 0, protoTCP, tcp4, 34 + 20, oDrop},
		{"v4 cut in UDP ports", 0, protoUDP, udp4, 34 + 3, oPass},
		{"v4 cut in UDP after ports", 0, protoUDP, udp4, 34 + 6, oDrop},
		{"v4 cut after UDP header", 0, protoUDP, udp4, 34 + 8, oDrop},
		{"v6 cut in IPv6 header", 1, protoTCP, tcp6, 14 + 30, oPass},
		{"v6 cut after IPv6 header", 1, protoTCP, tcp6, 54, oPass},
		{"v6 cut in TCP after ports", 1, protoTCP, tcp6, 54 + 4, oDrop},
		{"v6 cut after TCP header", 1, protoTCP, tcp6, 54 + 20, oDrop},
		{"v6 cut in UDP after ports", 1, protoUDP, udp6, 54 + 6, oDrop},
	} {
		mal(c.name, c.fam, c.prot, clone(c.full[:c.n]), c.out)
	}
	// Inside IPv4 options (IHL 8: the L4 header is not reached).
	// NOP, NOP, record route (len 7, ptr 4: one empty slot), EOL, padding.
	rr := []byte{1, 1, 7, 7, 4, 0, 0, 0, 0, 0, 0, 0}
	withRR := withIPv4Opts(tcp4, rr)
	mal("v4 cut in IPv4 options", 0, protoTCP, clone(withRR[:34+5]), oPass)
	mal("v4 cut after IPv4 options", 0, protoTCP, clone(withRR[:34+12]), oPass)
	// Inside IPv6 extension headers.
	hbh := withV6Ext(tcp6, padExt(nhHopByHop, 1))
	mal("v6 cut in hop-by-hop", 1, protoTCP, clone(hbh[:54+4]), oPass)
	mal("v6 cut after hop-by-hop", 1, protoTCP, clone(hbh[:54+8]), oPass)
	mal("v6 cut in TCP after hop-by-hop", 1, protoTCP, clone(hbh[:54+8+6]), oDrop)
	hd := withV6Ext(udp6, padExt(nhHopByHop, 1), padExt(nhDstOpts, 2))
	mal("v6 cut in destination options", 1, protoUDP, clone(hd[:54+8+10]), oPass)

	// IPv4 header fields.
	b := clone(tcp4)
	b[14] = 0x44
	mal("v4 IHL 4", 0, protoTCP, fixIPv4Csum(b), oPass)
	b = clone(tcp4)
	b[14] = 0x40
	mal("v4 IHL 0", 0, protoTCP, fixIPv4Csum(b), oPass)
	b = append(clone(tcp4), make([]byte, 40)...) // bytes exist where IHL 15 points
	b[14] = 0x4f
	mal("v4 IHL beyond tot_len", 0, protoTCP, fixIPv4Csum(b), oPass)
	b = clone(tcp4)
	put16(b, 16, uint16(len(tcp4)-14+1))
	mal("v4 tot_len beyond frame", 0, protoTCP, fixIPv4Csum(b), oDrop)
	b = clone(tcp4)
	put16(b, 16, 20+10)
	mal("v4 tot_len cuts TCP header", 0, protoTCP, fixIPv4Csum(b), oDrop)
	b = clone(tcp4)
	put16(b, 16, 12)
	mal("v4 tot_len < IHL", 0, protoTCP, fixIPv4Csum(b), oDrop)
	b = clone(udp4)
	put16(b, 16, 20+6)
	mal("v4 tot_len cuts UDP header", 0, protoUDP, fixIPv4Csum(b), oDrop)
	b = clone(tcp4)
	b[14] = 0x65
	mal("v4 ethertype, version 6", 0, protoTCP, fixIPv4Csum(b), oPass)
	b = clone(tcp6)
	b[14] = 0x40 | b[14]&0xf
	mal("v6 ethertype, version 4", 1, protoTCP, b, oPass)
	b = clone(tcp6)
	put16(b, 18, uint16(len(tcp6)-54+1))
	mal("v6 payload length beyond frame", 1, protoTCP, b, oDrop)
	b = clone(udp6)
	put16(b, 18, 6)
	mal("v6 payload length cuts UDP header", 1, protoUDP, b, oDrop)

	// IPv4 header checksum and options.
	b = clone(tcp4)
	b[24] ^= 0x55
	mal("v4 bad header checksum", 0, protoTCP, b, oDrop)
	b = clone(udp4)
	b[25] ^= 0x01
	mal("v4 bad header checksum udp", 0, protoUDP, b, oDrop)
	b = withIPv4Opts(tcp4, rr)
	b[26] ^= 0x10 // header checksum covers the options too
	mal("v4 bad header checksum with options", 0, protoTCP, b, oDrop)
	mal("v4 option length 0", 0, protoTCP, withIPv4Opts(tcp4, []byte{7, 0, 4, 0}), oDrop)
	mal("v4 option length 1", 0, protoTCP, withIPv4Opts(tcp4, []byte{1, 7, 1, 0}), oDrop)
	mal("v4 option length past IHL", 0, protoTCP, withIPv4Opts(tcp4, []byte{1, 7, 11, 4}), oDrop)
	mal("v4 option length past IHL udp", 0, protoUDP, withIPv4Opts(udp4, []byte{1, 1, 1, 1, 68, 12, 5, 0}), oDrop)
	mal("v4 option header past IHL", 0, protoTCP, withIPv4Opts(tcp4, []byte{1, 1, 1, 7}), oDrop)
	// Valid options: translated, options kept.
	valid("v4 options NOP/RR/EOL", 0, protoTCP, withRR, withIPv4Opts(xtcp4, rr))
	ra := []byte{0x94, 4, 0, 0}
	valid("v4 option router alert udp", 0, protoUDP, withIPv4Opts(udp4, ra), withIPv4Opts(xudp4, ra))
	ts := []byte{68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0} // timestamp, one empty slot
	valid("v4 option timestamp", 0, protoTCP, withIPv4Opts(tcp4, ts), withIPv4Opts(xtcp4, ts))

	// TCP / UDP header fields.
	b = clone(tcp4)
	b[34+12] = 4 << 4
	mal("v4 TCP data offset 4", 0, protoTCP, b, oDrop)
	b = clone(tcp4)
	b[34+12] = 15 << 4
	mal("v4 TCP data offset past IP length", 0, protoTCP, b, oDrop)
	b = clone(tcp6)
	b[54+12] = 0
	mal("v6 TCP data offset 0", 1, protoTCP, b, oDrop)
	b = clone(tcp6)
	b[54+12] = 12 << 4
	mal("v6 TCP data offset past payload length", 1, protoTCP, b, oDrop)
	b = clone(udp4)
	put16(b, 34+4, 7)
	mal("v4 UDP length 7", 0, protoUDP, b, oDrop)
	b = clone(udp4)
	put16(b, 34+4, uint16(len(udp4)-34+1))
	mal("v4 UDP length past IP length", 0, protoUDP, b, oDrop)
	b = clone(udp6)
	put16(b, 54+4, 0)
	mal("v6 UDP length 0", 1, protoUDP, b, oDrop)
	b = clone(udp6)
	put16(b, 54+4, uint16(len(udp6)-54+8))
	mal("v6 UDP length past payload length", 1, protoUDP, b, oDrop)

	// IPv6 extension header chains.
	valid("v6 hop-by-hop", 1, protoTCP, hbh, withV6Ext(xtcp6, padExt(nhHopByHop, 1)))
	valid("v6 hop-by-hop + destination options", 1, protoUDP, hd,
		withV6Ext(xudp6, padExt(nhHopByHop, 1), padExt(nhDstOpts, 2)))
	valid("v6 destination options", 1, protoTCP, withV6Ext(tcp6, padExt(nhDstOpts, 1)),
		withV6Ext(xtcp6, padExt(nhDstOpts, 1)))
	// A routing header: the destination is not final; never translated.
	rh := v6Ext{nh: nhRouting, body: []byte{0, 0, 4, 0, 0, 0, 0, 0}} // type 4 (SRH), segments left 0, no segments
	other("v6 routing header", 1, protoTCP, withV6Ext(tcp6, rh), oPass)
	five := withV6Ext(tcp6, padExt(nhHopByHop, 1), padExt(nhDstOpts, 1), padExt(nhDstOpts, 1),
		padExt(nhDstOpts, 1), padExt(nhDstOpts, 1))
	other("v6 five extension headers", 1, protoTCP, five, oPass)
	b = withV6Ext(tcp6, padExt(nhHopByHop, 1))
	put16(b, 18, 4) // the datagram ends inside the hop-by-hop header
	mal("v6 truncated hop-by-hop", 1, protoTCP, b[:54+4], oPass)
	b = withV6Ext(udp6, padExt(nhHopByHop, 1))
	b[54+1] = 20 // 168 bytes: past the payload
	mal("v6 hop-by-hop length past payload", 1, protoUDP, b, oPass)
	b = withV6Ext(tcp6, padExt(nhHopByHop, 1), padExt(nhDstOpts, 1))
	b[54+8+1] = 30
	mal("v6 destination options length past payload", 1, protoTCP, b, oPass)

	// ICMP errors. toClient: a router reports about a forward packet
	// (client -> backend after default-mode DNAT), which is translated for
	// the established flow; toVIP: about a reply (VIP -> client).
	for fi, f := range families {
		router := netip.MustParseAddr("10.1.0.254")
		if fi == 1 {
			router = netip.MustParseAddr("fd00:1::fe")
		}
		fwd := pkt(f, f.be1, protoTCP)
		hl := 20
		if fi == 1 {
			hl = 40
		}
		full := icmpErr(t, router, f.client.Addr(), quote(fwd))
		ioff := 14 + hl // ICMP header
		mal(f.name+" ICMP cut in ICMP header", fi, protoTCP, clone(full[:ioff+4]), oPass)
		mal(f.name+" ICMP cut in quoted IP header", fi, protoTCP, clone(full[:ioff+8+10]), oPass)
		mal(f.name+" ICMP cut in quoted L4 header", fi, protoTCP, clone(full[:ioff+8+hl+6]), oPass)
		mal(f.name+" ICMP quote cut by IP length, trailer", fi, protoTCP, icmpCut(full, hl+4, false), oPass)
		mal(f.name+" ICMP quote IP header only, trailer", fi, protoTCP, icmpCut(full, hl, false), oPass)
		mal(f.name+" ICMP quote shorter than IP header + 8", fi, protoTCP, icmpCut(full, hl+4, true), oPass)
		if fi == 0 {
			b := clone(full)
			b[14+hl+8] = 0x46 // quoted IHL 6: the quote ends before the quoted ports' 8 bytes
			mal(f.name+" ICMP quoted IHL past quote", fi, protoTCP, icmpCut(b, len(quote(fwd)), false), oPass)
		}
	}

	// Fragments nobody saw the first of: dropped to a VIP, passed elsewhere.
	other("v4 non-first fragment to VIP, untracked", 0, protoTCP, fragV4(t, v4.client, v4.vip, true, 100), oDrop)
	other("v4 last fragment to VIP, untracked", 0, protoTCP, fragV4(t, v4.client, v4.vip, false, 100), oDrop)
	other("v4 non-first fragment elsewhere", 0, protoTCP, fragV4(t, v4.client, netip.AddrPortFrom(v4.other, 80), true, 100), oPass)
	other("v6 non-first fragment to VIP, untracked", 1, protoTCP, fragV6(t, v6.client, v6.vip, 100, true), oDrop)
	other("v6 last fragment to VIP, untracked", 1, protoTCP, fragV6(t, v6.client, v6.vip, 100, false), oDrop)
	other("v6 non-first fragment elsewhere", 1, protoTCP, fragV6(t, v6.client, netip.AddrPortFrom(v6.other, 80), 100, true), oPass)

	// VLAN: xlb does not parse tags; tagged frames pass unchanged.
	const (
		dot1q = 0x8100_0064 // TPID 0x8100, VID 100
		qinq  = 0x88a8_00c8 // TPID 0x88a8, VID 200
	)
	other("v4 802.1Q TCP to VIP", 0, protoTCP, vlanTag(tcp4, dot1q), oPass)
	other("v4 802.1Q UDP to VIP", 0, protoUDP, vlanTag(udp4, dot1q), oPass)
	other("v6 802.1Q TCP to VIP", 1, protoTCP, vlanTag(tcp6, dot1q), oPass)
	other("v4 QinQ TCP to VIP", 0, protoTCP, vlanTag(tcp4, qinq, dot1q), oPass)
	other("v6 QinQ UDP to VIP", 1, protoUDP, vlanTag(udp6, qinq, dot1q), oPass)

	// Ethernet padding / trailer past the IP length: valid, translated, the
	// trailer kept as it is.
	pad := func(b []byte, n int) []byte { return append(clone(b), make([]byte, n)...) }
	small4 := build(t, pktSpec{src: v4.client, dst: v4.vip, proto: protoUDP, payload: []byte{}})
	xsmall4 := build(t, pktSpec{src: v4.client, dst: v4.be1, proto: protoUDP, payload: []byte{}})
	valid("v4 UDP padded to 60 bytes", 0, protoUDP, pad(small4, 60-len(small4)), pad(xsmall4, 60-len(small4)))
	syn4 := build(t, pktSpec{src: v4.client, dst: v4.vip, proto: protoTCP, flags: "S", payload: []byte{}})
	xsyn4 := build(t, pktSpec{src: v4.client, dst: v4.be1, proto: protoTCP, flags: "S", payload: []byte{}})
	valid("v4 TCP SYN padded to 60 bytes", 0, protoTCP, pad(syn4, 60-len(syn4)), pad(xsyn4, 60-len(syn4)))
	trailer := func(b []byte) []byte { return append(clone(b), 0xde, 0xad, 0xbe, 0xef) }
	valid("v6 TCP with 4-byte trailer", 1, protoTCP, trailer(tcp6), trailer(xtcp6))
	valid("v6 UDP with 4-byte trailer", 1, protoUDP, trailer(udp6), trailer(xudp6))
	return cs
}

// minRunLen is the shortest frame the kernel's test run accepts for p: XDP
// takes any Ethernet frame; tc pulls the network header first.
func minRunLen(p prog, frame []byte) int {
	if p.xdp || len(frame) < 14 {
		return 14
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		return 14 + 20
	case 0x86dd:
		return 14 + 40
	}
	return 14
}

// TestPacketMalformedCorpus runs the corpus through xlb_tc and xlb_xdp,
// without and with an established flow. See docs/datapath.md, "Malformed
// input".
func TestPacketMalformedCorpus(t *testing.T) {
	needRoot(t)
	cases := corpus(t)
	if len(cases) < 50 {
		t.Fatalf("corpus has %d cases, want >= 50", len(cases))
	}
	t.Logf("%d corpus frames", len(cases))
	for pi := range 2 {
		for _, withFlow := range []bool{false, true} {
			h := newHarness(t)
			svcs := map[string]svcHandle{}
			for fi, f := range families {
				for _, pr := range protos {
					svcs[fmt.Sprint(fi, pr.proto)] = h.addService(svcSpec{vip: f.vip, proto: pr.proto, algo: algoRR,
						backends: []beSpec{{addr: f.be1}}})
				}
			}
			p := h.progs()[pi]
			variant := "no-flow"
			if withFlow {
				variant = "flow"
			}
			for _, c := range cases {
				t.Run(p.name+"/"+variant+"/"+c.name, func(t *testing.T) {
					h.t = t
					runCorpusCase(t, h, p, c, withFlow)
				})
			}
		}
	}
}

func runCorpusCase(t *testing.T, h *harness, p prog, c corpusCase, withFlow bool) {
	f := families[c.fam]
	h.ctFlush()
	flags := func(s string) string {
		if c.prot == protoTCP {
			return s
		}
		return ""
	}
	if withFlow {
		in := build(t, pktSpec{src: f.client, dst: f.vip, proto: c.prot, flags: flags("S")})
		want := build(t, pktSpec{src: f.client, dst: f.be1, proto: c.prot, flags: flags("S")})
		ret, out := run(t, p, in, 0)
		if ret != p.fwd {
			t.Fatalf("flow setup: verdict %d", ret)
		}
		sameBytes(t, "flow setup", out, want)
	}
	before := h.global()
	ret, out, err := tryRun(p, c.in, 0)
	if err != nil {
		if len(c.in) < minRunLen(p, c.in) {
			t.Skipf("kernel refuses a %d-byte frame for %s: %v", len(c.in), p.name, err)
		}
		t.Fatalf("run: %v", err)
	}
	after := h.global()
	switch c.out {
	case oPass:
		if ret != p.pass {
			t.Errorf("verdict %d, want PASS (%d)", ret, p.pass)
		}
		sameBytes(t, "passed frame", out, c.in)
	case oDrop:
		if ret != p.drop {
			t.Errorf("verdict %d, want DROP (%d)", ret, p.drop)
			sameBytes(t, "frame not dropped", out, c.in)
		}
	case oTranslate:
		if ret != p.fwd {
			t.Errorf("verdict %d, want translated (%d)", ret, p.fwd)
		}
		sameBytes(t, "translated frame", out, c.want)
		checkChecksumsExt(t, out)
	}
	if c.malformed && after.Malformed != before.Malformed+1 {
		t.Errorf("global.malformed %d -> %d, want +1", before.Malformed, after.Malformed)
	}
	if !c.malformed && c.out == oTranslate && after.Malformed != before.Malformed {
		t.Errorf("valid frame counted malformed")
	}
	if c.out != oTranslate && after.FwdNat+after.RevNat+after.IcmpNat != before.FwdNat+before.RevNat+before.IcmpNat {
		t.Errorf("frame was counted as translated: %+v -> %+v", before, after)
	}
	if !withFlow {
		if n := h.ctCount(); c.out != oTranslate && n != 0 {
			t.Errorf("%d conntrack entries created by the frame", n)
		}
		return
	}
	// The established flow is unaffected.
	in := build(t, pktSpec{src: f.client, dst: f.vip, proto: c.prot, flags: flags("A"), payload: []byte("after")})
	want := build(t, pktSpec{src: f.client, dst: f.be1, proto: c.prot, flags: flags("A"), payload: []byte("after")})
	ret, out = run(t, p, in, 0)
	if ret != p.fwd {
		t.Errorf("flow after the frame: verdict %d", ret)
	}
	sameBytes(t, "flow after the frame", out, want)
	rin := build(t, pktSpec{src: f.be1, dst: f.client, proto: c.prot, flags: flags("A")})
	rwant := build(t, pktSpec{src: f.vip, dst: f.client, proto: c.prot, flags: flags("A")})
	ret, out = run(t, p, rin, 0)
	if ret != p.fwd {
		t.Errorf("flow reply after the frame: verdict %d", ret)
	}
	sameBytes(t, "flow reply after the frame", out, rwant)
}

// checkChecksumsExt is checkChecksums for frames that may carry IPv6
// hop-by-hop / destination options headers (which checkChecksums does not
// walk) and Ethernet trailers: the L4 checksum is verified from scratch over
// the upper-layer bytes inside the IP length.
func checkChecksumsExt(t *testing.T, frame []byte) {
	t.Helper()
	if binary.BigEndian.Uint16(frame[12:]) != 0x86dd {
		checkChecksums(t, frame)
		return
	}
	end := 54 + int(binary.BigEndian.Uint16(frame[18:]))
	nh, off := frame[20], 54
	for nh == nhHopByHop || nh == nhDstOpts {
		nh, off = frame[off], off+(int(frame[off+1])+1)*8
	}
	l4 := frame[off:end]
	acc := sum16(frame[22:54], 0) + uint32(nh) + uint32(len(l4))
	if fold(sum16(l4, acc)) != 0xffff {
		t.Errorf("bad L4 (proto %d) checksum in %x", nh, frame)
	}
}
