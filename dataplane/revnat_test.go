package dataplane

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestDefaultNewFlowBudget: in one SYN lifetime all CPUs together insert at
// most half of the table's flows.
func TestDefaultNewFlowBudget(t *testing.T) {
	for _, c := range []struct {
		flows int
		syn   time.Duration
		cpus  int
		want  int
	}{
		{1_000_000, 5 * time.Second, 2, 50_000},
		{1024, 5 * time.Second, 2, 51},
		{10_000_000, 5 * time.Second, 64, 15_625},
		{1024, 600 * time.Second, 64, 1},
	} {
		if got := DefaultNewFlowBudget(c.flows, c.syn, c.cpus); got != c.want {
			t.Errorf("DefaultNewFlowBudget(%d, %s, %d) = %d, want %d", c.flows, c.syn, c.cpus, got, c.want)
		}
	}
}

// revNatContent reads rev_nat as "backend/proto" → "VIP:port" (default
// mode) or "snat min-max" (fullnat/onearm only).
func revNatContent(t *testing.T, d *Dataplane) map[string]string {
	t.Helper()
	out := map[string]string{}
	var k xlbBeKey
	var v xlbRevNatVal
	it := d.objs.RevNat.Iterate()
	for it.Next(&k, &v) {
		be := fmt.Sprintf("%s/%d", netip.AddrPortFrom(wordsAddr(k.Addr, k.Family), fromBe16(k.Port)), k.Proto)
		if v.Flags&revNatFlagSNAT != 0 {
			out[be] = fmt.Sprintf("snat %d-%d", v.SnatPortMin, v.SnatPortMax)
			continue
		}
		out[be] = netip.AddrPortFrom(wordsAddr(v.Svc.Vip, v.Svc.Family), fromBe16(v.Svc.Port)).String()
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestApplyRevNat: rev_nat holds exactly the backends that belong to one
// service, a default-mode one (→ VIP:port), and those that belong only to
// fullnat/onearm services (→ the hull of their SNAT port ranges); it follows
// changes, and an identical re-Apply writes nothing.
func TestApplyRevNat(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	vip := netip.MustParseAddr("192.0.2.10")
	snat := netip.MustParseAddr("192.0.2.1")
	svcs := []Service{
		{Name: "a", VIP: vip, Port: 80, Protocol: TCP, Backends: []Backend{be("10.0.0.1:80", 1)}},
		{Name: "f", VIP: vip, Port: 81, Protocol: TCP, NATMode: NATFullNAT, SNATAddr: snat,
			Backends: []Backend{be("10.0.0.2:80", 1), be("10.0.0.4:80", 1)}},
		{Name: "c", VIP: vip, Port: 82, Protocol: TCP, Backends: []Backend{be("10.0.0.3:80", 1)}},
		{Name: "d", VIP: vip, Port: 83, Protocol: TCP, Backends: []Backend{be("10.0.0.3:80", 1)}},
		// Same address and port, other protocol: another key.
		{Name: "u", VIP: vip, Port: 80, Protocol: UDP, Backends: []Backend{be("10.0.0.2:80", 1)}},
		// 10.0.0.4 shared by two fullnat services: the hull of both ranges.
		{Name: "g", VIP: vip, Port: 84, Protocol: TCP, NATMode: NATFullNAT, SNATAddr: snat, SNATPortMin: 40000, SNATPortMax: 40100,
			Backends: []Backend{be("10.0.0.4:80", 1), be("10.0.0.5:80", 1)}},
		// 10.0.0.5 shared by a fullnat and a default-mode service: no entry.
		{Name: "h", VIP: vip, Port: 85, Protocol: TCP, Backends: []Backend{be("10.0.0.5:80", 1)}},
		// onearm like fullnat.
		{Name: "o", VIP: vip, Port: 86, Protocol: TCP, NATMode: NATOneArm, SNATPortMin: 30000, SNATPortMax: 30999,
			Backends: []Backend{be("10.0.0.6:80", 1)}},
	}
	if _, err := d.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	check := func(what string, want map[string]string) {
		t.Helper()
		got := revNatContent(t, d)
		if len(got) != len(want) {
			t.Errorf("%s: rev_nat %v, want %v", what, got, want)
		}
		for b, v := range want {
			if got[b] != v {
				t.Errorf("%s: rev_nat %v, want %v", what, got, want)
			}
		}
	}
	snatDefault := fmt.Sprintf("snat %d-%d", DefaultSNATPortMin, DefaultSNATPortMax)
	// Not the backend shared by two default-mode services (10.0.0.3) nor
	// the one shared by default and fullnat (10.0.0.5).
	check("first", map[string]string{"10.0.0.1:80/6": "192.0.2.10:80", "10.0.0.2:80/17": "192.0.2.10:80",
		"10.0.0.2:80/6": snatDefault, "10.0.0.4:80/6": fmt.Sprintf("snat %d-40100", DefaultSNATPortMin),
		"10.0.0.6:80/6": "snat 30000-30999"})
	if res, err := d.Apply(ctx, svcs); err != nil || res.Writes != 0 {
		t.Fatalf("re-Apply: %+v %v, want zero writes", res, err)
	}
	// d, g, h and o leave: 10.0.0.3 belongs to c alone, 10.0.0.4 to f alone.
	res, err := d.Apply(ctx, []Service{svcs[0], svcs[1], svcs[2], svcs[4]})
	if err != nil {
		t.Fatal(err)
	}
	check("after d, g, h, o left", map[string]string{"10.0.0.1:80/6": "192.0.2.10:80", "10.0.0.2:80/17": "192.0.2.10:80",
		"10.0.0.3:80/6": "192.0.2.10:82", "10.0.0.2:80/6": snatDefault, "10.0.0.4:80/6": snatDefault})
	t.Logf("d, g, h, o left: %d writes", res.Writes)
	flag := func() bool {
		var c xlbXlbCfg
		if err := d.objs.XlbConfig.Lookup(uint32(0), &c); err != nil {
			t.Fatal(err)
		}
		return c.Flags&cfgFlagRevNat != 0
	}
	if !flag() {
		t.Error("XLB_CFG_F_REV_NAT not set while rev_nat has entries")
	}
	// Only a fullnat service: its backends are entries, the flag is set.
	if _, err := d.Apply(ctx, []Service{svcs[1]}); err != nil {
		t.Fatal(err)
	}
	check("fullnat only", map[string]string{"10.0.0.2:80/6": snatDefault, "10.0.0.4:80/6": snatDefault})
	if !flag() {
		t.Error("XLB_CFG_F_REV_NAT not set with fullnat backends in rev_nat")
	}
	if _, err := d.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	check("empty", nil)
	if flag() {
		t.Error("XLB_CFG_F_REV_NAT still set with rev_nat empty")
	}
}
