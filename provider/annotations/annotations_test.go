package annotations

import (
	"flag"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var update = flag.Bool("update", false, "rewrite docs/annotations.md")

func svc(ann map[string]string, mut ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Annotations: ann}}
	for _, m := range mut {
		m(s)
	}
	return s
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		svc     *v1.Service
		check   func(t *testing.T, o Options)
		wantErr []string // substrings that must all appear
	}{
		{name: "empty", svc: svc(nil), check: func(t *testing.T, o Options) {
			if o.NATMode != "" || o.Algorithm != "" || o.StaticIPs != nil {
				t.Errorf("unexpected values %+v", o)
			}
		}},
		{name: "all valid", svc: svc(map[string]string{
			NATMode: "fullnat", Algorithm: "lc", Pool: "blue", LoadBalancerIPs: "10.0.0.5, 2001:db8::5",
			AllowSharedIP: "k1", IdleTimeout: "300", AffinityTimeout: "60", SNATAddresses: "192.0.2.1",
			ProbeType: "http", ProbePort: "8080", ProbePath: "/ready", ProbeInterval: "500ms", ProbeTimeout: "1s",
			ProbeFailureThreshold: "3", ProbeSuccessThreshold: "2", ProbeExpectStatus: "200,204",
			BGPAdvertise: "false", BGPCommunities: "65000:100,65000:200", IPMode: "Proxy", ProbeOnDown: "reset",
		}), check: func(t *testing.T, o Options) {
			if o.Probe.OnDown != "reset" {
				t.Errorf("probe on-down: %q", o.Probe.OnDown)
			}
			if o.NATMode != "fullnat" || o.Algorithm != "lc" || o.Pool != "blue" || o.SharingKey != "k1" || o.IPMode != "Proxy" {
				t.Errorf("strings: %+v", o)
			}
			if len(o.StaticIPs) != 2 || o.StaticIPs[1] != netip.MustParseAddr("2001:db8::5") {
				t.Errorf("static: %v", o.StaticIPs)
			}
			if *o.IdleTimeout != 300 || *o.AffinityTimeout != 60 || *o.Probe.Port != 8080 || *o.Probe.Interval != 500*time.Millisecond {
				t.Errorf("numbers: %+v", o)
			}
			if *o.BGPAdvertise || len(o.BGPCommunities) != 2 || len(o.Probe.ExpectStatus) != 2 || len(o.SNATAddresses) != 1 {
				t.Errorf("lists: %+v", o)
			}
		}},
		{name: "unknown annotation", svc: svc(map[string]string{"xlb.dev/natmode": "fullnat"}), wantErr: []string{`unknown annotation "xlb.dev/natmode"`, NATMode}},
		{name: "foreign annotations ignored", svc: svc(map[string]string{"example.com/x": "y"})},
		{name: "bad nat mode", svc: svc(map[string]string{NATMode: "dsr"}), wantErr: []string{NATMode, `"dsr"`, "default, fullnat, onearm"}},
		{name: "bad algorithm", svc: svc(map[string]string{Algorithm: "hash"}), wantErr: []string{Algorithm, "rr, random, maglev, persist, lc"}},
		{name: "two v4 static", svc: svc(map[string]string{LoadBalancerIPs: "10.0.0.1,10.0.0.2"}), wantErr: []string{LoadBalancerIPs, "same family"}},
		{name: "three static", svc: svc(map[string]string{LoadBalancerIPs: "10.0.0.1,::1,::2"}), wantErr: []string{LoadBalancerIPs}},
		{name: "bad static", svc: svc(map[string]string{LoadBalancerIPs: "10.0.0.300"}), wantErr: []string{LoadBalancerIPs, "10.0.0.300"}},
		{name: "spec.loadBalancerIP", svc: svc(nil, func(s *v1.Service) { s.Spec.LoadBalancerIP = "10.1.1.1" }), check: func(t *testing.T, o Options) {
			if len(o.StaticIPs) != 1 || o.StaticIPs[0].String() != "10.1.1.1" {
				t.Errorf("static %v", o.StaticIPs)
			}
		}},
		{name: "annotation wins over spec.loadBalancerIP", svc: svc(map[string]string{LoadBalancerIPs: "10.2.2.2"}, func(s *v1.Service) { s.Spec.LoadBalancerIP = "10.1.1.1" }), check: func(t *testing.T, o Options) {
			if o.StaticIPs[0].String() != "10.2.2.2" {
				t.Errorf("static %v", o.StaticIPs)
			}
		}},
		{name: "bad spec.loadBalancerIP", svc: svc(nil, func(s *v1.Service) { s.Spec.LoadBalancerIP = "nope" }), wantErr: []string{"spec.loadBalancerIP"}},
		{name: "idle zero", svc: svc(map[string]string{IdleTimeout: "0"}), wantErr: []string{IdleTimeout, allowedSeconds}},
		{name: "idle negative", svc: svc(map[string]string{IdleTimeout: "-5"}), wantErr: []string{IdleTimeout}},
		{name: "probe interval no unit", svc: svc(map[string]string{ProbeInterval: "5"}), wantErr: []string{ProbeInterval, allowedInterval}},
		{name: "probe port out of range", svc: svc(map[string]string{ProbePort: "70000"}), wantErr: []string{ProbePort}},
		{name: "probe path relative", svc: svc(map[string]string{ProbePath: "healthz"}), wantErr: []string{ProbePath}},
		{name: "expect status", svc: svc(map[string]string{ProbeExpectStatus: "200,99"}), wantErr: []string{ProbeExpectStatus}},
		{name: "bad probe on-down", svc: svc(map[string]string{ProbeOnDown: "drop"}), wantErr: []string{ProbeOnDown, `"drop"`, "keep, reset"}},
		{name: "bgp advertise yes", svc: svc(map[string]string{BGPAdvertise: "yes"}), wantErr: []string{BGPAdvertise, "true, false"}},
		{name: "bgp community", svc: svc(map[string]string{BGPCommunities: "65000"}), wantErr: []string{BGPCommunities}},
		{name: "sharing key bad chars", svc: svc(map[string]string{AllowSharedIP: "a b"}), wantErr: []string{AllowSharedIP}},
		{name: "snat with default mode", svc: svc(map[string]string{NATMode: "default", SNATAddresses: "192.0.2.1"}), wantErr: []string{SNATAddresses, "fullnat"}},
		{name: "snat with onearm", svc: svc(map[string]string{NATMode: "onearm", SNATAddresses: "192.0.2.1"}), wantErr: []string{SNATAddresses, "fullnat"}},
		{name: "probe interval too short", svc: svc(map[string]string{ProbeInterval: "50ms"}), wantErr: []string{ProbeInterval}},
		{name: "idle too long", svc: svc(map[string]string{IdleTimeout: "86401"}), wantErr: []string{IdleTimeout}},
		{name: "several errors reported together", svc: svc(map[string]string{NATMode: "x", Algorithm: "y"}), wantErr: []string{NATMode, Algorithm}},
		{name: "session affinity", svc: svc(nil, func(s *v1.Service) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			to := int32(600)
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &to}}
		}), check: func(t *testing.T, o Options) {
			if o.Algorithm != AlgPersist || o.AffinityTimeout == nil || *o.AffinityTimeout != 600 {
				t.Errorf("affinity: %q %v", o.Algorithm, o.AffinityTimeout)
			}
		}},
		{name: "session affinity default timeout", svc: svc(nil, func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }), check: func(t *testing.T, o Options) {
			if *o.AffinityTimeout != 10800 {
				t.Errorf("timeout %d", *o.AffinityTimeout)
			}
		}},
		{name: "session affinity vs algorithm", svc: svc(map[string]string{Algorithm: "rr"}, func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }), wantErr: []string{Algorithm, "sessionAffinity"}},
		{name: "affinity annotation wins", svc: svc(map[string]string{AffinityTimeout: "30"}, func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }), check: func(t *testing.T, o Options) {
			if *o.AffinityTimeout != 30 {
				t.Errorf("timeout %v", *o.AffinityTimeout)
			}
		}},
		{name: "source ranges spec", svc: svc(map[string]string{LegacySourceRanges: "1.0.0.0/8"}, func(s *v1.Service) {
			s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.1/8", "2001:db8::/32"}
		}), check: func(t *testing.T, o Options) {
			if len(o.SourceRanges) != 2 || o.SourceRanges[0].String() != "10.0.0.0/8" {
				t.Errorf("ranges %v", o.SourceRanges)
			}
		}},
		{name: "source ranges legacy", svc: svc(map[string]string{LegacySourceRanges: "192.168.0.0/16, 10.0.0.0/8"}), check: func(t *testing.T, o Options) {
			if len(o.SourceRanges) != 2 {
				t.Errorf("ranges %v", o.SourceRanges)
			}
		}},
		{name: "source ranges bad", svc: svc(nil, func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0"} }), wantErr: []string{"spec.loadBalancerSourceRanges[0]"}},
		{name: "legacy bad", svc: svc(map[string]string{LegacySourceRanges: "x"}), wantErr: []string{LegacySourceRanges}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := Parse(tc.svc)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, want %q", tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.check != nil {
				tc.check(t, o)
			}
		})
	}
}

