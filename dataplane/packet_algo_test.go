package dataplane

// Backend selection, conntrack lifecycle and the allow-list.

import (
	"fmt"
	"net/netip"
	"testing"
)

// backendOf returns which backend (index into bes addresses) a forward
// frame was sent to.
func backendOf(t *testing.T, out []byte, bes []netip.AddrPort) int {
	t.Helper()
	var dst netip.AddrPort
	if out[12] == 0x08 {
		l4 := 14 + ipHdrLen(out)
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[30:34])), uint16(out[l4+2])<<8|uint16(out[l4+3]))
	} else {
		dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(out[38:54])), uint16(out[56])<<8|uint16(out[57]))
	}
	for i, b := range bes {
		if b == dst {
			return i
		}
	}
	t.Fatalf("packet sent to %v, not a backend", dst)
	return -1
}

func clientN(n int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(n >> 8), byte(n)}), uint16(30000+n))
}

var threeBackends = []netip.AddrPort{ap("10.1.0.1:8080"), ap("10.1.0.2:8080"), ap("10.1.0.3:8080")}

func beSpecs(addrs []netip.AddrPort, weights ...uint32) []beSpec {
	var out []beSpec
	for i, a := range addrs {
		b := beSpec{addr: a}
		if i < len(weights) {
			b.weight = weights[i]
		}
		out = append(out, b)
	}
	return out
}

// TestPacketRRCycles: rr walks the weighted table in order, one new flow
// per step (per CPU; BPF_PROG_TEST_RUN runs on one CPU).
func TestPacketRRCycles(t *testing.T) {
	h := newHarness(t)
	vip := ap("10.96.0.10:80")
	// Table order: b0 b1 b0 b2 (b0 has weight 2).
	h.addService(svcSpec{vip: vip, proto: protoTCP, algo: algoRR, backends: beSpecs(threeBackends), table: []int{0, 1, 0, 2}})
	for _, p := range h.progs() {
		h.ctFlush()
		var got []int
		for i := range 8 {
			ret, out := run(t, p, build(t, pktSpec{src: clientN(i), dst: vip, proto: protoTCP, flags: "S"}), 0)
			if ret != p.fwd {
				t.Fatalf("verdict %d", ret)
			}
			got = append(got, backendOf(t, out, threeBackends))
		}
		// The per-CPU cursor persists across programs; the cycle is what matters.
		for i := 4; i < 8; i++ {
			if got[i] != got[i-4] {
				t.Errorf("%s: rr sequence %v is not a cycle of 4", p.name, got)
			}
		}
		counts := map[int]int{}
		for _, b := range got[:4] {
			counts[b]++
		}
		if counts[0] != 2 || counts[1] != 1 || counts[2] != 1 {
			t.Errorf("%s: rr over one cycle %v, want b0 twice, b1 and b2 once", p.name, got)
		}
	}
}

// TestPacketSticky: every packet of a flow goes to the same backend for
// rr and random, over 100 packets.
func TestPacketSticky(t *testing.T) {
	for _, algo := range []uint8{algoRR, algoRandom} {
		h := newHarness(t)
		vip := ap("10.96.0.10:80")
		h.addService(svcSpec{vip: vip, proto: protoUDP, algo: algo, backends: beSpecs(threeBackends)})
		for _, p := range h.progs() {
			for c := range 3 {
				first := -1
				for i := range 100 {
					_, out := run(t, p, build(t, pktSpec{src: clientN(c), dst: vip, proto: protoUDP, payload: []byte(fmt.Sprint(i))}), 0)
					b := backendOf(t, out, threeBackends)
					if first == -1 {
						first = b
					} else if b != first {
						t.Fatalf("algo %d %s: packet %d went to backend %d, flow is on %d", algo, p.name, i, b, first)
					}
				}
			}
		}
	}
}

