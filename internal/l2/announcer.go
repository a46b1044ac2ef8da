// Package l2 makes VIPs reachable on a shared L2 segment without a router:
// it answers ARP (IPv4) and NDP neighbor solicitations (IPv6) for the VIPs
// it owns on a chosen interface, and announces ownership with a gratuitous
// ARP / unsolicited neighbor advertisement so that neighbors' caches move to
// this node at once (the MetalLB L2 / keepalived pattern).
//
// The VIPs are not added to the interface: the kernel would then also treat
// them as local addresses. The eBPF datapath picks the packets up at ingress.
// Which node owns a VIP when several share a segment is decided elsewhere;
// this package answers for whatever it is given.
package l2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// Announcer answers ARP/NDP for VIPs on interfaces. Safe for concurrent use.
//
// Interfaces are followed by name: Reconcile (called on every netlink link
// or address event, see Follow) re-opens the sockets when the interface was
// deleted and re-created (new ifindex) or came up again, and announces the
// owned VIPs gratuitously on it, so that neighbours learn the (new) MAC.
type Announcer struct {
	log *slog.Logger

	mu     sync.Mutex
	ifaces map[string]*responder
}

// New returns an Announcer with nothing to announce.
func New(log *slog.Logger) *Announcer {
	if log == nil {
		log = slog.Default()
	}
	return &Announcer{log: log, ifaces: map[string]*responder{}}
}

// Set makes the announced VIPs equal to want (interface name → VIPs).
// Newly owned VIPs are announced gratuitously; VIPs no longer wanted stop
// being answered (neighbors' caches age out). A VIP whose interface is
// missing, down or lacks the address family's own address stays wanted
// (and is reported in the error and in Status); it is served and announced
// as soon as Reconcile finds the interface usable.
func (a *Announcer) Set(ctx context.Context, want map[string][]netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for name, r := range a.ifaces {
		if len(want[name]) == 0 {
			r.close()
			delete(a.ifaces, name)
		}
	}
	for name, vips := range want {
		if len(vips) == 0 {
			continue
		}
		r, ok := a.ifaces[name]
		if !ok {
			r = newResponder(name, a.log)
			a.ifaces[name] = r
		}
		if err := r.set(ctx, vips); err != nil {
			errs = append(errs, fmt.Errorf("l2: interface %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Reconcile re-checks every interface against the kernel: sockets of an
// interface that was deleted, replaced (same name, new ifindex) or went
// down are closed, and sockets are (re)opened on the current ifindex of
// an interface that is up, followed by a gratuitous ARP / unsolicited NA
// for every owned VIP. Cheap when nothing changed; safe at any time.
func (a *Announcer) Reconcile(context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.ifaces {
		r.reconcile()
	}
}

// InterfaceState is the L2 readiness of one interface.
type InterfaceState struct {
	Name string
	// Ready: every owned VIP is answered on the interface's current
	// ifindex.
	Ready   bool
	Ifindex int // 0 while the interface is missing
	VIPs    int
	Error   string
	// Reopens counts how often the sockets were re-opened after the
	// interface changed (re-created or came back up).
	Reopens uint64
}

// Status reports every interface with owned VIPs, sorted by name.
func (a *Announcer) Status() []InterfaceState {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]InterfaceState, 0, len(a.ifaces))
	for name, r := range a.ifaces {
		st := InterfaceState{Name: name, Reopens: r.reopens, VIPs: len(r.list())}
		if r.ifi != nil {
			st.Ifindex = r.ifi.Index
		}
		if r.err != nil {
			st.Error = r.err.Error()
		}
		st.Ready = r.err == nil && r.ifi != nil
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y InterfaceState) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// Owned returns the VIPs answered per interface.
func (a *Announcer) Owned() map[string][]netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string][]netip.Addr{}
	for name, r := range a.ifaces {
		out[name] = r.list()
	}
	return out
}

// Close stops answering on every interface.
func (a *Announcer) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, r := range a.ifaces {
		r.close()
		delete(a.ifaces, name)
	}
}

// responder serves one interface, by name. Its sockets and ifi change only
// under Announcer.mu; the serve goroutines read them and are stopped
// (closeSockets) before they change.
type responder struct {
	name string
	log  *slog.Logger

	ifi  *net.Interface // nil while not serving (missing or down)
	arpc *arp.Client    // nil when not open (no IPv4 VIP, or no IPv4 address)
	ndpc *ndp.Conn      // nil when not open (no IPv6 VIP, or no link-local address)
	err  error          // why some owned VIP is not served (nil: all are)

	closed  bool   // sockets were closed for a change: the next open is a re-open
	reopens uint64 // re-opens (interface re-created or back up)

	mu   sync.Mutex
	vips map[netip.Addr]bool // the owned VIPs (served or not)
	done chan struct{}
	wg   sync.WaitGroup
}

func newResponder(name string, log *slog.Logger) *responder {
	return &responder{name: name, log: log.With("interface", name), vips: map[netip.Addr]bool{}, done: make(chan struct{})}
}

// reconcile brings the sockets to "open on the current ifindex of an
// interface that is up", announcing every owned VIP on each socket it
// opens. Called with Announcer.mu held.
func (r *responder) reconcile() {
	ifi, err := net.InterfaceByName(r.name)
	switch {
	case err != nil:
		err = fmt.Errorf("interface not found; waiting for it to appear: %w", err)
		ifi = nil
	case ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagRunning == 0:
		// A frame sent now would be lost (no carrier): wait for the
		// event that brings it up, and announce then.
		err = errors.New("interface is down; waiting for it to come up")
		ifi = nil
	}
	if r.ifi != nil && (ifi == nil || ifi.Index != r.ifi.Index || !bytes.Equal(ifi.HardwareAddr, r.ifi.HardwareAddr)) {
		why := "interface gone or down"
		if ifi != nil {
			why = fmt.Sprintf("ifindex %d -> %d, MAC %s -> %s", r.ifi.Index, ifi.Index, r.ifi.HardwareAddr, ifi.HardwareAddr)
		}
		r.log.Warn("l2: interface changed; closing its sockets", "reason", why)
		r.closed = r.closed || r.arpc != nil || r.ndpc != nil
		r.closeSockets()
		r.ifi = nil
	}
	if ifi == nil {
		r.err = err
		return
	}
	r.ifi = ifi
	var errs []error
	var v4, v6 []netip.Addr
	for _, v := range r.list() {
		if v.Is4() {
			v4 = append(v4, v)
		} else {
			v6 = append(v6, v)
		}
	}
	if len(v4) > 0 && r.arpc == nil {
		if err := r.openARP(); err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, r.announceAll(v4)...)
		}
	}
	if len(v6) > 0 && r.ndpc == nil {
		if err := r.openNDP(); err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, r.announceAll(v6)...)
		}
	}
	if r.ndpc != nil {
		for _, v := range v6 {
			if group, err := ndp.SolicitedNodeMulticast(v); err == nil {
				// Joining twice returns EADDRINUSE; harmless.
				_ = r.ndpc.JoinGroup(group)
			}
		}
	}
	r.err = errors.Join(errs...)
}

