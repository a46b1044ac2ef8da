// Package config parses and validates xlb's cloud-config (the file given to
// the CCM with --cloud-config). Unknown keys are rejected with an error that
// names them, so a typo never silently falls back to a default.
package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Config is the cloud-config file.
type Config struct {
	// ClusterName labels every dataplane service (api.LabelCluster) so
	// several clusters can share dataplanes and re-sync stays exact.
	ClusterName string `json:"clusterName"`
	// LoadBalancerClass: when set, xlb handles only Services with this
	// spec.loadBalancerClass (loadBalancerClass-controller mode); when empty,
	// only Services without a class (sole or folded-in CCM mode).
	LoadBalancerClass string      `json:"loadBalancerClass,omitempty"`
	Dataplanes        []Dataplane `json:"dataplanes"`
	Pools             []Pool      `json:"pools"`
	Defaults          Defaults    `json:"defaults,omitempty"`
	// ResyncPeriod: full re-sync (and garbage collection) of every dataplane.
	ResyncPeriod Duration `json:"resyncPeriod,omitempty"`
	// StatusPollPeriod: how often each dataplane's /v1/status is read to
	// notice restarts (new bootID) and recoveries.
	StatusPollPeriod Duration `json:"statusPollPeriod,omitempty"`
	// SuccessPolicy: when a change counts as applied across dataplanes.
	SuccessPolicy string `json:"successPolicy,omitempty"`
	// BGP is pushed to every dataplane at first contact and after every
	// dataplane restart or outage (provider/bgp.go).
	BGP *BGP `json:"bgp,omitempty"`
}

// Dataplane is one xlbd instance.
type Dataplane struct {
	Name       string `json:"name"`
	Endpoint   string `json:"endpoint"`
	TokenFile  string `json:"tokenFile,omitempty"`
	CAFile     string `json:"caFile,omitempty"`
	CertFile   string `json:"certFile,omitempty"`
	KeyFile    string `json:"keyFile,omitempty"`
	ServerName string `json:"serverName,omitempty"`
	// BGP holds the per-dataplane BGP settings (required when bgp is set:
	// every speaker needs its own router ID).
	BGP *DataplaneBGP `json:"bgp,omitempty"`
}

// DataplaneBGP are the BGP settings of one dataplane.
type DataplaneBGP struct {
	// RouterID is the speaker's IPv4 router ID (unique per dataplane).
	RouterID string `json:"routerID"`
	// LocalASN overrides bgp.localASN for this dataplane.
	LocalASN uint32 `json:"localASN,omitempty"`
	// Peers are added to bgp.peers for this dataplane only (e.g. its top-of-rack router).
	Peers []BGPPeer `json:"peers,omitempty"`
}

// Pool is a set of addresses VIPs are allocated from.
type Pool struct {
	Name   string   `json:"name"`
	CIDRs  []string `json:"cidrs,omitempty"`
	Ranges []string `json:"ranges,omitempty"`
	// AvoidBuggyIPs skips IPv4 addresses ending in .0 or .255 (some
	// clients and middleboxes mishandle them). Default true.
	AvoidBuggyIPs *bool `json:"avoidBuggyIPs,omitempty"`
	// Namespaces: when set, only Services of these namespaces may use the
	// pool, and the pool is chosen for them before the default pool.
	Namespaces []string `json:"namespaces,omitempty"`
	// Default: used by Services that name no pool and match no namespace rule.
	Default bool `json:"default,omitempty"`
}

// Defaults apply to every Service unless an annotation overrides them.
type Defaults struct {
	NATMode            string `json:"natMode,omitempty"`
	Algorithm          string `json:"algorithm,omitempty"`
	IdleTimeoutSeconds uint32 `json:"idleTimeoutSeconds,omitempty"`
	Probe              Probe  `json:"probe,omitempty"`
}

// Probe are the default health-check settings.
type Probe struct {
	// Type: kube-proxy (default) or a dataplane probe type, which then
	// targets each backend's NodePort.
	Type                 string   `json:"type,omitempty"`
	KubeProxyHealthzPort uint16   `json:"kubeProxyHealthzPort,omitempty"`
	Interval             Duration `json:"interval,omitempty"`
	Timeout              Duration `json:"timeout,omitempty"`
	FailureThreshold     uint32   `json:"failureThreshold,omitempty"`
	SuccessThreshold     uint32   `json:"successThreshold,omitempty"`
}

// BGP is pushed to every dataplane (PUT /v1/bgp and /v1/bgp/peers) at the
// first contact and after every dataplane restart or outage.
type BGP struct {
	LocalASN uint32    `json:"localASN"`
	Peers    []BGPPeer `json:"peers,omitempty"`
	// Default attributes of every announced VIP (Service annotations win).
	Communities      []string `json:"communities,omitempty"`
	LargeCommunities []string `json:"largeCommunities,omitempty"`
	LocalPref        *uint32  `json:"localPref,omitempty"`
	MED              *uint32  `json:"med,omitempty"`
}

