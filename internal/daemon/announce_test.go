package daemon

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/bgp"
)

func u32p(v uint32) *uint32 { return &v }
func boolp(v bool) *bool    { return &v }

func svc(name string, vips []string, backends []api.Backend, b *api.ServiceBGP, l2 *api.ServiceL2) api.Service {
	s := api.Service{Name: name, Spec: api.ServiceSpec{VIPs: vips, Port: 80, Protocol: "tcp", Backends: backends, BGP: b, L2: l2}}
	return api.DefaultService(s)
}

func be(addr string, w ...uint32) api.Backend {
	b := api.Backend{Address: addr, Port: 8080}
	if len(w) > 0 {
		b.Weight = &w[0]
	}
	return b
}

func host(a string) netip.Prefix {
	ip := netip.MustParseAddr(a)
	return netip.PrefixFrom(ip, ip.BitLen())
}

func TestPlan(t *testing.T) {
	down := map[string]bool{"10.0.0.9": true, "fd00::9": true}
	health := healthFunc(func(_ string, ap netip.AddrPort) (dataplane.BackendState, bool) {
		if down[ap.Addr().String()] {
			return dataplane.BackendDown, true
		}
		return "", false
	})
	v4, v6 := "192.0.2.1", "2001:db8::1"
	cases := []struct {
		name string
		svcs []api.Service
		want []bgp.Announcement
		l2   map[string][]netip.Addr
	}{
		{"no services", nil, nil, nil},
		{"healthy dual stack", []api.Service{svc("a", []string{v4, v6}, []api.Backend{be("10.0.0.1"), be("fd00::1")}, nil, nil)},
			[]bgp.Announcement{{Prefix: host(v4)}, {Prefix: host(v6)}}, nil},
		{"only v4 backends: v6 withdrawn", []api.Service{svc("a", []string{v4, v6}, []api.Backend{be("10.0.0.1")}, nil, nil)},
			[]bgp.Announcement{{Prefix: host(v4)}}, nil},
		{"no backends", []api.Service{svc("a", []string{v4}, nil, nil, nil)}, nil, nil},
		{"all down", []api.Service{svc("a", []string{v4}, []api.Backend{be("10.0.0.9")}, nil, nil)}, nil, nil},
		{"one down one up", []api.Service{svc("a", []string{v4}, []api.Backend{be("10.0.0.9"), be("10.0.0.2")}, nil, nil)},
			[]bgp.Announcement{{Prefix: host(v4)}}, nil},
		{"weight zero is not usable", []api.Service{svc("a", []string{v4}, []api.Backend{be("10.0.0.1", 0)}, nil, nil)}, nil, nil},
		{"opt out", []api.Service{svc("a", []string{v4}, []api.Backend{be("10.0.0.1")}, &api.ServiceBGP{Advertise: boolp(false)}, nil)}, nil, nil},
		{"opt out but another service on the VIP advertises", []api.Service{
			svc("a", []string{v4}, []api.Backend{be("10.0.0.1")}, &api.ServiceBGP{Advertise: boolp(false), Communities: []string{"1:1"}}, nil),
			svc("b", []string{v4}, []api.Backend{be("10.0.0.2")}, &api.ServiceBGP{Communities: []string{"2:2"}}, nil),
		}, []bgp.Announcement{{Prefix: host(v4), Communities: []string{"2:2"}}}, nil},
		{"advertising service without backends, opted-out one healthy: withdrawn", []api.Service{
			svc("a", []string{v4}, []api.Backend{be("10.0.0.1")}, &api.ServiceBGP{Advertise: boolp(false)}, nil),
			svc("b", []string{v4}, nil, nil, nil),
		}, nil, nil},
		{"attributes: union of communities, first service by name for localPref and MED", []api.Service{
			svc("z", []string{v4}, []api.Backend{be("10.0.0.1")}, &api.ServiceBGP{Communities: []string{"65000:2", "65000:1"}, LocalPref: u32p(300), MED: u32p(7)}, nil),
			svc("a", []string{v4}, nil, &api.ServiceBGP{Communities: []string{"65000:1"}, LargeCommunities: []string{"1:2:3"}, LocalPref: u32p(100)}, nil),
		}, []bgp.Announcement{{Prefix: host(v4), Communities: []string{"65000:1", "65000:2"}, LargeCommunities: []string{"1:2:3"},
			LocalPref: u32p(100), MED: u32p(7)}}, nil},
		{"l2 only while usable", []api.Service{
			svc("a", []string{v4, v6}, []api.Backend{be("10.0.0.1"), be("fd00::9")}, &api.ServiceBGP{Advertise: boolp(false)}, &api.ServiceL2{Interface: "eth1"}),
		}, nil, map[string][]netip.Addr{"eth1": {netip.MustParseAddr(v4)}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := plan(tc.svcs, health)
			if !reflect.DeepEqual(got.BGP, tc.want) {
				t.Errorf("bgp:\n got %+v\nwant %+v", got.BGP, tc.want)
			}
			if !reflect.DeepEqual(got.L2, tc.l2) {
				t.Errorf("l2: got %v, want %v", got.L2, tc.l2)
			}
		})
	}
}

func TestPlanVIPsIgnoreHealth(t *testing.T) {
	got := plan([]api.Service{
		svc("a", []string{"192.0.2.2", "2001:db8::2"}, nil, &api.ServiceBGP{Advertise: boolp(false)}, nil),
		svc("b", []string{"192.0.2.1"}, nil, nil, nil),
	}, nil)
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")}
	if !reflect.DeepEqual(got.VIPs, want) {
		t.Fatalf("VIPs: got %v, want %v", got.VIPs, want)
	}
}
