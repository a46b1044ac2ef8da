// Package annotations declares every xlb.dev/* Service annotation in one
// place (name, type, allowed values, default, documentation) and parses a
// Service into a typed Options value. docs/annotations.md is generated from
// the declarations below (go run ./provider/annotations/gen), so the docs
// cannot drift from what the parser accepts.
package annotations

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Prefix is the prefix of every annotation owned by xlb. Any annotation with
// this prefix that is not declared here is rejected, so typos surface as a
// Warning event instead of being silently ignored.
const Prefix = "xlb.dev/"

// Annotation names.
const (
	NATMode                = Prefix + "nat-mode"
	Algorithm              = Prefix + "algorithm"
	Pool                   = Prefix + "pool"
	LoadBalancerIPs        = Prefix + "load-balancer-ips"
	AllowSharedIP          = Prefix + "allow-shared-ip"
	IdleTimeout            = Prefix + "idle-timeout"
	AffinityTimeout        = Prefix + "affinity-timeout"
	SNATAddresses          = Prefix + "snat-addresses"
	ProbeType              = Prefix + "probe-type"
	ProbePort              = Prefix + "probe-port"
	ProbePath              = Prefix + "probe-path"
	ProbeInterval          = Prefix + "probe-interval"
	ProbeTimeout           = Prefix + "probe-timeout"
	ProbeFailureThreshold  = Prefix + "probe-failure-threshold"
	ProbeSuccessThreshold  = Prefix + "probe-success-threshold"
	ProbeExpectStatus      = Prefix + "probe-expect-status"
	ProbeOnDown            = Prefix + "probe-on-down"
	BGPAdvertise           = Prefix + "bgp-advertise"
	BGPCommunities         = Prefix + "bgp-communities"
	IPMode                 = Prefix + "ip-mode"
	LegacySourceRanges     = v1.AnnotationLoadBalancerSourceRangesKey
	maxSeconds             = 86400 // api.MaxTimeoutSeconds
	maxProbeDuration       = time.Hour
	minProbeInterval       = 100 * time.Millisecond // api.MinProbeIntervalMs
	minProbeTimeout        = 10 * time.Millisecond  // api.MinProbeTimeoutMs
	maxProbeThreshold      = 100
	allowedBoolean         = "true, false"
	allowedSeconds         = "an integer number of seconds, 1-86400"
	allowedInterval        = "a Go duration between 100ms and 1h, e.g. 500ms, 2s"
	allowedTimeout         = "a Go duration between 10ms and 1h, e.g. 300ms, 1s"
	allowedThreshold       = "an integer 1-100"
	allowedPort            = "an integer 1-65535"
	allowedIPList          = "comma-separated IP addresses, at most one IPv4 and one IPv6"
	allowedCommunity       = "comma-separated BGP communities ASN:VALUE (each 0-65535)"
	allowedStatus          = "comma-separated HTTP status codes 100-599"
	allowedPath            = "an absolute HTTP path starting with /"
	allowedSharingKey      = "a non-empty string of at most 253 characters: letters, digits, '-', '_', '.'"
	allowedPoolName        = "the name of a pool in the cloud-config"
	allowedCIDRList        = "comma-separated CIDRs, e.g. 10.0.0.0/8,2001:db8::/32"
	defaultFromCloudConfig = "cloud-config defaults"
)

// onDownValues are the values of probe-on-down (api.Probe.OnDown).
var onDownValues = []string{"keep", "reset"}

// Kind is the value type of an annotation, for the generated docs.
type Kind string

// Kinds of annotation values.
const (
	KindEnum     Kind = "enum"
	KindString   Kind = "string"
	KindInt      Kind = "integer"
	KindDuration Kind = "duration"
	KindBool     Kind = "boolean"
	KindList     Kind = "list"
)

// Spec declares one annotation.
type Spec struct {
	Name    string
	Kind    Kind
	Allowed string // human text of the accepted values
	Values  []string
	Default string
	Doc     string
}

