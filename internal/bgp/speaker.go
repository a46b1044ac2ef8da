// Package bgp announces VIPs to routers with an embedded GoBGP speaker.
//
// The daemon tells the Speaker three things, each as a full desired set:
// the global settings (Configure), the peers (SetPeers) and the host routes
// to announce (SetAnnouncements). The Speaker diffs every set against what it
// last applied, so a change to one peer or one route never resets an
// unrelated session — a complaint users have about other load balancers.
//
// Which VIPs are announced (health-aware withdrawal, per-service opt-out) is
// decided by the caller; this package only speaks BGP.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	gapi "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

// Global is the speaker-wide configuration.
type Global struct {
	// ASN is the local autonomous system number (1–4294967294).
	ASN uint32
	// RouterID is an IPv4 address identifying this speaker.
	RouterID netip.Addr
	// ListenPort is the TCP port for incoming sessions; 0 disables listening
	// (xlbd then only dials out, which is the usual load-balancer setup).
	ListenPort uint16
	// Default path attributes, used when an announcement has none.
	Communities      []string // "65000:100" or well-known names (no-export, ...)
	LargeCommunities []string // "65000:1:2"
	LocalPref        *uint32
	MED              *uint32
}

// Peer is one BGP neighbor.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	Port    uint16 // remote port; 0 = 179
	// MultihopTTL > 0 enables eBGP multihop with that TTL.
	MultihopTTL uint8
	// Password enables TCP MD5 signatures (RFC 2385).
	Password string
	// HoldTime and Keepalive default to 90 s and 30 s (RFC 4271 suggestions).
	HoldTime  time.Duration
	Keepalive time.Duration
	// Passive waits for the peer to connect.
	Passive bool
	// Families to negotiate: "ipv4-unicast", "ipv6-unicast". Empty means
	// the family of the peer's address.
	Families []string
	// LocalAddress optionally pins the source address of the session.
	LocalAddress netip.Addr
}

// Announcement is one host route (a VIP as /32 or /128) with next hop self.
type Announcement struct {
	Prefix           netip.Prefix
	Communities      []string
	LargeCommunities []string
	LocalPref        *uint32
	MED              *uint32
}

// PeerState is the live state of one peer.
type PeerState struct {
	Address     netip.Addr
	ASN         uint32
	State       string // idle, connect, active, opensent, openconfirm, established
	Uptime      time.Duration
	Received    uint64 // prefixes received
	Advertised  uint64 // prefixes advertised
	UpdatesSent uint64
	UpdatesRecv uint64
}

// Speaker wraps an embedded GoBGP server. It is safe for concurrent use.
type Speaker struct {
	log *slog.Logger

	mu      sync.Mutex
	srv     *server.BgpServer
	global  *Global
	peers   map[netip.Addr]Peer
	paths   map[netip.Prefix]Announcement
	stopped bool
}

// New returns an idle speaker; Configure starts it.
func New(log *slog.Logger) *Speaker {
	if log == nil {
		log = slog.Default()
	}
	return &Speaker{log: log, peers: map[netip.Addr]Peer{}, paths: map[netip.Prefix]Announcement{}}
}

// ValidateGlobal checks a Global and names the offending field.
func ValidateGlobal(g Global) error {
	if g.ASN == 0 || g.ASN == 4294967295 {
		return fmt.Errorf("asn: %d is not allowed (allowed: 1-4294967294)", g.ASN)
	}
	if !g.RouterID.Is4() {
		return fmt.Errorf("routerID: %q is not allowed (allowed: an IPv4 address)", g.RouterID)
	}
	if _, err := communities(g.Communities); err != nil {
		return fmt.Errorf("communities: %w", err)
	}
	if _, err := largeCommunities(g.LargeCommunities); err != nil {
		return fmt.Errorf("largeCommunities: %w", err)
	}
	return nil
}

