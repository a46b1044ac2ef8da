package dataplane

import (
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

// revNatContent reads rev_nat as backend → VIP:port.
func revNatContent(t *testing.T, d *Dataplane) map[netip.AddrPort]netip.AddrPort {
	t.Helper()
	out := map[netip.AddrPort]netip.AddrPort{}
	var k xlbBeKey
	var v xlbSvcKey
	it := d.objs.RevNat.Iterate()
	for it.Next(&k, &v) {
		out[netip.AddrPortFrom(wordsAddr(k.Addr, k.Family), fromBe16(k.Port))] =
			netip.AddrPortFrom(wordsAddr(v.Vip, v.Family), fromBe16(v.Port))
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestApplyRevNat: rev_nat holds exactly the backends that belong to one
// service, a default-mode one; it follows changes, and an identical re-Apply
// writes nothing.
func TestApplyRevNat(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	vip := netip.MustParseAddr("192.0.2.10")
	svcs := []Service{
		{Name: "a", VIP: vip, Port: 80, Protocol: TCP, Backends: []Backend{be("10.0.0.1:80", 1)}},
		{Name: "f", VIP: vip, Port: 81, Protocol: TCP, NATMode: NATFullNAT, SNATAddr: netip.MustParseAddr("192.0.2.1"),
			Backends: []Backend{be("10.0.0.2:80", 1)}},
		{Name: "c", VIP: vip, Port: 82, Protocol: TCP, Backends: []Backend{be("10.0.0.3:80", 1)}},
		{Name: "d", VIP: vip, Port: 83, Protocol: TCP, Backends: []Backend{be("10.0.0.3:80", 1)}},
		// Same address and port, other protocol: another key.
		{Name: "u", VIP: vip, Port: 80, Protocol: UDP, Backends: []Backend{be("10.0.0.2:80", 1)}},
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
			if got[netip.MustParseAddrPort(b)] != netip.MustParseAddrPort(v) {
				t.Errorf("%s: rev_nat %v, want %v", what, got, want)
			}
		}
	}
	// 10.0.0.1 (a) and 10.0.0.2/udp (u); not the fullnat backend nor the shared one.
	check("first", map[string]string{"10.0.0.1:80": "192.0.2.10:80", "10.0.0.2:80": "192.0.2.10:80"})
	if res, err := d.Apply(ctx, svcs); err != nil || res.Writes != 0 {
		t.Fatalf("re-Apply: %+v %v, want zero writes", res, err)
	}
	// d leaves: 10.0.0.3 belongs to c alone.
	res, err := d.Apply(ctx, []Service{svcs[0], svcs[1], svcs[2], svcs[4]})
	if err != nil {
		t.Fatal(err)
	}
	check("after d left", map[string]string{"10.0.0.1:80": "192.0.2.10:80", "10.0.0.2:80": "192.0.2.10:80", "10.0.0.3:80": "192.0.2.10:82"})
	t.Logf("d left: %d writes", res.Writes)
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
	if _, err := d.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	check("empty", nil)
	if flag() {
		t.Error("XLB_CFG_F_REV_NAT still set with rev_nat empty")
	}
}
