package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/xlb-dev/xlb/provider/config"
)

func cidr(s string) config.Range {
	c := &config.Config{Pools: []config.Pool{{Name: "x", CIDRs: []string{s}}}}
	rs, err := c.PoolRanges()
	if err != nil {
		panic(err)
	}
	return rs["x"][0]
}

func rng(s string) config.Range {
	r, err := config.ParseRange(s)
	if err != nil {
		panic(err)
	}
	return r
}

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func tcp(ports ...int32) []PortProto {
	var out []PortProto
	for _, p := range ports {
		out = append(out, PortProto{p, "TCP"})
	}
	return out
}

func v4req(key string) Request {
	return Request{Key: key, Namespace: "default", Families: []Family{IPv4}, RequireAll: true, Ports: tcp(80)}
}

func mustAlloc(t *testing.T, a *Allocator, r Request) []netip.Addr {
	t.Helper()
	res, err := a.Allocate(r)
	if err != nil {
		t.Fatalf("allocate %s: %v", r.Key, err)
	}
	return res.IPs
}

func str(ips []netip.Addr) string {
	var s []string
	for _, ip := range ips {
		s = append(s, ip.String())
	}
	return strings.Join(s, ",")
}

func TestAllocateSkipsReservedAndExhausts(t *testing.T) {
	a := New([]Pool{{Name: "small", Ranges: []config.Range{cidr("10.0.0.0/30")}, AvoidBuggyIPs: true, Default: true}})
	// /30: .0 network and .3 broadcast are skipped; .1 and .2 remain.
	if got := str(mustAlloc(t, a, v4req("ns/a"))); got != "10.0.0.1" {
		t.Fatalf("first = %s", got)
	}
	if got := str(mustAlloc(t, a, v4req("ns/b"))); got != "10.0.0.2" {
		t.Fatalf("second = %s", got)
	}
	_, err := a.Allocate(v4req("ns/c"))
	var ex *ExhaustedError
	if !errors.As(err, &ex) || !strings.Contains(err.Error(), `pool small has no free IPv4`) {
		t.Fatalf("want exhaustion naming the pool, got %v", err)
	}
	// Idempotent: asking again returns the same address.
	if got := str(mustAlloc(t, a, v4req("ns/a"))); got != "10.0.0.1" {
		t.Fatalf("re-allocate moved the VIP to %s", got)
	}
	a.Release("ns/a")
	if got := str(mustAlloc(t, a, v4req("ns/c"))); got != "10.0.0.1" {
		t.Fatalf("after release = %s", got)
	}
}

func TestAvoidBuggyIPs(t *testing.T) {
	for _, avoid := range []bool{true, false} {
		a := New([]Pool{{Name: "p", Ranges: []config.Range{rng("10.0.0.255-10.0.1.1")}, AvoidBuggyIPs: avoid, Default: true}})
		got := str(mustAlloc(t, a, v4req("ns/a")))
		want := "10.0.0.255"
		if avoid {
			want = "10.0.1.1"
		}
		if got != want {
			t.Errorf("avoid=%v: got %s want %s", avoid, got, want)
		}
	}
}

