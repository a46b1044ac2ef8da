package dataplane

import (
	"context"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
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
	addVethPair(t, a, b)
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
	cfg.PinPath = bpffsDir(t)
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
	// The tc companion (packets XDP hands over for neighbour resolution).
	if ids := tcxPrograms(t, veth); len(ids) != 1 || ids[0] != progID(t, d.objs.XlbTcXdp) {
		t.Fatalf("tcx chain with the XDP hook = %v, want [xlb_tc_xdp %d]", ids, progID(t, d.objs.XlbTcXdp))
	}

	// Restart: both pinned links are adopted and get the new programs.
	d.Close()
	d2 := newDP(t, cfg)
	t.Cleanup(func() { d2.Destroy(ctx) })
	nl, _ = netlink.LinkByName(veth)
	if x := nl.Attrs().Xdp; x == nil || !x.Attached || x.ProgId != uint32(progID(t, d2.objs.XlbXdp)) {
		t.Fatalf("after restart XDP = %+v, want the new program", x)
	}
	if ids := tcxPrograms(t, veth); len(ids) != 1 || ids[0] != progID(t, d2.objs.XlbTcXdp) {
		t.Fatalf("after restart tcx chain = %v, want [new xlb_tc_xdp]", ids)
	}
	if err := d2.Attach(ctx, veth); err != nil {
		t.Fatalf("Attach after restart: %v", err)
	}
	if ids := tcxPrograms(t, veth); len(ids) != 1 {
		t.Fatalf("Attach after restart: tcx chain = %v, want one companion", ids)
	}

	if err := d2.Detach(ctx, veth); err != nil {
		t.Fatal(err)
	}
	nl, _ = netlink.LinkByName(veth)
	if x := nl.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("XDP still attached after Detach: %+v", x)
	}
	if ids := tcxPrograms(t, veth); len(ids) != 0 {
		t.Errorf("tcx chain after Detach = %v, want empty", ids)
	}
}

// countByDport loads a tcx program that counts IPv4 UDP frames by
// destination port (an array of 65536 counters) and returns TCX_NEXT, so
// it can sit anywhere in a chain.
func countByDport(t *testing.T) (*ebpf.Program, *ebpf.Map) {
	t.Helper()
	counts, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 65536})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { counts.Close() })
	const (
		skbData    = 76 // offsetof(struct __sk_buff, data)
		skbDataEnd = 80
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 38), // Ethernet + IPv4 without options + UDP ports
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half), // EtherType, network order
		asm.JNE.Imm(asm.R5, 0x0008, "out"),        // 0x0800 read little endian
		asm.LoadMem(asm.R5, asm.R2, 23, asm.Byte), // IPv4 protocol
		asm.JNE.Imm(asm.R5, 17, "out"),
		asm.LoadMem(asm.R5, asm.R2, 36, asm.Half), // UDP destination port
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.StoreMem(asm.RFP, -4, asm.R5, asm.Word),
		asm.LoadMapPtr(asm.R1, counts.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TCX_NEXT
		asm.Return(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog, counts
}

// TestAttachTCXNextProgramSees: xlb at the head of the tcx chain must hand
// what it does not handle to the programs after it (a CNI's): traffic that
// is not for a VIP, and a translated packet that xlb leaves to the kernel
// (here: no route to the backend, so no redirect). With TC_ACT_OK
// (TCX_PASS) the chain would end at xlb and the counter would stay 0.
// Frames are injected with a packet socket on the peer, so they reach the
// ingress of the veth xlb is attached to.
func TestAttachTCXNextProgramSees(t *testing.T) {
	veth, peer := inTestNetns(t)
	cfg := smallConfig()
	cfg.stubPrograms = false // the real datapath
	d := newDP(t, cfg)
	ctx := t.Context()
	t.Cleanup(func() { d.Destroy(context.Background()) })
	if err := d.Attach(ctx, veth); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	vip, backend := addrPort("192.0.2.80:80"), addrPort("198.51.100.7:8080")
	if _, err := d.Apply(ctx, []Service{{Name: "dns", VIP: vip.Addr(), Port: vip.Port(), Protocol: UDP,
		Backends: []Backend{{Addr: backend.Addr(), Port: backend.Port(), Weight: 1}}}}); err != nil {
		t.Fatal(err)
	}

	counter, counts := countByDport(t)
	nl, err := netlink.LinkByName(veth)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := link.AttachTCX(link.TCXOptions{Program: counter, Interface: nl.Attrs().Index, Attach: ebpf.AttachTCXIngress, Anchor: link.Tail()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if ids := tcxPrograms(t, veth); len(ids) != 2 || ids[0] != progID(t, d.objs.XlbTc) || ids[1] != progID(t, counter) {
		t.Fatalf("tcx chain = %v, want [xlb, counter]", ids)
	}

	pl, err := netlink.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	send := func(dst netip.AddrPort, n int) {
		t.Helper()
		frame := build(t, pktSpec{src: addrPort("203.0.113.5:40000"), dst: dst, proto: protoUDP})
		sa := &unix.SockaddrLinklayer{Ifindex: pl.Attrs().Index, Protocol: htons(unix.ETH_P_IP)}
		for range n {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func(port uint16) uint64 {
		var v uint64
		if err := counts.Lookup(uint32(port), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	// Delivery through a veth is asynchronous (backlog): poll.
	waitCount := func(port uint16, want uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for count(port) < want {
			if time.Now().After(deadline) {
				t.Fatalf("the program after xlb counted %d packets to port %d, want %d", count(port), port, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	const n = 5
	send(addrPort("198.51.100.99:7777"), n) // not a VIP
	waitCount(7777, n)
	send(vip, n) // translated to the backend, left to the kernel (no route)
	waitCount(backend.Port(), n)
	if c := count(vip.Port()); c != 0 {
		t.Errorf("%d untranslated VIP packets reached the next program, want 0", c)
	}
	g, err := d.GlobalStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if g.Passed < n || g.ConntrackCreated != 2 {
		t.Errorf("global stats %+v: want passed >= %d and one flow (ct_created 2)", g, n)
	}
}
