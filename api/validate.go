package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits enforced by ValidateService (documented in docs/api.md).
const (
	MaxNameLength                = 63
	MaxBackends                  = 4096
	MaxWeight                    = 65535
	MaxSourceRanges              = 1024
	MaxLabels                    = 64
	MaxTimeoutSeconds            = 86400
	MaxCommunities               = 32
	MaxExpectStatus              = 32
	MaxProbeTextLength           = 1024
	MaxProbeThreshold            = 100
	MinProbeIntervalMs           = 100
	MaxProbeIntervalMs           = 3600000
	MinProbeTimeoutMs            = 10
	DefaultWeight                = 1
	DefaultIdleTCP               = 240
	DefaultIdleUDP               = 60
	DefaultAffinity              = 10800
	DefaultProbeIntervalMs       = 500 // ms (docs/health.md)
	DefaultProbeTimeoutMs        = 400 // ms, with the default interval
	DefaultProbeFailureThreshold = 3
	DefaultProbeSuccessThreshold = 2
)

// Values of Probe.OnDown.
const (
	OnDownKeep  = "keep"  // established flows of a down backend continue (default)
	OnDownReset = "reset" // they are cut when the backend goes down
)

// Allowed values, as printed in Error.Allowed.
var (
	Protocols      = []string{"tcp", "udp"}
	NATModes       = []string{"default", "fullnat", "onearm"}
	Algorithms     = []string{"rr", "random", "maglev", "persist", "lc"}
	ProbeTypes     = []string{"tcp", "udp", "http", "https", "ping", "none"}
	ProbeMethods   = []string{"GET", "HEAD"}
	OnDownPolicies = []string{OnDownKeep, OnDownReset}
	WellKnownComms = []string{"no-export", "no-advertise", "no-export-subconfed", "no-peer", "blackhole", "graceful-shutdown"}
)

const (
	allowedName  = "1-63 characters: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
	allowedAddr  = "a unicast IPv4 or IPv6 address without zone"
	allowedPort  = "1-65535"
	allowedCIDR  = "a CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32"
	allowedLabel = "key: optional DNS subdomain prefix and '/', then 1-63 characters [A-Za-z0-9-_.] starting and ending alphanumeric; value: empty or the same form as the key's name part"
)

var (
	nameRE       = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	labelNameRE  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	dnsSubdomRE  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	httpMethodRE = regexp.MustCompile(`^[A-Z]+$`)
)

// ValidateOptions tune ValidateService to where it runs.
type ValidateOptions struct {
	// FieldPrefix is prepended to every field path (e.g. "services[3].").
	FieldPrefix string
	// DefaultSNAT are the daemon's --snat-addresses: a fullnat service may
	// omit snatAddresses for a family covered here.
	DefaultSNAT []netip.Addr
	// SNATOptional skips the "fullnat needs an SNAT address per VIP family"
	// rule, for callers (the CCM) that cannot know the daemon's defaults;
	// the daemon still enforces it.
	SNATOptional bool
}

// ValidateName checks a service name.
func ValidateName(field, name string) error {
	if len(name) == 0 || len(name) > MaxNameLength || !nameRE.MatchString(name) {
		return invalid(field, name, "invalid service name", allowedName)
	}
	return nil
}

func validLabelKey(k string) bool {
	prefix, name, found := strings.Cut(k, "/")
	if !found {
		name, prefix = prefix, ""
	} else if len(prefix) == 0 || len(prefix) > 253 || !dnsSubdomRE.MatchString(prefix) {
		return false
	}
	return len(name) >= 1 && len(name) <= 63 && labelNameRE.MatchString(name)
}

func validLabelValue(v string) bool {
	return v == "" || (len(v) <= 63 && labelNameRE.MatchString(v))
}

