package api

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func u32(v uint32) *uint32 { return &v }

// validService is a dual-stack service touching every optional field.
func validService() Service {
	return Service{
		Name:   "web.prod-1",
		Labels: map[string]string{LabelCluster: "c1", "app": "web"},
		Spec: ServiceSpec{
			VIPs:          []string{"192.0.2.10", "2001:db8::10"},
			Port:          80,
			Protocol:      "tcp",
			NATMode:       "fullnat",
			Algorithm:     "persist",
			SNATAddresses: []string{"192.0.2.1", "2001:db8::1"},
			SourceRanges:  []string{"10.0.0.0/8", "2001:db8::/32"},
			Backends: []Backend{
				{Address: "10.1.0.2", Port: 8080, Weight: u32(3), Name: "node-a"},
				{Address: "10.1.0.1", Port: 8080},
				{Address: "2001:db8:1::1", Port: 8080, Weight: u32(0)},
			},
			DrainTimeoutSeconds: 30,
			Probe:               &Probe{Type: "http", Path: "/healthz", ExpectStatus: []int{200, 204}, OnDown: "reset"},
			BGP:                 &ServiceBGP{Communities: []string{"65000:100", "no-export"}, LargeCommunities: []string{"65000:1:2"}},
			L2:                  &ServiceL2{Interface: "eth0"},
		},
	}
}

func TestValidateAcceptsValid(t *testing.T) {
	s := validService()
	if err := ValidateService(&s, ValidateOptions{}); err != nil {
		t.Fatalf("valid service rejected: %v", err)
	}
	min := Service{Name: "a", Spec: ServiceSpec{VIPs: []string{"10.0.0.1"}, Port: 53, Protocol: "udp"}}
	if err := ValidateService(&min, ValidateOptions{}); err != nil {
		t.Fatalf("minimal service (no backends) rejected: %v", err)
	}
}