// BGPPeer is one BGP neighbour.
type BGPPeer struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	Port    uint16 `json:"port,omitempty"`
	// MultihopTTL > 0 enables eBGP multihop.
	MultihopTTL uint8 `json:"multihopTTL,omitempty"`
	// PasswordFile holds the TCP MD5 password (read at every push, so it can rotate).
	PasswordFile string   `json:"passwordFile,omitempty"`
	HoldTime     Duration `json:"holdTime,omitempty"`
	Keepalive    Duration `json:"keepalive,omitempty"`
	Passive      bool     `json:"passive,omitempty"`
	// Families: ipv4-unicast, ipv6-unicast (default: the peer address's family).
	Families []string `json:"families,omitempty"`
}

// Success policies.
const (
	SuccessAll    = "all"
	SuccessQuorum = "quorum"
	SuccessAny    = "any"
)

// Defaults of the file.
const (
	DefaultResyncPeriod     = 5 * time.Minute
	DefaultStatusPollPeriod = 10 * time.Second
	DefaultNATMode          = "default"
	DefaultAlgorithm        = "maglev"
	DefaultProbeType        = ProbeKubeProxy
	// ProbeKubeProxy probes kube-proxy's health endpoint (HTTP GET /healthz
	// on kubeProxyHealthzPort) of every node: it works for TCP and UDP
	// ports alike and fails when kube-proxy is down or the node is being
	// deleted, which is what matters for externalTrafficPolicy: Cluster.
	ProbeKubeProxy              = "kube-proxy"
	DefaultKubeProxyHealthzPort = 10256
	// The probe defaults are xlbd's (docs/health.md): a dead node is out of
	// selection in about 1.5 s, and one lost probe never takes it out.
	DefaultProbeInterval  = 500 * time.Millisecond
	DefaultProbeTimeout   = 400 * time.Millisecond
	DefaultProbeFailures  = 3
	DefaultProbeSuccesses = 2
)

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration struct{ time.Duration }

// UnmarshalJSON accepts a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || string(b) == "null" {
		d.Duration = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %s (want a Go duration like 30s, 5m)", b)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

var (
	natModes      = []string{"default", "fullnat", "onearm"}
	algorithms    = []string{"rr", "random", "maglev", "persist", "lc"}
	probeTypes    = []string{ProbeKubeProxy, "tcp", "udp", "http", "https", "ping", "none"}
	successPolicy = []string{SuccessAll, SuccessQuorum, SuccessAny}
	// Names end up in labels and dataplane service names: keep them DNS-label-like.
	nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)
)

// Parse reads, defaults and validates a cloud-config. A nil reader or empty
// file is an error: xlb cannot do anything without dataplanes and pools.
func Parse(r io.Reader) (*Config, error) {
	if r == nil {
		return nil, errors.New("cloud-config: no file given (--cloud-config is required for xlb)")
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("cloud-config: read: %w", err)
	}
	var c Config
	// UnmarshalStrict rejects unknown and duplicate keys and names them.
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("cloud-config: %w", err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("cloud-config: %w", err)
	}
	return &c, nil
}

// SetDefaults fills unset fields with their documented defaults.
func (c *Config) SetDefaults() {
	if c.ResyncPeriod.Duration == 0 {
		c.ResyncPeriod.Duration = DefaultResyncPeriod
	}
	if c.StatusPollPeriod.Duration == 0 {
		c.StatusPollPeriod.Duration = DefaultStatusPollPeriod
	}
	if c.SuccessPolicy == "" {
		c.SuccessPolicy = SuccessAll
	}
	d := &c.Defaults
	if d.NATMode == "" {
		d.NATMode = DefaultNATMode
	}
	if d.Algorithm == "" {
		d.Algorithm = DefaultAlgorithm
	}
	if d.Probe.Type == "" {
		d.Probe.Type = DefaultProbeType
	}
	if d.Probe.KubeProxyHealthzPort == 0 {
		d.Probe.KubeProxyHealthzPort = DefaultKubeProxyHealthzPort
	}
	if d.Probe.Interval.Duration == 0 {
		d.Probe.Interval.Duration = DefaultProbeInterval
	}
	if d.Probe.Timeout.Duration == 0 {
		// As xlbd: 400 ms with the default interval, else 80 % of the
		// interval, at most 1 s (a timeout never exceeds the interval).
		d.Probe.Timeout.Duration = DefaultProbeTimeout
		if d.Probe.Interval.Duration != DefaultProbeInterval {
			d.Probe.Timeout.Duration = min(d.Probe.Interval.Duration*8/10, time.Second)
		}
	}
	if d.Probe.FailureThreshold == 0 {
		d.Probe.FailureThreshold = DefaultProbeFailures
	}
	if d.Probe.SuccessThreshold == 0 {
		d.Probe.SuccessThreshold = DefaultProbeSuccesses
	}
	// A single pool is the default pool: there is nothing else to choose.
	if len(c.Pools) == 1 && len(c.Pools[0].Namespaces) == 0 {
		c.Pools[0].Default = true
	}
	for i := range c.Pools {
		if c.Pools[i].AvoidBuggyIPs == nil {
			t := true
			c.Pools[i].AvoidBuggyIPs = &t
		}
	}
}

