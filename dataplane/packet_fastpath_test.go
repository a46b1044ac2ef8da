package dataplane

import (
	"bytes"
	"fmt"
	"testing"
)

// TestPacketFastPathMatchesSlowPath: an established packet is handled by the
// fast path (fast_body: conntrack entry refreshed less than a second ago) or,
// once the entry is due for a last_seen refresh, by the full datapath
// (xlb_process). Both must produce the same verdict, bytes and counters, in
// both directions, for DNAT and full NAT.
func TestPacketFastPathMatchesSlowPath(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for _, pr := range protos {
			for _, mode := range []uint8{natDefault, natFullNAT} {
				for pi := range 2 {
					h := newHarness(t)
					p := h.progs()[pi]
					t.Run(fmt.Sprintf("%s/%s/%s/mode%d", p.name, f.name, pr.name, mode), func(t *testing.T) {
						svc := h.addService(svcSpec{vip: f.vip, proto: pr.proto, mode: mode, algo: algoRR,
							backends: []beSpec{{addr: f.be1}}, snat: f.snat, snatMin: 20000, snatMax: 20099})
						syn := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags})
						ret, out := run(t, p, syn, 0)
						if ret != p.fwd {
							t.Fatalf("new flow verdict %d", ret)
						}
						ns := natSource(t, out, family(f.vip.Addr()))
						fwd := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: "A", payload: []byte("established")})
						rep := build(t, pktSpec{src: f.be1, dst: ns, proto: pr.proto, flags: "A", payload: []byte("reply")})
						fwdKey := ctKey(f.client, f.vip, pr.proto)
						repKey := ctKey(f.be1, ns, pr.proto)
						// The backend's first reply ends the flow's unreplied
						// state (slow path by design); after it the flow is
						// established.
						if ret, _ := run(t, p, rep, 0); ret != p.fwd {
							t.Fatalf("first reply verdict %d", ret)
						}

						type result struct {
							ret  uint32
							out  []byte
							g    xlbGlobalCounters
							ss   xlbSvcCounters
							bs   xlbBackendCounters
							seen uint64
						}
						age := func() {
							for _, k := range []xlbCtKey{fwdKey, repKey} {
								var e xlbCtEntry
								if err := h.objs.Conntrack.Lookup(k, &e); err != nil {
									t.Fatal(err)
								}
								e.LastSeenNs -= 2_000_000_000
								if err := h.objs.Conntrack.Put(k, e); err != nil {
									t.Fatal(err)
								}
							}
						}
						do := func(pkt []byte, k xlbCtKey) result {
							g0, s0, b0 := h.global(), h.svcStats(svc.id), h.beStats(svc.bes[0])
							ret, out := run(t, p, pkt, 0)
							g1, s1, b1 := h.global(), h.svcStats(svc.id), h.beStats(svc.bes[0])
							var e xlbCtEntry
							if err := h.objs.Conntrack.Lookup(k, &e); err != nil {
								t.Fatal(err)
							}
							return result{ret: ret, out: out[:len(pkt)],
								g: xlbGlobalCounters{Rx: g1.Rx - g0.Rx, Passed: g1.Passed - g0.Passed, FwdNat: g1.FwdNat - g0.FwdNat,
									RevNat: g1.RevNat - g0.RevNat, CtCreated: g1.CtCreated - g0.CtCreated, Malformed: g1.Malformed - g0.Malformed},
								ss:   xlbSvcCounters{Packets: s1.Packets - s0.Packets, Bytes: s1.Bytes - s0.Bytes, NewFlows: s1.NewFlows - s0.NewFlows},
								bs:   xlbBackendCounters{Packets: b1.Packets - b0.Packets, Bytes: b1.Bytes - b0.Bytes, NewFlows: b1.NewFlows - b0.NewFlows},
								seen: e.LastSeenNs}
						}
						for _, c := range []struct {
							name string
							pkt  []byte
							key  xlbCtKey
						}{{"forward", fwd, fwdKey}, {"reply", rep, repKey}} {
							var e0 xlbCtEntry
							if err := h.objs.Conntrack.Lookup(c.key, &e0); err != nil {
								t.Fatal(err)
							}
							fast := do(c.pkt, c.key)
							if fast.seen != e0.LastSeenNs {
								t.Errorf("%s: fresh entry was refreshed (slow path taken?)", c.name)
							}
							age()
							var e1 xlbCtEntry
							if err := h.objs.Conntrack.Lookup(c.key, &e1); err != nil {
								t.Fatal(err)
							}
							slow := do(c.pkt, c.key)
							if slow.seen == e1.LastSeenNs {
								t.Errorf("%s: aged entry was not refreshed", c.name)
							}
							if fast.ret != p.fwd || slow.ret != fast.ret {
								t.Errorf("%s: verdict fast %d slow %d, want %d", c.name, fast.ret, slow.ret, p.fwd)
							}
							if !bytes.Equal(fast.out, slow.out) {
								t.Errorf("%s: bytes differ\nfast %x\nslow %x", c.name, fast.out, slow.out)
							}
							checkChecksums(t, fast.out)
							if fast.g != slow.g || fast.ss != slow.ss || fast.bs != slow.bs {
								t.Errorf("%s: counters differ: fast %+v %+v %+v slow %+v %+v %+v", c.name,
									fast.g, fast.ss, fast.bs, slow.g, slow.ss, slow.bs)
							}
						}
					})
				}
			}
		}
	}
}

// TestPacketRefreshWhereFastPathStops: the fast path stops taking an entry
// once its coarse age plus the clock slack reaches the refresh interval,
// i.e. slightly before a second; the slow path must refresh the entry right
// there, so that one packet per flow and second takes the slow path, not
// every packet of the last ~50 ms of each second (that was ~5 % of the
// packets of busy flows).
func TestPacketRefreshWhereFastPathStops(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for pi := range 2 {
			h := newHarness(t)
			p := h.progs()[pi]
			t.Run(fmt.Sprintf("%s/%s", p.name, f.name), func(t *testing.T) {
				h.addService(svcSpec{vip: f.vip, proto: 17, mode: natDefault, algo: algoRR,
					backends: []beSpec{{addr: f.be1}}})
				pkt := build(t, pktSpec{src: f.client, dst: f.vip, proto: 17, payload: []byte("x")})
				if ret, _ := run(t, p, pkt, 0); ret != p.fwd {
					t.Fatalf("new flow verdict %d", ret)
				}
				k := ctKey(f.client, f.vip, 17)
				seen := func() uint64 {
					var e xlbCtEntry
					if err := h.objs.Conntrack.Lookup(k, &e); err != nil {
						t.Fatal(err)
					}
					return e.LastSeenNs
				}
				// 0.97 s old: past the fast path's limit (1 s - 50 ms
				// slack), short of the full second.
				var e xlbCtEntry
				if err := h.objs.Conntrack.Lookup(k, &e); err != nil {
					t.Fatal(err)
				}
				e.LastSeenNs -= 970_000_000
				if err := h.objs.Conntrack.Put(k, e); err != nil {
					t.Fatal(err)
				}
				if ret, _ := run(t, p, pkt, 0); ret != p.fwd {
					t.Fatalf("verdict %d", ret)
				}
				s1 := seen()
				if s1 == e.LastSeenNs {
					t.Fatal("entry 0.97 s old was not refreshed by the slow path")
				}
				if ret, _ := run(t, p, pkt, 0); ret != p.fwd {
					t.Fatalf("verdict %d", ret)
				}
				if s2 := seen(); s2 != s1 {
					t.Error("refreshed entry was refreshed again (slow path taken twice)")
				}
			})
		}
	}
}
