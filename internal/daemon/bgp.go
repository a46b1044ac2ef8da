package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/internal/bgp"
	"github.com/xlb-dev/xlb/internal/state"
)

// BGPSpeaker is what the daemon needs from bgp.Speaker.
type BGPSpeaker interface {
	Configure(ctx context.Context, g bgp.Global) error
	Configured() bool
	SetPeers(ctx context.Context, peers []bgp.Peer) error
	SetAnnouncements(ctx context.Context, as []bgp.Announcement) error
	Announced() []netip.Prefix
	Peers(ctx context.Context) ([]bgp.PeerState, error)
	Stop(ctx context.Context) error
}

// BGPStore persists the BGP configuration (internal/state).
type BGPStore interface {
	LoadBGP(ctx context.Context) (state.BGPConfig, error)
	SaveBGP(ctx context.Context, c state.BGPConfig) error
}

// BGPController owns the BGP configuration: it validates API input,
// drives the speaker and persists the configuration. It implements
// apiserver.BGPCore. Announcements are not its business (see announcer).
type BGPController struct {
	speaker BGPSpeaker
	store   BGPStore
	log     *slog.Logger

	// mu serialises changes; it guards global and peers (the configuration
	// as persisted, passwords included).
	mu     sync.Mutex
	global *api.BGPGlobal
	peers  map[netip.Addr]api.BGPPeer
}

// NewBGPController returns a controller with an empty configuration; call
// Restore before serving.
func NewBGPController(speaker BGPSpeaker, store BGPStore, log *slog.Logger) *BGPController {
	if log == nil {
		log = slog.Default()
	}
	return &BGPController{speaker: speaker, store: store, log: log, peers: map[netip.Addr]api.BGPPeer{}}
}