// Validate checks every field and returns all problems, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	oneOf := func(key, v string, allowed []string) {
		if !slices.Contains(allowed, v) {
			add("%s: invalid value %q (allowed: %s)", key, v, strings.Join(allowed, ", "))
		}
	}
	if !nameRE.MatchString(c.ClusterName) {
		add("clusterName: invalid value %q (allowed: 1-32 lowercase letters, digits and '-', starting and ending alphanumeric)", c.ClusterName)
	}
	if len(c.Dataplanes) == 0 {
		add("dataplanes: at least one dataplane is required")
	}
	seen := map[string]bool{}
	for i, d := range c.Dataplanes {
		key := fmt.Sprintf("dataplanes[%d]", i)
		if !nameRE.MatchString(d.Name) {
			add("%s.name: invalid value %q (allowed: 1-32 lowercase letters, digits and '-')", key, d.Name)
		} else if seen[d.Name] {
			add("%s.name: duplicate %q", key, d.Name)
		}
		seen[d.Name] = true
		u, err := url.Parse(d.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("%s.endpoint: invalid value %q (allowed: an http:// or https:// URL)", key, d.Endpoint)
		} else if u.Scheme == "http" && (d.CAFile != "" || d.CertFile != "" || d.ServerName != "") {
			add("%s.endpoint: TLS settings given for a plain http:// endpoint", key)
		}
		if (d.CertFile == "") != (d.KeyFile == "") {
			add("%s: certFile and keyFile must be given together", key)
		}
	}
	if len(c.Pools) == 0 {
		add("pools: at least one pool is required")
	}
	if _, err := c.PoolRanges(); err != nil {
		errs = append(errs, err)
	}
	d := c.Defaults
	oneOf("defaults.natMode", d.NATMode, natModes)
	oneOf("defaults.algorithm", d.Algorithm, algorithms)
	oneOf("defaults.probe.type", d.Probe.Type, probeTypes)
	if d.IdleTimeoutSeconds > 86400 {
		add("defaults.idleTimeoutSeconds: %d out of range (allowed: 0-86400; 0 = dataplane default)", d.IdleTimeoutSeconds)
	}
	if d.Probe.Interval.Duration < 100*time.Millisecond || d.Probe.Interval.Duration > time.Hour {
		add("defaults.probe.interval: %s out of range (allowed: 100ms-1h)", d.Probe.Interval)
	}
	if d.Probe.Timeout.Duration < 10*time.Millisecond || d.Probe.Timeout.Duration > d.Probe.Interval.Duration {
		add("defaults.probe.timeout: %s out of range (allowed: 10ms up to defaults.probe.interval)", d.Probe.Timeout)
	}
	if d.Probe.FailureThreshold > 100 || d.Probe.SuccessThreshold > 100 {
		add("defaults.probe: thresholds out of range (allowed: 1-100)")
	}
	if c.ResyncPeriod.Duration < 10*time.Second {
		add("resyncPeriod: %s too short (allowed: at least 10s)", c.ResyncPeriod)
	}
	if c.StatusPollPeriod.Duration < 100*time.Millisecond {
		add("statusPollPeriod: %s too short (allowed: at least 100ms)", c.StatusPollPeriod)
	}
	oneOf("successPolicy", c.SuccessPolicy, successPolicy)
	if c.BGP != nil {
		for i, d := range c.Dataplanes {
			if d.BGP == nil {
				add("dataplanes[%d].bgp.routerID: required when bgp is set (allowed: an IPv4 address, unique per dataplane)", i)
				continue
			}
			if a, err := netip.ParseAddr(d.BGP.RouterID); err != nil || !a.Is4() {
				add("dataplanes[%d].bgp.routerID: invalid value %q (allowed: an IPv4 address, unique per dataplane)", i, d.BGP.RouterID)
			}
			for j, p := range d.BGP.Peers {
				validatePeer(fmt.Sprintf("dataplanes[%d].bgp.peers[%d]", i, j), p, add)
			}
		}
		for i, p := range c.BGP.Peers {
			validatePeer(fmt.Sprintf("bgp.peers[%d]", i), p, add)
		}
		if c.BGP.LocalASN == 0 {
			add("bgp.localASN: required (allowed: 1-4294967295)")
		}
	}
	return errors.Join(errs...)
}