// NAT modes (see api.ServiceSpec.NATMode).
const (
	NATDefault = "default"
	NATFull    = "fullnat"
	NATOneArm  = "onearm"
)

// Algorithms (see api.ServiceSpec.Algorithm).
const (
	AlgRR      = "rr"
	AlgRandom  = "random"
	AlgMaglev  = "maglev"
	AlgPersist = "persist"
	AlgLC      = "lc"
)

// IP modes written to status.loadBalancer.ingress[].ipMode.
const (
	IPModeVIP   = "VIP"
	IPModeProxy = "Proxy"
)

var (
	natModes   = []string{NATDefault, NATFull, NATOneArm}
	algorithms = []string{AlgRR, AlgRandom, AlgMaglev, AlgPersist, AlgLC}
	probeTypes = []string{"tcp", "udp", "http", "https", "ping", "none"}
	ipModes    = []string{IPModeVIP, IPModeProxy}
)

// All returns the declarations of every annotation, in documentation order.
// It returns a fresh slice so callers cannot mutate shared state.
func All() []Spec {
	return []Spec{
		{Name: NATMode, Kind: KindEnum, Values: natModes, Default: defaultFromCloudConfig + " (\"default\"); always \"default\" for externalTrafficPolicy: Local unless set",
			Doc: "How the dataplane rewrites packets. `default`: DNAT only, the backend sees the client IP (replies must route back through the dataplane). `fullnat`: DNAT+SNAT, works with any routing, the client IP is lost. `onearm`: fullnat leaving through the ingress interface."},
		{Name: Algorithm, Kind: KindEnum, Values: algorithms, Default: defaultFromCloudConfig + " (\"maglev\"); \"persist\" when spec.sessionAffinity is ClientIP",
			Doc: "How new flows pick a backend. `maglev` keeps flows on the same backend across dataplanes and changes; `persist` pins a client to a backend for the affinity timeout."},
		{Name: Pool, Kind: KindString, Allowed: allowedPoolName, Default: "namespace rules, else the default pool",
			Doc: "The IP pool the VIPs are taken from. The pool's namespace rules still apply."},
		{Name: LoadBalancerIPs, Kind: KindList, Allowed: allowedIPList, Default: "spec.loadBalancerIP, else allocated",
			Doc: "Static VIPs, one per IP family. Each must lie inside a configured pool that the Service may use (so allocation never hands it to another Service). Wins over spec.loadBalancerIP."},
		{Name: AllowSharedIP, Kind: KindString, Allowed: allowedSharingKey, Default: "not shared",
			Doc: "Sharing key. Services with the same key share their VIPs when their (port, protocol) sets do not overlap; an overlap is an error, never a silent second IP. The VIP is released when the last sharer goes."},
		{Name: IdleTimeout, Kind: KindInt, Allowed: allowedSeconds, Default: defaultFromCloudConfig + " (dataplane: 240 TCP, 60 UDP)",
			Doc: "Connection-tracking idle timeout in seconds."},
		{Name: AffinityTimeout, Kind: KindInt, Allowed: allowedSeconds, Default: "spec.sessionAffinityConfig.clientIP.timeoutSeconds, else 10800",
			Doc: "Client affinity timeout in seconds for algorithm `persist`."},
		{Name: SNATAddresses, Kind: KindList, Allowed: allowedIPList, Default: "the dataplane's interface address",
			Doc: "Source addresses used by `fullnat`, one per VIP family. Rejected with any other nat-mode. When omitted, xlbd uses its --snat-addresses."},
		{Name: ProbeType, Kind: KindEnum, Values: probeTypes, Default: defaultFromCloudConfig + " (HTTP GET /healthz on kube-proxy's port 10256)",
			Doc: "Active health check of every backend (node). An explicit type probes the NodePort unless probe-port is set. Not allowed with externalTrafficPolicy: Local, whose probe is always HTTP GET /healthz on spec.healthCheckNodePort."},
		{Name: ProbePort, Kind: KindInt, Allowed: allowedPort, Default: "the backend's NodePort",
			Doc: "Port probed on each node. Not allowed with externalTrafficPolicy: Local."},
		{Name: ProbePath, Kind: KindString, Allowed: allowedPath, Default: "/",
			Doc: "HTTP(S) probe path. Not allowed with externalTrafficPolicy: Local."},
		{Name: ProbeInterval, Kind: KindDuration, Allowed: allowedInterval, Default: defaultFromCloudConfig + " (500ms)",
			Doc: "Time between probes of one backend."},
		{Name: ProbeTimeout, Kind: KindDuration, Allowed: allowedTimeout, Default: defaultFromCloudConfig + " (400ms)",
			Doc: "Time a probe may take before it counts as failed."},
		{Name: ProbeFailureThreshold, Kind: KindInt, Allowed: allowedThreshold, Default: defaultFromCloudConfig + " (3)",
			Doc: "Consecutive failures before a backend is taken out."},
		{Name: ProbeSuccessThreshold, Kind: KindInt, Allowed: allowedThreshold, Default: defaultFromCloudConfig + " (2)",
			Doc: "Consecutive successes before a backend is put back."},
		{Name: ProbeExpectStatus, Kind: KindList, Allowed: allowedStatus, Default: "200-399 (dataplane default)",
			Doc: "HTTP status codes that count as healthy."},
		{Name: ProbeOnDown, Kind: KindEnum, Values: onDownValues, Default: "keep",
			Doc: "What happens to the established connections of a node whose probe fails. `keep`: they stay (only new connections avoid the node); `reset`: they are cut at once so clients reconnect to a healthy node (see docs/health.md)."},
		{Name: BGPAdvertise, Kind: KindBool, Allowed: allowedBoolean, Default: "true",
			Doc: "Whether the dataplanes announce the VIPs over BGP."},
		{Name: BGPCommunities, Kind: KindList, Allowed: allowedCommunity, Default: "none",
			Doc: "BGP standard communities attached to the VIP routes."},
		{Name: IPMode, Kind: KindEnum, Values: ipModes, Default: "VIP for nat-mode default, Proxy for fullnat/onearm",
			Doc: "status.loadBalancer.ingress[].ipMode. `VIP` lets kube-proxy short-circuit in-cluster traffic to the endpoints; `Proxy` sends it through the load balancer. See docs/ccm.md before overriding: `Proxy` with nat-mode `default` breaks in-cluster clients."},
	}
}

