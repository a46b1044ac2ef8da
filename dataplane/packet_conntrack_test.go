package dataplane

// Conntrack under pressure, through BPF_PROG_TEST_RUN: a flow's missing peer
// entry is rebuilt, unreplied flows are short-lived, and beyond the new-flow
// budget new flows are served without conntrack (replies through rev_nat).

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// revNat programs rev_nat: replies from be are rewritten to come from vip.
func (h *harness) revNat(be, vip netip.AddrPort, proto uint8) {
	h.t.Helper()
	k := xlbBeKey{Addr: addrWords(be.Addr()), Port: be16(be.Port()), Proto: proto, Family: family(be.Addr())}
	v := xlbRevNatVal{Svc: xlbSvcKey{Vip: addrWords(vip.Addr()), Port: be16(vip.Port()), Proto: proto, Family: family(vip.Addr())}}
	h.putRevNat(k, v)
}

// revNatSNAT programs rev_nat: be belongs only to fullnat/onearm services
// whose SNAT ports are min-max.
func (h *harness) revNatSNAT(be netip.AddrPort, proto uint8, min, max uint16) {
	h.t.Helper()
	k := xlbBeKey{Addr: addrWords(be.Addr()), Port: be16(be.Port()), Proto: proto, Family: family(be.Addr())}
	h.putRevNat(k, xlbRevNatVal{SnatPortMin: min, SnatPortMax: max, Flags: revNatFlagSNAT})
}

func (h *harness) putRevNat(k xlbBeKey, v xlbRevNatVal) {
	h.t.Helper()
	if err := h.objs.RevNat.Put(k, v); err != nil {
		h.t.Fatal(err)
	}
	var c xlbXlbCfg
	if err := h.objs.XlbConfig.Lookup(uint32(0), &c); err != nil {
		h.t.Fatal(err)
	}
	c.Flags |= cfgFRevNat
	h.setConfig(c)
}

func (h *harness) ctDel(k xlbCtKey) {
	h.t.Helper()
	if err := h.objs.Conntrack.Delete(k); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) ctGet(k xlbCtKey) (xlbCtEntry, bool) {
	h.t.Helper()
	var e xlbCtEntry
	if err := h.objs.Conntrack.Lookup(k, &e); err != nil {
		return e, false
	}
	return e, true
}

// ctAge moves an entry's last_seen back by 2 s: the next packet of the flow
// takes the slow path and refreshes it (ct_touch).
func (h *harness) ctAge(k xlbCtKey) {
	h.t.Helper()
	e, ok := h.ctGet(k)
	if !ok {
		h.t.Fatalf("ctAge: no entry %+v", k)
	}
	e.LastSeenNs -= 2_000_000_000
	if err := h.objs.Conntrack.Put(k, e); err != nil {
		h.t.Fatal(err)
	}
}

// spendBudget sets a new-flow budget of 1 per CPU per second and marks it
// spent on every CPU for the next hour (the GCRA's theoretical arrival time
// far ahead), so the test does not depend on timing or on which CPU runs it.
func (h *harness) spendBudget() {
	h.t.Helper()
	var c xlbXlbCfg
	if err := h.objs.XlbConfig.Lookup(uint32(0), &c); err != nil {
		h.t.Fatal(err)
	}
	c.NewFlowBudget = 1
	h.setConfig(c)
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		h.t.Fatal(err)
	}
	tat := uint64(ts.Nano()) + uint64(time.Hour)
	vals := make([]uint64, ebpf.MustPossibleCPU())
	for i := range vals {
		vals[i] = tat
	}
	if err := h.objs.XlbCtBudget.Put(uint32(0), vals); err != nil {
		h.t.Fatal(err)
	}
}

// sameEntry compares two conntrack entries except last_seen.
func sameEntry(t *testing.T, what string, got, want xlbCtEntry) {
	t.Helper()
	got.LastSeenNs, want.LastSeenNs = 0, 0
	if got != want {
		t.Errorf("%s: rebuilt entry\n got %+v\nwant %+v", what, got, want)
	}
}

