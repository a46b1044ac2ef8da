package mapping

import (
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/xlb-dev/xlb/provider/annotations"
	"github.com/xlb-dev/xlb/provider/config"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func defaults() config.Defaults {
	c := &config.Config{}
	c.SetDefaults()
	return c.Defaults
}

func node(name string, addrs ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, a := range addrs {
		t, ip, _ := strings.Cut(a, "=")
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeAddressType(t), Address: ip})
	}
	return n
}

func service(name string, ann map[string]string, ports ...v1.ServicePort) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("3f0e8a52-1d2c-4b7e-9a51-" + strings.Repeat("0", 12)), Annotations: ann},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, Ports: ports},
	}
}

func port(name string, p, np int32, proto v1.Protocol) v1.ServicePort {
	return v1.ServicePort{Name: name, Port: p, NodePort: np, Protocol: proto}
}

var nodes = []*v1.Node{
	node("worker-b", "InternalIP=10.0.0.12", "InternalIP=fd00::12", "ExternalIP=203.0.113.12"),
	node("worker-a", "InternalIP=10.0.0.11", "Hostname=worker-a"),
	node("worker-c", "ExternalIP=203.0.113.13"), // fallback to ExternalIP
	node("worker-d"), // no address: skipped
}

func vips(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, v := range s {
		out = append(out, netip.MustParseAddr(v))
	}
	return out
}

func TestGolden(t *testing.T) {
	long := service(strings.Repeat("very-long-service-name-", 2)+"x", nil, port("http", 8080, 30080, v1.ProtocolTCP))
	long.Namespace = strings.Repeat("namespace", 5)
	tests := []struct {
		name string
		svc  *v1.Service
		vips []netip.Addr
	}{
		{"basic", service("web", nil, port("http", 80, 30080, v1.ProtocolTCP), port("https", 443, 30443, v1.ProtocolTCP)), vips("192.0.2.10")},
		{"dualstack-udp", func() *v1.Service {
			s := service("dns", nil, port("dns", 53, 30053, v1.ProtocolUDP), port("dns-tcp", 53, 30053, v1.ProtocolTCP))
			s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8", "2001:db8::/32"}
			return s
		}(), vips("2001:db8::10", "192.0.2.10")},
		{"etp-local", func() *v1.Service {
			s := service("web", map[string]string{annotations.ProbeInterval: "1s"}, port("http", 80, 30080, v1.ProtocolTCP))
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 32000
			return s
		}(), vips("192.0.2.10")},
		{"fullnat-annotations", service("api", map[string]string{
			annotations.NATMode: "fullnat", annotations.Algorithm: "lc", annotations.SNATAddresses: "192.0.2.254",
			annotations.IdleTimeout: "900", annotations.ProbeType: "http", annotations.ProbePath: "/ready",
			annotations.ProbePort: "8081", annotations.ProbeExpectStatus: "200,204", annotations.ProbeFailureThreshold: "5",
			annotations.BGPAdvertise: "true", annotations.BGPCommunities: "65000:1",
		}, port("http", 80, 30080, v1.ProtocolTCP)), vips("192.0.2.10")},
		{"session-affinity", func() *v1.Service {
			s := service("cart", map[string]string{annotations.ProbeType: "none"}, port("http", 80, 30080, v1.ProtocolTCP))
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			return s
		}(), vips("192.0.2.10")},
		{"long-names", long, vips("192.0.2.10")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := annotations.Parse(tc.svc)
			if err != nil {
				t.Fatal(err)
			}
			st, err := Resolve(tc.svc, o, defaults())
			if err != nil {
				t.Fatal(err)
			}
			out, err := Build(Input{Cluster: "prod", Service: tc.svc, Nodes: nodes, VIPs: tc.vips, Settings: st})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range out {
				if len(s.Name) > 63 {
					t.Errorf("name %q longer than 63", s.Name)
				}
			}
			got, _ := json.MarshalIndent(struct {
				IPMode   v1.LoadBalancerIPMode `json:"ipMode"`
				Services any                   `json:"services"`
			}{st.IPMode, out}, "", "  ")
			got = append(got, '\n')
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./provider/mapping -update)", err)
			}
			if string(got) != string(want) {
				t.Errorf("mismatch with %s (run with -update and review the diff):\n%s", path, got)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		svc  *v1.Service
		want string
	}{
		{"sctp", service("s", nil, port("x", 80, 30080, v1.ProtocolSCTP)), `protocol "SCTP" not supported (allowed: TCP, UDP)`},
		{"no nodeport", service("s", nil, port("x", 80, 0, v1.ProtocolTCP)), "allocateLoadBalancerNodePorts"},
		{"etp local with probe type", func() *v1.Service {
			s := service("s", map[string]string{annotations.ProbeType: "tcp"}, port("x", 80, 30080, v1.ProtocolTCP))
			s.Spec.ExternalTrafficPolicy, s.Spec.HealthCheckNodePort = v1.ServiceExternalTrafficPolicyLocal, 32000
			return s
		}(), annotations.ProbeType + ": not allowed with externalTrafficPolicy: Local"},
		{"snat with default mode from config", service("s", map[string]string{annotations.SNATAddresses: "192.0.2.1"}, port("x", 80, 30080, v1.ProtocolTCP)), annotations.SNATAddresses},
		{"expect status on tcp probe", service("s", map[string]string{annotations.ProbeType: "tcp", annotations.ProbeExpectStatus: "200"}, port("x", 80, 30080, v1.ProtocolTCP)), annotations.ProbeExpectStatus},
		{"timeout over interval", service("s", map[string]string{annotations.ProbeTimeout: "5s"}, port("x", 80, 30080, v1.ProtocolTCP)), annotations.ProbeTimeout},
		{"snat family without vip", service("s", map[string]string{annotations.NATMode: "fullnat", annotations.SNATAddresses: "fd00::1"}, port("x", 80, 30080, v1.ProtocolTCP)), "snatAddresses"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := annotations.Parse(tc.svc)
			if err != nil {
				t.Fatal(err)
			}
			st, err := Resolve(tc.svc, o, defaults())
			if err == nil {
				_, err = Build(Input{Cluster: "prod", Service: tc.svc, Nodes: nodes, VIPs: vips("192.0.2.10"), Settings: st})
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

func TestNamesUniqueAndStable(t *testing.T) {
	a := service("a-b", nil)
	a.Namespace = "c"
	b := service("b-c", nil)
	b.Namespace = "a"
	b.UID = "other-uid"
	// Same readable head "x-c-a-b" vs "x-a-b-c" differ anyway; the UID hash
	// keeps truly colliding heads apart.
	c := service("b", nil)
	c.Namespace = "a-c"
	c.UID = "third"
	d := service("c-b", nil)
	d.Namespace = "a"
	d.UID = "fourth"
	if Name("x", c, 80, "tcp") == Name("x", d, 80, "tcp") {
		t.Fatal("colliding heads produced equal names")
	}
	if first, again := Name("x", a, 80, "tcp"), Name("x", a, 80, "tcp"); first != again {
		t.Fatal("not stable")
	}
	if Name("x", a, 80, "tcp") == Name("x", a, 80, "udp") || Name("x", a, 80, "tcp") == Name("x", a, 81, "tcp") {
		t.Fatal("ports/protocols collide")
	}
}