func TestIPv6AndDualStack(t *testing.T) {
	a := New([]Pool{{Name: "dual", Ranges: []config.Range{cidr("192.0.2.0/29"), cidr("2001:db8::/126")}, AvoidBuggyIPs: true, Default: true}})
	r := Request{Key: "ns/d", Namespace: "ns", Families: []Family{IPv6, IPv4}, RequireAll: true, Ports: tcp(443)}
	if got := str(mustAlloc(t, a, r)); got != "192.0.2.1,2001:db8::1" {
		t.Fatalf("dual = %s", got)
	}
	// The v6 /126 has ::1, ::2, ::3 (::0 is the subnet-router anycast).
	mustAlloc(t, a, Request{Key: "ns/e", Namespace: "ns", Families: []Family{IPv6}, RequireAll: true})
	mustAlloc(t, a, Request{Key: "ns/f", Namespace: "ns", Families: []Family{IPv6}, RequireAll: true})
	// RequireDualStack now fails (v6 exhausted) and changes nothing.
	_, err := a.Allocate(Request{Key: "ns/g", Namespace: "ns", Families: []Family{IPv4, IPv6}, RequireAll: true})
	if err == nil || !strings.Contains(err.Error(), "IPv6") {
		t.Fatalf("want v6 exhaustion, got %v", err)
	}
	if len(a.Lookup("ns/g")) != 0 {
		t.Fatal("failed allocation left state behind")
	}
	// PreferDualStack gets the v4 only and reports the skipped family.
	res, err := a.Allocate(Request{Key: "ns/g", Namespace: "ns", Families: []Family{IPv4, IPv6}})
	if err != nil || str(res.IPs) != "192.0.2.2" || len(res.Skipped) != 1 {
		t.Fatalf("prefer: %v %v %v", res.IPs, res.Skipped, err)
	}
}

func TestPoolChoice(t *testing.T) {
	pools := []Pool{
		{Name: "def", Ranges: []config.Range{cidr("10.0.0.0/24")}, AvoidBuggyIPs: true, Default: true},
		{Name: "team", Ranges: []config.Range{cidr("10.1.0.0/24")}, AvoidBuggyIPs: true, Namespaces: []string{"team"}},
		{Name: "extra", Ranges: []config.Range{rng("10.2.0.5-10.2.0.6")}},
		{Name: "v6only", Ranges: []config.Range{cidr("2001:db8::/64")}, Default: true},
	}
	tests := []struct {
		name, ns, pool, want, err string
		fam                       []Family
	}{
		{name: "default pool", ns: "other", want: "10.0.0.1"},
		{name: "namespace rule", ns: "team", want: "10.1.0.1"},
		{name: "annotation", ns: "other", pool: "extra", want: "10.2.0.5"},
		{name: "unknown pool", ns: "other", pool: "nope", err: `pool "nope" does not exist (allowed: def, team, extra, v6only)`},
		{name: "restricted pool", ns: "other", pool: "team", err: `pool "team" may only be used by namespaces team`},
		{name: "pool without family", ns: "other", pool: "extra", fam: []Family{IPv6}, err: `pool "extra" has no IPv6 addresses`},
		{name: "v6 default", ns: "team", fam: []Family{IPv6}, want: "2001:db8::1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := New(pools)
			fam := tc.fam
			if fam == nil {
				fam = []Family{IPv4}
			}
			res, err := a.Allocate(Request{Key: "k", Namespace: tc.ns, Pool: tc.pool, Families: fam, RequireAll: true})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || str(res.IPs) != tc.want {
				t.Fatalf("got %v %v want %s", res.IPs, err, tc.want)
			}
		})
	}
}

func TestNoDefaultPool(t *testing.T) {
	a := New([]Pool{{Name: "p", Ranges: []config.Range{cidr("10.0.0.0/24")}}})
	if _, err := a.Allocate(v4req("ns/a")); err == nil || !strings.Contains(err.Error(), "xlb.dev/pool") {
		t.Fatalf("want hint at xlb.dev/pool, got %v", err)
	}
}