// TestPacketConntrackPeerRebuild: the LRU evicts one entry of an
// established flow; the next packet of the other direction (the periodic
// refresh) re-creates it with exactly the original content, and the flow's
// packets in both directions are translated byte for byte. Default and
// fullnat, v4/v6, TCP/UDP, tc and XDP.
func TestPacketConntrackPeerRebuild(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for _, pr := range protos {
			for _, mode := range []uint8{natDefault, natFullNAT} {
				for pi := range 2 {
					h := newHarness(t)
					p := h.progs()[pi]
					t.Run(fmt.Sprintf("%s/%s/%s/mode%d", p.name, f.name, pr.name, mode), func(t *testing.T) {
						h.addService(svcSpec{vip: f.vip, proto: pr.proto, mode: mode, algo: algoRR,
							backends: []beSpec{{addr: f.be1}}, snat: f.snat, snatMin: 20000, snatMax: 20099})
						_, out := run(t, p, build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags}), 0)
						ns := natSource(t, out, family(f.vip.Addr()))
						fwdKey, repKey := ctKey(f.client, f.vip, pr.proto), ctKey(f.be1, ns, pr.proto)
						fwdIn := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: "A", payload: []byte("request")})
						fwdOut := build(t, pktSpec{src: ns, dst: f.be1, proto: pr.proto, flags: "A", payload: []byte("request")})
						repIn := build(t, pktSpec{src: f.be1, dst: ns, proto: pr.proto, flags: "A", payload: []byte("reply")})
						repOut := build(t, pktSpec{src: f.vip, dst: f.client, proto: pr.proto, flags: "A", payload: []byte("reply")})
						check := func(what string, in, want []byte) {
							t.Helper()
							ret, out := run(t, p, in, 0)
							if ret != p.fwd {
								t.Fatalf("%s: verdict %d, want %d", what, ret, p.fwd)
							}
							sameBytes(t, what, out[:len(want)], want)
						}
						check("first reply", repIn, repOut)
						fe0, ok1 := h.ctGet(fwdKey)
						re0, ok2 := h.ctGet(repKey)
						if !ok1 || !ok2 {
							t.Fatal("flow not established")
						}

						// Reply entry evicted: the forward direction's refresh rebuilds it.
						h.ctDel(repKey)
						h.ctAge(fwdKey)
						check("forward after reply eviction", fwdIn, fwdOut)
						re1, ok := h.ctGet(repKey)
						if !ok {
							t.Fatal("reply entry not rebuilt by the forward direction")
						}
						sameEntry(t, "reply", re1, re0)
						check("reply after rebuild", repIn, repOut)

						// Forward entry evicted: the reply direction rebuilds it.
						h.ctDel(fwdKey)
						h.ctAge(repKey)
						check("reply after forward eviction", repIn, repOut)
						fe1, ok := h.ctGet(fwdKey)
						if !ok {
							t.Fatal("forward entry not rebuilt by the reply direction")
						}
						sameEntry(t, "forward", fe1, fe0)
						check("forward after rebuild", fwdIn, fwdOut)
						if g := h.global(); g.CtRebuilt != 2 {
							t.Errorf("ct_rebuilt %d, want 2", g.CtRebuilt)
						}
					})
				}
			}
		}
	}
}