// ValidateLabels checks Kubernetes-style labels.
func ValidateLabels(field string, labels map[string]string) error {
	if len(labels) > MaxLabels {
		return invalid(field, strconv.Itoa(len(labels)), "too many labels", fmt.Sprintf("at most %d", MaxLabels))
	}
	for _, k := range sortedKeys(labels) {
		if !validLabelKey(k) {
			return invalid(field, k, "invalid label key", allowedLabel)
		}
		if !validLabelValue(labels[k]) {
			return invalid(field+"["+k+"]", labels[k], "invalid label value", allowedLabel)
		}
	}
	return nil
}

// ValidateSelector checks a bulk or list selector: labels, and non-empty.
func ValidateSelector(field string, sel map[string]string) error {
	if len(sel) == 0 {
		return invalid(field, "", "a selector must not be empty (it bounds what a bulk replace may delete)", "at least one key=value label")
	}
	return ValidateLabels(field, sel)
}

// ParseSelector parses "k=v,k2=v2" (the ?selector= query of GET /v1/services).
// An empty string selects everything.
func ParseSelector(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	sel := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, invalid("selector", part, "selector terms are key=value", "comma-separated key=value terms")
		}
		if old, dup := sel[k]; dup && old != v {
			return nil, invalid("selector", part, "key given twice with different values", "each key at most once")
		}
		sel[k] = v
	}
	if err := ValidateLabels("selector", sel); err != nil {
		return nil, err
	}
	return sel, nil
}