// ValidatePeer checks a Peer and names the offending field.
func ValidatePeer(p Peer) error {
	if !p.Address.IsValid() {
		return errors.New("address: missing (allowed: an IPv4 or IPv6 address)")
	}
	if p.ASN == 0 || p.ASN == 4294967295 {
		return fmt.Errorf("asn: %d is not allowed (allowed: 1-4294967294)", p.ASN)
	}
	if p.HoldTime != 0 && (p.HoldTime < 3*time.Second || p.HoldTime > 65535*time.Second) {
		return fmt.Errorf("holdTime: %s is not allowed (allowed: 0 for the default, or 3s-65535s)", p.HoldTime)
	}
	if p.Keepalive != 0 && p.HoldTime != 0 && p.Keepalive*3 > p.HoldTime {
		return fmt.Errorf("keepalive: %s is not allowed (allowed: at most a third of holdTime %s)", p.Keepalive, p.HoldTime)
	}
	if len(p.Password) > 80 {
		return errors.New("password: longer than 80 bytes (allowed: up to 80, the TCP MD5 key limit)")
	}
	for _, f := range p.Families {
		if f != "ipv4-unicast" && f != "ipv6-unicast" {
			return fmt.Errorf("families: %q is not allowed (allowed: ipv4-unicast, ipv6-unicast)", f)
		}
	}
	return nil
}

// Configure starts the speaker or, when ASN, router ID or listen port
// changed, restarts it (which necessarily resets every session). Changing
// only the default attributes re-announces the paths without a reset.
func (s *Speaker) Configure(ctx context.Context, g Global) error {
	if err := ValidateGlobal(g); err != nil {
		return fmt.Errorf("bgp global: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil && s.global != nil && s.global.ASN == g.ASN && s.global.RouterID == g.RouterID && s.global.ListenPort == g.ListenPort {
		old := *s.global
		s.global = &g
		if !sameDefaults(old, g) {
			// Re-add every path so the new default attributes are sent.
			for _, a := range s.paths {
				if err := s.addPathLocked(ctx, a); err != nil {
					return fmt.Errorf("bgp global: re-announce %s: %w", a.Prefix, err)
				}
			}
		}
		return nil
	}
	if s.srv != nil {
		s.log.Info("bgp: restarting speaker for new identity", "asn", g.ASN, "routerID", g.RouterID)
		if err := s.srv.StopBgp(ctx, &gapi.StopBgpRequest{}); err != nil {
			return fmt.Errorf("bgp global: stop previous speaker: %w", err)
		}
		s.srv.Stop()
		s.srv = nil
	}
	srv := server.NewBgpServer(server.LoggerOption(newLogger(s.log)))
	go srv.Serve()
	port := int32(-1)
	if g.ListenPort != 0 {
		port = int32(g.ListenPort)
	}
	if err := srv.StartBgp(ctx, &gapi.StartBgpRequest{Global: &gapi.Global{
		Asn: g.ASN, RouterId: g.RouterID.String(), ListenPort: port,
	}}); err != nil {
		srv.Stop()
		return fmt.Errorf("bgp global: start speaker: %w", err)
	}
	s.srv = srv
	s.global = &g
	s.stopped = false
	// Re-create peers and paths on the new server.
	for _, p := range s.peers {
		if err := srv.AddPeer(ctx, &gapi.AddPeerRequest{Peer: toAPIPeer(p)}); err != nil {
			return fmt.Errorf("bgp global: re-add peer %s: %w", p.Address, err)
		}
	}
	for _, a := range s.paths {
		if err := s.addPathLocked(ctx, a); err != nil {
			return fmt.Errorf("bgp global: re-announce %s: %w", a.Prefix, err)
		}
	}
	return nil
}

func sameDefaults(a, b Global) bool {
	return slices.Equal(a.Communities, b.Communities) && slices.Equal(a.LargeCommunities, b.LargeCommunities) &&
		eqPtr(a.LocalPref, b.LocalPref) && eqPtr(a.MED, b.MED)
}

func eqPtr(a, b *uint32) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// Configured reports whether Configure has succeeded.
func (s *Speaker) Configured() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv != nil
}