// Options is a Service parsed into typed values. Nil pointers and empty
// slices mean "not set": the caller applies cloud-config defaults.
type Options struct {
	NATMode         string
	Algorithm       string
	Pool            string
	StaticIPs       []netip.Addr // from the annotation or spec.loadBalancerIP
	SharingKey      string
	IdleTimeout     *uint32
	AffinityTimeout *uint32
	SNATAddresses   []netip.Addr
	SourceRanges    []netip.Prefix
	Probe           ProbeOptions
	BGPAdvertise    *bool
	BGPCommunities  []string
	IPMode          string
}

// ProbeOptions are the probe-* annotations.
type ProbeOptions struct {
	Type             string
	Port             *uint16
	Path             string
	Interval         *time.Duration
	Timeout          *time.Duration
	FailureThreshold *uint32
	SuccessThreshold *uint32
	ExpectStatus     []int
	OnDown           string
}

// Parse reads every xlb.dev/* annotation and the Service fields xlb maps
// (sessionAffinity, loadBalancerIP, loadBalancerSourceRanges). It returns all
// problems at once (errors.Join), each naming the annotation or field and the
// allowed values, so one Warning event tells the user everything to fix.
func Parse(svc *v1.Service) (Options, error) {
	var o Options
	var errs []error
	a := svc.Annotations
	known := map[string]bool{}
	for _, s := range All() {
		known[s.Name] = true
	}
	// Sorted for deterministic error messages.
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.HasPrefix(k, Prefix) && !known[k] {
			errs = append(errs, fmt.Errorf("unknown annotation %q (known: %s)", k, strings.Join(names(), ", ")))
		}
	}
	bad := func(name, val, allowed string) {
		errs = append(errs, fmt.Errorf("annotation %s: invalid value %q (allowed: %s)", name, val, allowed))
	}
	enum := func(name string, vals []string) string {
		v, ok := a[name]
		if !ok {
			return ""
		}
		if !slices.Contains(vals, v) {
			bad(name, v, strings.Join(vals, ", "))
			return ""
		}
		return v
	}
	u32 := func(name string, lo, hi uint64, allowed string) *uint32 {
		v, ok := a[name]
		if !ok {
			return nil
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil || n < lo || n > hi {
			bad(name, v, allowed)
			return nil
		}
		x := uint32(n)
		return &x
	}
	dur := func(name string, lo time.Duration, allowed string) *time.Duration {
		v, ok := a[name]
		if !ok {
			return nil
		}
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < lo || d > maxProbeDuration {
			bad(name, v, allowed)
			return nil
		}
		return &d
	}

	o.NATMode = enum(NATMode, natModes)
	o.Algorithm = enum(Algorithm, algorithms)
	o.IPMode = enum(IPMode, ipModes)
	o.Probe.Type = enum(ProbeType, probeTypes)

	if v, ok := a[Pool]; ok {
		if strings.TrimSpace(v) == "" {
			bad(Pool, v, allowedPoolName)
		}
		o.Pool = strings.TrimSpace(v)
	}
	if v, ok := a[AllowSharedIP]; ok {
		if !validSharingKey(v) {
			bad(AllowSharedIP, v, allowedSharingKey)
		} else {
			o.SharingKey = v
		}
	}
	o.IdleTimeout = u32(IdleTimeout, 1, maxSeconds, allowedSeconds)
	o.AffinityTimeout = u32(AffinityTimeout, 1, maxSeconds, allowedSeconds)
	if p := u32(ProbePort, 1, 65535, allowedPort); p != nil {
		x := uint16(*p)
		o.Probe.Port = &x
	}
	if v, ok := a[ProbePath]; ok {
		if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, " \t\r\n") {
			bad(ProbePath, v, allowedPath)
		} else {
			o.Probe.Path = v
		}
	}
	o.Probe.Interval = dur(ProbeInterval, minProbeInterval, allowedInterval)
	o.Probe.Timeout = dur(ProbeTimeout, minProbeTimeout, allowedTimeout)
	o.Probe.FailureThreshold = u32(ProbeFailureThreshold, 1, maxProbeThreshold, allowedThreshold)
	o.Probe.SuccessThreshold = u32(ProbeSuccessThreshold, 1, maxProbeThreshold, allowedThreshold)
	if v, ok := a[ProbeExpectStatus]; ok {
		for _, f := range splitList(v) {
			n, err := strconv.Atoi(f)
			if err != nil || n < 100 || n > 599 {
				bad(ProbeExpectStatus, v, allowedStatus)
				o.Probe.ExpectStatus = nil
				break
			}
			o.Probe.ExpectStatus = append(o.Probe.ExpectStatus, n)
		}
		if len(splitList(v)) == 0 {
			bad(ProbeExpectStatus, v, allowedStatus)
		}
	}
	if v, ok := a[ProbeOnDown]; ok {
		if slices.Contains(onDownValues, v) {
			o.Probe.OnDown = v
		} else {
			bad(ProbeOnDown, v, strings.Join(onDownValues, ", "))
		}
	}
	if v, ok := a[BGPAdvertise]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil || (v != "true" && v != "false") {
			bad(BGPAdvertise, v, allowedBoolean)
		} else {
			o.BGPAdvertise = &b
		}
	}
	if v, ok := a[BGPCommunities]; ok {
		cs := splitList(v)
		if len(cs) == 0 {
			bad(BGPCommunities, v, allowedCommunity)
		}
		for _, c := range cs {
			if !validCommunity(c) {
				bad(BGPCommunities, v, allowedCommunity)
				cs = nil
				break
			}
		}
		o.BGPCommunities = cs
	}
	if v, ok := a[LoadBalancerIPs]; ok {
		ips, err := parseIPPerFamily(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %w (allowed: %s)", LoadBalancerIPs, err, allowedIPList))
		}
		o.StaticIPs = ips
	} else if v := strings.TrimSpace(svc.Spec.LoadBalancerIP); v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil || ip.Zone() != "" {
			errs = append(errs, fmt.Errorf("spec.loadBalancerIP: invalid IP %q", v))
		} else {
			o.StaticIPs = []netip.Addr{ip.Unmap()}
		}
	}
	if v, ok := a[SNATAddresses]; ok {
		ips, err := parseIPPerFamily(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %w (allowed: %s)", SNATAddresses, err, allowedIPList))
		}
		o.SNATAddresses = ips
		if o.NATMode != "" && o.NATMode != NATFull {
			errs = append(errs, fmt.Errorf("annotation %s: only valid with %s fullnat (%s does not take SNAT addresses)", SNATAddresses, NATMode, o.NATMode))
		}
	}

	// Source ranges: the spec field wins over the legacy annotation, as in
	// kube-proxy (pkg/apis/core/v1/helper.GetLoadBalancerSourceRanges).
	if len(svc.Spec.LoadBalancerSourceRanges) > 0 {
		for i, r := range svc.Spec.LoadBalancerSourceRanges {
			p, err := netip.ParsePrefix(strings.TrimSpace(r))
			if err != nil {
				errs = append(errs, fmt.Errorf("spec.loadBalancerSourceRanges[%d]: invalid CIDR %q", i, r))
				continue
			}
			o.SourceRanges = append(o.SourceRanges, p.Masked())
		}
	} else if v, ok := a[LegacySourceRanges]; ok {
		for _, r := range splitList(v) {
			p, err := netip.ParsePrefix(r)
			if err != nil {
				bad(LegacySourceRanges, v, allowedCIDRList)
				o.SourceRanges = nil
				break
			}
			o.SourceRanges = append(o.SourceRanges, p.Masked())
		}
	}

	// sessionAffinity: ClientIP is the Kubernetes way to ask for stickiness;
	// it maps to "persist" with the Service's own timeout.
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		if o.Algorithm != "" && o.Algorithm != AlgPersist && a[Algorithm] != "" {
			errs = append(errs, fmt.Errorf("annotation %s: %q conflicts with spec.sessionAffinity ClientIP (allowed: persist, or remove the annotation)", Algorithm, o.Algorithm))
		}
		o.Algorithm = AlgPersist
		if o.AffinityTimeout == nil {
			t := uint32(v1.DefaultClientIPServiceAffinitySeconds)
			if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
				t = uint32(*c.ClientIP.TimeoutSeconds)
			}
			o.AffinityTimeout = &t
		}
	}
	return o, errors.Join(errs...)
}

