package dataplane

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/xlb-dev/xlb/dataplane/maglev"
)

// Limits enforced by validation.
const (
	// MaxWeight bounds a backend weight (weights are relative; Maglev
	// building time grows with the ratio of the largest to the smallest).
	MaxWeight = 65535
	// MaxBackendsPerService is bounded by the largest Maglev table.
	MaxBackendsPerService = maglev.MaxBackends
	// MaxTimeout bounds idle and affinity timeouts.
	MaxTimeout = 7 * 24 * time.Hour
)

// ValidationError describes one invalid field of one service. Apply returns
// it (possibly wrapped) and changes nothing.
type ValidationError struct {
	Service string // service name ("" when the name itself is the problem)
	Field   string // e.g. "backends[2].port"
	Value   string // the rejected value
	Allowed string // what is accepted
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("service %q: field %s: invalid value %q: allowed %s", e.Service, e.Field, e.Value, e.Allowed)
}

// normalize validates s and returns it with defaults filled in.
func normalize(s Service) (Service, error) {
	bad := func(field, value, allowed string) error {
		return &ValidationError{Service: s.Name, Field: field, Value: value, Allowed: allowed}
	}
	if s.Name == "" {
		return s, bad("name", "", "a non-empty name")
	}
	if !s.VIP.IsValid() || s.VIP.IsUnspecified() || s.VIP.IsMulticast() || s.VIP.Is4In6() {
		return s, bad("vip", s.VIP.String(), "a unicast IPv4 or IPv6 address")
	}
	s.VIP = s.VIP.WithZone("")
	if s.Port == 0 {
		return s, bad("port", "0", "1-65535")
	}
	if s.Protocol != TCP && s.Protocol != UDP {
		return s, bad("protocol", string(s.Protocol), "tcp, udp")
	}
	if s.NATMode == "" {
		s.NATMode = NATDefault
	}
	if _, ok := natCodes[s.NATMode]; !ok {
		return s, bad("natMode", string(s.NATMode), "default, fullnat, onearm")
	}
	if s.Algorithm == "" {
		s.Algorithm = AlgoMaglev
	}
	if _, ok := algoCodes[s.Algorithm]; !ok {
		return s, bad("algorithm", string(s.Algorithm), "rr, random, maglev, persist, lc")
	}
	switch {
	case s.NATMode == NATFullNAT:
		if !s.SNATAddr.IsValid() || s.SNATAddr.IsUnspecified() || s.SNATAddr.Is4In6() || s.SNATAddr.Is4() != s.VIP.Is4() {
			return s, bad("snatAddr", addrString(s.SNATAddr), "a unicast address of the VIP's family (required by fullnat)")
		}
	case s.SNATAddr.IsValid():
		return s, bad("snatAddr", s.SNATAddr.String(), "empty unless natMode is fullnat")
	}
	if s.SNATPortMin == 0 && s.SNATPortMax == 0 {
		s.SNATPortMin, s.SNATPortMax = DefaultSNATPortMin, DefaultSNATPortMax
	}
	if s.SNATPortMin < 1024 || s.SNATPortMax < s.SNATPortMin {
		return s, bad("snatPortRange", fmt.Sprintf("%d-%d", s.SNATPortMin, s.SNATPortMax), fmt.Sprintf("1024 ≤ min ≤ max ≤ 65535 (or both 0 for %d-%d)", DefaultSNATPortMin, DefaultSNATPortMax))
	}
	if s.IdleTimeout == 0 {
		s.IdleTimeout = DefaultTCPIdleTimeout
		if s.Protocol == UDP {
			s.IdleTimeout = DefaultUDPIdleTimeout
		}
	}
	if s.IdleTimeout < time.Second || s.IdleTimeout > MaxTimeout {
		return s, bad("idleTimeout", s.IdleTimeout.String(), "1s to 168h")
	}
	if s.AffinityTimeout == 0 {
		s.AffinityTimeout = DefaultAffinityTimeout
	}
	if s.AffinityTimeout < time.Second || s.AffinityTimeout > MaxTimeout {
		return s, bad("affinityTimeout", s.AffinityTimeout.String(), "1s to 168h")
	}
	// Round to whole seconds: the maps store seconds, and a value that
	// round-trips exactly is what makes re-applies free.
	s.IdleTimeout = s.IdleTimeout.Round(time.Second)
	s.AffinityTimeout = s.AffinityTimeout.Round(time.Second)

	ranges := make([]netip.Prefix, 0, len(s.SourceRanges))
	seenRange := map[netip.Prefix]bool{}
	for i, p := range s.SourceRanges {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Is4() != s.VIP.Is4() {
			return s, bad(fmt.Sprintf("sourceRanges[%d]", i), p.String(), "a CIDR of the VIP's family")
		}
		p = p.Masked()
		if !seenRange[p] {
			seenRange[p] = true
			ranges = append(ranges, p)
		}
	}
	s.SourceRanges = ranges

	if len(s.Backends) > MaxBackendsPerService {
		return s, bad("backends", fmt.Sprint(len(s.Backends)), fmt.Sprintf("at most %d backends", MaxBackendsPerService))
	}
	bes := make([]Backend, len(s.Backends))
	seen := map[netip.AddrPort]bool{}
	for i, b := range s.Backends {
		f := fmt.Sprintf("backends[%d]", i)
		if !b.Addr.IsValid() || b.Addr.IsUnspecified() || b.Addr.IsMulticast() || b.Addr.Is4In6() || b.Addr.Is4() != s.VIP.Is4() {
			return s, bad(f+".addr", addrString(b.Addr), "a unicast address of the VIP's family")
		}
		b.Addr = b.Addr.WithZone("")
		if b.Port == 0 {
			return s, bad(f+".port", "0", "1-65535")
		}
		if b.Weight > MaxWeight {
			return s, bad(f+".weight", fmt.Sprint(b.Weight), fmt.Sprintf("0-%d (0 drains)", MaxWeight))
		}
		switch b.State {
		case "":
			b.State = BackendActive
		case BackendActive, BackendDraining, BackendDown:
		default:
			return s, bad(f+".state", string(b.State), "active, draining, down")
		}
		ap := netip.AddrPortFrom(b.Addr, b.Port)
		if seen[ap] {
			return s, bad(f, ap.String(), "each address:port once per service")
		}
		seen[ap] = true
		bes[i] = b
	}
	s.Backends = bes
	return s, nil
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// validateSet normalises the whole desired set and checks cross-service
// constraints (unique names and unique VIP:port/protocol).
func (d *Dataplane) validateSet(desired []Service) ([]Service, error) {
	out := make([]Service, len(desired))
	names := map[string]bool{}
	keys := map[xlbSvcKey]string{}
	backends := 0
	for i, s := range desired {
		n, err := normalize(s)
		if err != nil {
			return nil, err
		}
		if names[n.Name] {
			return nil, &ValidationError{Service: n.Name, Field: "name", Value: n.Name, Allowed: "a name unique in the desired set"}
		}
		names[n.Name] = true
		k := svcKeyOf(n)
		if other, dup := keys[k]; dup {
			return nil, &ValidationError{Service: n.Name, Field: "vip/port/protocol",
				Value:   fmt.Sprintf("%s:%d/%s", n.VIP, n.Port, n.Protocol),
				Allowed: fmt.Sprintf("a VIP, port and protocol not used by service %q", other)}
		}
		keys[k] = n.Name
		backends += len(n.Backends)
		out[i] = n
	}
	if len(out) > d.cfg.MaxServices-1 {
		return nil, &ValidationError{Field: "services", Value: fmt.Sprint(len(out)), Allowed: fmt.Sprintf("at most %d services (MaxServices-1)", d.cfg.MaxServices-1)}
	}
	if backends > d.cfg.MaxBackends-1 {
		return nil, &ValidationError{Field: "backends", Value: fmt.Sprint(backends), Allowed: fmt.Sprintf("at most %d backends over all services (MaxBackends-1)", d.cfg.MaxBackends-1)}
	}
	return out, nil
}

func svcKeyOf(s Service) xlbSvcKey {
	return xlbSvcKey{Vip: addrToBE(s.VIP), Port: htons(s.Port), Proto: protoNum(s.Protocol), Family: familyOf(s.VIP)}
}

func vipKeyOf(k xlbSvcKey) xlbVipKey {
	return xlbVipKey{Family: k.Family, Addr: k.Vip}
}
