package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sync"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/bgp"
	"github.com/xlb-dev/xlb/internal/l2"
)

// announcePlan is what the daemon tells the outside world about its VIPs,
// derived from the desired services and the health states by plan.
type announcePlan struct {
	// BGP: host routes to announce, sorted by address.
	BGP []bgp.Announcement
	// L2: interface → VIPs to answer ARP/NDP for (sorted).
	L2 map[string][]netip.Addr
	// VIPs: every VIP of every service, sorted (for --plumb-vips: the host
	// accepts traffic for a VIP whatever its health).
	VIPs []netip.Addr
}

// plan is the announcement policy (docs/announce.md):
//
//   - A VIP is announced over BGP as a host route (/32, /128) when at
//     least one service on it has spec.bgp.advertise != false AND at least
//     one usable backend of the VIP's family. Otherwise it is withdrawn.
//     Withdrawing when every backend is down is deliberate even though the
//     datapath then keeps forwarding to all backends (a last resort): with
//     anycast, the router moves the traffic to load balancers that still
//     have healthy backends.
//   - A usable backend has the VIP's family, weight > 0 and is not down
//     according to health.
//   - Attributes: the union of the communities and large communities of
//     every advertising service on the VIP (in service-name order, without
//     duplicates); localPref and MED from the first advertising service, by
//     name, that sets them. They are counted whether or not that service
//     has usable backends, so attributes do not flap with health. Empty
//     attributes fall back to the global defaults (done by bgp.Speaker).
//   - L2: a service with spec.l2 has its VIPs answered on spec.l2.interface
//     while it has a usable backend of the VIP's family (spec.bgp.advertise
//     does not apply: L2 is its own opt-in).
//
// services must be defaulted and valid; their order does not matter.
func plan(services []api.Service, health BackendHealth) announcePlan {
	svcs := slices.Clone(services)
	slices.SortFunc(svcs, func(a, b api.Service) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	type vipState struct {
		advertised bool // some advertising service names it
		usable     bool // some advertising service has a usable backend
		ann        bgp.Announcement
	}
	byVIP := map[netip.Addr]*vipState{}
	l2 := map[string]map[netip.Addr]bool{}
	all := map[netip.Addr]bool{}
	for _, s := range svcs {
		advertise := s.Spec.BGP == nil || s.Spec.BGP.Advertise == nil || *s.Spec.BGP.Advertise
		for _, v := range s.Spec.VIPs {
			vip, err := netip.ParseAddr(v)
			if err != nil {
				continue // cannot happen for a validated service
			}
			all[vip] = true
			usable := hasUsableBackend(s, vip.Is4(), health)
			if s.Spec.L2 != nil && usable {
				if l2[s.Spec.L2.Interface] == nil {
					l2[s.Spec.L2.Interface] = map[netip.Addr]bool{}
				}
				l2[s.Spec.L2.Interface][vip] = true
			}
			if !advertise {
				continue
			}
			st := byVIP[vip]
			if st == nil {
				st = &vipState{ann: bgp.Announcement{Prefix: netip.PrefixFrom(vip, vip.BitLen())}}
				byVIP[vip] = st
			}
			st.advertised = true
			st.usable = st.usable || usable
			if b := s.Spec.BGP; b != nil {
				st.ann.Communities = appendNew(st.ann.Communities, b.Communities)
				st.ann.LargeCommunities = appendNew(st.ann.LargeCommunities, b.LargeCommunities)
				if st.ann.LocalPref == nil && b.LocalPref != nil {
					v := *b.LocalPref
					st.ann.LocalPref = &v
				}
				if st.ann.MED == nil && b.MED != nil {
					v := *b.MED
					st.ann.MED = &v
				}
			}
		}
	}
	var out announcePlan
	for _, st := range byVIP {
		if st.advertised && st.usable {
			out.BGP = append(out.BGP, st.ann)
		}
	}
	slices.SortFunc(out.BGP, func(a, b bgp.Announcement) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	for iface, set := range l2 {
		out.L2 = mapInit(out.L2)
		out.L2[iface] = sortedAddrs(set)
	}
	out.VIPs = sortedAddrs(all)
	return out
}

func mapInit(m map[string][]netip.Addr) map[string][]netip.Addr {
	if m == nil {
		return map[string][]netip.Addr{}
	}
	return m
}

func sortedAddrs(set map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// appendNew appends the values of add that dst does not hold yet.
func appendNew(dst, add []string) []string {
	for _, v := range add {
		if !slices.Contains(dst, v) {
			dst = append(dst, v)
		}
	}
	return dst
}

// hasUsableBackend reports whether s has a backend of the family that has
// weight > 0 and is not down.
func hasUsableBackend(s api.Service, is4 bool, health BackendHealth) bool {
	for _, b := range s.Spec.Backends {
		a, err := netip.ParseAddr(b.Address)
		if err != nil || a.Is4() != is4 {
			continue
		}
		if b.Weight != nil && *b.Weight == 0 {
			continue
		}
		if health != nil {
			if st, ok := health.BackendState(s.Name, netip.AddrPortFrom(a, b.Port)); ok && st == dataplane.BackendDown {
				continue
			}
		}
		return true
	}
	return false
}

// L2Announcer answers ARP/NDP for VIPs (l2.Announcer).
type L2Announcer interface {
	Set(ctx context.Context, want map[string][]netip.Addr) error
	// Reconcile follows interfaces that were re-created or came back up.
	Reconcile(ctx context.Context)
	Status() []l2.InterfaceState
	Close()
}

// VIPPlumber puts VIPs on the host (vip.Plumber).
type VIPPlumber interface {
	Set(ctx context.Context, vips []netip.Addr) error
	// Reconcile re-creates the link and re-adds the VIPs of the last Set.
	Reconcile(ctx context.Context) error
	Remove(ctx context.Context) error
}

// announcer pushes the plan of the current desired state to the BGP
// speaker, the L2 responder and (with --plumb-vips) the VIP link. A failed
// push is logged and retried with the next change or Reconcile; it never
// fails the service change that triggered it (the datapath is already
// programmed and persisted by then).
type announcer struct {
	speaker BGPSpeaker  // nil: no BGP
	l2      L2Announcer // nil: no L2
	plumber VIPPlumber  // nil: --plumb-vips off
	health  BackendHealth
	log     *slog.Logger

	mu   sync.Mutex
	last announcePlan
}

// Announce is the Manager hook: services is the desired set after a
// successful commit, Reconcile or Restore (nil when the datapath is not
// programmed, which withdraws everything).
func (a *announcer) Announce(ctx context.Context, services []api.Service) {
	p := plan(services, a.health)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.speaker != nil {
		if err := a.speaker.SetAnnouncements(ctx, p.BGP); err != nil {
			a.log.Error("bgp announcements failed", "error", err)
		}
	}
	if a.l2 != nil {
		if err := a.l2.Set(ctx, p.L2); err != nil {
			a.log.Error("l2 announcements failed", "error", err)
		}
	}
	if a.plumber != nil {
		if err := a.plumber.Set(ctx, p.VIPs); err != nil {
			a.log.Error("vip plumbing failed", "error", err)
		}
	}
	if !reflect.DeepEqual(p, a.last) {
		a.log.Info("announcements", "bgp", len(p.BGP), "l2Interfaces", len(p.L2), "plumbedVIPs", len(p.VIPs))
	}
	a.last = p
}

// followLinks is called by the link watcher after every netlink link or
// address event (and its periodic resync): the L2 responder re-opens its
// sockets on a re-created interface and announces the VIPs there, and a
// deleted --plumb-vips link is re-created with its VIPs.
func (a *announcer) followLinks(ctx context.Context) {
	if a.l2 != nil {
		a.l2.Reconcile(ctx)
	}
	if a.plumber != nil {
		if err := a.plumber.Reconcile(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("vip plumbing failed", "error", err)
		}
	}
}

// l2Status is the L2 part of /v1/status.
func (a *announcer) l2Status() []api.L2Status {
	if a.l2 == nil {
		return nil
	}
	var out []api.L2Status
	for _, s := range a.l2.Status() {
		out = append(out, api.L2Status{Name: s.Name, Ready: s.Ready, VIPs: s.VIPs, Ifindex: s.Ifindex, Error: s.Error, Reopens: s.Reopens})
	}
	return out
}

// L2Owned is the number of VIPs answered per interface (for metrics).
func (a *announcer) L2Owned() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]int{}
	for iface, vips := range a.last.L2 {
		out[iface] = len(vips)
	}
	return out
}

// shutdown stops answering ARP/NDP and removes the plumbed VIPs (clean
// exit). BGP is stopped by the BGPController.
func (a *announcer) shutdown(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.l2 != nil {
		a.l2.Close()
	}
	if a.plumber != nil {
		if err := a.plumber.Remove(ctx); err != nil {
			return err
		}
	}
	return nil
}

// announceLocked hands the desired set to the announcement hook. While the
// datapath is not programmed nothing is announced: attracting traffic to a
// load balancer that cannot forward it would blackhole it. Called with mu
// held, so that announcements follow changes in order.
func (m *Manager) announceLocked(ctx context.Context) {
	if m.cfg.Announce == nil {
		return
	}
	var svcs []api.Service
	if m.applied {
		svcs = sortedList(m.desired)
	}
	m.cfg.Announce(ctx, svcs)
}