func TestDeclarationsComplete(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range All() {
		if !strings.HasPrefix(s.Name, Prefix) || s.Doc == "" || s.Default == "" || (s.Allowed == "" && len(s.Values) == 0) {
			t.Errorf("incomplete declaration %+v", s)
		}
		if seen[s.Name] {
			t.Errorf("duplicate %s", s.Name)
		}
		seen[s.Name] = true
	}
}

// TestDocsFresh keeps docs/annotations.md equal to the generator's output.
func TestDocsFresh(t *testing.T) {
	const path = "../../docs/annotations.md"
	want := Markdown()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v (run: go run ./provider/annotations/gen)", path, err)
	}
	if string(got) != want {
		t.Fatalf("%s is stale: run go run ./provider/annotations/gen", path)
	}
}

func FuzzParse(f *testing.F) {
	seeds := [][2]string{
		{NATMode, "fullnat"}, {LoadBalancerIPs, "10.0.0.1,2001:db8::1"}, {LoadBalancerIPs, "::ffff:10.0.0.1"},
		{ProbeInterval, "1s"}, {BGPCommunities, "1:2,3:4"}, {ProbeExpectStatus, "200"}, {IdleTimeout, "99999999999"},
		{LegacySourceRanges, "10.0.0.0/8"}, {AllowSharedIP, "x"}, {"xlb.dev/", ""},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, k, v string) {
		o, err := Parse(svc(map[string]string{k: v}))
		if err != nil {
			return
		}
		if len(o.StaticIPs) > 2 || len(o.SNATAddresses) > 2 {
			t.Fatalf("more than one IP per family accepted: %v", o)
		}
		if o.IdleTimeout != nil && (*o.IdleTimeout == 0 || *o.IdleTimeout > maxSeconds) {
			t.Fatalf("idle timeout out of range accepted: %d", *o.IdleTimeout)
		}
	})
}
