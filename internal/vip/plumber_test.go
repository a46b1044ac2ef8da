package vip

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testHandle returns a netlink handle inside a fresh namespace.
func testHandle(t *testing.T) (*netlink.Handle, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	name := "xv" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	// Local delivery goes through lo, which is down in a fresh namespace.
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h, name
}

func TestSetReconcileRemove(t *testing.T) {
	h, ns := testHandle(t)
	ctx := context.Background()
	p := New(h, "")
	a := netip.MustParseAddr("198.51.100.7")
	b := netip.MustParseAddr("2001:db8:7::7")
	c := netip.MustParseAddr("198.51.100.8")
	if err := p.Set(ctx, []netip.Addr{a, b}); err != nil {
		t.Fatal(err)
	}
	got, err := p.Addresses()
	if err != nil || !slices.Equal(got, []netip.Addr{a, b}) {
		t.Fatalf("after Set: %v %v", got, err)
	}
	// The host accepts traffic for the VIP: it answers ping inside the ns.
	if out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", a.String()).CombinedOutput(); err != nil {
		t.Fatalf("ping VIP: %v\n%s", err, out)
	}

	// A crash leaves addresses behind; a new Plumber (the restarted daemon)
	// reconciles to the desired set.
	p2 := New(h, "")
	if err := p2.Set(ctx, []netip.Addr{c}); err != nil {
		t.Fatal(err)
	}
	got, _ = p2.Addresses()
	if !slices.Equal(got, []netip.Addr{c}) {
		t.Fatalf("after reconcile: %v, want [%s]", got, c)
	}
	// Idempotent.
	if err := p2.Set(ctx, []netip.Addr{c}); err != nil {
		t.Fatal(err)
	}
	if err := p2.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ = p2.Addresses()
	if len(got) != 0 {
		t.Fatalf("after Remove: %v", got)
	}
	if _, err := h.LinkByName(DefaultLink); err == nil {
		t.Fatal("link still present after Remove")
	}
}

func TestOtherInterfacesUntouched(t *testing.T) {
	h, ns := testHandle(t)
	// An address on lo that is not ours must survive any reconcile.
	if out, err := exec.Command("ip", "-n", ns, "addr", "add", "192.0.2.1/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	p := New(h, "")
	if err := p.Set(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ip", "-n", ns, "addr", "show", "dev", "lo").CombinedOutput()
	if !strings.Contains(string(out), "192.0.2.1") {
		t.Fatalf("foreign address removed from lo:\n%s", out)
	}
}

// TestReconcileRecreatesDeletedLink: someone deletes the VIP link; the
// Reconcile xlbd runs on the link event re-creates it with the VIPs of the
// last Set. Before the first Set and after Remove it creates nothing.
func TestReconcileRecreatesDeletedLink(t *testing.T) {
	h, _ := testHandle(t)
	ctx := context.Background()
	p := New(h, "")
	if err := p.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(DefaultLink); err == nil {
		t.Fatal("Reconcile before any Set created the link")
	}
	vips := []netip.Addr{netip.MustParseAddr("198.51.100.9"), netip.MustParseAddr("2001:db8:9::9")}
	if err := p.Set(ctx, vips); err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName(DefaultLink)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if err := p.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := p.Addresses(); err != nil || !slices.Equal(got, vips) {
		t.Fatalf("after delete + Reconcile: %v %v, want %v", got, err, vips)
	}
	if err := p.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(DefaultLink); err == nil {
		t.Fatal("Reconcile after Remove re-created the link")
	}
}
