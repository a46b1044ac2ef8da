package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attachment is one interface this Dataplane attached (or adopted from a
// pin).
type attachment struct {
	name    string
	hook    Hook
	mode    string // tcx | xdp-native | xdp-generic
	ifindex int
	link    link.Link
	err     error
	// attaches counts successful attachments of this interface by this
	// process; every one after the first is a re-attach (the interface
	// came back, changed index, or an earlier attempt failed).
	attaches uint64
	// tc is the XDP hook's tc companion (xlb_tc_xdp at tcx ingress of the
	// same interface): XDP cannot resolve a neighbour, so it hands such
	// packets, untranslated and marked, to this program, which sends them
	// with bpf_redirect_neigh (bpf/README.md, "Forwarding after a rewrite").
	// nil for tcx, or when it could not be attached (logged).
	tc link.Link
}

// hookXDPTC names the pin of an XDP attachment's tc companion
// (<ifname>-xdptc next to <ifname>-xdp).
const hookXDPTC Hook = "xdptc"

func (d *Dataplane) linkPinPath(ifname string, hook Hook) string {
	return filepath.Join(d.cfg.PinPath, "links", ifname+"-"+string(hook))
}

func (d *Dataplane) program(hook Hook) *ebpf.Program {
	if hook == HookXDP {
		return d.objs.XlbXdp
	}
	return d.objs.XlbTc
}

// Attach attaches the datapath to ifname with the configured hook. It is
// idempotent.
//
// tcx: ingress, at the head of the interface's tcx chain, so xlb sees
// packets to VIPs before a CNI's programs could route or drop them
// (traffic that is not for a VIP is handed on to the next program).
// Other programs on the interface are never touched.
// xdp: native mode unless Config.XDPGeneric; XDP takes the interface alone
// (an interface that already has an XDP program makes Attach fail).
func (d *Dataplane) Attach(ctx context.Context, ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	hook := d.cfg.Hook
	old := d.links[ifname]
	if old != nil && old.hook == hook {
		// Already asked for: make sure it is still real (the interface
		// may have been deleted and re-created since), re-attaching if not.
		d.reconcileOne(old)
		if err := d.refreshIfAddrs(ctx); err != nil {
			d.log.Warn("refresh interface addresses", "err", err)
		}
		if old.link == nil {
			return fmt.Errorf("attach %s to %s: %w", hook, ifname, old.err)
		}
		// reconcileOne also retried a missing tc companion (adopted from
		// a version without it, or its attach failed before).
		return nil
	}
	a := &attachment{name: ifname, hook: hook}
	if old != nil {
		a.attaches = old.attaches
	}
	err := d.attach(a)
	if err != nil {
		a.err = err
		if old == nil || old.link == nil {
			d.links[ifname] = a
		}
		return fmt.Errorf("attach %s to %s: %w", hook, ifname, err)
	}
	if old != nil && old.link != nil {
		// Hook change: the new hook is live, now drop the old one.
		if err := d.release(old); err != nil {
			d.log.Warn("detach previous hook", "interface", ifname, "hook", old.hook, "err", err)
		}
	}
	d.links[ifname] = a
	if err := d.refreshIfAddrs(ctx); err != nil {
		d.log.Warn("refresh interface addresses", "err", err)
	}
	return nil
}

// errInterfaceMissing is the attach error of an interface that does not
// exist (yet, or any more); the link watcher attaches it when it appears.
var errInterfaceMissing = errors.New("interface not found; waiting for it to appear")

func (d *Dataplane) attach(a *attachment) error {
	// The mode is known before the interface is: status and metrics name
	// the mode an interface will get even while it is missing.
	flags := link.XDPDriverMode
	switch {
	case a.hook == HookXDP && d.cfg.XDPGeneric:
		flags, a.mode = link.XDPGenericMode, "xdp-generic"
	case a.hook == HookXDP:
		a.mode = "xdp-native"
	default:
		a.mode = "tcx"
	}
	nl, err := netlink.LinkByName(a.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			a.ifindex = 0
			return errInterfaceMissing
		}
		return fmt.Errorf("find interface: %w", err)
	}
	a.ifindex = nl.Attrs().Index
	var l link.Link
	switch a.hook {
	case HookXDP:
		l, err = link.AttachXDP(link.XDPOptions{Program: d.objs.XlbXdp, Interface: a.ifindex, Flags: flags})
	default:
		l, err = link.AttachTCX(link.TCXOptions{Program: d.objs.XlbTc, Interface: a.ifindex, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
	}
	if err != nil {
		return err
	}
	if err := d.pinLink(l, a.name, a.hook); err != nil {
		l.Close()
		return err
	}
	a.link = l
	a.attaches++
	if a.hook == HookXDP {
		d.attachCompanion(a)
	}
	return nil
}

// pinLink pins l as the link of hook on ifname (when pinning is on).
func (d *Dataplane) pinLink(l link.Link, ifname string, hook Hook) error {
	if d.cfg.PinPath == "" {
		return nil
	}
	path := d.linkPinPath(ifname, hook)
	// A pin left by an interface that was deleted and re-created is
	// stale: replace it.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale link pin: %w", err)
	}
	if err := l.Pin(path); err != nil {
		return fmt.Errorf("pin link: %w", err)
	}
	return nil
}

// attachCompanion attaches the XDP attachment a's tc companion. A failure
// is logged, not returned: XDP works without it except for packets toward
// a neighbour not yet resolved (they are passed untranslated and retried).
func (d *Dataplane) attachCompanion(a *attachment) {
	l, err := link.AttachTCX(link.TCXOptions{Program: d.objs.XlbTcXdp, Interface: a.ifindex, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
	if err == nil {
		if err = d.pinLink(l, a.name, hookXDPTC); err != nil {
			l.Close()
		}
	}
	if err != nil {
		d.log.Warn("attach the XDP hook's tc companion (packets toward unresolved neighbours will be retried by their senders)",
			"interface", a.name, "err", err)
		return
	}
	a.tc = l
}

// Detach removes the datapath from ifname (only xlb's own link; other
// programs stay). Detaching an interface that is not attached is a no-op.
func (d *Dataplane) Detach(ctx context.Context, ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.links[ifname]
	if a == nil {
		return nil
	}
	delete(d.links, ifname)
	return d.release(a)
}

func (d *Dataplane) release(a *attachment) error {
	var errs []error
	if a.tc != nil {
		errs = append(errs, d.releaseLink(a.tc, a.name, hookXDPTC))
		a.tc = nil
	}
	if a.link != nil {
		errs = append(errs, d.releaseLink(a.link, a.name, a.hook))
		a.link = nil
	}
	return errors.Join(errs...)
}

// releaseLink detaches, unpins and closes one link of hook on ifname.
func (d *Dataplane) releaseLink(l link.Link, ifname string, hook Hook) error {
	var errs []error
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, unix.ENOLINK) {
		errs = append(errs, fmt.Errorf("detach %s from %s: %w", hook, ifname, err))
	}
	if d.cfg.PinPath != "" {
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s link of %s: %w", hook, ifname, err))
		}
	}
	errs = append(errs, l.Close())
	return errors.Join(errs...)
}

// Interfaces reports the attach state of every interface Attach was asked
// for (or that was adopted from a pin), sorted by name.
func (d *Dataplane) Interfaces() []AttachState {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]AttachState, 0, len(d.links))
	for _, a := range d.links {
		s := AttachState{Name: a.name, Attached: a.link != nil, Mode: a.mode, Ifindex: a.ifindex}
		if a.attaches > 1 {
			s.Reattaches = a.attaches - 1
		}
		if a.err != nil {
			s.Error = a.err.Error()
		}
		// Ask the kernel rather than trust our bookkeeping: when an
		// interface is deleted the kernel detaches the link (it reads
		// ifindex 0) before the link watcher has heard of it.
		if s.Attached {
			if err := linkAlive(a); err != nil {
				s.Attached, s.Error = false, err.Error()
			}
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b AttachState) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// adoptLinks re-opens links pinned by a previous process and swaps the new
// program into them (link.Update), so traffic never stops across a restart.
// Pins whose interface vanished or changed index are removed.
func (d *Dataplane) adoptLinks(ctx context.Context) error {
	if d.cfg.PinPath == "" {
		return nil
	}
	dir := filepath.Join(d.cfg.PinPath, "links")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read link pins: %w", err)
	}
	var companions []string
	for _, e := range entries {
		i := strings.LastIndexByte(e.Name(), '-')
		if i <= 0 {
			continue
		}
		ifname, hook := e.Name()[:i], Hook(e.Name()[i+1:])
		if hook == hookXDPTC {
			companions = append(companions, ifname)
			continue
		}
		if hook != HookTCX && hook != HookXDP {
			continue
		}
		path := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			d.log.Warn("dropping unreadable link pin", "path", path, "err", err)
			os.Remove(path)
			continue
		}
		a := &attachment{name: ifname, hook: hook, link: l, mode: "tcx", attaches: 1}
		if err := d.checkAdopted(a); err != nil {
			d.log.Warn("dropping stale link pin", "path", path, "err", err)
			l.Unpin()
			l.Close()
			continue
		}
		if err := l.Update(d.program(hook)); err != nil {
			d.log.Warn("cannot update pinned link; re-attaching", "path", path, "err", err)
			l.Unpin()
			l.Close()
			continue
		}
		if prev := d.links[ifname]; prev != nil {
			// Two hooks pinned on one interface (an interrupted hook
			// switch): keep the configured one.
			if prev.hook == d.cfg.Hook {
				d.release(a)
				continue
			}
			d.release(prev)
		}
		d.links[ifname] = a
		d.log.Info("adopted pinned link", "interface", ifname, "hook", hook)
	}
	for _, ifname := range companions {
		d.adoptCompanion(ifname)
	}
	return d.refreshIfAddrs(ctx)
}