// TestPacketMaglevDeterministic: the same tuple maps to the same backend
// even without conntrack state (daemon restart, another LB node), and a
// non-SYN without state is load-balanced as a new flow.
func TestPacketMaglevDeterministic(t *testing.T) {
	h := newHarness(t)
	vip := ap("10.96.0.10:80")
	// A small prime-size table, as Go would build it (content is arbitrary here).
	h.addService(svcSpec{vip: vip, proto: protoTCP, algo: algoMaglev, backends: beSpecs(threeBackends),
		table: []int{0, 1, 2, 1, 0, 2, 2, 0, 1, 1, 2, 0, 0}})
	seen := map[int]bool{}
	for c := range 20 {
		var first int
		for i, p := range append(h.progs(), h.progs()...) {
			h.ctFlush()
			flags := "S"
			if i > 0 {
				flags = "A"
			}
			ret, out := run(t, p, build(t, pktSpec{src: clientN(c), dst: vip, proto: protoTCP, flags: flags}), 0)
			if ret != p.fwd {
				t.Fatalf("verdict %d", ret)
			}
			b := backendOf(t, out, threeBackends)
			if i == 0 {
				first = b
			} else if b != first {
				t.Fatalf("client %d: backend %d then %d", c, first, b)
			}
		}
		seen[first] = true
	}
	if len(seen) < 2 {
		t.Errorf("20 clients all hashed to one backend: %v", seen)
	}
}

// TestPacketLeastConn: lc picks the backend with the fewest active flows
// per weight, and new flows count.
func TestPacketLeastConn(t *testing.T) {
	h := newHarness(t)
	vip := ap("10.96.0.10:80")
	svc := h.addService(svcSpec{vip: vip, proto: protoTCP, algo: algoLC, backends: beSpecs(threeBackends, 1, 1, 4),
		table: []int{0, 1, 2}})
	// active/weight: b0 5/1, b1 3/1, b2 16/4=4 -> b1 (3) is the least loaded.
	for i, a := range []int64{5, 3, 16} {
		if err := h.objs.BackendActive.Put(svc.bes[i], a); err != nil {
			t.Fatal(err)
		}
	}
	p := h.progs()[1]
	_, out := run(t, p, build(t, pktSpec{src: clientN(1), dst: vip, proto: protoTCP, flags: "S"}), 0)
	if b := backendOf(t, out, threeBackends); b != 1 {
		t.Fatalf("lc picked backend %d, want 1", b)
	}
	if a := h.active(svc.bes[1]); a != 4 {
		t.Fatalf("backend 1 active %d, want 4", a)
	}
	// Raise b1 to 10: now b2 (16/4 = 4) is the least loaded.
	if err := h.objs.BackendActive.Put(svc.bes[1], int64(10)); err != nil {
		t.Fatal(err)
	}
	p = h.progs()[0]
	_, out = run(t, p, build(t, pktSpec{src: clientN(2), dst: vip, proto: protoTCP, flags: "S"}), 0)
	if b := backendOf(t, out, threeBackends); b != 2 {
		t.Fatalf("lc picked backend %d, want 2", b)
	}
	// A down backend is never picked even with zero load.
	if err := h.objs.BackendActive.Put(svc.bes[0], int64(0)); err != nil {
		t.Fatal(err)
	}
	h.setBackendState(svc.bes[0], beDown)
	_, out = run(t, p, build(t, pktSpec{src: clientN(3), dst: vip, proto: protoTCP, flags: "S"}), 0)
	if b := backendOf(t, out, threeBackends); b == 0 {
		t.Fatalf("lc picked a down backend")
	}
}