func TestStaticIPs(t *testing.T) {
	pools := []Pool{
		{Name: "def", Ranges: []config.Range{cidr("10.0.0.0/24"), cidr("fd00::/120")}, AvoidBuggyIPs: true, Default: true},
		{Name: "team", Ranges: []config.Range{cidr("10.1.0.0/24")}, Namespaces: []string{"team"}},
	}
	a := New(pools)
	r := v4req("ns/a")
	r.Static = ips("10.0.0.77")
	if got := str(mustAlloc(t, a, r)); got != "10.0.0.77" {
		t.Fatalf("static = %s", got)
	}
	// The next dynamic allocation does not hand it out again.
	for i := 0; i < 100; i++ {
		got := mustAlloc(t, a, v4req(fmt.Sprintf("ns/d%d", i)))
		if got[0].String() == "10.0.0.77" {
			t.Fatal("static IP handed out twice")
		}
	}
	// Changing the static IP moves the VIP and frees the old one.
	r.Static = ips("10.0.0.200")
	if got := str(mustAlloc(t, a, r)); got != "10.0.0.200" {
		t.Fatalf("moved static = %s", got)
	}
	r2 := v4req("ns/b")
	r2.Static = ips("10.0.0.77")
	mustAlloc(t, a, r2)

	for _, tc := range []struct{ name, ip, ns, want string }{
		{"outside pools", "192.168.1.1", "ns", "not inside a pool"},
		{"restricted pool", "10.1.0.5", "ns", "not inside a pool"},
		{"network address", "10.0.0.0", "ns", "not inside a pool"},
		{"taken", "10.0.0.200", "ns", "in use by ns/a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Request{Key: "ns/x", Namespace: tc.ns, Families: []Family{IPv4}, RequireAll: true, Static: ips(tc.ip)}
			if _, err := a.Allocate(r); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v want %q", err, tc.want)
			}
		})
	}
	// Static v6 in a dual-stack request, dynamic v4.
	r3 := Request{Key: "ns/v6", Namespace: "ns", Families: []Family{IPv4, IPv6}, RequireAll: true, Static: ips("fd00::42")}
	if got := str(mustAlloc(t, a, r3)); !strings.HasSuffix(got, ",fd00::42") {
		t.Fatalf("dual static = %s", got)
	}
}

func TestSharing(t *testing.T) {
	a := New([]Pool{{Name: "p", Ranges: []config.Range{cidr("10.0.0.0/24")}, AvoidBuggyIPs: true, Default: true}})
	share := func(key, sk string, ports []PortProto) Request {
		return Request{Key: key, Namespace: "ns", Families: []Family{IPv4}, RequireAll: true, SharingKey: sk, Ports: ports}
	}
	ip1 := str(mustAlloc(t, a, share("ns/dns-tcp", "dns", tcp(53))))
	ip2 := str(mustAlloc(t, a, share("ns/dns-udp", "dns", []PortProto{{53, "UDP"}})))
	if ip1 != ip2 {
		t.Fatalf("sharing key not honoured: %s vs %s", ip1, ip2)
	}
	// Same port/protocol: a clash is an error, never a silent second IP.
	_, err := a.Allocate(share("ns/dns-tcp2", "dns", tcp(53)))
	if err == nil || !strings.Contains(err.Error(), "already serves 53/TCP for ns/dns-tcp") {
		t.Fatalf("want clash error, got %v", err)
	}
	// A different key or no key never lands on the shared IP.
	other := str(mustAlloc(t, a, share("ns/web", "web", tcp(80))))
	none := str(mustAlloc(t, a, share("ns/plain", "", tcp(80))))
	if other == ip1 || none == ip1 || other == none {
		t.Fatalf("unexpected sharing: %s %s %s", ip1, other, none)
	}
	// Released only when the last sharer goes.
	a.Release("ns/dns-tcp")
	if a.Usage()["p"] != 3 {
		t.Fatalf("usage after first release: %v", a.Usage())
	}
	a.Release("ns/dns-udp")
	if a.Usage()["p"] != 2 {
		t.Fatalf("usage after last release: %v", a.Usage())
	}
	// Leaving the sharing group with a clashing port set moves to a new IP.
	mustAlloc(t, a, share("ns/s1", "k", tcp(1)))
	mustAlloc(t, a, share("ns/s2", "k", tcp(2)))
	if str(a.Lookup("ns/s1")) != str(a.Lookup("ns/s2")) {
		t.Fatal("s1 s2 should share")
	}
	if _, err := a.Allocate(share("ns/s2", "k", tcp(1, 2))); err == nil {
		t.Fatal("port change creating a clash should fail")
	}
	if got := str(mustAlloc(t, a, share("ns/s2", "", tcp(1, 2)))); got == str(a.Lookup("ns/s1")) {
		t.Fatal("unshared service kept a shared IP")
	}
}