// adoptCompanion re-opens the pinned tc companion of ifname's XDP link and
// swaps the new program into it; a companion without its XDP link, or on
// another interface, is removed (Attach makes a new one).
func (d *Dataplane) adoptCompanion(ifname string) {
	path := d.linkPinPath(ifname, hookXDPTC)
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		d.log.Warn("dropping unreadable link pin", "path", path, "err", err)
		os.Remove(path)
		return
	}
	a := d.links[ifname]
	err = errors.New("no XDP link on the interface")
	if a != nil && a.hook == HookXDP && a.tc == nil {
		err = nil
		info, ierr := l.Info()
		switch {
		case ierr != nil:
			err = ierr
		case info.TCX() == nil:
			err = errors.New("pinned link is not a tcx link")
		case int(info.TCX().Ifindex) != a.ifindex:
			err = fmt.Errorf("link is on ifindex %d, %s is %d", info.TCX().Ifindex, ifname, a.ifindex)
		default:
			err = l.Update(d.objs.XlbTcXdp)
		}
	}
	if err != nil {
		d.log.Warn("dropping stale link pin", "path", path, "err", err)
		if derr := d.releaseLink(l, ifname, hookXDPTC); derr != nil {
			d.log.Warn("release stale companion link", "path", path, "err", derr)
		}
		return
	}
	a.tc = l
	d.log.Info("adopted pinned link", "interface", ifname, "hook", hookXDPTC)
}