// SelectorMatches reports whether labels carry every key=value of sel.
func SelectorMatches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// parseUnicast parses an address the way every address field expects it.
func parseUnicast(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, false
	}
	return a, true
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// ValidateService checks every field of s (name, labels and spec). It
// returns nil or an *Error naming the first bad field, its value and what
// is allowed. It does not modify s.
func ValidateService(s *Service, opt ValidateOptions) error {
	p := opt.FieldPrefix
	if err := ValidateName(p+"name", s.Name); err != nil {
		return err
	}
	if err := ValidateLabels(p+"labels", s.Labels); err != nil {
		return err
	}
	sp := &s.Spec
	sf := p + "spec."

	// VIPs: one or two, at most one per family.
	if len(sp.VIPs) == 0 || len(sp.VIPs) > 2 {
		return invalid(sf+"vips", strconv.Itoa(len(sp.VIPs))+" addresses", "wrong number of VIPs", "one IPv4 and/or one IPv6 address")
	}
	vipFamilies := map[string]bool{}
	for i, v := range sp.VIPs {
		a, ok := parseUnicast(v)
		if !ok {
			return invalid(fmt.Sprintf("%svips[%d]", sf, i), v, "invalid VIP", allowedAddr)
		}
		if vipFamilies[family(a)] {
			return invalid(fmt.Sprintf("%svips[%d]", sf, i), v, "two VIPs of the same family", "at most one IPv4 and one IPv6 address")
		}
		vipFamilies[family(a)] = true
	}
	if sp.Port == 0 {
		return invalid(sf+"port", "0", "port is required", allowedPort)
	}
	if !slices.Contains(Protocols, sp.Protocol) {
		return invalid(sf+"protocol", sp.Protocol, "invalid protocol", strings.Join(Protocols, ", "))
	}
	if sp.NATMode != "" && !slices.Contains(NATModes, sp.NATMode) {
		return invalid(sf+"natMode", sp.NATMode, "invalid NAT mode", strings.Join(NATModes, ", ")+" (empty = default)")
	}
	if sp.Algorithm != "" && !slices.Contains(Algorithms, sp.Algorithm) {
		return invalid(sf+"algorithm", sp.Algorithm, "invalid algorithm", strings.Join(Algorithms, ", ")+" (empty = maglev)")
	}

	// SNAT addresses: only for fullnat, one per family, family of a VIP.
	if len(sp.SNATAddresses) > 0 && sp.NATMode != "fullnat" {
		return invalid(sf+"snatAddresses", strings.Join(sp.SNATAddresses, ","), "snatAddresses apply only to natMode fullnat", "empty unless natMode is fullnat")
	}
	snatFamilies := map[string]bool{}
	for i, v := range sp.SNATAddresses {
		f := fmt.Sprintf("%ssnatAddresses[%d]", sf, i)
		a, ok := parseUnicast(v)
		if !ok {
			return invalid(f, v, "invalid SNAT address", allowedAddr)
		}
		if snatFamilies[family(a)] {
			return invalid(f, v, "two SNAT addresses of the same family", "at most one IPv4 and one IPv6 address")
		}
		if !vipFamilies[family(a)] {
			return invalid(f, v, "no VIP of this family", "an address of the family of a VIP")
		}
		snatFamilies[family(a)] = true
	}
	if sp.NATMode == "fullnat" && !opt.SNATOptional {
		for _, d := range opt.DefaultSNAT {
			snatFamilies[family(d)] = true
		}
		for _, fam := range []string{"IPv4", "IPv6"} {
			if vipFamilies[fam] && !snatFamilies[fam] {
				return invalid(sf+"snatAddresses", strings.Join(sp.SNATAddresses, ","),
					"natMode fullnat needs an "+fam+" SNAT address (none given and no daemon default)",
					"one address per VIP family, or start xlbd with --snat-addresses")
			}
		}
	}
	if sp.IdleTimeoutSeconds > MaxTimeoutSeconds {
		return invalid(sf+"idleTimeoutSeconds", strconv.FormatUint(uint64(sp.IdleTimeoutSeconds), 10), "idle timeout too long", fmt.Sprintf("0 (default) or 1-%d", MaxTimeoutSeconds))
	}
	if sp.AffinityTimeoutSeconds > MaxTimeoutSeconds {
		return invalid(sf+"affinityTimeoutSeconds", strconv.FormatUint(uint64(sp.AffinityTimeoutSeconds), 10), "affinity timeout too long", fmt.Sprintf("0 (default) or 1-%d", MaxTimeoutSeconds))
	}
	if sp.DrainTimeoutSeconds > MaxTimeoutSeconds {
		return invalid(sf+"drainTimeoutSeconds", strconv.FormatUint(uint64(sp.DrainTimeoutSeconds), 10), "drain timeout too long", fmt.Sprintf("0 (no timeout: draining flows live until they end) or 1-%d", MaxTimeoutSeconds))
	}
	if len(sp.SourceRanges) > MaxSourceRanges {
		return invalid(sf+"sourceRanges", strconv.Itoa(len(sp.SourceRanges)), "too many source ranges", fmt.Sprintf("at most %d", MaxSourceRanges))
	}
	for i, r := range sp.SourceRanges {
		pfx, err := netip.ParsePrefix(r)
		if err != nil || pfx.Addr().Is4In6() || pfx.Addr().Zone() != "" {
			return invalid(fmt.Sprintf("%ssourceRanges[%d]", sf, i), r, "invalid CIDR", allowedCIDR)
		}
	}

	// Backends.
	if len(sp.Backends) > MaxBackends {
		return invalid(sf+"backends", strconv.Itoa(len(sp.Backends)), "too many backends", fmt.Sprintf("at most %d", MaxBackends))
	}
	seen := make(map[netip.AddrPort]int, len(sp.Backends))
	for i, b := range sp.Backends {
		bf := fmt.Sprintf("%sbackends[%d].", sf, i)
		a, ok := parseUnicast(b.Address)
		if !ok {
			return invalid(bf+"address", b.Address, "invalid backend address", allowedAddr)
		}
		if !vipFamilies[family(a)] {
			// It could never receive traffic: a VIP only uses backends of its family.
			return invalid(bf+"address", b.Address, "no VIP of this family", "an address of the family of a VIP")
		}
		if b.Port == 0 {
			return invalid(bf+"port", "0", "backend port is required", allowedPort)
		}
		if b.Weight != nil && *b.Weight > MaxWeight {
			return invalid(bf+"weight", strconv.FormatUint(uint64(*b.Weight), 10), "weight too large", fmt.Sprintf("0 (drain) to %d; omitted = 1", MaxWeight))
		}
		if !utf8.ValidString(b.Name) || strings.IndexFunc(b.Name, unicode.IsControl) >= 0 {
			return invalid(bf+"name", strings.ToValidUTF8(b.Name, "\uFFFD"), "invalid backend name", "printable UTF-8 text, at most 253 bytes")
		}
		if len(b.Name) > 253 {
			return invalid(bf+"name", b.Name[:32]+"...", "backend name too long", "at most 253 characters")
		}
		ap := netip.AddrPortFrom(a, b.Port)
		if j, dup := seen[ap]; dup {
			return invalid(bf+"address", ap.String(), fmt.Sprintf("duplicate of backends[%d]", j), "each address:port at most once")
		}
		seen[ap] = i
	}
	if sp.Probe != nil {
		if err := validateProbe(sf+"probe.", sp.Probe); err != nil {
			return err
		}
	}
	if sp.BGP != nil {
		if err := validateBGP(sf+"bgp.", sp.BGP); err != nil {
			return err
		}
	}
	if sp.L2 != nil {
		if err := ValidateInterfaceName(sf+"l2.interface", sp.L2.Interface); err != nil {
			return err
		}
	}
	return nil
}