// TestValidateFields changes one field of a valid service at a time and
// checks the error names exactly that field, its value and what is allowed.
func TestValidateFields(t *testing.T) {
	cases := []struct {
		name    string
		mutate  func(*Service)
		opt     ValidateOptions
		field   string
		value   string
		allowed string // substring
	}{
		{"empty name", func(s *Service) { s.Name = "" }, ValidateOptions{}, "name", "", "1-63"},
		{"upper name", func(s *Service) { s.Name = "Web" }, ValidateOptions{}, "name", "Web", "lowercase"},
		{"long name", func(s *Service) { s.Name = strings.Repeat("a", 64) }, ValidateOptions{}, "name", strings.Repeat("a", 64), "1-63"},
		{"name ends dash", func(s *Service) { s.Name = "web-" }, ValidateOptions{}, "name", "web-", "1-63"},
		{"prefix", func(s *Service) { s.Name = "-" }, ValidateOptions{FieldPrefix: "services[2]."}, "services[2].name", "-", "1-63"},
		{"label key", func(s *Service) { s.Labels["bad key"] = "v" }, ValidateOptions{}, "labels", "bad key", "key:"},
		{"label value", func(s *Service) { s.Labels["app"] = "a b" }, ValidateOptions{}, "labels[app]", "a b", "value:"},
		{"no vips", func(s *Service) { s.Spec.VIPs = nil }, ValidateOptions{}, "spec.vips", "0 addresses", "IPv4"},
		{"bad vip", func(s *Service) { s.Spec.VIPs[1] = "2001:db8::zz" }, ValidateOptions{}, "spec.vips[1]", "2001:db8::zz", "unicast"},
		{"zero vip", func(s *Service) { s.Spec.VIPs[0] = "0.0.0.0" }, ValidateOptions{}, "spec.vips[0]", "0.0.0.0", "unicast"},
		{"mapped vip", func(s *Service) { s.Spec.VIPs[0] = "::ffff:1.2.3.4" }, ValidateOptions{}, "spec.vips[0]", "::ffff:1.2.3.4", "unicast"},
		{"two v4 vips", func(s *Service) { s.Spec.VIPs[1] = "192.0.2.11" }, ValidateOptions{}, "spec.vips[1]", "192.0.2.11", "at most one IPv4"},
		{"port 0", func(s *Service) { s.Spec.Port = 0 }, ValidateOptions{}, "spec.port", "0", "1-65535"},
		{"protocol", func(s *Service) { s.Spec.Protocol = "sctp" }, ValidateOptions{}, "spec.protocol", "sctp", "tcp, udp"},
		{"protocol case", func(s *Service) { s.Spec.Protocol = "TCP" }, ValidateOptions{}, "spec.protocol", "TCP", "tcp, udp"},
		{"natMode", func(s *Service) { s.Spec.NATMode = "dsr" }, ValidateOptions{}, "spec.natMode", "dsr", "default, fullnat, onearm"},
		{"algorithm", func(s *Service) { s.Spec.Algorithm = "wrr" }, ValidateOptions{}, "spec.algorithm", "wrr", "rr, random, maglev, persist, lc"},
		{"snat without fullnat", func(s *Service) { s.Spec.NATMode = "default" }, ValidateOptions{}, "spec.snatAddresses", "192.0.2.1,2001:db8::1", "unless natMode is fullnat"},
		{"bad snat", func(s *Service) { s.Spec.SNATAddresses[0] = "x" }, ValidateOptions{}, "spec.snatAddresses[0]", "x", "unicast"},
		{"two v4 snat", func(s *Service) { s.Spec.SNATAddresses[1] = "192.0.2.2" }, ValidateOptions{}, "spec.snatAddresses[1]", "192.0.2.2", "at most one IPv4"},
		{"snat family", func(s *Service) { s.Spec.VIPs = s.Spec.VIPs[:1]; s.Spec.Backends = s.Spec.Backends[:2] }, ValidateOptions{}, "spec.snatAddresses[1]", "2001:db8::1", "family of a VIP"},
		{"fullnat needs v6 snat", func(s *Service) { s.Spec.SNATAddresses = s.Spec.SNATAddresses[:1] }, ValidateOptions{}, "spec.snatAddresses", "192.0.2.1", "--snat-addresses"},
		{"idle", func(s *Service) { s.Spec.IdleTimeoutSeconds = 86401 }, ValidateOptions{}, "spec.idleTimeoutSeconds", "86401", "1-86400"},
		{"affinity", func(s *Service) { s.Spec.AffinityTimeoutSeconds = 100000 }, ValidateOptions{}, "spec.affinityTimeoutSeconds", "100000", "1-86400"},
		{"cidr", func(s *Service) { s.Spec.SourceRanges[1] = "10.0.0.1" }, ValidateOptions{}, "spec.sourceRanges[1]", "10.0.0.1", "CIDR"},
		{"too many backends", func(s *Service) {
			s.Spec.Backends = nil
			for i := 0; i < MaxBackends+1; i++ {
				s.Spec.Backends = append(s.Spec.Backends, Backend{Address: netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}).String(), Port: 1})
			}
		}, ValidateOptions{}, "spec.backends", "4097", "at most 4096"},
		{"backend addr", func(s *Service) { s.Spec.Backends[2].Address = "nope" }, ValidateOptions{}, "spec.backends[2].address", "nope", "unicast"},
		{"backend family", func(s *Service) { s.Spec.VIPs = s.Spec.VIPs[:1]; s.Spec.SNATAddresses = s.Spec.SNATAddresses[:1] }, ValidateOptions{}, "spec.backends[2].address", "2001:db8:1::1", "family of a VIP"},
		{"backend port", func(s *Service) { s.Spec.Backends[2].Port = 0 }, ValidateOptions{}, "spec.backends[2].port", "0", "1-65535"},
		{"backend weight", func(s *Service) { s.Spec.Backends[1].Weight = u32(65536) }, ValidateOptions{}, "spec.backends[1].weight", "65536", "0 (drain) to 65535"},
		{"backend dup", func(s *Service) { s.Spec.Backends[1].Address = "10.1.0.2" }, ValidateOptions{}, "spec.backends[1].address", "10.1.0.2:8080", "at most once"},
		{"probe type", func(s *Service) { s.Spec.Probe.Type = "grpc" }, ValidateOptions{}, "spec.probe.type", "grpc", "tcp, udp, http, https, ping, none"},
		{"probe onDown", func(s *Service) { s.Spec.Probe.OnDown = "drop" }, ValidateOptions{}, "spec.probe.onDown", "drop", "keep, reset"},
		{"probe onDown case", func(s *Service) { s.Spec.Probe.OnDown = "Reset" }, ValidateOptions{}, "spec.probe.onDown", "Reset", "keep, reset"},
		{"drain timeout", func(s *Service) { s.Spec.DrainTimeoutSeconds = 86401 }, ValidateOptions{}, "spec.drainTimeoutSeconds", "86401", "1-86400"},
		{"probe path on tcp", func(s *Service) { s.Spec.Probe.Type = "tcp"; s.Spec.Probe.ExpectStatus = nil }, ValidateOptions{}, "spec.probe.path", "/healthz", "empty for type tcp"},
		{"probe path", func(s *Service) { s.Spec.Probe.Path = "healthz" }, ValidateOptions{}, "spec.probe.path", "healthz", "starting with '/'"},
		{"probe method", func(s *Service) { s.Spec.Probe.Method = "DELETE" }, ValidateOptions{}, "spec.probe.method", "DELETE", "GET, HEAD"},
		{"probe status", func(s *Service) { s.Spec.Probe.ExpectStatus[1] = 600 }, ValidateOptions{}, "spec.probe.expectStatus[1]", "600", "100-599"},
		{"probe interval", func(s *Service) { s.Spec.Probe.IntervalMillis = 5 }, ValidateOptions{}, "spec.probe.intervalMillis", "5", "100-3600000"},
		{"probe timeout", func(s *Service) { s.Spec.Probe.IntervalMillis = 500; s.Spec.Probe.TimeoutMillis = 600 }, ValidateOptions{}, "spec.probe.timeoutMillis", "600", "intervalMillis (500)"},
		{"probe failure", func(s *Service) { s.Spec.Probe.FailureThreshold = 101 }, ValidateOptions{}, "spec.probe.failureThreshold", "101", "1-100"},
		{"probe success", func(s *Service) { s.Spec.Probe.SuccessThreshold = 1000 }, ValidateOptions{}, "spec.probe.successThreshold", "1000", "1-100"},
		{"probe insecure", func(s *Service) { s.Spec.Probe.InsecureSkipVerify = true }, ValidateOptions{}, "spec.probe.insecureSkipVerify", "true", "false for type http"},
		{"probe request", func(s *Service) { s.Spec.Probe.Request = "ping" }, ValidateOptions{}, "spec.probe.request", "ping", "empty for type http"},
		{"community", func(s *Service) { s.Spec.BGP.Communities[0] = "65536:1" }, ValidateOptions{}, "spec.bgp.communities[0]", "65536:1", "no-export"},
		{"large community", func(s *Service) { s.Spec.BGP.LargeCommunities[0] = "1:2" }, ValidateOptions{}, "spec.bgp.largeCommunities[0]", "1:2", "GLOBAL:LOCAL1:LOCAL2"},
		{"l2 interface empty", func(s *Service) { s.Spec.L2.Interface = "" }, ValidateOptions{}, "spec.l2.interface", "", "1-15 characters"},
		{"l2 interface long", func(s *Service) { s.Spec.L2.Interface = "abcdefghijklmnop" }, ValidateOptions{}, "spec.l2.interface", "abcdefghijklmnop", "1-15 characters"},
		{"l2 interface slash", func(s *Service) { s.Spec.L2.Interface = "eth/0" }, ValidateOptions{}, "spec.l2.interface", "eth/0", "no '/'"},
		{"l2 interface space", func(s *Service) { s.Spec.L2.Interface = "eth 0" }, ValidateOptions{}, "spec.l2.interface", "eth 0", "whitespace"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := validService()
			tc.mutate(&s)
			err := ValidateService(&s, tc.opt)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("want *Error, got %v", err)
			}
			if e.Code != CodeInvalid || e.Field != tc.field || e.Value != tc.value || !strings.Contains(e.Allowed, tc.allowed) {
				t.Fatalf("got %+v\nwant field=%q value=%q allowed~%q", *e, tc.field, tc.value, tc.allowed)
			}
		})
	}
}