func (r *responder) announceAll(vips []netip.Addr) []error {
	var errs []error
	for _, v := range vips {
		if err := r.announce(v); err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", v, err))
		} else {
			r.log.Info("l2: VIP announced", "vip", v, "ifindex", r.ifi.Index)
		}
	}
	return errs
}

func (r *responder) noteOpen() {
	if r.closed {
		r.reopens++
		r.closed = false
	}
}

// openARP opens the ARP socket (the interface needs an IPv4 address of
// its own: it is the sender of our requests).
func (r *responder) openARP() error {
	c, err := arp.Dial(r.ifi)
	if err != nil {
		return fmt.Errorf("open ARP socket (the interface needs an IPv4 address): %w", err)
	}
	r.arpc = c
	r.noteOpen()
	r.wg.Add(1)
	go r.serveARP(c, r.ifi.HardwareAddr)
	return nil
}

func (r *responder) openNDP() error {
	// The zone of the link-local address is given as the ifindex, not the
	// name: Go caches zone name → index for up to a minute, so after the
	// interface was re-created the name would still bind the old, dead
	// ifindex ("no such device"). ndp uses the name only as that zone.
	ifi := *r.ifi
	ifi.Name = strconv.Itoa(ifi.Index)
	c, _, err := ndp.Listen(&ifi, ndp.LinkLocal)
	if err != nil {
		return fmt.Errorf("open NDP socket (the interface needs an IPv6 link-local address): %w", err)
	}
	r.ndpc = c
	r.noteOpen()
	r.wg.Add(1)
	go r.serveNDP(c, r.ifi.HardwareAddr)
	return nil
}