func (d *Dataplane) checkAdopted(a *attachment) error {
	info, err := a.link.Info()
	if err != nil {
		return err
	}
	var idx uint32
	switch a.hook {
	case HookXDP:
		x := info.XDP()
		if x == nil {
			return errors.New("pinned link is not an XDP link")
		}
		idx = x.Ifindex
	default:
		x := info.TCX()
		if x == nil {
			return errors.New("pinned link is not a tcx link")
		}
		idx = x.Ifindex
	}
	nl, err := netlink.LinkByName(a.name)
	if err != nil {
		return fmt.Errorf("interface %s: %w", a.name, err)
	}
	if int(idx) != nl.Attrs().Index {
		return fmt.Errorf("link is on ifindex %d, %s is now %d", idx, a.name, nl.Attrs().Index)
	}
	a.ifindex = int(idx)
	if a.hook == HookXDP {
		a.mode = "xdp-native"
		if x := nl.Attrs().Xdp; x != nil && x.AttachMode == 2 { // XDP_ATTACHED_SKB
			a.mode = "xdp-generic"
		}
	}
	return nil
}

func (d *Dataplane) detachUnlisted(ctx context.Context) {
	d.mu.Lock()
	var stale []string
	for name := range d.links {
		if !slices.Contains(d.cfg.Interfaces, name) {
			stale = append(stale, name)
		}
	}
	d.mu.Unlock()
	for _, name := range stale {
		d.log.Info("detaching interface no longer configured", "interface", name)
		if err := d.Detach(ctx, name); err != nil {
			d.log.Warn("detach", "interface", name, "err", err)
		}
	}
}