const allowedIface = "a Linux interface name: 1-15 characters, no '/', ':', whitespace, and not '.' or '..'"

// ValidateInterfaceName checks a Linux interface name (the kernel's
// dev_valid_name rules; ':' is excluded too because it marks aliases).
func ValidateInterfaceName(field, name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." ||
		strings.ContainsAny(name, "/:") || strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r > unicode.MaxASCII }) >= 0 {
		return invalid(field, name, "invalid interface name", allowedIface)
	}
	return nil
}

func validateProbe(pf string, pr *Probe) error {
	if !slices.Contains(ProbeTypes, pr.Type) {
		return invalid(pf+"type", pr.Type, "invalid probe type", strings.Join(ProbeTypes, ", "))
	}
	if pr.OnDown != "" && !slices.Contains(OnDownPolicies, pr.OnDown) {
		return invalid(pf+"onDown", pr.OnDown, "invalid onDown policy", strings.Join(OnDownPolicies, ", ")+" (empty = keep)")
	}
	isHTTP := pr.Type == "http" || pr.Type == "https"
	if !isHTTP {
		for _, f := range []struct{ name, v string }{{"path", pr.Path}, {"method", pr.Method}, {"host", pr.Host}, {"expectBody", pr.ExpectBody}} {
			if f.v != "" {
				return invalid(pf+f.name, f.v, f.name+" applies only to http and https probes", "empty for type "+pr.Type)
			}
		}
		if len(pr.ExpectStatus) > 0 {
			return invalid(pf+"expectStatus", fmt.Sprint(pr.ExpectStatus), "expectStatus applies only to http and https probes", "empty for type "+pr.Type)
		}
	}
	if pr.InsecureSkipVerify && pr.Type != "https" {
		return invalid(pf+"insecureSkipVerify", "true", "insecureSkipVerify applies only to https probes", "false for type "+pr.Type)
	}
	if pr.Type != "udp" {
		if pr.Request != "" {
			return invalid(pf+"request", pr.Request, "request applies only to udp probes", "empty for type "+pr.Type)
		}
		if pr.Response != "" {
			return invalid(pf+"response", pr.Response, "response applies only to udp probes", "empty for type "+pr.Type)
		}
	}
	for _, f := range []struct{ name, v string }{{"path", pr.Path}, {"host", pr.Host}, {"expectBody", pr.ExpectBody}, {"request", pr.Request}, {"response", pr.Response}} {
		// JSON cannot carry invalid UTF-8: it would not survive persistence.
		if !utf8.ValidString(f.v) {
			return invalid(pf+f.name, strings.ToValidUTF8(f.v, "\uFFFD"), "not valid UTF-8", "UTF-8 text")
		}
	}
	if pr.Path != "" && (!strings.HasPrefix(pr.Path, "/") || len(pr.Path) > MaxProbeTextLength || strings.IndexFunc(pr.Path, unicode.IsControl) >= 0 || strings.ContainsAny(pr.Path, " ")) {
		return invalid(pf+"path", pr.Path, "invalid probe path", "an absolute URL path starting with '/', no spaces, at most 1024 characters")
	}
	if pr.Method != "" && (!slices.Contains(ProbeMethods, pr.Method) || !httpMethodRE.MatchString(pr.Method)) {
		return invalid(pf+"method", pr.Method, "invalid probe method", strings.Join(ProbeMethods, ", ")+" (empty = GET)")
	}
	if pr.Host != "" && (len(pr.Host) > 253 || strings.ContainsAny(pr.Host, " /") || strings.IndexFunc(pr.Host, unicode.IsControl) >= 0) {
		return invalid(pf+"host", pr.Host, "invalid probe host", "a host name, at most 253 characters")
	}
	if len(pr.ExpectStatus) > MaxExpectStatus {
		return invalid(pf+"expectStatus", strconv.Itoa(len(pr.ExpectStatus)), "too many status codes", fmt.Sprintf("at most %d codes", MaxExpectStatus))
	}
	for i, c := range pr.ExpectStatus {
		if c < 100 || c > 599 {
			return invalid(fmt.Sprintf("%sexpectStatus[%d]", pf, i), strconv.Itoa(c), "invalid HTTP status", "100-599")
		}
	}
	for _, f := range []struct{ name, v string }{{"expectBody", pr.ExpectBody}, {"request", pr.Request}, {"response", pr.Response}} {
		if len(f.v) > MaxProbeTextLength {
			return invalid(pf+f.name, f.v[:32]+"...", f.name+" too long", fmt.Sprintf("at most %d bytes", MaxProbeTextLength))
		}
	}
	if pr.IntervalMillis != 0 && (pr.IntervalMillis < MinProbeIntervalMs || pr.IntervalMillis > MaxProbeIntervalMs) {
		return invalid(pf+"intervalMillis", strconv.FormatUint(uint64(pr.IntervalMillis), 10), "probe interval out of range", fmt.Sprintf("0 (default %d) or %d-%d", DefaultProbeIntervalMs, MinProbeIntervalMs, MaxProbeIntervalMs))
	}
	interval := pr.IntervalMillis
	if interval == 0 {
		interval = DefaultProbeIntervalMs
	}
	if pr.TimeoutMillis != 0 && (pr.TimeoutMillis < MinProbeTimeoutMs || pr.TimeoutMillis > interval) {
		return invalid(pf+"timeoutMillis", strconv.FormatUint(uint64(pr.TimeoutMillis), 10), "probe timeout out of range", fmt.Sprintf("0 (default %d; 80%% of a custom interval, at most 1000) or %d up to intervalMillis (%d)", DefaultProbeTimeoutMs, MinProbeTimeoutMs, interval))
	}
	if pr.FailureThreshold > MaxProbeThreshold {
		return invalid(pf+"failureThreshold", strconv.FormatUint(uint64(pr.FailureThreshold), 10), "threshold too large", fmt.Sprintf("0 (default %d) or 1-%d", DefaultProbeFailureThreshold, MaxProbeThreshold))
	}
	if pr.SuccessThreshold > MaxProbeThreshold {
		return invalid(pf+"successThreshold", strconv.FormatUint(uint64(pr.SuccessThreshold), 10), "threshold too large", fmt.Sprintf("0 (default %d) or 1-%d", DefaultProbeSuccessThreshold, MaxProbeThreshold))
	}
	return nil
}

