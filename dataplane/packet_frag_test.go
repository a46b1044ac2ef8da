package dataplane

// Fragment tracking (issue 9, item 3), through BPF_PROG_TEST_RUN: the first
// fragment of a datagram (the one with the L4 header) is translated like any
// packet of its flow and its ports are remembered by (src, dst, IP ID or
// IPv6 fragment id, proto); the later fragments of the same datagram follow
// it (addresses rewritten, nothing else: their bytes hold no ports), in
// both directions. A non-first fragment nobody saw the first of is dropped
// when addressed to a VIP and passed otherwise.
//
// The expected bytes are the fragments of the translated datagram, cut the
// same way: the L4 checksum of a datagram covers all its fragments and lives
// in the first, so only exact bytes prove it right.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
)

// fragmentFrame cuts the IP datagram of an Ethernet frame (IPv4 without
// options, or IPv6 without extension headers) into fragments carrying at
// most chunk bytes of the IP payload each (chunk a multiple of 8), with the
// given identification. IPv4 fragments lose DF; IPv6 fragments get a
// fragment header.
func fragmentFrame(frame []byte, id uint32, chunk int) [][]byte {
	var out [][]byte
	if frame[12] == 0x08 {
		payload := frame[34:]
		for off := 0; off < len(payload); off += chunk {
			end := min(off+chunk, len(payload))
			b := append(clone(frame[:34]), payload[off:end]...)
			put16(b, 16, uint16(20+end-off))
			put16(b, 18, uint16(id))
			fo := uint16(off / 8)
			if end < len(payload) {
				fo |= 0x2000 // MF
			}
			put16(b, 20, fo)
			out = append(out, fixIPv4Csum(b))
		}
		return out
	}
	payload := frame[54:]
	nh := frame[20]
	for off := 0; off < len(payload); off += chunk {
		end := min(off+chunk, len(payload))
		b := clone(frame[:54])
		b[20] = 44 // fragment header
		fh := make([]byte, 8)
		fh[0] = nh
		fo := uint16(off/8) << 3
		if end < len(payload) {
			fo |= 1 // M
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], id)
		b = append(b, fh...)
		b = append(b, payload[off:end]...)
		put16(b, 18, uint16(8+end-off))
		out = append(out, b)
	}
	return out
}

// fragSource reads the source address and port of a translated first
// fragment.
func fragSource(out []byte) netip.AddrPort {
	if out[12] == 0x08 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[26:30])), binary.BigEndian.Uint16(out[34:]))
	}
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(out[22:38])), binary.BigEndian.Uint16(out[62:]))
}

func bigPayload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

