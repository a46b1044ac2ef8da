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
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// Announcer answers ARP/NDP for VIPs on interfaces. Safe for concurrent use.
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
// being answered (neighbors' caches age out).
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
			var err error
			r, err = newResponder(name, a.log)
			if err != nil {
				errs = append(errs, fmt.Errorf("l2: interface %s: %w", name, err))
				continue
			}
			a.ifaces[name] = r
		}
		if err := r.set(ctx, vips); err != nil {
			errs = append(errs, fmt.Errorf("l2: interface %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
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

// responder serves one interface.
type responder struct {
	ifi *net.Interface
	log *slog.Logger

	arpc *arp.Client // nil when the interface has no IPv4 address
	ndpc *ndp.Conn   // nil when the interface has no usable IPv6 link-local address

	mu   sync.Mutex
	vips map[netip.Addr]bool
	done chan struct{}
	wg   sync.WaitGroup
}

func newResponder(name string, log *slog.Logger) (*responder, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	r := &responder{ifi: ifi, log: log.With("interface", name), vips: map[netip.Addr]bool{}, done: make(chan struct{})}
	return r, nil
}

// ensureARP opens the ARP socket on first use (the interface needs an IPv4
// address of its own: it is the sender of our requests).
func (r *responder) ensureARP() error {
	if r.arpc != nil {
		return nil
	}
	c, err := arp.Dial(r.ifi)
	if err != nil {
		return fmt.Errorf("open ARP socket (the interface needs an IPv4 address): %w", err)
	}
	r.arpc = c
	r.wg.Add(1)
	go r.serveARP()
	return nil
}

func (r *responder) ensureNDP() error {
	if r.ndpc != nil {
		return nil
	}
	c, _, err := ndp.Listen(r.ifi, ndp.LinkLocal)
	if err != nil {
		return fmt.Errorf("open NDP socket (the interface needs an IPv6 link-local address): %w", err)
	}
	r.ndpc = c
	r.wg.Add(1)
	go r.serveNDP()
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

func (r *responder) set(_ context.Context, vips []netip.Addr) error {
	want := map[netip.Addr]bool{}
	for _, v := range vips {
		want[v.Unmap()] = true
	}
	var errs []error
	var added []netip.Addr
	for v := range want {
		if v.Is4() {
			if err := r.ensureARP(); err != nil {
				errs = append(errs, err)
				delete(want, v)
				continue
			}
		} else {
			if err := r.ensureNDP(); err != nil {
				errs = append(errs, err)
				delete(want, v)
				continue
			}
			group, err := ndp.SolicitedNodeMulticast(v)
			if err == nil {
				// Joining twice returns EADDRINUSE; harmless.
				_ = r.ndpc.JoinGroup(group)
			}
		}
	}
	r.mu.Lock()
	for v := range want {
		if !r.vips[v] {
			added = append(added, v)
		}
	}
	r.vips = want
	r.mu.Unlock()
	for _, v := range added {
		if err := r.announce(v); err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", v, err))
		} else {
			r.log.Info("l2: VIP announced", "vip", v)
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

func (r *responder) serveARP() {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		default:
		}
		_ = r.arpc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		p, _, err := r.arpc.Read()
		if err != nil {
			r.pauseAfter(err)
			continue // deadline or a malformed frame: keep serving
		}
		if p.Operation != arp.OperationRequest || !r.owns(p.TargetIP) {
			continue
		}
		if err := r.arpc.Reply(p, r.ifi.HardwareAddr, p.TargetIP); err != nil {
			r.log.Warn("l2: ARP reply failed", "vip", p.TargetIP, "err", err)
		}
	}
}

func (r *responder) serveNDP() {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		default:
		}
		_ = r.ndpc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		m, _, src, err := r.ndpc.ReadFrom()
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
				Direction: ndp.Target, Addr: r.ifi.HardwareAddr,
			}},
		}
		dst := src
		if !src.IsValid() || src.IsUnspecified() {
			// DAD probe: answer to all nodes (RFC 4861 7.2.4).
			dst = netip.IPv6LinkLocalAllNodes()
			na.Solicited = false
		}
		if err := r.ndpc.WriteTo(na, nil, dst); err != nil {
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

func (r *responder) close() {
	close(r.done)
	r.wg.Wait()
	if r.arpc != nil {
		_ = r.arpc.Close()
	}
	if r.ndpc != nil {
		_ = r.ndpc.Close()
	}
}
