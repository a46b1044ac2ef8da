package config

import (
	"strings"
	"testing"
	"time"
)

const valid = `
clusterName: prod
dataplanes:
- name: lb1
  endpoint: https://10.0.0.1:8443
  tokenFile: /etc/xlb/token
  caFile: /etc/xlb/ca.crt
  bgp: {routerID: 10.0.0.1}
- name: lb2
  endpoint: http://10.0.0.2:8080
  bgp: {routerID: 10.0.0.2, peers: [{address: 10.0.1.254, asn: 64514, passwordFile: /etc/xlb/tor.pw}]}
pools:
- name: main
  cidrs: [192.0.2.0/24, "2001:db8::/120"]
  default: true
- name: team-a
  ranges: ["198.51.100.10-198.51.100.20"]
  namespaces: [team-a]
defaults:
  natMode: fullnat
  idleTimeoutSeconds: 600
  probe: {interval: 5s, failureThreshold: 3}
resyncPeriod: 2m
successPolicy: quorum
bgp:
  localASN: 64512
  peers: [{address: 10.0.0.254, asn: 64513, holdTime: 9s}]
  communities: ["64512:100"]
`

func TestParseValid(t *testing.T) {
	c, err := Parse(strings.NewReader(valid))
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterName != "prod" || len(c.Dataplanes) != 2 || len(c.Pools) != 2 || c.SuccessPolicy != SuccessQuorum {
		t.Fatalf("unexpected %+v", c)
	}
	if c.ResyncPeriod.Duration != 2*time.Minute || c.StatusPollPeriod.Duration != DefaultStatusPollPeriod {
		t.Errorf("periods %v %v", c.ResyncPeriod, c.StatusPollPeriod)
	}
	d := c.Defaults
	if d.NATMode != "fullnat" || d.Algorithm != "maglev" || d.Probe.Type != "kube-proxy" || d.Probe.KubeProxyHealthzPort != 10256 || d.Probe.Interval.Duration != 5*time.Second || d.Probe.Timeout.Duration != time.Second || d.Probe.FailureThreshold != 3 || d.Probe.SuccessThreshold != 2 {
		t.Errorf("defaults %+v", d)
	}
	if !*c.Pools[0].AvoidBuggyIPs {
		t.Errorf("avoidBuggyIPs should default to true")
	}
	rs, err := c.PoolRanges()
	if err != nil || len(rs["main"]) != 2 || rs["main"][0].Last.String() != "192.0.2.255" || rs["main"][1].Last.String() != "2001:db8::ff" {
		t.Errorf("ranges %v %v", rs, err)
	}
}

func TestSinglePoolIsDefault(t *testing.T) {
	c, err := Parse(strings.NewReader("clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'}]\npools: [{name: p, cidrs: [10.0.0.0/30]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Pools[0].Default || c.SuccessPolicy != SuccessAll {
		t.Errorf("single pool should be default, policy all: %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	base := "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'}]\npools: [{name: p, cidrs: [10.0.0.0/24]}]\n"
	tests := []struct{ name, yaml, want string }{
		{"nil", "", "clusterName"},
		{"unknown top key", base + "resync: 5m\n", `unknown field "resync"`},
		{"unknown nested key", "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1', token: x}]\npools: [{name: p, cidrs: [10.0.0.0/24]}]\n", `unknown field "token"`},
		{"bad cluster", strings.Replace(base, "clusterName: c", "clusterName: Prod_1", 1), "clusterName"},
		{"no dataplanes", "clusterName: c\npools: [{name: p, cidrs: [10.0.0.0/24]}]\n", "dataplanes: at least one"},
		{"bad endpoint", strings.Replace(base, "http://x:1", "x:1", 1), "dataplanes[0].endpoint"},
		{"dup dataplane", "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'},{name: a, endpoint: 'http://y:1'}]\npools: [{name: p, cidrs: [10.0.0.0/24]}]\n", `dataplanes[1].name: duplicate "a"`},
		{"cert without key", "clusterName: c\ndataplanes: [{name: a, endpoint: 'https://x:1', certFile: c}]\npools: [{name: p, cidrs: [10.0.0.0/24]}]\n", "certFile and keyFile"},
		{"no pools", "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'}]\n", "pools: at least one"},
		{"bad cidr", strings.Replace(base, "10.0.0.0/24", "10.0.0.0/33", 1), "pools[0].cidrs[0]"},
		{"host bits", strings.Replace(base, "10.0.0.0/24", "10.0.0.1/24", 1), "host bits"},
		{"trailing comment is fine", base + "  # \n", ""},
		{"range reversed", "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'}]\npools: [{name: p, ranges: [10.0.0.9-10.0.0.1]}]\n", "pools[0].ranges[0]"},
		{"range mixed", "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'}]\npools: [{name: p, ranges: ['10.0.0.1-::1']}]\n", "mixes IPv4 and IPv6"},
		{"overlap", "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'}]\npools: [{name: p, cidrs: [10.0.0.0/24]},{name: q, ranges: [10.0.0.200-10.0.1.5]}]\n", `overlaps pool "p"`},
		{"dup pool", "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'}]\npools: [{name: p, cidrs: [10.0.0.0/24]},{name: p, cidrs: [10.0.1.0/24]}]\n", `duplicate "p"`},
		{"empty pool", "clusterName: c\ndataplanes: [{name: a, endpoint: 'http://x:1'}]\npools: [{name: p}]\n", "needs cidrs or ranges"},
		{"nat mode", base + "defaults: {natMode: dsr}\n", "defaults.natMode: invalid value \"dsr\" (allowed: default, fullnat, onearm)"},
		{"algorithm", base + "defaults: {algorithm: hash}\n", "defaults.algorithm"},
		{"probe type", base + "defaults: {probe: {type: icmp}}\n", "defaults.probe.type"},
		{"probe timeout", base + "defaults: {probe: {interval: 1s, timeout: 2s}}\n", "defaults.probe.timeout"},
		{"bad duration", base + "resyncPeriod: 5\n", "invalid duration"},
		{"short resync", base + "resyncPeriod: 1s\n", "resyncPeriod"},
		{"policy", base + "successPolicy: most\n", "successPolicy: invalid value \"most\" (allowed: all, quorum, any)"},
		{"bgp asn", base + "bgp: {peers: [{address: 1.2.3.4, asn: 1}]}\n", "bgp.localASN"},
		{"bgp peer", base + "bgp: {localASN: 1, peers: [{address: x, asn: 1}]}\n", "bgp.peers[0].address"},
		{"bgp router id", base + "bgp: {localASN: 1}\n", "dataplanes[0].bgp.routerID"},
		{"bgp hold", base + "bgp: {localASN: 1, peers: [{address: 1.2.3.4, asn: 1, holdTime: 1s}]}\n", "bgp.peers[0].holdTime"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.yaml))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := Parse(nil); err == nil {
		t.Fatal("nil reader accepted")
	}
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"10.0.0.1-10.0.0.9", "::1-::9", "1.2.3.4-::1", "x-y", "10.0.0.9-10.0.0.1", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRange(s)
		if err != nil {
			return
		}
		if r.Last.Less(r.First) || r.First.Is4() != r.Last.Is4() {
			t.Fatalf("accepted bad range %q -> %+v", s, r)
		}
	})
}

func FuzzParse(f *testing.F) {
	f.Add(valid)
	f.Add("clusterName: c\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		if _, err := c.PoolRanges(); err != nil {
			t.Fatalf("valid config with bad pools: %v", err)
		}
	})
}