// TestPacketPersist: a client sticks to its backend across flows (different
// source ports); another client can land elsewhere.
func TestPacketPersist(t *testing.T) {
	h := newHarness(t)
	vip := ap("10.96.0.10:80")
	h.addService(svcSpec{vip: vip, proto: protoTCP, algo: algoPersist, backends: beSpecs(threeBackends)})
	seen := map[int]bool{}
	for c := range 12 {
		first := -1
		for port := range 10 {
			src := netip.AddrPortFrom(clientN(c).Addr(), uint16(40000+port))
			p := h.progs()[port%2]
			_, out := run(t, p, build(t, pktSpec{src: src, dst: vip, proto: protoTCP, flags: "S"}), 0)
			b := backendOf(t, out, threeBackends)
			if first == -1 {
				first = b
			} else if b != first {
				t.Fatalf("client %d flow %d went to %d, client is on %d", c, port, b, first)
			}
		}
		seen[first] = true
	}
	if len(seen) < 2 {
		t.Errorf("12 clients all on one backend: %v", seen)
	}
}

// TestPacketNoBackend: empty table or all backends unusable -> drop counted.
func TestPacketNoBackend(t *testing.T) {
	h := newHarness(t)
	vip := ap("10.96.0.10:80")
	svc := h.addService(svcSpec{vip: vip, proto: protoTCP, algo: algoRandom, backends: beSpecs(threeBackends[:2])})
	h.setBackendState(svc.bes[0], beDown)
	h.setBackendState(svc.bes[1], beDraining)
	empty := h.addService(svcSpec{vip: ap("10.96.0.11:80"), proto: protoTCP, algo: algoRR})
	for _, p := range h.progs() {
		ret, _ := run(t, p, build(t, pktSpec{src: clientN(1), dst: vip, proto: protoTCP, flags: "S"}), 0)
		if ret != p.drop {
			t.Errorf("%s: verdict %d, want drop", p.name, ret)
		}
		ret, _ = run(t, p, build(t, pktSpec{src: clientN(1), dst: ap("10.96.0.11:80"), proto: protoTCP, flags: "S"}), 0)
		if ret != p.drop {
			t.Errorf("%s: empty service verdict %d, want drop", p.name, ret)
		}
	}
	if d := h.svcStats(svc.id).Drops[dropNoBackend]; d != 2 {
		t.Errorf("no_backend drops %d", d)
	}
	if d := h.svcStats(empty.id).Drops[dropNoBackend]; d != 2 {
		t.Errorf("no_backend drops (empty) %d", d)
	}
}

// TestPacketBackendLifecycle: draining/down backends keep established flows;
// a reused backend id (gen bump) moves the flow.
func TestPacketBackendLifecycle(t *testing.T) {
	h := newHarness(t)
	vip := ap("10.96.0.10:80")
	svc := h.addService(svcSpec{vip: vip, proto: protoUDP, algo: algoRR, backends: beSpecs(threeBackends[:2]), table: []int{0, 1}})
	p := h.progs()[1]
	send := func() int {
		ret, out := run(t, p, build(t, pktSpec{src: clientN(1), dst: vip, proto: protoUDP}), 0)
		if ret != p.fwd {
			t.Fatalf("verdict %d", ret)
		}
		return backendOf(t, out, threeBackends)
	}
	b := send()
	for _, st := range []uint8{beDraining, beDown} {
		h.setBackendState(svc.bes[b], st)
		if got := send(); got != b {
			t.Fatalf("state %d: flow moved from %d to %d", st, b, got)
		}
	}
	// Id reused for something else: the old flow must not be honoured.
	var be xlbBackend
	if err := h.objs.Backends.Lookup(svc.bes[b], &be); err != nil {
		t.Fatal(err)
	}
	be.Gen++
	be.State = beDown
	if err := h.objs.Backends.Put(svc.bes[b], be); err != nil {
		t.Fatal(err)
	}
	if got := send(); got == b {
		t.Fatalf("flow stayed on a reused backend id")
	}
}