// TestPacketConntrackReplyMissRevNat: default mode, the reply entry is
// evicted and the forward direction is idle (no refresh yet): the backend's
// reply is still translated to come from the VIP (rev_nat), never leaked
// with the backend's address.
func TestPacketConntrackReplyMissRevNat(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for _, pr := range protos {
			for pi := range 2 {
				h := newHarness(t)
				p := h.progs()[pi]
				t.Run(fmt.Sprintf("%s/%s/%s", p.name, f.name, pr.name), func(t *testing.T) {
					h.addService(svcSpec{vip: f.vip, proto: pr.proto, mode: natDefault, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
					h.revNat(f.be1, f.vip, pr.proto)
					run(t, p, build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags}), 0)
					h.ctDel(ctKey(f.be1, f.client, pr.proto))
					in := build(t, pktSpec{src: f.be1, dst: f.client, proto: pr.proto, flags: "A", payload: []byte("reply")})
					want := build(t, pktSpec{src: f.vip, dst: f.client, proto: pr.proto, flags: "A", payload: []byte("reply")})
					ret, out := run(t, p, in, 0)
					if ret != p.fwd {
						t.Fatalf("verdict %d, want %d", ret, p.fwd)
					}
					sameBytes(t, "reply without conntrack", out[:len(want)], want)
					checkChecksums(t, out[:len(want)])
					if g := h.global(); g.RevNatMap != 1 || g.RevNat != 1 {
						t.Errorf("rev_nat %d rev_nat_map %d, want 1 1", g.RevNat, g.RevNatMap)
					}
					// A backend address not in rev_nat passes untouched.
					other := netip.AddrPortFrom(f.be2.Addr(), f.be1.Port())
					in2 := build(t, pktSpec{src: other, dst: f.client, proto: pr.proto, flags: "A"})
					ret, out = run(t, p, in2, 0)
					if ret != p.pass {
						t.Fatalf("unknown backend: verdict %d, want pass", ret)
					}
					sameBytes(t, "unknown backend", out[:len(in2)], in2)
				})
			}
		}
	}
}

// TestPacketConntrackReplyMissSNAT: fullnat, the reply entry is evicted and
// the forward direction is idle (no refresh yet): the backend's reply to the
// SNAT address is dropped (snat_miss_dropped), not passed to the kernel,
// which would answer it with a RST (nobody listens on an SNAT port) and kill
// the flow on the backend. The same backend to a port outside the SNAT
// range passes untouched; a default-mode backend's reply is still
// translated through rev_nat.
func TestPacketConntrackReplyMissSNAT(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for _, pr := range protos {
			for pi := range 2 {
				h := newHarness(t)
				p := h.progs()[pi]
				t.Run(fmt.Sprintf("%s/%s/%s", p.name, f.name, pr.name), func(t *testing.T) {
					h.addService(svcSpec{vip: f.vip, proto: pr.proto, mode: natFullNAT, algo: algoRR,
						backends: []beSpec{{addr: f.be1}}, snat: f.snat, snatMin: 20000, snatMax: 20099})
					h.revNatSNAT(f.be1, pr.proto, 20000, 20099)
					dvip := netip.AddrPortFrom(f.vip.Addr(), f.vip.Port()+1)
					h.addService(svcSpec{vip: dvip, proto: pr.proto, mode: natDefault, algo: algoRR, backends: []beSpec{{addr: f.be2}}})
					h.revNat(f.be2, dvip, pr.proto)

					_, out := run(t, p, build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags}), 0)
					ns := natSource(t, out, family(f.vip.Addr()))
					if ns.Port() < 20000 || ns.Port() > 20099 {
						t.Fatalf("SNAT port %d outside 20000-20099", ns.Port())
					}
					h.ctDel(ctKey(f.be1, ns, pr.proto))
					g0 := h.global()
					in := build(t, pktSpec{src: f.be1, dst: ns, proto: pr.proto, flags: "A", payload: []byte("reply")})
					ret, out := run(t, p, in, 0)
					if ret != p.drop {
						t.Fatalf("reply without conntrack to the SNAT port: verdict %d, want drop %d", ret, p.drop)
					}
					sameBytes(t, "dropped reply", out[:len(in)], in)
					g1 := h.global()
					if g1.SnatMissDropped-g0.SnatMissDropped != 1 || g1.RevNat != g0.RevNat || g1.Passed != g0.Passed {
						t.Errorf("snat_miss_dropped +%d rev_nat +%d passed +%d, want +1 +0 +0",
							g1.SnatMissDropped-g0.SnatMissDropped, g1.RevNat-g0.RevNat, g1.Passed-g0.Passed)
					}

					// Outside the SNAT range (the host's own connection to the
					// backend): passed untouched.
					for _, port := range []uint16{19999, 20100, 40000} {
						in2 := build(t, pktSpec{src: f.be1, dst: netip.AddrPortFrom(ns.Addr(), port), proto: pr.proto, flags: "A"})
						ret, out = run(t, p, in2, 0)
						if ret != p.pass {
							t.Fatalf("port %d outside the SNAT range: verdict %d, want pass", port, ret)
						}
						sameBytes(t, "outside the SNAT range", out[:len(in2)], in2)
					}
					if g := h.global(); g.SnatMissDropped != g1.SnatMissDropped || g.Passed-g1.Passed != 3 {
						t.Errorf("outside the range: snat_miss_dropped %d passed +%d, want %d +3", g.SnatMissDropped, g.Passed-g1.Passed, g1.SnatMissDropped)
					}

					// A default-mode backend's reply without conntrack: translated.
					in3 := build(t, pktSpec{src: f.be2, dst: f.client, proto: pr.proto, flags: "A", payload: []byte("reply")})
					want3 := build(t, pktSpec{src: dvip, dst: f.client, proto: pr.proto, flags: "A", payload: []byte("reply")})
					ret, out = run(t, p, in3, 0)
					if ret != p.fwd {
						t.Fatalf("default-mode reply: verdict %d, want %d", ret, p.fwd)
					}
					sameBytes(t, "default-mode reply without conntrack", out[:len(want3)], want3)
					if g := h.global(); g.RevNatMap-g1.RevNatMap != 1 {
						t.Errorf("rev_nat_map +%d, want +1", g.RevNatMap-g1.RevNatMap)
					}
				})
			}
		}
	}
}