// SetPeers makes the peer set equal to peers. Unchanged peers are not
// touched; changed ones are updated in place (GoBGP resets only that session
// when a session parameter changed).
func (s *Speaker) SetPeers(ctx context.Context, peers []Peer) error {
	want := map[netip.Addr]Peer{}
	for i, p := range peers {
		if err := ValidatePeer(p); err != nil {
			return fmt.Errorf("bgp peers[%d]: %w", i, err)
		}
		if _, dup := want[p.Address]; dup {
			return fmt.Errorf("bgp peers[%d]: address: %s appears twice (allowed: each address once)", i, p.Address)
		}
		want[p.Address] = p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return errors.New("bgp peers: speaker not configured (set the global ASN and router ID first)")
	}
	for addr := range s.peers {
		if _, ok := want[addr]; ok {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &gapi.DeletePeerRequest{Address: addr.String()}); err != nil {
			return fmt.Errorf("bgp: delete peer %s: %w", addr, err)
		}
		delete(s.peers, addr)
		s.log.Info("bgp: peer removed", "peer", addr)
	}
	for addr, p := range want {
		old, ok := s.peers[addr]
		switch {
		case !ok:
			if err := s.srv.AddPeer(ctx, &gapi.AddPeerRequest{Peer: toAPIPeer(p)}); err != nil {
				return fmt.Errorf("bgp: add peer %s: %w", addr, err)
			}
			s.log.Info("bgp: peer added", "peer", addr, "asn", p.ASN)
		case !samePeer(old, p):
			// Delete + add rather than UpdatePeer: GoBGP's update does not
			// apply every field (e.g. the MD5 password) to a live session.
			if err := s.srv.DeletePeer(ctx, &gapi.DeletePeerRequest{Address: addr.String()}); err != nil {
				return fmt.Errorf("bgp: replace peer %s: %w", addr, err)
			}
			if err := s.srv.AddPeer(ctx, &gapi.AddPeerRequest{Peer: toAPIPeer(p)}); err != nil {
				return fmt.Errorf("bgp: replace peer %s: %w", addr, err)
			}
			s.log.Info("bgp: peer changed", "peer", addr)
		}
		s.peers[addr] = p
	}
	return nil
}

func samePeer(a, b Peer) bool {
	return a.Address == b.Address && a.ASN == b.ASN && a.Port == b.Port && a.MultihopTTL == b.MultihopTTL &&
		a.Password == b.Password && a.HoldTime == b.HoldTime && a.Keepalive == b.Keepalive &&
		a.Passive == b.Passive && slices.Equal(a.Families, b.Families) && a.LocalAddress == b.LocalAddress
}

func familyOf(a netip.Addr) *gapi.Family {
	if a.Is4() {
		return &gapi.Family{Afi: gapi.Family_AFI_IP, Safi: gapi.Family_SAFI_UNICAST}
	}
	return &gapi.Family{Afi: gapi.Family_AFI_IP6, Safi: gapi.Family_SAFI_UNICAST}
}

func toAPIPeer(p Peer) *gapi.Peer {
	hold, ka := p.HoldTime, p.Keepalive
	if hold == 0 {
		hold = 90 * time.Second
	}
	if ka == 0 {
		ka = hold / 3
	}
	ap := &gapi.Peer{
		Conf: &gapi.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, AuthPassword: p.Password},
		Timers: &gapi.Timers{Config: &gapi.TimersConfig{
			HoldTime: uint64(hold / time.Second), KeepaliveInterval: uint64(ka / time.Second),
			ConnectRetry: 5,
		}},
		Transport: &gapi.Transport{PassiveMode: p.Passive, RemotePort: uint32(p.Port)},
	}
	if p.LocalAddress.IsValid() {
		ap.Transport.LocalAddress = p.LocalAddress.String()
	}
	if p.MultihopTTL > 0 {
		ap.EbgpMultihop = &gapi.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.MultihopTTL)}
	}
	fams := p.Families
	if len(fams) == 0 {
		if p.Address.Is4() {
			fams = []string{"ipv4-unicast"}
		} else {
			fams = []string{"ipv6-unicast"}
		}
	}
	for _, f := range fams {
		fam := &gapi.Family{Afi: gapi.Family_AFI_IP, Safi: gapi.Family_SAFI_UNICAST}
		if f == "ipv6-unicast" {
			fam.Afi = gapi.Family_AFI_IP6
		}
		ap.AfiSafis = append(ap.AfiSafis, &gapi.AfiSafi{Config: &gapi.AfiSafiConfig{Family: fam, Enabled: true}})
	}
	return ap
}