func validateBGP(bf string, b *ServiceBGP) error {
	if len(b.Communities) > MaxCommunities {
		return invalid(bf+"communities", strconv.Itoa(len(b.Communities)), "too many communities", fmt.Sprintf("at most %d", MaxCommunities))
	}
	for i, c := range b.Communities {
		if !validCommunity(c) {
			return invalid(fmt.Sprintf("%scommunities[%d]", bf, i), c, "invalid community", "ASN:VALUE with both 0-65535, or one of "+strings.Join(WellKnownComms, ", "))
		}
	}
	if len(b.LargeCommunities) > MaxCommunities {
		return invalid(bf+"largeCommunities", strconv.Itoa(len(b.LargeCommunities)), "too many large communities", fmt.Sprintf("at most %d", MaxCommunities))
	}
	for i, c := range b.LargeCommunities {
		if !validNumbers(c, 3, 32) {
			return invalid(fmt.Sprintf("%slargeCommunities[%d]", bf, i), c, "invalid large community", "GLOBAL:LOCAL1:LOCAL2, each 0-4294967295")
		}
	}
	return nil
}

func validCommunity(c string) bool {
	return slices.Contains(WellKnownComms, c) || validNumbers(c, 2, 16)
}

// validNumbers reports whether s is n colon-separated unsigned integers of
// the given bit size.
func validNumbers(s string, n, bits int) bool {
	parts := strings.Split(s, ":")
	if len(parts) != n {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.HasPrefix(p, "+") {
			return false
		}
		if _, err := strconv.ParseUint(p, 10, bits); err != nil {
			return false
		}
	}
	return true
}