// Restore loads the persisted configuration and starts the speaker with it.
// Invalid entries are skipped with an error log and a speaker that fails to
// start is logged, not returned: the API must come up so that an operator
// can fix the configuration.
func (c *BGPController) Restore(ctx context.Context) error {
	cfg, err := c.store.LoadBGP(ctx)
	if err != nil {
		return fmt.Errorf("restore bgp configuration: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, p := range cfg.Peers {
		addr, _, err := peerFromAPI(fmt.Sprintf("peers[%d].", i), p)
		if err != nil {
			c.log.Error("skipping invalid persisted bgp peer", "index", i, "error", err)
			continue
		}
		p.Address = addr.String()
		c.peers[addr] = p
	}
	if cfg.Global == nil {
		return nil
	}
	g, err := globalFromAPI(*cfg.Global)
	if err != nil {
		c.log.Error("persisted bgp global configuration is invalid; BGP stays off until PUT /v1/bgp", "error", err)
		return nil
	}
	gl := *cfg.Global
	c.global = &gl
	if err := c.startLocked(ctx, g); err != nil {
		c.log.Error("starting the bgp speaker failed; fix it with PUT /v1/bgp", "error", err)
		return nil
	}
	c.log.Info("bgp configuration restored", "asn", g.ASN, "routerID", g.RouterID, "peers", len(c.peers))
	return nil
}

// startLocked configures the speaker and gives it the stored peers.
func (c *BGPController) startLocked(ctx context.Context, g bgp.Global) error {
	if err := c.speaker.Configure(ctx, g); err != nil {
		return err
	}
	return c.speaker.SetPeers(ctx, c.speakerPeersLocked(c.peers))
}

func (c *BGPController) speakerPeersLocked(set map[netip.Addr]api.BGPPeer) []bgp.Peer {
	out := make([]bgp.Peer, 0, len(set))
	for _, a := range sortedPeerAddrs(set) {
		_, p, _ := peerFromAPI("", set[a]) // validated when stored
		out = append(out, p)
	}
	return out
}

func sortedPeerAddrs(set map[netip.Addr]api.BGPPeer) []netip.Addr {
	out := make([]netip.Addr, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

func (c *BGPController) saveLocked(ctx context.Context, global *api.BGPGlobal, peers map[netip.Addr]api.BGPPeer) error {
	cfg := state.BGPConfig{Global: global}
	for _, a := range sortedPeerAddrs(peers) {
		cfg.Peers = append(cfg.Peers, peers[a])
	}
	if err := c.store.SaveBGP(ctx, cfg); err != nil {
		return &api.Error{Code: api.CodeInternal, Message: "persisting the bgp configuration failed: " + err.Error()}
	}
	return nil
}

// GetBGP is GET /v1/bgp.
func (c *BGPController) GetBGP(ctx context.Context) (api.BGPStatus, error) {
	peers, err := c.ListBGPPeers(ctx)
	if err != nil {
		return api.BGPStatus{}, err
	}
	st := api.BGPStatus{Peers: peers.Items, Announced: []string{}}
	c.mu.Lock()
	if c.global != nil {
		g := cloneGlobal(*c.global)
		st.Global = &g
	}
	c.mu.Unlock()
	if c.speaker.Configured() {
		for _, p := range c.speaker.Announced() {
			st.Announced = append(st.Announced, p.String())
		}
	}
	return st, nil
}

func cloneGlobal(g api.BGPGlobal) api.BGPGlobal {
	g.Communities = slices.Clone(g.Communities)
	g.LargeCommunities = slices.Clone(g.LargeCommunities)
	if g.LocalPref != nil {
		v := *g.LocalPref
		g.LocalPref = &v
	}
	if g.MED != nil {
		v := *g.MED
		g.MED = &v
	}
	return g
}

// PutBGP is PUT /v1/bgp: configure (or reconfigure) the speaker. Changing
// the ASN, router ID or listen port restarts the speaker, which resets
// every session; changing only the default attributes re-announces without
// a reset; an identical body changes nothing.
func (c *BGPController) PutBGP(ctx context.Context, in api.BGPGlobal) (api.BGPGlobal, error) {
	g, err := globalFromAPI(in)
	if err != nil {
		return api.BGPGlobal{}, err
	}
	in.RouterID = g.RouterID.String()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mutationTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.global != nil && reflect.DeepEqual(*c.global, in) && c.speaker.Configured() {
		return cloneGlobal(in), nil
	}
	if err := c.startLocked(ctx, g); err != nil {
		c.restartPreviousLocked(ctx)
		return api.BGPGlobal{}, &api.Error{Code: api.CodeInternal, Message: "starting the bgp speaker failed: " + err.Error()}
	}
	stored := cloneGlobal(in)
	if err := c.saveLocked(ctx, &stored, c.peers); err != nil {
		c.restartPreviousLocked(ctx)
		return api.BGPGlobal{}, err
	}
	c.global = &stored
	c.log.Info("bgp configured", "asn", g.ASN, "routerID", g.RouterID, "listenPort", g.ListenPort)
	return cloneGlobal(stored), nil
}

// restartPreviousLocked puts the previous configuration back after a
// failed change (or stops the speaker when there was none).
func (c *BGPController) restartPreviousLocked(ctx context.Context) {
	if c.global == nil {
		if err := c.speaker.Stop(ctx); err != nil {
			c.log.Error("stopping the bgp speaker after a failed configuration failed", "error", err)
		}
		return
	}
	g, _ := globalFromAPI(*c.global)
	if err := c.startLocked(ctx, g); err != nil {
		c.log.Error("restoring the previous bgp configuration failed; BGP is down until the next PUT /v1/bgp", "error", err)
	}
}

// DeleteBGP is DELETE /v1/bgp: withdraw every route, close every session
// with a NOTIFICATION (Cease) and forget the global configuration. Peers
// stay configured (inactive) for a later PUT /v1/bgp.
func (c *BGPController) DeleteBGP(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mutationTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.saveLocked(ctx, nil, c.peers); err != nil {
		return err
	}
	c.global = nil
	if err := c.speaker.Stop(ctx); err != nil {
		return &api.Error{Code: api.CodeInternal, Message: "stopping the bgp speaker: " + err.Error()}
	}
	c.log.Info("bgp stopped (DELETE /v1/bgp)")
	return nil
}

// Stop closes the sessions at daemon shutdown; the configuration stays.
func (c *BGPController) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.speaker.Stop(ctx)
}

// ListBGPPeers is GET /v1/bgp/peers: every configured peer with its live
// session state; passwords are never returned.
func (c *BGPController) ListBGPPeers(ctx context.Context) (api.BGPPeerList, error) {
	c.mu.Lock()
	cfg := make([]api.BGPPeer, 0, len(c.peers))
	for _, a := range sortedPeerAddrs(c.peers) {
		cfg = append(cfg, c.peers[a])
	}
	c.mu.Unlock()
	live, err := c.speaker.Peers(ctx)
	if err != nil {
		c.log.Warn("reading bgp peer states failed", "error", err)
	}
	byAddr := map[netip.Addr]bgp.PeerState{}
	for _, p := range live {
		byAddr[p.Address] = p
	}
	out := api.BGPPeerList{Items: make([]api.BGPPeerStatus, 0, len(cfg))}
	for _, p := range cfg {
		a, _ := netip.ParseAddr(p.Address)
		out.Items = append(out.Items, peerStatus(p, byAddr[a]))
	}
	return out, nil
}

func peerStatus(p api.BGPPeer, live bgp.PeerState) api.BGPPeerStatus {
	st := api.BGPPeerStatus{BGPPeer: p, PasswordSet: p.Password != "", State: live.State}
	st.Password = ""
	st.Families = slices.Clone(p.Families)
	if st.State == "" {
		st.State = "idle"
	}
	st.UptimeSeconds = int64(live.Uptime / time.Second)
	st.PrefixesAdvertised, st.PrefixesReceived = live.Advertised, live.Received
	st.UpdatesSent, st.UpdatesReceived = live.UpdatesSent, live.UpdatesRecv
	return st
}

// ReplaceBGPPeers is PUT /v1/bgp/peers: the full peer set. Unchanged peers
// keep their sessions.
func (c *BGPController) ReplaceBGPPeers(ctx context.Context, req api.BGPPeerReplace) (api.BGPPeerList, error) {
	next := map[netip.Addr]api.BGPPeer{}
	for i, p := range req.Items {
		prefix := fmt.Sprintf("items[%d].", i)
		addr, _, err := peerFromAPI(prefix, p)
		if err != nil {
			return api.BGPPeerList{}, err
		}
		if _, dup := next[addr]; dup {
			return api.BGPPeerList{}, &api.Error{Code: api.CodeInvalid, Field: prefix + "address", Value: p.Address,
				Message: "peer listed twice", Allowed: "each address once"}
		}
		p.Address = addr.String()
		next[addr] = p
	}
	if err := c.commitPeers(ctx, func(map[netip.Addr]api.BGPPeer) (map[netip.Addr]api.BGPPeer, error) { return next, nil }); err != nil {
		return api.BGPPeerList{}, err
	}
	return c.ListBGPPeers(ctx)
}

// PutBGPPeer is PUT /v1/bgp/peers/{address}: create or replace one peer.
// The body is the whole peer: an omitted password means no MD5.
func (c *BGPController) PutBGPPeer(ctx context.Context, address string, p api.BGPPeer) (api.BGPPeerStatus, bool, error) {
	addr, err := parsePeerAddress("address", address)
	if err != nil {
		return api.BGPPeerStatus{}, false, err
	}
	if p.Address != "" {
		if b, err := netip.ParseAddr(p.Address); err != nil || b != addr {
			return api.BGPPeerStatus{}, false, &api.Error{Code: api.CodeInvalid, Field: "address", Value: p.Address,
				Message: "body address differs from the address in the path", Allowed: "empty or " + addr.String()}
		}
	}
	p.Address = addr.String()
	if _, _, err := peerFromAPI("", p); err != nil {
		return api.BGPPeerStatus{}, false, err
	}
	var exists bool
	err = c.commitPeers(ctx, func(cur map[netip.Addr]api.BGPPeer) (map[netip.Addr]api.BGPPeer, error) {
		_, exists = cur[addr]
		next := make(map[netip.Addr]api.BGPPeer, len(cur)+1)
		for k, v := range cur {
			next[k] = v
		}
		next[addr] = p
		return next, nil
	})
	if err != nil {
		return api.BGPPeerStatus{}, false, err
	}
	live, _ := c.speaker.Peers(ctx)
	for _, l := range live {
		if l.Address == addr {
			return peerStatus(p, l), !exists, nil
		}
	}
	return peerStatus(p, bgp.PeerState{}), !exists, nil
}

// DeleteBGPPeer is DELETE /v1/bgp/peers/{address}.
func (c *BGPController) DeleteBGPPeer(ctx context.Context, address string) error {
	addr, err := parsePeerAddress("address", address)
	if err != nil {
		return err
	}
	return c.commitPeers(ctx, func(cur map[netip.Addr]api.BGPPeer) (map[netip.Addr]api.BGPPeer, error) {
		if _, ok := cur[addr]; !ok {
			return nil, &api.Error{Code: api.CodeNotFound, Field: "address", Value: address, Message: fmt.Sprintf("bgp peer %s not found", addr)}
		}
		next := make(map[netip.Addr]api.BGPPeer, len(cur))
		for k, v := range cur {
			if k != addr {
				next[k] = v
			}
		}
		return next, nil
	})
}

// commitPeers makes change(current peers) the peer set: speaker first
// (when running), then the file; a failure puts the previous set back.
// change runs under mu, so that concurrent changes of different peers are
// applied one after the other instead of the last overwriting the others
// with a set computed from a stale copy.
func (c *BGPController) commitPeers(ctx context.Context, change func(cur map[netip.Addr]api.BGPPeer) (map[netip.Addr]api.BGPPeer, error)) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mutationTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	next, err := change(c.peers)
	if err != nil {
		return err
	}
	if reflect.DeepEqual(next, c.peers) {
		return nil
	}
	running := c.speaker.Configured()
	if running {
		if err := c.speaker.SetPeers(ctx, c.speakerPeersLocked(next)); err != nil {
			_ = c.speaker.SetPeers(ctx, c.speakerPeersLocked(c.peers))
			return &api.Error{Code: api.CodeInternal, Message: "configuring the bgp peers failed: " + err.Error()}
		}
	}
	if err := c.saveLocked(ctx, c.global, next); err != nil {
		if running {
			_ = c.speaker.SetPeers(ctx, c.speakerPeersLocked(c.peers))
		}
		return err
	}
	c.peers = next
	c.log.Info("bgp peers stored", "peers", len(next), "speakerRunning", running)
	return nil
}

// PeerStates is the live state of every peer (for metrics).
func (c *BGPController) PeerStates(ctx context.Context) ([]bgp.PeerState, error) {
	return c.speaker.Peers(ctx)
}

// AnnouncedCount is the number of announced host routes (0 while BGP is off).
func (c *BGPController) AnnouncedCount() int {
	if !c.speaker.Configured() {
		return 0
	}
	return len(c.speaker.Announced())
}

// globalFromAPI converts and validates the wire form, with errors naming
// JSON fields.
func globalFromAPI(in api.BGPGlobal) (bgp.Global, error) {
	rid, err := netip.ParseAddr(in.RouterID)
	if err != nil || !rid.Is4() || rid.IsUnspecified() {
		return bgp.Global{}, &api.Error{Code: api.CodeInvalid, Field: "routerID", Value: in.RouterID,
			Message: "invalid router ID", Allowed: "an IPv4 address other than 0.0.0.0, e.g. the node's address"}
	}
	if len(in.Communities) > api.MaxCommunities || len(in.LargeCommunities) > api.MaxCommunities {
		return bgp.Global{}, &api.Error{Code: api.CodeInvalid, Field: "communities", Message: "too many communities",
			Allowed: fmt.Sprintf("at most %d communities and %d large communities", api.MaxCommunities, api.MaxCommunities)}
	}
	g := bgp.Global{ASN: in.ASN, RouterID: rid, ListenPort: in.ListenPort,
		Communities: slices.Clone(in.Communities), LargeCommunities: slices.Clone(in.LargeCommunities),
		LocalPref: in.LocalPref, MED: in.MED}
	if err := bgp.ValidateGlobal(g); err != nil {
		return bgp.Global{}, fieldError("", err)
	}
	return g, nil
}

func parsePeerAddress(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.Is4In6() {
		return netip.Addr{}, &api.Error{Code: api.CodeInvalid, Field: field, Value: s, Message: "invalid peer address",
			Allowed: "a unicast IPv4 or IPv6 address without zone"}
	}
	return a, nil
}

// peerFromAPI converts and validates one peer; prefix is prepended to
// field names (e.g. "items[2].").
func peerFromAPI(prefix string, in api.BGPPeer) (netip.Addr, bgp.Peer, error) {
	addr, err := parsePeerAddress(prefix+"address", in.Address)
	if err != nil {
		return netip.Addr{}, bgp.Peer{}, err
	}
	p := bgp.Peer{Address: addr, ASN: in.ASN, Port: in.Port, MultihopTTL: in.MultihopTTL, Password: in.Password,
		HoldTime: time.Duration(in.HoldTimeSeconds) * time.Second, Keepalive: time.Duration(in.KeepaliveSeconds) * time.Second,
		Passive: in.Passive, Families: slices.Clone(in.Families)}
	if in.KeepaliveSeconds != 0 && in.HoldTimeSeconds == 0 && in.KeepaliveSeconds*3 > 90 {
		return netip.Addr{}, bgp.Peer{}, &api.Error{Code: api.CodeInvalid, Field: prefix + "keepaliveSeconds", Value: strconv.Itoa(int(in.KeepaliveSeconds)),
			Message: "keepalive longer than a third of the hold time", Allowed: "at most a third of holdTimeSeconds (default 90)"}
	}
	if in.LocalAddress != "" {
		la, err := parsePeerAddress(prefix+"localAddress", in.LocalAddress)
		if err != nil {
			return netip.Addr{}, bgp.Peer{}, err
		}
		if la.Is4() != addr.Is4() {
			return netip.Addr{}, bgp.Peer{}, &api.Error{Code: api.CodeInvalid, Field: prefix + "localAddress", Value: in.LocalAddress,
				Message: "local address of another family than the peer", Allowed: "an address of the peer's family"}
		}
		p.LocalAddress = la
	}
	if err := bgp.ValidatePeer(p); err != nil {
		return netip.Addr{}, bgp.Peer{}, fieldError(prefix, err)
	}
	return addr, p, nil
}

// bgpFields maps bgp package field names to JSON field names.
var bgpFields = map[string]string{"holdTime": "holdTimeSeconds", "keepalive": "keepaliveSeconds"}

// fieldError turns a bgp validation error ("FIELD: VALUE is not allowed
// (allowed: X)") into an *api.Error naming the JSON field.
func fieldError(prefix string, err error) error {
	msg := err.Error()
	field, rest, _ := strings.Cut(msg, ": ")
	e := &api.Error{Code: api.CodeInvalid, Message: "invalid " + field}
	if j, ok := bgpFields[field]; ok {
		field = j
	}
	e.Field = prefix + field
	if i := strings.LastIndex(rest, " (allowed: "); i >= 0 && strings.HasSuffix(rest, ")") {
		e.Allowed = rest[i+len(" (allowed: ") : len(rest)-1]
		rest = rest[:i]
	}
	if v, ok := strings.CutSuffix(rest, " is not allowed"); ok {
		v = strings.Trim(v, `"`)
		if d, err := time.ParseDuration(v); err == nil {
			v = strconv.Itoa(int(d / time.Second)) // the API speaks seconds
		}
		e.Value = v
	} else {
		e.Message = rest // e.g. "longer than 80 bytes": never echo a password
	}
	e.Allowed = strings.NewReplacer("0 for the default, or 3s-65535s", "0 for the default, or 3-65535").Replace(e.Allowed)
	return e
}