// SetAnnouncements makes the announced host routes equal to as: new routes
// are announced, missing ones withdrawn, changed attributes re-announced.
func (s *Speaker) SetAnnouncements(ctx context.Context, as []Announcement) error {
	want := map[netip.Prefix]Announcement{}
	for i, a := range as {
		if !a.Prefix.IsValid() || a.Prefix.Bits() != a.Prefix.Addr().BitLen() {
			return fmt.Errorf("bgp announcements[%d]: prefix: %q is not allowed (allowed: a host route, /32 or /128)", i, a.Prefix)
		}
		if _, err := communities(a.Communities); err != nil {
			return fmt.Errorf("bgp announcements[%d]: communities: %w", i, err)
		}
		if _, err := largeCommunities(a.LargeCommunities); err != nil {
			return fmt.Errorf("bgp announcements[%d]: largeCommunities: %w", i, err)
		}
		want[a.Prefix] = a
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		// Remember them: Configure announces the desired set once it runs.
		s.paths = want
		return nil
	}
	for p, a := range s.paths {
		if _, ok := want[p]; ok {
			continue
		}
		if err := s.deletePathLocked(ctx, a); err != nil {
			return fmt.Errorf("bgp: withdraw %s: %w", p, err)
		}
		delete(s.paths, p)
		s.log.Info("bgp: route withdrawn", "prefix", p)
	}
	for p, a := range want {
		if old, ok := s.paths[p]; ok && sameAnnouncement(old, a) {
			continue
		}
		if err := s.addPathLocked(ctx, a); err != nil {
			return fmt.Errorf("bgp: announce %s: %w", p, err)
		}
		s.paths[p] = a
		s.log.Info("bgp: route announced", "prefix", p)
	}
	return nil
}

// Announced returns the announced prefixes, sorted.
func (s *Speaker) Announced() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]netip.Prefix, 0, len(s.paths))
	for p := range s.paths {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}

func sameAnnouncement(a, b Announcement) bool {
	return a.Prefix == b.Prefix && slices.Equal(a.Communities, b.Communities) &&
		slices.Equal(a.LargeCommunities, b.LargeCommunities) && eqPtr(a.LocalPref, b.LocalPref) && eqPtr(a.MED, b.MED)
}

func (s *Speaker) apiPath(a Announcement) (*gapi.Path, error) {
	nlri, err := anypb.New(&gapi.IPAddressPrefix{Prefix: a.Prefix.Addr().String(), PrefixLen: uint32(a.Prefix.Bits())})
	if err != nil {
		return nil, err
	}
	fam := familyOf(a.Prefix.Addr())
	attrs := []*anypb.Any{}
	origin, _ := anypb.New(&gapi.OriginAttribute{Origin: 0}) // IGP
	attrs = append(attrs, origin)
	if a.Prefix.Addr().Is4() {
		// 0.0.0.0 means "next hop self": GoBGP fills in the session's
		// local address for each peer.
		nh, _ := anypb.New(&gapi.NextHopAttribute{NextHop: "0.0.0.0"})
		attrs = append(attrs, nh)
	} else {
		mp, _ := anypb.New(&gapi.MpReachNLRIAttribute{Family: fam, NextHops: []string{"::"}, Nlris: []*anypb.Any{nlri}})
		attrs = append(attrs, mp)
	}
	comms, lcomms, lp, med := a.Communities, a.LargeCommunities, a.LocalPref, a.MED
	if g := s.global; g != nil {
		if len(comms) == 0 {
			comms = g.Communities
		}
		if len(lcomms) == 0 {
			lcomms = g.LargeCommunities
		}
		if lp == nil {
			lp = g.LocalPref
		}
		if med == nil {
			med = g.MED
		}
	}
	if len(comms) > 0 {
		cs, err := communities(comms)
		if err != nil {
			return nil, err
		}
		c, _ := anypb.New(&gapi.CommunitiesAttribute{Communities: cs})
		attrs = append(attrs, c)
	}
	if len(lcomms) > 0 {
		ls, err := largeCommunities(lcomms)
		if err != nil {
			return nil, err
		}
		c, _ := anypb.New(&gapi.LargeCommunitiesAttribute{Communities: ls})
		attrs = append(attrs, c)
	}
	if lp != nil {
		c, _ := anypb.New(&gapi.LocalPrefAttribute{LocalPref: *lp})
		attrs = append(attrs, c)
	}
	if med != nil {
		c, _ := anypb.New(&gapi.MultiExitDiscAttribute{Med: *med})
		attrs = append(attrs, c)
	}
	return &gapi.Path{Family: fam, Nlri: nlri, Pattrs: attrs}, nil
}

func (s *Speaker) addPathLocked(ctx context.Context, a Announcement) error {
	p, err := s.apiPath(a)
	if err != nil {
		return err
	}
	_, err = s.srv.AddPath(ctx, &gapi.AddPathRequest{TableType: gapi.TableType_GLOBAL, Path: p})
	return err
}

