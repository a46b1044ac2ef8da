package dataplane

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Interface churn. An attachment is a bpf_link on one ifindex. When the
// interface is deleted the kernel detaches the link (it stays open but
// reads ifindex 0), and an interface re-created under the same name gets a
// new ifindex that nothing is attached to. The link watcher follows
// netlink link and address events and reconciles: every interface Attach
// was asked for is attached, on its current ifindex, with the configured
// hook and mode; links (and their pins) of vanished or replaced ifindexes
// are released; if_addrs follows the new ifindexes. An interface that is
// missing (at start or later) is reported not attached, and attached as
// soon as it appears.

// DefaultLinkResync is the period of the full reconcile that backs up the
// netlink events (events are the fast path; this catches anything a lost
// subscription could have missed).
const DefaultLinkResync = 10 * time.Second

// linkAlive reports why a's link no longer serves a.ifindex (nil: it
// does). It asks the kernel through the link's own fd, so it works from
// any network namespace.
func linkAlive(a *attachment) error {
	if a.link == nil {
		return errors.New("not attached")
	}
	info, err := a.link.Info()
	if err != nil {
		return fmt.Errorf("read link info: %w", err)
	}
	var idx uint32
	if x := info.TCX(); x != nil {
		idx = x.Ifindex
	} else if x := info.XDP(); x != nil {
		idx = x.Ifindex
	} else {
		return errors.New("link is neither tcx nor xdp")
	}
	switch {
	case idx == 0:
		return errors.New("interface gone: the kernel detached the datapath")
	case int(idx) != a.ifindex:
		return fmt.Errorf("link is on ifindex %d, expected %d", idx, a.ifindex)
	}
	return nil
}

// ReconcileLinks brings every requested interface to "attached on its
// current ifindex" (or "missing") and rewrites if_addrs. WatchLinks calls
// it on every link or address event; it is safe to call at any time.
func (d *Dataplane) ReconcileLinks(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range d.links {
		d.reconcileOne(a)
	}
	return d.refreshIfAddrs(ctx)
}

// reconcileOne re-checks one attachment against the kernel. Called with mu
// held.
func (d *Dataplane) reconcileOne(a *attachment) {
	idx := 0
	nl, err := netlink.LinkByName(a.name)
	if err == nil {
		idx = nl.Attrs().Index
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		// Cannot tell (netlink error): change nothing, the next event or
		// resync retries.
		d.log.Warn("look up interface", "interface", a.name, "err", err)
		return
	}
	if a.link != nil && idx != 0 && idx == a.ifindex && linkAlive(a) == nil {
		a.err = nil
		if a.hook == HookXDP && a.tc == nil {
			// The XDP hook's tc companion failed to attach earlier: retry.
			d.attachCompanion(a)
		}
		return
	}
	if a.link != nil {
		// Interface deleted, renamed away, or replaced by another one
		// under the same name: release the old link and its pin (a pin
		// must never point at a dead ifindex).
		why := "interface gone"
		if idx != 0 {
			why = fmt.Sprintf("ifindex changed %d -> %d", a.ifindex, idx)
		}
		d.log.Warn("interface lost its datapath", "interface", a.name, "hook", a.hook, "reason", why)
		if err := d.release(a); err != nil {
			d.log.Warn("release stale link", "interface", a.name, "err", err)
		}
	}
	if idx == 0 {
		a.ifindex, a.err = 0, errInterfaceMissing
		return
	}
	if err := d.attach(a); err != nil {
		if !errors.Is(err, errInterfaceMissing) {
			d.log.Error("re-attach failed", "interface", a.name, "hook", a.hook, "err", err)
		}
		a.err = err
		return
	}
	a.err = nil
	d.log.Info("datapath attached", "interface", a.name, "hook", a.hook, "mode", a.mode, "ifindex", a.ifindex, "attaches", a.attaches)
}

// WatchLinks follows netlink link and address events of the network
// namespace of the calling thread and calls ReconcileLinks on each (events
// are coalesced), and every resync (DefaultLinkResync when ≤ 0) as a
// safety net, until ctx is done. A subscription that fails (e.g. its
// socket buffer overflowed and events were lost) is re-opened and followed
// by a full reconcile, so no change is missed.
//
// The reconciles run on the calling goroutine, locked to its thread: BPF
// link creation resolves the ifindex in the thread's network namespace.
//
// followers are called, in order, after each reconcile (on the same
// thread): other components that hold per-interface state (the L2
// announcer's sockets, the --plumb-vips link) follow the same events
// without a netlink subscription of their own.
func (d *Dataplane) WatchLinks(ctx context.Context, resync time.Duration, followers ...func(context.Context)) error {
	if resync <= 0 {
		resync = DefaultLinkResync
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return fmt.Errorf("link watcher: current network namespace: %w", err)
	}
	defer ns.Close()

	kick := make(chan struct{}, 1)
	trigger := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	subCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		follow(subCtx, d, "link", func(ch chan<- netlink.LinkUpdate, stop <-chan struct{}, cb func(error)) error {
			return netlink.LinkSubscribeWithOptions(ch, stop, netlink.LinkSubscribeOptions{
				Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: 1 << 20})
		}, trigger)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		follow(subCtx, d, "address", func(ch chan<- netlink.AddrUpdate, stop <-chan struct{}, cb func(error)) error {
			return netlink.AddrSubscribeWithOptions(ch, stop, netlink.AddrSubscribeOptions{
				Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: 1 << 20})
		}, trigger)
	}()
	defer func() {
		stop()
		<-done
		<-done
	}()

	t := time.NewTicker(resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-t.C:
		}
		if err := d.ReconcileLinks(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("reconcile interfaces", "err", err)
		}
		for _, f := range followers {
			f(ctx)
		}
	}
}

// follow keeps one netlink subscription open until ctx is done, calling
// trigger on every event, and after every (re)subscription (what happened
// while no subscription was open is found by the full reconcile).
func follow[T any](ctx context.Context, d *Dataplane, what string,
	subscribe func(ch chan<- T, stop <-chan struct{}, cb func(error)) error, trigger func()) {
	for ctx.Err() == nil {
		ch := make(chan T, 256)
		stop := make(chan struct{})
		failed := make(chan error, 1)
		cb := func(err error) {
			// Dump interruptions and stray messages leave the
			// subscription open; a re-list covers them. A receive error
			// (ENOBUFS: events were dropped) closes ch.
			d.log.Debug("netlink subscription", "kind", what, "err", err)
			select {
			case failed <- err:
			default:
			}
			trigger()
		}
		if err := subscribe(ch, stop, cb); err != nil {
			close(stop)
			d.log.Warn("netlink subscribe failed; retrying", "kind", what, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		trigger()
	events:
		for {
			select {
			case <-ctx.Done():
				break events
			case _, ok := <-ch:
				if !ok {
					err := errors.New("closed")
					select {
					case err = <-failed:
					default:
					}
					d.log.Warn("netlink subscription ended; re-subscribing and re-listing", "kind", what, "err", err)
					break events
				}
				trigger()
			}
		}
		close(stop)
		for range ch { // until the receiver goroutine has exited
		}
	}
}