// RefreshInterfaceAddrs rewrites if_addrs (ifindex → IPv4/IPv6 source
// address for onearm SNAT) from the interfaces' current addresses. Every
// interface is covered, not only attached ones, because onearm uses the
// address of the interface facing the backend. It writes only changes.
// RunReaper calls it on every pass.
func (d *Dataplane) RefreshInterfaceAddrs(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.refreshIfAddrs(ctx)
}

func (d *Dataplane) refreshIfAddrs(ctx context.Context) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	vips := map[netip.Addr]bool{}
	for k := range d.vipCount {
		vips[beToAddr(k.Addr, k.Family)] = true
	}
	// One dump of every address, not one per interface: the link watcher
	// calls this on every link or address event, and a Kubernetes node
	// has an interface per pod.
	all, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	byIndex := map[int][]netlink.Addr{}
	for _, a := range all {
		byIndex[a.LinkIndex] = append(byIndex[a.LinkIndex], a)
	}
	want := map[uint32]xlbIfAddr{}
	limit := d.objs.IfAddrs.MaxEntries()
	for _, l := range links {
		idx := uint32(l.Attrs().Index)
		if idx == 0 || idx >= limit {
			continue
		}
		addrs := byIndex[l.Attrs().Index]
		var v xlbIfAddr
		var have4, have6 bool
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			// VIPs may sit on the same interface: never SNAT to one.
			if vips[ip] || ip.IsLinkLocalUnicast() || ip.IsLoopback() {
				continue
			}
			if a.Flags&(unix.IFA_F_SECONDARY|unix.IFA_F_TENTATIVE|unix.IFA_F_DEPRECATED|unix.IFA_F_DADFAILED) != 0 {
				continue
			}
			if ip.Is4() && !have4 {
				v.V4 = addrToBE(ip)[0]
				have4 = true
			} else if ip.Is6() && !have6 {
				v.V6 = addrToBE(ip)
				have6 = true
			}
		}
		if have4 || have6 {
			want[idx] = v
		}
	}
	for idx, v := range want {
		if cur, ok := d.ifAddrs[idx]; ok && cur == v {
			continue
		}
		if err := d.objs.IfAddrs.Update(idx, v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write if_addrs[%d]: %w", idx, err)
		}
		d.ifAddrs[idx] = v
	}
	for idx := range d.ifAddrs {
		if _, ok := want[idx]; !ok {
			if err := d.objs.IfAddrs.Update(idx, xlbIfAddr{}, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("clear if_addrs[%d]: %w", idx, err)
			}
			delete(d.ifAddrs, idx)
		}
	}
	return ctx.Err()
}