func TestValidateSNATDefaults(t *testing.T) {
	s := validService()
	s.Spec.SNATAddresses = nil
	if err := ValidateService(&s, ValidateOptions{}); err == nil {
		t.Fatal("fullnat without SNAT accepted")
	}
	both := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
	if err := ValidateService(&s, ValidateOptions{DefaultSNAT: both}); err != nil {
		t.Fatalf("daemon defaults not honoured: %v", err)
	}
	if err := ValidateService(&s, ValidateOptions{SNATOptional: true}); err != nil {
		t.Fatalf("SNATOptional not honoured: %v", err)
	}
}

func TestDefaultService(t *testing.T) {
	in := Service{Name: "a", Spec: ServiceSpec{
		VIPs: []string{"2001:DB8::0010", "192.0.2.10"}, Port: 53, Protocol: "udp",
		SourceRanges: []string{"10.1.2.3/8", "10.0.0.0/8"},
		Backends:     []Backend{{Address: "10.0.0.2", Port: 53}, {Address: "10.0.0.1", Port: 54}, {Address: "10.0.0.1", Port: 53}},
		Probe:        &Probe{Type: "https"},
	}}
	if err := ValidateService(&in, ValidateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := DefaultService(in)
	one := uint32(1)
	want := Service{Name: "a", Spec: ServiceSpec{
		VIPs: []string{"192.0.2.10", "2001:db8::10"}, Port: 53, Protocol: "udp",
		NATMode: "default", Algorithm: "maglev", IdleTimeoutSeconds: 60, AffinityTimeoutSeconds: 10800,
		SourceRanges: []string{"10.0.0.0/8"},
		Backends: []Backend{
			{Address: "10.0.0.1", Port: 53, Weight: &one},
			{Address: "10.0.0.1", Port: 54, Weight: &one},
			{Address: "10.0.0.2", Port: 53, Weight: &one},
		},
		Probe: &Probe{Type: "https", Path: "/", Method: "GET", IntervalMillis: 500, TimeoutMillis: 400, FailureThreshold: 3, SuccessThreshold: 2, OnDown: "keep"},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", got, want)
	}
	// Defaulting is idempotent and the result still validates.
	if again := DefaultService(got); !reflect.DeepEqual(again, got) {
		t.Fatalf("not idempotent: %+v", again)
	}
	if err := ValidateService(&got, ValidateOptions{}); err != nil {
		t.Fatalf("defaulted service invalid: %v", err)
	}
	// The input is not modified.
	if in.Spec.Backends[0].Weight != nil || in.Spec.VIPs[0] != "2001:DB8::0010" {
		t.Fatalf("input modified: %+v", in)
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct{ body, field, valueSub string }{
		{`{"name":"a","spec":{"port":70000}}`, "spec.port", "70000"},
		{`{"name":"a","spec":{"port":80},"extra":1}`, "extra", "extra"},
		{`{"name":"a","spec":{"vips":"1.2.3.4"}}`, "spec.vips", "string"},
		{`{"name":`, "", ""},
		{`{"name":"a"} {}`, "", ""},
		{``, "", ""},
	}
	for _, tc := range cases {
		_, err := DecodeService([]byte(tc.body))
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeInvalid {
			t.Fatalf("%s: want invalid *Error, got %v", tc.body, err)
		}
		if e.Field != tc.field || !strings.Contains(e.Value, tc.valueSub) {
			t.Errorf("%s: got %+v, want field %q value~%q", tc.body, *e, tc.field, tc.valueSub)
		}
	}
}

func TestParseSelector(t *testing.T) {
	sel, err := ParseSelector("a=1, xlb.dev/cluster=c1")
	if err != nil || !reflect.DeepEqual(sel, map[string]string{"a": "1", "xlb.dev/cluster": "c1"}) {
		t.Fatalf("got %v %v", sel, err)
	}
	for _, bad := range []string{"a", "=1", "a=1,a=2", "bad key=1", "a=b c"} {
		if _, err := ParseSelector(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if !SelectorMatches(sel, map[string]string{"a": "1", "xlb.dev/cluster": "c1", "z": "9"}) || SelectorMatches(sel, map[string]string{"a": "1"}) {
		t.Fatal("SelectorMatches wrong")
	}
}

func FuzzDecodeService(f *testing.F) {
	seed, _ := json.Marshal(validService())
	f.Add(seed)
	f.Add([]byte(`{"name":"a","spec":{"vips":["10.0.0.1"],"port":80,"protocol":"tcp","backends":[]}}`))
	f.Add([]byte(`{"name":"a","spec":{"port":70000}}`))
	f.Add([]byte(`{"name":"a","unknown":true}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"spec":{"backends":[{"address":"::1","weight":-1}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeService(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeInvalid {
				t.Fatalf("decode error is not an invalid *Error: %v", err)
			}
			return
		}
		checkValidateInvariants(t, s)
	})
}

func FuzzValidate(f *testing.F) {
	f.Add("web", "10.0.0.1", "2001:db8::1", uint16(80), "tcp", "default", "maglev", "10.0.0.2", uint16(8080), uint32(1), "10.0.0.0/8", "http", "/")
	f.Add("a.b", "::1", "", uint16(1), "udp", "fullnat", "rr", "::2", uint16(1), uint32(65535), "::/0", "udp", "")
	f.Add("", "x", "y", uint16(0), "", "", "", "", uint16(0), uint32(70000), "", "", "")
	f.Fuzz(func(t *testing.T, name, vip1, vip2 string, port uint16, proto, nat, algo, baddr string, bport uint16, weight uint32, cidr, ptype, path string) {
		s := Service{Name: name, Spec: ServiceSpec{
			VIPs: []string{vip1}, Port: port, Protocol: proto, NATMode: nat, Algorithm: algo,
			Backends: []Backend{{Address: baddr, Port: bport, Weight: &weight}},
		}}
		if vip2 != "" {
			s.Spec.VIPs = append(s.Spec.VIPs, vip2)
		}
		if cidr != "" {
			s.Spec.SourceRanges = []string{cidr}
		}
		if ptype != "" {
			s.Spec.Probe = &Probe{Type: ptype, Path: path}
		}
		checkValidateInvariants(t, s)
	})
}

// checkValidateInvariants: validation never panics; errors are *Error with a
// field; a valid service defaults to a valid, stable, JSON-round-trippable one.
func checkValidateInvariants(t *testing.T, s Service) {
	t.Helper()
	err := ValidateService(&s, ValidateOptions{SNATOptional: true})
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeInvalid || e.Field == "" || e.Allowed == "" {
			t.Fatalf("bad validation error: %#v", err)
		}
		return
	}
	d := DefaultService(s)
	if err := ValidateService(&d, ValidateOptions{SNATOptional: true}); err != nil {
		t.Fatalf("defaulted service invalid: %v\n%+v", err, d)
	}
	if again := DefaultService(d); !reflect.DeepEqual(again, d) {
		t.Fatalf("defaulting not idempotent:\n%+v\n%+v", d, again)
	}
	raw, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeService(raw)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if !reflect.DeepEqual(DefaultService(back), d) {
		t.Fatalf("round trip changed the service:\n%+v\n%+v", d, back)
	}
}