// TestPacketConntrackUnrepliedLifetime: a new flow's entries carry
// XLB_CT_F_UNREPLIED and syn_timeout_s until the backend's first reply;
// then both get the service's idle lifetime.
func TestPacketConntrackUnrepliedLifetime(t *testing.T) {
	needRoot(t)
	for _, pr := range protos {
		for pi := range 2 {
			h := newHarness(t)
			h.setConfig(xlbXlbCfg{MaglevSeed: 0x1234, Flags: cfgFNoFIB, SynTimeoutS: 3})
			p := h.progs()[pi]
			f := families[0]
			t.Run(fmt.Sprintf("%s/%s", p.name, pr.name), func(t *testing.T) {
				h.addService(svcSpec{vip: f.vip, proto: pr.proto, algo: algoRR, idle: 100, backends: []beSpec{{addr: f.be1}}})
				fk, rk := ctKey(f.client, f.vip, pr.proto), ctKey(f.be1, f.client, pr.proto)
				run(t, p, build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags}), 0)
				// More packets from the client keep it unreplied.
				run(t, p, build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags}), 0)
				for _, k := range []xlbCtKey{fk, rk} {
					e, _ := h.ctGet(k)
					if e.Flags&ctFUnreplied == 0 || e.LifetimeS != 3 {
						t.Errorf("before reply: flags %#x lifetime %d, want unreplied/3", e.Flags, e.LifetimeS)
					}
				}
				run(t, p, build(t, pktSpec{src: f.be1, dst: f.client, proto: pr.proto, flags: replyFlags(pr.proto)}), 0)
				for _, k := range []xlbCtKey{fk, rk} {
					e, _ := h.ctGet(k)
					if e.Flags&ctFUnreplied != 0 || e.LifetimeS != 100 {
						t.Errorf("after reply: flags %#x lifetime %d, want established/100", e.Flags, e.LifetimeS)
					}
				}
			})
		}
	}
}