// Range is an inclusive address range of one family.
type Range struct {
	First, Last netip.Addr
	// Prefix is set when the range came from a CIDR; used to skip the
	// network and broadcast addresses.
	Prefix netip.Prefix
}

// PoolRanges parses every pool's cidrs and ranges, checking that names are
// unique and that no two pools overlap (an address in two pools could be
// handed out twice).
func (c *Config) PoolRanges() (map[string][]Range, error) {
	var errs []error
	out := map[string][]Range{}
	type owned struct {
		r    Range
		pool string
	}
	var all []owned
	for i, p := range c.Pools {
		key := fmt.Sprintf("pools[%d]", i)
		if !nameRE.MatchString(p.Name) {
			errs = append(errs, fmt.Errorf("%s.name: invalid value %q (allowed: 1-32 lowercase letters, digits and '-')", key, p.Name))
		} else if _, dup := out[p.Name]; dup {
			errs = append(errs, fmt.Errorf("%s.name: duplicate %q", key, p.Name))
		}
		if len(p.CIDRs) == 0 && len(p.Ranges) == 0 {
			errs = append(errs, fmt.Errorf("%s: needs cidrs or ranges", key))
		}
		var rs []Range
		for j, s := range p.CIDRs {
			pr, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil || pr.Addr().Zone() != "" {
				errs = append(errs, fmt.Errorf("%s.cidrs[%d]: invalid CIDR %q", key, j, s))
				continue
			}
			if pr.Masked() != pr {
				errs = append(errs, fmt.Errorf("%s.cidrs[%d]: %q has host bits set (did you mean %s?)", key, j, s, pr.Masked()))
				continue
			}
			rs = append(rs, Range{First: pr.Addr(), Last: lastAddr(pr), Prefix: pr})
		}
		for j, s := range p.Ranges {
			r, err := ParseRange(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.ranges[%d]: %w", key, j, err))
				continue
			}
			rs = append(rs, r)
		}
		for _, ns := range p.Namespaces {
			if ns == "" {
				errs = append(errs, fmt.Errorf("%s.namespaces: empty name", key))
			}
		}
		for _, r := range rs {
			for _, o := range all {
				if r.First.Is4() == o.r.First.Is4() && r.First.Compare(o.r.Last) <= 0 && o.r.First.Compare(r.Last) <= 0 {
					errs = append(errs, fmt.Errorf("%s: %s-%s overlaps pool %q (%s-%s)", key, r.First, r.Last, o.pool, o.r.First, o.r.Last))
				}
			}
			all = append(all, owned{r, p.Name})
		}
		out[p.Name] = rs
	}
	return out, errors.Join(errs...)
}

// ParseRange parses "first-last" (both of one family, first <= last).
func ParseRange(s string) (Range, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return Range{}, fmt.Errorf("invalid range %q (allowed: FIRST-LAST, e.g. 10.0.0.10-10.0.0.20)", s)
	}
	first, err1 := netip.ParseAddr(strings.TrimSpace(a))
	last, err2 := netip.ParseAddr(strings.TrimSpace(b))
	if err1 != nil || err2 != nil || first.Zone() != "" || last.Zone() != "" {
		return Range{}, fmt.Errorf("invalid range %q (allowed: FIRST-LAST, e.g. 10.0.0.10-10.0.0.20)", s)
	}
	first, last = first.Unmap(), last.Unmap()
	if first.Is4() != last.Is4() {
		return Range{}, fmt.Errorf("invalid range %q: mixes IPv4 and IPv6", s)
	}
	if last.Less(first) {
		return Range{}, fmt.Errorf("invalid range %q: first address is after the last", s)
	}
	return Range{First: first, Last: last}, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func validatePeer(key string, p BGPPeer, add func(string, ...any)) {
	if _, err := netip.ParseAddr(p.Address); err != nil {
		add("%s.address: invalid IP %q", key, p.Address)
	}
	if p.ASN == 0 {
		add("%s.asn: required (allowed: 1-4294967295)", key)
	}
	if p.HoldTime.Duration != 0 && (p.HoldTime.Duration < 3*time.Second || p.HoldTime.Duration > 65535*time.Second) {
		add("%s.holdTime: invalid value %s (allowed: 3s-65535s)", key, p.HoldTime.Duration)
	}
	for _, f := range p.Families {
		if f != "ipv4-unicast" && f != "ipv6-unicast" {
			add("%s.families: invalid value %q (allowed: ipv4-unicast, ipv6-unicast)", key, f)
		}
	}
}