func names() []string {
	var n []string
	for _, s := range All() {
		n = append(n, s.Name)
	}
	return n
}

func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseIPPerFamily parses a comma list holding at most one address per family.
func parseIPPerFamily(v string) ([]netip.Addr, error) {
	fs := splitList(v)
	if len(fs) == 0 {
		return nil, fmt.Errorf("empty list")
	}
	if len(fs) > 2 {
		return nil, fmt.Errorf("%d addresses given", len(fs))
	}
	var out []netip.Addr
	for _, f := range fs {
		ip, err := netip.ParseAddr(f)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("invalid IP %q", f)
		}
		ip = ip.Unmap()
		for _, o := range out {
			if o.Is4() == ip.Is4() {
				return nil, fmt.Errorf("two addresses of the same family (%s, %s)", o, ip)
			}
		}
		out = append(out, ip)
	}
	return out, nil
}

func validSharingKey(v string) bool {
	if v == "" || len(v) > 253 {
		return false
	}
	for _, r := range v {
		ok := r == '-' || r == '_' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return false
		}
	}
	return true
}

func validCommunity(c string) bool {
	asn, val, ok := strings.Cut(c, ":")
	if !ok {
		return false
	}
	for _, p := range []string{asn, val} {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return false
		}
	}
	return true
}