func TestRevert(t *testing.T) {
	a := New([]Pool{{Name: "p", Ranges: []config.Range{cidr("10.0.0.0/29")}, AvoidBuggyIPs: true, Default: true}})
	r := v4req("ns/a")
	prev := mustAlloc(t, a, r)
	r.Static = ips("10.0.0.5")
	mustAlloc(t, a, r)
	a.Revert(r, prev)
	if got := str(a.Lookup("ns/a")); got != "10.0.0.1" {
		t.Fatalf("after revert %s", got)
	}
	if a.Usage()["p"] != 1 {
		t.Fatalf("usage %v", a.Usage())
	}
}

func TestRebuild(t *testing.T) {
	pools := []Pool{{Name: "p", Ranges: []config.Range{cidr("10.0.0.0/29")}, AvoidBuggyIPs: true, Default: true}}
	a := New(pools)
	errs := a.Rebuild([]Holding{
		{Key: "ns/a", Namespace: "ns", IPs: ips("10.0.0.1"), Ports: tcp(80)},
		{Key: "ns/b", Namespace: "ns", IPs: ips("10.0.0.3"), SharingKey: "k", Ports: tcp(80)},
		{Key: "ns/c", Namespace: "ns", IPs: ips("10.0.0.3"), SharingKey: "k", Ports: tcp(81)},
		{Key: "ns/dup", Namespace: "ns", IPs: ips("10.0.0.1"), Ports: tcp(80)}, // conflict
		{Key: "ns/out", Namespace: "ns", IPs: ips("172.16.0.1"), Ports: tcp(80)},
	})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "ns/dup") {
		t.Fatalf("rebuild errors %v", errs)
	}
	// After a restart, Ensure of existing Services returns the same VIPs.
	if got := str(mustAlloc(t, a, v4req("ns/a"))); got != "10.0.0.1" {
		t.Fatalf("a moved to %s", got)
	}
	r := v4req("ns/c")
	r.SharingKey, r.Ports = "k", tcp(81)
	if got := str(mustAlloc(t, a, r)); got != "10.0.0.3" {
		t.Fatalf("c moved to %s", got)
	}
	// New Services skip the rebuilt addresses.
	if got := str(mustAlloc(t, a, v4req("ns/new"))); got != "10.0.0.2" {
		t.Fatalf("new = %s", got)
	}
	// An address outside every pool (pool removed from config) moves on
	// the next Ensure.
	if got := str(mustAlloc(t, a, v4req("ns/out"))); got != "10.0.0.4" {
		t.Fatalf("out = %s", got)
	}
}

func TestConcurrentAllocation(t *testing.T) {
	a := New([]Pool{{Name: "p", Ranges: []config.Range{cidr("10.0.0.0/24"), cidr("fd00::/120")}, AvoidBuggyIPs: true, Default: true}})
	const n = 100
	var wg sync.WaitGroup
	results := make([][]netip.Addr, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := a.Allocate(Request{Key: fmt.Sprintf("ns/s%d", i), Namespace: "ns", Families: []Family{IPv4, IPv6}, RequireAll: true, Ports: tcp(80)})
			results[i], errs[i] = res.IPs, err
			// Churn: half of them release and re-allocate.
			if i%2 == 0 {
				a.Release(fmt.Sprintf("ns/s%d", i))
				res, err = a.Allocate(Request{Key: fmt.Sprintf("ns/s%d", i), Namespace: "ns", Families: []Family{IPv4, IPv6}, RequireAll: true, Ports: tcp(80)})
				results[i], errs[i] = res.IPs, err
			}
		}(i)
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if len(results[i]) != 2 {
			t.Fatalf("goroutine %d got %v", i, results[i])
		}
		for _, ip := range results[i] {
			if j, dup := seen[ip]; dup {
				t.Fatalf("%s handed to %d and %d", ip, j, i)
			}
			seen[ip] = i
		}
	}
	if u := a.Usage()["p"]; u != 2*n {
		t.Fatalf("usage %d", u)
	}
}