// DefaultService returns a deep copy of a valid s with every default made
// explicit and every address in canonical form (VIPs IPv4 first, backends
// sorted by address and port, source ranges masked and sorted), so that two
// specs that mean the same thing compare equal. Status is dropped.
func DefaultService(s Service) Service {
	out := Service{Name: s.Name}
	if len(s.Labels) > 0 {
		out.Labels = make(map[string]string, len(s.Labels))
		for k, v := range s.Labels {
			out.Labels[k] = v
		}
	}
	in := s.Spec
	sp := ServiceSpec{
		Port:                   in.Port,
		Protocol:               in.Protocol,
		NATMode:                in.NATMode,
		Algorithm:              in.Algorithm,
		IdleTimeoutSeconds:     in.IdleTimeoutSeconds,
		AffinityTimeoutSeconds: in.AffinityTimeoutSeconds,
		DrainTimeoutSeconds:    in.DrainTimeoutSeconds,
	}
	if sp.NATMode == "" {
		sp.NATMode = "default"
	}
	if sp.Algorithm == "" {
		sp.Algorithm = "maglev"
	}
	if sp.IdleTimeoutSeconds == 0 {
		sp.IdleTimeoutSeconds = DefaultIdleTCP
		if sp.Protocol == "udp" {
			sp.IdleTimeoutSeconds = DefaultIdleUDP
		}
	}
	if sp.AffinityTimeoutSeconds == 0 {
		sp.AffinityTimeoutSeconds = DefaultAffinity
	}
	sp.VIPs = canonAddrs(in.VIPs)
	sp.SNATAddresses = canonAddrs(in.SNATAddresses)
	if len(in.SourceRanges) > 0 {
		pfx := make([]netip.Prefix, 0, len(in.SourceRanges))
		for _, r := range in.SourceRanges {
			if p, err := netip.ParsePrefix(r); err == nil {
				pfx = append(pfx, p.Masked())
			}
		}
		slices.SortFunc(pfx, func(a, b netip.Prefix) int {
			if c := a.Addr().Compare(b.Addr()); c != 0 {
				return c
			}
			return a.Bits() - b.Bits()
		})
		pfx = slices.Compact(pfx)
		for _, p := range pfx {
			sp.SourceRanges = append(sp.SourceRanges, p.String())
		}
	}
	sp.Backends = make([]Backend, 0, len(in.Backends))
	for _, b := range in.Backends {
		w := uint32(DefaultWeight)
		if b.Weight != nil {
			w = *b.Weight
		}
		addr := b.Address
		if a, err := netip.ParseAddr(b.Address); err == nil {
			addr = a.String()
		}
		sp.Backends = append(sp.Backends, Backend{Address: addr, Port: b.Port, Weight: &w, Name: b.Name})
	}
	sort.SliceStable(sp.Backends, func(i, j int) bool {
		ai, _ := netip.ParseAddr(sp.Backends[i].Address)
		aj, _ := netip.ParseAddr(sp.Backends[j].Address)
		if c := ai.Compare(aj); c != 0 {
			return c < 0
		}
		return sp.Backends[i].Port < sp.Backends[j].Port
	})
	if in.Probe != nil {
		pr := *in.Probe
		pr.ExpectStatus = slices.Clone(in.Probe.ExpectStatus)
		// Same defaults as internal/health (docs/health.md): a custom
		// interval gets 80 % of it as timeout, at most one second.
		if pr.TimeoutMillis == 0 {
			if pr.IntervalMillis == 0 {
				pr.TimeoutMillis = DefaultProbeTimeoutMs
			} else {
				pr.TimeoutMillis = min(pr.IntervalMillis*4/5, 1000)
			}
		}
		if pr.IntervalMillis == 0 {
			pr.IntervalMillis = DefaultProbeIntervalMs
		}
		if pr.FailureThreshold == 0 {
			pr.FailureThreshold = DefaultProbeFailureThreshold
		}
		if pr.SuccessThreshold == 0 {
			pr.SuccessThreshold = DefaultProbeSuccessThreshold
		}
		if pr.OnDown == "" {
			pr.OnDown = OnDownKeep
		}
		if pr.Type == "http" || pr.Type == "https" {
			if pr.Path == "" {
				pr.Path = "/"
			}
			if pr.Method == "" {
				pr.Method = "GET"
			}
		}
		sp.Probe = &pr
	}
	if in.BGP != nil {
		b := ServiceBGP{
			Communities:      slices.Clone(in.BGP.Communities),
			LargeCommunities: slices.Clone(in.BGP.LargeCommunities),
		}
		adv := true
		if in.BGP.Advertise != nil {
			adv = *in.BGP.Advertise
		}
		b.Advertise = &adv
		if in.BGP.LocalPref != nil {
			v := *in.BGP.LocalPref
			b.LocalPref = &v
		}
		if in.BGP.MED != nil {
			v := *in.BGP.MED
			b.MED = &v
		}
		sp.BGP = &b
	}
	if in.L2 != nil {
		l2 := *in.L2
		sp.L2 = &l2
	}
	out.Spec = sp
	return out
}