func (s *Speaker) deletePathLocked(ctx context.Context, a Announcement) error {
	p, err := s.apiPath(a)
	if err != nil {
		return err
	}
	return s.srv.DeletePath(ctx, &gapi.DeletePathRequest{TableType: gapi.TableType_GLOBAL, Family: p.Family, Path: p})
}

// Peers returns the live state of every configured peer.
func (s *Speaker) Peers(ctx context.Context) ([]PeerState, error) {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil, nil
	}
	var out []PeerState
	err := srv.ListPeer(ctx, &gapi.ListPeerRequest{EnableAdvertised: true}, func(p *gapi.Peer) {
		ps := PeerState{State: "unknown"}
		if p.State != nil {
			ps.Address, _ = netip.ParseAddr(p.State.NeighborAddress)
			ps.ASN = p.State.PeerAsn
			ps.State = strings.ToLower(p.State.SessionState.String())
			if m := p.State.Messages; m != nil {
				if m.Sent != nil {
					ps.UpdatesSent = m.Sent.Update
				}
				if m.Received != nil {
					ps.UpdatesRecv = m.Received.Update
				}
			}
		}
		if p.Timers != nil && p.Timers.State != nil && p.Timers.State.Uptime != nil && ps.State == "established" {
			ps.Uptime = time.Since(p.Timers.State.Uptime.AsTime()).Truncate(time.Second)
		}
		for _, af := range p.AfiSafis {
			if af.State != nil {
				ps.Received += af.State.Received
				ps.Advertised += af.State.Advertised
			}
		}
		out = append(out, ps)
	})
	if err != nil {
		return nil, fmt.Errorf("bgp: list peers: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out, nil
}

// Stop withdraws every route and closes every session with a NOTIFICATION
// (Cease), so routers converge at once instead of waiting for the hold timer.
func (s *Speaker) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return nil
	}
	var errs []error
	for _, a := range s.paths {
		if err := s.deletePathLocked(ctx, a); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", a.Prefix, err))
		}
	}
	if err := s.srv.StopBgp(ctx, &gapi.StopBgpRequest{}); err != nil {
		errs = append(errs, fmt.Errorf("stop: %w", err))
	}
	s.srv.Stop()
	s.srv = nil
	s.global = nil
	return errors.Join(errs...)
}

var wellKnown = map[string]uint32{
	"no-export":           0xFFFFFF01,
	"no-advertise":        0xFFFFFF02,
	"no-export-subconfed": 0xFFFFFF03,
	"no-peer":             0xFFFFFF04,
	"blackhole":           0xFFFF029A,
	"graceful-shutdown":   0xFFFF0000,
}

// communities parses "ASN:VALUE" (each 0–65535) or well-known names.
func communities(in []string) ([]uint32, error) {
	out := make([]uint32, 0, len(in))
	for _, c := range in {
		if v, ok := wellKnown[strings.ToLower(c)]; ok {
			out = append(out, v)
			continue
		}
		hi, lo, ok := strings.Cut(c, ":")
		a, err1 := strconv.ParseUint(hi, 10, 16)
		b, err2 := strconv.ParseUint(lo, 10, 16)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%q is not allowed (allowed: ASN:VALUE with each part 0-65535, or no-export, no-advertise, no-export-subconfed, no-peer, blackhole, graceful-shutdown)", c)
		}
		out = append(out, uint32(a)<<16|uint32(b))
	}
	return out, nil
}

// largeCommunities parses "GLOBAL:LOCAL1:LOCAL2" (each 0–4294967295).
func largeCommunities(in []string) ([]*gapi.LargeCommunity, error) {
	out := make([]*gapi.LargeCommunity, 0, len(in))
	for _, c := range in {
		parts := strings.Split(c, ":")
		if len(parts) != 3 {
			return nil, fmt.Errorf("%q is not allowed (allowed: GLOBAL:LOCAL1:LOCAL2, each 0-4294967295)", c)
		}
		var v [3]uint32
		for i, p := range parts {
			n, err := strconv.ParseUint(p, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%q is not allowed (allowed: GLOBAL:LOCAL1:LOCAL2, each 0-4294967295)", c)
			}
			v[i] = uint32(n)
		}
		out = append(out, &gapi.LargeCommunity{GlobalAdmin: v[0], LocalData1: v[1], LocalData2: v[2]})
	}
	return out, nil
}