func (r *responder) owns(ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.vips[ip]
}

func (r *responder) list() []netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]netip.Addr, 0, len(r.vips))
	for ip := range r.vips {
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// set makes the owned VIPs vips, announcing the new ones on the sockets
// that are open, and opens the sockets the new VIPs need (which announces
// all of that family).
func (r *responder) set(_ context.Context, vips []netip.Addr) error {
	want := map[netip.Addr]bool{}
	for _, v := range vips {
		want[v.Unmap()] = true
	}
	var added []netip.Addr
	r.mu.Lock()
	for v := range want {
		if !r.vips[v] {
			added = append(added, v)
		}
	}
	r.vips = want
	r.mu.Unlock()
	hadARP, hadNDP := r.arpc != nil, r.ndpc != nil
	r.reconcile()
	var errs []error
	if r.err != nil {
		errs = append(errs, r.err)
	}
	for _, v := range added {
		// A socket opened by reconcile announced every VIP of its family.
		if (v.Is4() && hadARP && r.arpc != nil) || (v.Is6() && hadNDP && r.ndpc != nil) {
			errs = append(errs, r.announceAll([]netip.Addr{v})...)
		}
	}
	return errors.Join(errs...)
}

// announce sends a gratuitous ARP (an unsolicited reply with sender and
// target set to the VIP) or an unsolicited, overriding neighbor advertisement
// to all nodes.
func (r *responder) announce(v netip.Addr) error {
	if v.Is4() {
		p, err := arp.NewPacket(arp.OperationReply, r.ifi.HardwareAddr, v, ethernet.Broadcast, v)
		if err != nil {
			return err
		}
		return r.arpc.WriteTo(p, ethernet.Broadcast)
	}
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: v,
		Options: []ndp.Option{&ndp.LinkLayerAddress{
			Direction: ndp.Target, Addr: r.ifi.HardwareAddr,
		}},
	}
	return r.ndpc.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes())
}

func (r *responder) serveARP(c *arp.Client, mac net.HardwareAddr) {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		default:
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		p, _, err := c.Read()
		if err != nil {
			r.pauseAfter(err)
			continue // deadline or a malformed frame: keep serving
		}
		if p.Operation != arp.OperationRequest || !r.owns(p.TargetIP) {
			continue
		}
		if err := c.Reply(p, mac, p.TargetIP); err != nil {
			r.log.Warn("l2: ARP reply failed", "vip", p.TargetIP, "err", err)
		}
	}
}

func (r *responder) serveNDP(c *ndp.Conn, mac net.HardwareAddr) {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		default:
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		m, _, src, err := c.ReadFrom()
		if err != nil {
			r.pauseAfter(err)
			continue
		}
		ns, ok := m.(*ndp.NeighborSolicitation)
		if !ok || !r.owns(ns.TargetAddress) {
			continue
		}
		na := &ndp.NeighborAdvertisement{
			Solicited:     true,
			Override:      true,
			TargetAddress: ns.TargetAddress,
			Options: []ndp.Option{&ndp.LinkLayerAddress{
				Direction: ndp.Target, Addr: mac,
			}},
		}
		dst := src
		if !src.IsValid() || src.IsUnspecified() {
			// DAD probe: answer to all nodes (RFC 4861 7.2.4).
			dst = netip.IPv6LinkLocalAllNodes()
			na.Solicited = false
		}
		if err := c.WriteTo(na, nil, dst); err != nil {
			r.log.Warn("l2: neighbor advertisement failed", "vip", ns.TargetAddress, "err", err)
		}
	}
}

// pauseAfter slows the read loop down after an error that is not the read
// deadline (e.g. the interface went away), so a socket that fails at once
// on every read cannot spin a CPU.
func (r *responder) pauseAfter(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	select {
	case <-r.done:
	case <-time.After(100 * time.Millisecond):
	}
}

// closeSockets stops the serve goroutines and closes the sockets. The
// sockets are closed before the wait so that a blocked read returns at
// once rather than at its deadline (this runs on the link watcher).
func (r *responder) closeSockets() {
	close(r.done)
	if r.arpc != nil {
		_ = r.arpc.Close()
		r.arpc = nil
	}
	if r.ndpc != nil {
		_ = r.ndpc.Close()
		r.ndpc = nil
	}
	r.wg.Wait()
	r.done = make(chan struct{})
}

func (r *responder) close() { r.closeSockets() }
