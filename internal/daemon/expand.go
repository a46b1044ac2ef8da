package daemon

import (
	"net/netip"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/localports"
)

// BackendHealth is the seam for active health checks: it tells the
// expansion which backends failed their probes. The prober calls
// Manager.Reconcile after a state change so that the datapath follows.
type BackendHealth interface {
	// BackendState returns the probed state of one backend of a service;
	// ok=false means "unknown" (treated as healthy).
	BackendState(service string, backend netip.AddrPort) (state dataplane.BackendState, ok bool)
}

// Datapath service names are "<api name>/v4" and "<api name>/v6": one
// datapath service per VIP. API names cannot contain '/', so the API name
// is everything before the first '/'.
func dpName(name string, v4 bool) string {
	if v4 {
		return name + "/v4"
	}
	return name + "/v6"
}

func apiName(dp string) string {
	name, _, _ := strings.Cut(dp, "/")
	return name
}

// Sentinels that make a non-empty allow-list match no real client: used
// when a service restricts sources of one family only, so that the VIP of
// the other family is closed rather than open to everyone.
var (
	denyAllV4 = netip.MustParsePrefix("0.0.0.0/32")
	denyAllV6 = netip.MustParsePrefix("::/128")
)

// expand turns one defaulted, valid api.Service into one datapath service
// per VIP. Each VIP gets the backends, SNAT address and source ranges of
// its own family; a VIP with no backend of its family is kept (its packets
// are dropped with reason no_backend). Every VIP gets the daemon's SNAT port
// range (--snat-port-range; zero: the datapath's default).
func expand(s api.Service, defaultSNAT []netip.Addr, snatPorts localports.Range, health BackendHealth) []dataplane.Service {
	out := make([]dataplane.Service, 0, len(s.Spec.VIPs))
	var ranges []netip.Prefix
	for _, r := range s.Spec.SourceRanges {
		if p, err := netip.ParsePrefix(r); err == nil {
			ranges = append(ranges, p.Masked())
		}
	}
	for _, v := range s.Spec.VIPs {
		vip, err := netip.ParseAddr(v)
		if err != nil {
			continue // cannot happen for a validated service
		}
		is4 := vip.Is4()
		d := dataplane.Service{
			Name:            dpName(s.Name, is4),
			VIP:             vip,
			Port:            s.Spec.Port,
			Protocol:        dataplane.Protocol(s.Spec.Protocol),
			NATMode:         dataplane.NATMode(s.Spec.NATMode),
			Algorithm:       dataplane.Algorithm(s.Spec.Algorithm),
			IdleTimeout:     time.Duration(s.Spec.IdleTimeoutSeconds) * time.Second,
			AffinityTimeout: time.Duration(s.Spec.AffinityTimeoutSeconds) * time.Second,
			SNATPortMin:     snatPorts.Min,
			SNATPortMax:     snatPorts.Max,
		}
		if d.NATMode == dataplane.NATFullNAT {
			d.SNATAddr = pickFamily(s.Spec.SNATAddresses, defaultSNAT, is4)
		}
		for _, p := range ranges {
			if p.Addr().Is4() == is4 {
				d.SourceRanges = append(d.SourceRanges, p)
			}
		}
		if len(ranges) > 0 && len(d.SourceRanges) == 0 {
			d.SourceRanges = []netip.Prefix{denyAllV6}
			if is4 {
				d.SourceRanges = []netip.Prefix{denyAllV4}
			}
		}
		for _, b := range s.Spec.Backends {
			a, err := netip.ParseAddr(b.Address)
			if err != nil || a.Is4() != is4 {
				continue
			}
			w := uint32(api.DefaultWeight)
			if b.Weight != nil {
				w = *b.Weight
			}
			be := dataplane.Backend{Addr: a, Port: b.Port, Weight: w, State: dataplane.BackendActive}
			if w == 0 {
				be.State = dataplane.BackendDraining
			}
			if health != nil {
				if st, ok := health.BackendState(s.Name, netip.AddrPortFrom(a, b.Port)); ok && st == dataplane.BackendDown {
					be.State = dataplane.BackendDown
				}
			}
			d.Backends = append(d.Backends, be)
		}
		keepAllWhenAllDown(d.Backends)
		out = append(out, d)
	}
	return out
}

// pickFamily returns the first address of the wanted family from the
// service's own list, else from the daemon defaults.
func pickFamily(own []string, defaults []netip.Addr, is4 bool) netip.Addr {
	for _, s := range own {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() == is4 {
			return a
		}
	}
	for _, a := range defaults {
		if a.Is4() == is4 {
			return a
		}
	}
	return netip.Addr{}
}

// keepAllWhenAllDown implements the all-down policy: when every backend
// that may take new flows (weight > 0) failed its probe, they all stay
// selectable. A probe outage (a broken network path between the load
// balancer and the backends, a misconfigured probe) then degrades to "no
// health checking" instead of blackholing the service. BGP still withdraws
// the VIP in that case, so an anycast router can prefer a load balancer
// that sees healthy backends (docs/health.md).
func keepAllWhenAllDown(bs []dataplane.Backend) {
	candidates, down := 0, 0
	for _, b := range bs {
		if b.Weight == 0 {
			continue
		}
		candidates++
		if b.State == dataplane.BackendDown {
			down++
		}
	}
	if candidates == 0 || down != candidates {
		return
	}
	for i := range bs {
		if bs[i].State == dataplane.BackendDown {
			bs[i].State = dataplane.BackendActive
		}
	}
}
