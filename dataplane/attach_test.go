package dataplane

import (
	"net/netip"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inTestNetns locks the test goroutine to its thread, moves the thread into
// a fresh network namespace holding a veth pair, and returns the pair's
// names. Everything is undone in Cleanup (the namespace, and with it the
// veths, vanishes when its last reference is closed).
func inTestNetns(t *testing.T) (string, string) {
	t.Helper()
	requireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netns.Set(orig)
		ns.Close()
		orig.Close()
		runtime.UnlockOSThread()
	})
	p := prefix(t)
	a, b := p+"a", p+"b"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}
	if err := netlink.LinkAdd(veth); err != nil {
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
	return a, b
}

func tcxPrograms(t *testing.T, ifname string) []ebpf.ProgramID {
	t.Helper()
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func TestAttachTCXCoexists(t *testing.T) {
	veth, _ := inTestNetns(t)
	// Someone else's tcx program, attached first.
	other, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	nl, _ := netlink.LinkByName(veth)
	ol, err := link.AttachTCX(link.TCXOptions{Program: other, Interface: nl.Attrs().Index, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatal(err)
	}
	defer ol.Close()

	cfg := smallConfig()
	cfg.PinPath = bpffsDir(t)
	d := newDP(t, cfg)
	ctx := t.Context()
	if err := d.Attach(ctx, veth); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if err := d.Attach(ctx, veth); err != nil {
		t.Fatalf("second Attach is not idempotent: %v", err)
	}
	ids := tcxPrograms(t, veth)
	ours := progID(t, d.objs.XlbTc)
	if len(ids) != 2 || ids[0] != ours || ids[1] != progID(t, other) {
		t.Fatalf("tcx chain = %v, want [ours %d, other]", ids, ours)
	}
	st := d.Interfaces()
	if len(st) != 1 || !st[0].Attached || st[0].Mode != "tcx" || st[0].Name != veth {
		t.Errorf("Interfaces = %+v", st)
	}
	if err := d.Attach(ctx, "xtnosuchif"); err == nil {
		t.Error("Attach of a missing interface: want error")
	}

	// Restart: the pinned link is adopted and its program replaced, with
	// no moment where the interface lacks xlb.
	d.Close()
	d2 := newDP(t, cfg)
	t.Cleanup(func() { d2.Destroy(ctx) })
	ids = tcxPrograms(t, veth)
	if len(ids) != 2 || ids[0] != progID(t, d2.objs.XlbTc) {
		t.Fatalf("after restart tcx chain = %v, want the new program first", ids)
	}
	if st := d2.Interfaces(); len(st) != 1 || !st[0].Attached {
		t.Errorf("adopted Interfaces = %+v", st)
	}

	if err := d2.Detach(ctx, veth); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	ids = tcxPrograms(t, veth)
	if len(ids) != 1 || ids[0] != progID(t, other) {
		t.Errorf("after Detach tcx chain = %v, want only the other program", ids)
	}
}

func TestAttachXDP(t *testing.T) {
	veth, _ := inTestNetns(t)
	cfg := smallConfig()
	cfg.Hook = HookXDP
	d := newDP(t, cfg)
	ctx := t.Context()
	nl, _ := netlink.LinkByName(veth)
	addr, _ := netlink.ParseAddr("10.77.0.1/24")
	if err := netlink.AddrAdd(nl, addr); err != nil {
		t.Fatal(err)
	}
	if err := d.Attach(ctx, veth); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	var ia xlbIfAddr
	if err := d.objs.IfAddrs.Lookup(uint32(nl.Attrs().Index), &ia); err != nil || ia.V4 != addrToBE(netip.MustParseAddr("10.77.0.1"))[0] {
		t.Errorf("if_addrs[%s] = %+v, %v; want 10.77.0.1", veth, ia, err)
	}
	nl, _ = netlink.LinkByName(veth)
	if x := nl.Attrs().Xdp; x == nil || !x.Attached || x.ProgId != uint32(progID(t, d.objs.XlbXdp)) {
		t.Fatalf("XDP not attached: %+v", x)
	}
	if st := d.Interfaces(); len(st) != 1 || st[0].Mode != "xdp-native" {
		t.Errorf("Interfaces = %+v", st)
	}
	if err := d.Detach(ctx, veth); err != nil {
		t.Fatal(err)
	}
	nl, _ = netlink.LinkByName(veth)
	if x := nl.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("XDP still attached after Detach: %+v", x)
	}
}
