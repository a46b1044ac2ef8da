// Package vip puts VIP addresses on the host where the host itself must
// accept traffic for them (ICMP echo to the VIP, local health probes, the
// kernel answering for the VIP when no service port matches).
//
// All addresses live on one interface that xlbd owns (default "xlb0", like
// kube-proxy's kube-ipvs0), so reconciling after a crash is exact: whatever
// is on that interface and not desired is removed, and nothing on any other
// interface is ever touched. The interface is a dummy link where the kernel
// has the dummy driver, otherwise a port-less bridge (equivalent for local
// addresses).
//
// Addresses added here are local addresses: with the default arp_ignore=0
// the kernel answers ARP for them on every interface. On a shared L2 segment
// with several load balancers set net.ipv4.conf.all.arp_ignore=1 and
// arp_announce=2 (as kube-proxy's IPVS mode requires); see docs/announce.md.
package vip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultLink is the interface xlbd creates for its VIPs.
const DefaultLink = "xlb0"

// Plumber reconciles the VIP addresses on its interface.
type Plumber struct {
	h    *netlink.Handle
	name string

	mu   sync.Mutex
	want []netip.Addr // the last Set; nil before the first or after Remove
	set  bool
}

// New returns a Plumber using handle h (nil = the current network
// namespace) and the interface name (empty = DefaultLink).
func New(h *netlink.Handle, name string) *Plumber {
	if h == nil {
		h = &netlink.Handle{}
	}
	if name == "" {
		name = DefaultLink
	}
	return &Plumber{h: h, name: name}
}

// link returns the interface, creating it when absent.
func (p *Plumber) link() (netlink.Link, error) {
	l, err := p.h.LinkByName(p.name)
	if err == nil {
		return l, nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return nil, fmt.Errorf("look up %s: %w", p.name, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = p.name
	if err := p.h.LinkAdd(&netlink.Dummy{LinkAttrs: attrs}); err != nil {
		// No dummy driver (seen on some kernels): a bridge without ports
		// accepts local addresses just the same.
		if err2 := p.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err2 != nil {
			return nil, fmt.Errorf("create %s (dummy: %v): %w", p.name, err, err2)
		}
	}
	l, err = p.h.LinkByName(p.name)
	if err != nil {
		return nil, fmt.Errorf("look up %s after creating it: %w", p.name, err)
	}
	if err := p.h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", p.name, err)
	}
	return l, nil
}

// Set makes the addresses on the interface exactly vips (as /32 and /128).
// It is also the reconcile on start: leftovers of a crashed run are removed.
func (p *Plumber) Set(_ context.Context, vips []netip.Addr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.want, p.set = slices.Clone(vips), true
	return p.sync(vips)
}

// Reconcile re-applies the last Set: when someone deleted the interface
// (or an address on it) the interface is re-created and the VIPs re-added.
// xlbd calls it on every netlink link or address event, so a deleted xlb0
// comes back at once rather than with the next service change. Nothing
// happens before the first Set or after Remove.
func (p *Plumber) Reconcile(_ context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.set {
		return nil
	}
	return p.sync(p.want)
}

// sync makes the interface exist and carry exactly vips. Called with mu
// held.
func (p *Plumber) sync(vips []netip.Addr) error {
	l, err := p.link()
	if err != nil {
		return fmt.Errorf("vip plumbing: %w", err)
	}
	want := map[netip.Addr]bool{}
	for _, v := range vips {
		want[v.Unmap()] = true
	}
	have, err := p.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("vip plumbing: list addresses of %s: %w", p.name, err)
	}
	var errs []error
	present := map[netip.Addr]bool{}
	for _, a := range have {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() {
			continue // the kernel's own IPv6 link-local address
		}
		if want[ip] {
			present[ip] = true
			continue
		}
		if err := p.h.AddrDel(l, &a); err != nil {
			errs = append(errs, fmt.Errorf("remove %s from %s: %w", ip, p.name, err))
		}
	}
	for ip := range want {
		if present[ip] {
			continue
		}
		bits := 32
		if ip.Is6() {
			bits = 128
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
		if ip.Is6() {
			addr.Flags = unix.IFA_F_NODAD // usable at once; a VIP is not auto-configured
		}
		if err := p.h.AddrAdd(l, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("add %s to %s: %w", ip, p.name, err))
		}
	}
	return errors.Join(errs...)
}

// Addresses returns the VIPs on the interface (none when it does not exist).
func (p *Plumber) Addresses() ([]netip.Addr, error) {
	l, err := p.h.LinkByName(p.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, err
	}
	have, err := p.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range have {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLinkLocalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out, nil
}

// Remove deletes the interface and with it every VIP (clean shutdown).
func (p *Plumber) Remove(_ context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.want, p.set = nil, false
	l, err := p.h.LinkByName(p.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("vip plumbing: look up %s: %w", p.name, err)
	}
	if err := p.h.LinkDel(l); err != nil {
		return fmt.Errorf("vip plumbing: delete %s: %w", p.name, err)
	}
	return nil
}
