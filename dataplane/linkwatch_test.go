package dataplane

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Interface churn: an attached interface is deleted and re-created (new
// ifindex), renamed away and back, or does not exist when it is asked
// for. The link watcher must re-attach on the interface's current
// ifindex — checked through the kernel — drop pins of dead links, make
// if_addrs follow, and Interfaces() (readiness) must say "not attached"
// while the interface is missing. The watcher's safety resync is an hour,
// so everything here is driven by netlink events.
func TestLinkChurnTCX(t *testing.T) { testLinkChurn(t, HookTCX) }
func TestLinkChurnXDP(t *testing.T) { testLinkChurn(t, HookXDP) }

func testLinkChurn(t *testing.T, hook Hook) {
	veth, peer := inTestNetns(t)
	cfg := smallConfig()
	cfg.Hook = hook
	cfg.PinPath = bpffsDir(t)
	d := newDP(t, cfg)
	ctx := t.Context()
	addAddr(t, veth, "10.77.0.1/24")
	if err := d.Attach(ctx, veth); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	startWatcher(t, d)
	pin := d.linkPinPath(veth, hook)
	idx0 := ifindexOf(t, veth)
	requireKernelAttached(t, d, hook, veth)

	// 1. Delete and re-create under the same name and address.
	delLink(t, veth)
	st := waitState(t, d, veth, func(s AttachState) bool { return !s.Attached })
	if st.Ifindex != 0 || !strings.Contains(st.Error, "not found") {
		t.Errorf("while missing: %+v, want ifindex 0 and a 'not found' error", st)
	}
	waitNoFile(t, pin)
	addVethPair(t, veth, peer)
	addAddr(t, veth, "10.77.0.1/24")
	idx1 := ifindexOf(t, veth)
	if idx1 == idx0 {
		t.Fatalf("re-created %s kept ifindex %d; the test needs a new one", veth, idx0)
	}
	st = waitState(t, d, veth, func(s AttachState) bool { return s.Attached && s.Ifindex == idx1 })
	if st.Reattaches != 1 || st.Error != "" {
		t.Errorf("after re-creation: %+v, want 1 re-attach and no error", st)
	}
	requireKernelAttached(t, d, hook, veth)
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("link pin after re-attach: %v", err)
	}
	// if_addrs follows the new ifindex (the address arrives after the
	// link: an address event must trigger the refresh).
	netlinkPoll(t, func() error {
		var ia xlbIfAddr
		if err := d.objs.IfAddrs.Lookup(uint32(idx1), &ia); err != nil {
			return err
		}
		if ia.V4 != addrToBE(netip.MustParseAddr("10.77.0.1"))[0] {
			return errors.New("if_addrs of the new ifindex does not hold 10.77.0.1")
		}
		if err := d.objs.IfAddrs.Lookup(uint32(idx0), &ia); err != nil || ia != (xlbIfAddr{}) {
			return errors.New("if_addrs of the vanished ifindex is not cleared")
		}
		return nil
	})

	// 2. Renamed away: the datapath leaves it (it is no longer the
	// configured interface); renamed back: attached again.
	other := veth + "r"
	renameLink(t, veth, other)
	waitState(t, d, veth, func(s AttachState) bool { return !s.Attached })
	if kernelAttached(t, d, hook, other) {
		t.Errorf("the datapath stayed on %s after it was renamed to %s", veth, other)
	}
	renameLink(t, other, veth)
	waitState(t, d, veth, func(s AttachState) bool { return s.Attached && s.Reattaches == 2 })
	requireKernelAttached(t, d, hook, veth)

	// 3. Asked for before it exists: not attached, then attached as soon as
	// it appears.
	late, latePeer := veth+"l", peer+"l"
	if err := d.Attach(ctx, late); err == nil {
		t.Fatalf("Attach of missing %s: want an error", late)
	}
	if st := stateOf(d, late); st.Attached || st.Mode == "" {
		t.Errorf("missing interface state %+v: want not attached, with the configured mode", st)
	}
	addVethPair(t, late, latePeer)
	waitState(t, d, late, func(s AttachState) bool { return s.Attached && s.Reattaches == 0 })
	requireKernelAttached(t, d, hook, late)
}

// startWatcher runs WatchLinks on a thread in the test's namespace.
func startWatcher(t *testing.T, d *Dataplane) {
	t.Helper()
	ns, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, moved into the test namespace, ends
		// with the goroutine.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		done <- d.WatchLinks(ctx, time.Hour)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchLinks: %v", err)
		}
		ns.Close()
	})
}

func stateOf(d *Dataplane, name string) AttachState {
	for _, s := range d.Interfaces() {
		if s.Name == name {
			return s
		}
	}
	return AttachState{}
}

func waitState(t *testing.T, d *Dataplane, name string, ok func(AttachState) bool) AttachState {
	t.Helper()
	var st AttachState
	netlinkPoll(t, func() error {
		st = stateOf(d, name)
		if !ok(st) {
			return errors.New("state of " + name + " not reached")
		}
		return nil
	})
	return st
}

// netlinkPoll polls fn every 10 ms for up to 10 s (a generous deadline,
// not a timing assertion).
func netlinkPoll(t *testing.T, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitNoFile(t *testing.T, path string) {
	t.Helper()
	netlinkPoll(t, func() error {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			return errors.New("pin " + filepath.Base(path) + " of the vanished interface still exists")
		}
		return nil
	})
}

func ifindexOf(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// kernelAttached asks the kernel whether our program is on name's hook.
func kernelAttached(t *testing.T, d *Dataplane, hook Hook, name string) bool {
	t.Helper()
	if hook == HookXDP {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		x := l.Attrs().Xdp
		return x != nil && x.Attached && x.ProgId == uint32(progID(t, d.objs.XlbXdp))
	}
	return slices.Contains(tcxPrograms(t, name), progID(t, d.objs.XlbTc))
}

func requireKernelAttached(t *testing.T, d *Dataplane, hook Hook, name string) {
	t.Helper()
	if !kernelAttached(t, d, hook, name) {
		t.Fatalf("the kernel does not show our %s program on %s (ifindex %d)", hook, name, ifindexOf(t, name))
	}
}

func addVethPair(t *testing.T, a, b string) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{a, b} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
}

func delLink(t *testing.T, name string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(l); err != nil {
		t.Fatal(err)
	}
}

func renameLink(t *testing.T, from, to string) {
	t.Helper()
	l, err := netlink.LinkByName(from)
	if err != nil {
		t.Fatal(err)
	}
	// A link must be down to be renamed.
	if err := netlink.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetName(l, to); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

func addAddr(t *testing.T, name, cidr string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
}