// TestPacketTCPClose: FIN/RST marks both entries closing with the short
// lifetime and gives the backend's active slot back exactly once.
func TestPacketTCPClose(t *testing.T) {
	for _, fl := range []string{"FA", "R"} {
		h := newHarness(t)
		h.setConfig(xlbXlbCfg{Flags: cfgFNoFIB, TcpClosingTimeoutS: 7})
		f := families[0]
		svc := h.addService(svcSpec{vip: f.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
		p := h.progs()[0]
		run(t, p, build(t, pktSpec{src: f.client, dst: f.vip, proto: protoTCP, flags: "S"}), 0)
		if a := h.active(svc.bes[0]); a != 1 {
			t.Fatalf("active %d after SYN", a)
		}
		// Backend closes: reply direction.
		ret, _ := run(t, p, build(t, pktSpec{src: f.be1, dst: f.client, proto: protoTCP, flags: fl}), 0)
		if ret != p.fwd {
			t.Fatalf("verdict %d", ret)
		}
		// Client closes too (second FIN must not decrement again).
		run(t, h.progs()[1], build(t, pktSpec{src: f.client, dst: f.vip, proto: protoTCP, flags: fl}), 0)
		if a := h.active(svc.bes[0]); a != 0 {
			t.Errorf("%s: active %d after close, want 0", fl, a)
		}
		fe, _ := h.ct(f.client, f.vip, protoTCP)
		re, _ := h.ct(f.be1, f.client, protoTCP)
		for _, e := range []xlbCtEntry{fe, re} {
			if e.Flags&ctFClosing == 0 || e.LifetimeS != 7 {
				t.Errorf("%s: entry flags %#x lifetime %d, want closing/7", fl, e.Flags, e.LifetimeS)
			}
		}
		// A new SYN on the closing 5-tuple is a new connection (unreplied:
		// the short SYN lifetime until the backend answers).
		run(t, p, build(t, pktSpec{src: f.client, dst: f.vip, proto: protoTCP, flags: "S"}), 0)
		fe, _ = h.ct(f.client, f.vip, protoTCP)
		if fe.Flags&ctFClosing != 0 || fe.Flags&ctFUnreplied == 0 || fe.LifetimeS != 5 || h.active(svc.bes[0]) != 1 {
			t.Errorf("%s: SYN after close: flags %#x lifetime %d active %d", fl, fe.Flags, fe.LifetimeS, h.active(svc.bes[0]))
		}
	}
}

// TestPacketAllowList: allowed sources pass, others are dropped and counted,
// for IPv4 (v4-mapped keys) and IPv6.
func TestPacketAllowList(t *testing.T) {
	h := newHarness(t)
	v4, v6 := families[0], families[1]
	s4 := h.addService(svcSpec{vip: v4.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: v4.be1}},
		allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/31")}})
	s6 := h.addService(svcSpec{vip: v6.vip, proto: protoTCP, algo: algoRR, backends: []beSpec{{addr: v6.be1}},
		allow: []netip.Prefix{netip.MustParsePrefix("fd00::/127")}})
	cases := []struct {
		src   netip.AddrPort
		dst   netip.AddrPort
		allow bool
	}{
		{ap("10.0.0.1:1000"), v4.vip, true},
		{ap("10.0.0.2:1000"), v4.vip, false},
		{ap("192.168.0.1:1000"), v4.vip, false},
		{ap("[fd00::1]:1000"), v6.vip, true},
		{ap("[fd00::2]:1000"), v6.vip, false},
	}
	for _, p := range h.progs() {
		for _, c := range cases {
			in := build(t, pktSpec{src: c.src, dst: c.dst, proto: protoTCP, flags: "S"})
			ret, out := run(t, p, in, 0)
			if c.allow && ret != p.fwd || !c.allow && ret != p.drop {
				t.Errorf("%s %v: verdict %d (allow=%v)", p.name, c.src, ret, c.allow)
			}
			if !c.allow {
				sameBytes(t, "denied", out, in)
			}
		}
	}
	if d := h.svcStats(s4.id).Drops[dropSrcDenied]; d != 4 {
		t.Errorf("v4 src_denied %d, want 4", d)
	}
	if d := h.svcStats(s6.id).Drops[dropSrcDenied]; d != 2 {
		t.Errorf("v6 src_denied %d, want 2", d)
	}
}