// TestPacketConntrackBudget: beyond the per-CPU new-flow budget a new flow
// is translated (the backend the flow hash gives, as a stateful maglev flow
// would get) but not inserted, its replies are translated via rev_nat; a
// backend missing from rev_nat, and fullnat, are dropped with
// XLB_DROP_CT_BUDGET.
func TestPacketConntrackBudget(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		for _, pr := range protos {
			for pi := range 2 {
				h := newHarness(t)
				p := h.progs()[pi]
				t.Run(fmt.Sprintf("%s/%s/%s", p.name, f.name, pr.name), func(t *testing.T) {
					svc := h.addService(svcSpec{vip: f.vip, proto: pr.proto, mode: natDefault, algo: algoMaglev,
						backends: []beSpec{{addr: f.be1}, {addr: f.be2}}, table: []int{0, 1, 1, 0, 1, 0, 0}})
					h.revNat(f.be1, f.vip, pr.proto)
					h.revNat(f.be2, f.vip, pr.proto)
					// Stateful first: where maglev puts client2's flow.
					run(t, p, build(t, pktSpec{src: f.client2, dst: f.vip, proto: pr.proto, flags: pr.flags}), 0)
					e, ok := h.ctGet(ctKey(f.client2, f.vip, pr.proto))
					if !ok {
						t.Fatal("stateful flow not inserted")
					}
					be := netip.AddrPortFrom(wordsAddr(e.NatDst, family(f.vip.Addr())), fromBe16(e.NatDport))
					h.ctFlush()

					h.spendBudget()
					in := build(t, pktSpec{src: f.client2, dst: f.vip, proto: pr.proto, flags: pr.flags})
					want := build(t, pktSpec{src: f.client2, dst: be, proto: pr.proto, flags: pr.flags})
					ret, out := run(t, p, in, 0)
					if ret != p.fwd {
						t.Fatalf("stateless verdict %d, want %d", ret, p.fwd)
					}
					sameBytes(t, "stateless forward", out[:len(want)], want)
					if h.ctCount() != 0 {
						t.Errorf("stateless flow inserted: %d entries", h.ctCount())
					}
					g := h.global()
					if g.Stateless != 1 || h.svcStats(svc.id).NewFlows != 1 {
						t.Errorf("stateless %d new_flows %d, want 1 1 (no new flow counted for a stateless packet)", g.Stateless, h.svcStats(svc.id).NewFlows)
					}
					rin := build(t, pktSpec{src: be, dst: f.client2, proto: pr.proto, flags: replyFlags(pr.proto)})
					rwant := build(t, pktSpec{src: f.vip, dst: f.client2, proto: pr.proto, flags: replyFlags(pr.proto)})
					ret, out = run(t, p, rin, 0)
					if ret != p.fwd {
						t.Fatalf("stateless reply verdict %d", ret)
					}
					sameBytes(t, "stateless reply", out[:len(rwant)], rwant)

					// Without rev_nat the replies could not be translated: drop.
					if err := h.objs.RevNat.Delete(xlbBeKey{Addr: addrWords(be.Addr()), Port: be16(be.Port()), Proto: pr.proto, Family: family(be.Addr())}); err != nil {
						t.Fatal(err)
					}
					if ret, _ := run(t, p, in, 0); ret != p.drop {
						t.Errorf("stateless without rev_nat: verdict %d, want drop", ret)
					}
					if d := h.svcStats(svc.id).Drops[dropCTBudget]; d != 1 {
						t.Errorf("drops[ct_budget] %d, want 1", d)
					}

					// fullnat needs state: dropped and counted.
					fvip := netip.AddrPortFrom(f.vip.Addr(), f.vip.Port()+1)
					fs := h.addService(svcSpec{vip: fvip, proto: pr.proto, mode: natFullNAT, algo: algoMaglev,
						backends: []beSpec{{addr: f.be1}}, snat: f.snat})
					if ret, _ := run(t, p, build(t, pktSpec{src: f.client, dst: fvip, proto: pr.proto, flags: pr.flags}), 0); ret != p.drop {
						t.Errorf("fullnat beyond budget: verdict %d, want drop", ret)
					}
					if d := h.svcStats(fs.id).Drops[dropCTBudget]; d != 1 {
						t.Errorf("fullnat drops[ct_budget] %d, want 1", d)
					}
					if h.ctCount() != 0 {
						t.Errorf("entries %d, want 0", h.ctCount())
					}
				})
			}
		}
	}
}