// canonAddrs returns the addresses in canonical text form, IPv4 first.
func canonAddrs(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	addrs := make([]netip.Addr, 0, len(in))
	for _, s := range in {
		if a, err := netip.ParseAddr(s); err == nil {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// DecodeStrict decodes exactly one JSON value from data into v, rejecting
// unknown fields and trailing data. Errors are *Error with the JSON path of
// the offending field where encoding/json reports one.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("", "", "trailing data after the JSON value", "exactly one JSON object")
	}
	return nil
}

// DecodeService decodes one api.Service strictly (see DecodeStrict).
func DecodeService(data []byte) (Service, error) {
	var s Service
	err := DecodeStrict(data, &s)
	return s, err
}

func decodeError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var synErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return invalid(typeErr.Field, typeErr.Value, "wrong JSON type", "a JSON "+jsonKind(typeErr.Type.Kind().String()))
	case errors.As(err, &synErr):
		return invalid("", "", fmt.Sprintf("invalid JSON at byte %d: %v", synErr.Offset, synErr), "a JSON object")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("", "", "empty or truncated JSON body", "a JSON object")
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		return invalid(name, name, "unknown field", "the fields documented in docs/openapi.json")
	}
	return invalid("", "", "invalid JSON: "+strings.TrimPrefix(msg, "json: "), "a JSON object")
}

// jsonKind maps a Go kind to how the expected JSON value is described.
func jsonKind(kind string) string {
	switch kind {
	case "uint8", "uint16":
		return "integer 0-" + map[string]string{"uint8": "255", "uint16": "65535"}[kind]
	case "uint32":
		return "integer 0-4294967295"
	case "uint64":
		return "non-negative integer"
	case "int", "int64", "int32":
		return "integer"
	case "bool":
		return "boolean (true or false)"
	case "slice":
		return "array"
	case "map", "struct", "ptr":
		return "object"
	}
	return kind
}