// TestPacketFragmentsTracked: a 3,000-byte UDP request and its 3,000-byte
// reply, both fragmented, through default and fullnat modes, IPv4 and
// IPv6, both hooks: every fragment is translated, byte for byte.
func TestPacketFragmentsTracked(t *testing.T) {
	needRoot(t)
	const chunk = 1232 // a multiple of 8 that fits MTU 1280 with an IPv6 fragment header
	for _, f := range families {
		for _, mode := range []uint8{natDefault, natFullNAT} {
			for pi := range 2 {
				h := newHarness(t)
				p := h.progs()[pi]
				mname := map[uint8]string{natDefault: "default", natFullNAT: "fullnat"}[mode]
				t.Run(fmt.Sprintf("%s/%s/%s", p.name, f.name, mname), func(t *testing.T) {
					h.t = t
					svc := h.addService(svcSpec{vip: f.vip, proto: protoUDP, mode: mode, algo: algoRR,
						backends: []beSpec{{addr: f.be1}}, snat: f.snat, snatMin: 20000, snatMax: 20099})
					reqBody, repBody := bigPayload(3000, 1), bigPayload(3000, 2)
					req := build(t, pktSpec{src: f.client, dst: f.vip, proto: protoUDP, payload: reqBody})
					frags := fragmentFrame(req, 0x5151, chunk)
					if len(frags) != 3 {
						t.Fatalf("%d fragments", len(frags))
					}
					// The first fragment opens the flow.
					ret, out := run(t, p, frags[0], 0)
					if ret != p.fwd {
						if mode != natDefault {
							t.Fatalf("first fragment: verdict %d, want translated (%d)", ret, p.fwd)
						}
						// Default mode: the NAT source is known, go on to show the
						// other directions' behaviour too.
						t.Errorf("first fragment: verdict %d, want translated (%d)", ret, p.fwd)
					}
					ns := f.client
					if mode == natFullNAT {
						ns = fragSource(out)
						if ns.Addr() != f.snat || ns.Port() < 20000 || ns.Port() > 20099 {
							t.Fatalf("first fragment: SNAT source %v", ns)
						}
					}
					want := fragmentFrame(build(t, pktSpec{src: ns, dst: f.be1, proto: protoUDP, payload: reqBody}), 0x5151, chunk)
					sameBytes(t, "first fragment", out, want[0])
					for i := 1; i < len(frags); i++ {
						ret, out := run(t, p, frags[i], 0)
						if ret != p.fwd {
							t.Errorf("request fragment %d: verdict %d, want translated (%d)", i, ret, p.fwd)
						}
						sameBytes(t, fmt.Sprintf("request fragment %d", i), out, want[i])
					}
					if ss := h.svcStats(svc.id); ss.NewFlows != 1 {
						t.Errorf("new flows %d, want 1", ss.NewFlows)
					}

					// The reply, fragmented by the backend.
					rep := build(t, pktSpec{src: f.be1, dst: ns, proto: protoUDP, payload: repBody})
					rwant := fragmentFrame(build(t, pktSpec{src: f.vip, dst: f.client, proto: protoUDP, payload: repBody}), 0x6262, chunk)
					for i, fr := range fragmentFrame(rep, 0x6262, chunk) {
						ret, out := run(t, p, fr, 0)
						if ret != p.fwd {
							t.Errorf("reply fragment %d: verdict %d, want translated (%d)", i, ret, p.fwd)
						}
						sameBytes(t, fmt.Sprintf("reply fragment %d", i), out, rwant[i])
						if fr[12] == 0x08 {
							checkIPv4Header(t, out)
						}
					}

					// A second datagram of the flow with another id: its fragments
					// follow their own first fragment, even when the last arrives
					// before the middle one.
					frags2 := fragmentFrame(req, 0x5152, chunk)
					want2 := fragmentFrame(build(t, pktSpec{src: ns, dst: f.be1, proto: protoUDP, payload: reqBody}), 0x5152, chunk)
					for _, i := range []int{0, 2, 1} {
						ret, out := run(t, p, frags2[i], 0)
						if ret != p.fwd {
							t.Errorf("2nd datagram fragment %d: verdict %d, want translated (%d)", i, ret, p.fwd)
						}
						sameBytes(t, fmt.Sprintf("2nd datagram fragment %d", i), out, want2[i])
					}

					// Fragments of a datagram whose first fragment was never
					// seen: dropped to the VIP, passed elsewhere, never translated.
					orphan := fragmentFrame(req, 0x7777, chunk)
					for i := 1; i < len(orphan); i++ {
						ret, out := run(t, p, orphan[i], 0)
						if ret != p.drop {
							t.Errorf("untracked fragment %d to the VIP: verdict %d, want drop (%d)", i, ret, p.drop)
							sameBytes(t, "untracked fragment", out, orphan[i])
						}
					}
					elsewhere := fragmentFrame(build(t, pktSpec{src: f.client, dst: netip.AddrPortFrom(f.other, 80),
						proto: protoUDP, payload: reqBody}), 0x7778, chunk)
					for i := range elsewhere {
						ret, out := run(t, p, elsewhere[i], 0)
						if ret != p.pass {
							t.Errorf("fragment %d to another address: verdict %d, want pass (%d)", i, ret, p.pass)
						}
						sameBytes(t, "fragment to another address", out, elsewhere[i])
					}
				})
			}
		}
	}
}

// TestPacketFragmentFirstOnlyOpensTracking: a later fragment that arrives
// before its first fragment is not translated (nothing tracks it yet); the
// first fragment, arriving next, still is.
func TestPacketFragmentFirstOnlyOpensTracking(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for pi := range 2 {
			h := newHarness(t)
			p := h.progs()[pi]
			t.Run(p.name+"/"+f.name, func(t *testing.T) {
				h.t = t
				h.addService(svcSpec{vip: f.vip, proto: protoUDP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
				body := bigPayload(2000, 3)
				frags := fragmentFrame(build(t, pktSpec{src: f.client, dst: f.vip, proto: protoUDP, payload: body}), 0x4343, 1232)
				want := fragmentFrame(build(t, pktSpec{src: f.client, dst: f.be1, proto: protoUDP, payload: body}), 0x4343, 1232)
				ret, _ := run(t, p, frags[1], 0)
				if ret != p.drop {
					t.Errorf("last fragment before the first: verdict %d, want drop (%d)", ret, p.drop)
				}
				ret, out := run(t, p, frags[0], 0)
				if ret != p.fwd {
					t.Fatalf("first fragment: verdict %d, want translated (%d)", ret, p.fwd)
				}
				sameBytes(t, "first fragment", out, want[0])
			})
		}
	}
}

func checkIPv4Header(t *testing.T, frame []byte) {
	t.Helper()
	if fold(sum16(frame[14:14+ipHdrLen(frame)], 0)) != 0xffff {
		t.Errorf("bad IPv4 header checksum in %x", frame)
	}
}
