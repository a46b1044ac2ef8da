package dataplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loads eBPF)")
	}
}

// prefix returns a per-test unique name prefix ("xt" + 4 hex).
func prefix(t *testing.T) string {
	var b [2]byte
	rand.Read(b[:])
	return "xt" + hex.EncodeToString(b[:])
}

// smallConfig keeps maps small (tests run in parallel with other work) and
// stubs the programs: these tests are about the control plane; packet
// behaviour is tested through BPF_PROG_TEST_RUN in packet*_test.go.
func smallConfig() Config {
	return Config{ConntrackFlows: 1024, MaxServices: 64, MaxBackends: 256, MaglevSeed: 42, stubPrograms: true}
}

// bpffsDir mounts a private bpffs for the test (the machine's /sys/fs/bpf
// may not be mounted, and a private one cannot collide with anyone) and
// returns a pin directory inside it.
func bpffsDir(t *testing.T) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), prefix(t))
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	return filepath.Join(mnt, "xlb")
}

func newDP(t *testing.T, cfg Config) *Dataplane {
	t.Helper()
	requireRoot(t)
	d, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func be(s string, w uint32) Backend {
	a := addrPort(s)
	return Backend{Addr: a.Addr(), Port: a.Port(), Weight: w}
}

func testServices() []Service {
	return []Service{
		{
			Name: "web", VIP: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: TCP,
			Backends: []Backend{be("10.0.0.1:8080", 1), be("10.0.0.2:8080", 1), be("10.0.0.3:8080", 2)},
		},
		{
			Name: "dns", VIP: netip.MustParseAddr("192.0.2.10"), Port: 53, Protocol: UDP, Algorithm: AlgoRR,
			NATMode: NATFullNAT, SNATAddr: netip.MustParseAddr("192.0.2.1"),
			SourceRanges: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
			Backends:     []Backend{be("10.0.1.1:53", 3), be("10.0.1.2:53", 1)},
		},
		{
			Name: "v6", VIP: netip.MustParseAddr("2001:db8::10"), Port: 443, Protocol: TCP, Algorithm: AlgoLC,
			Backends: []Backend{be("[2001:db8:1::1]:443", 1), be("[2001:db8:1::2]:443", 0)},
		},
	}
}

// backendIDs returns (service name, addr:port) → backend id.
func backendIDs(d *Dataplane) map[string]uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]uint32{}
	for _, st := range d.svcs {
		for a, b := range st.backends {
			out[st.name+"/"+a.String()] = b.id
		}
	}
	return out
}

func mapCount(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestApplyIdempotent(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	res, err := d.Apply(ctx, testServices())
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(res.Created) != 3 || res.Writes == 0 {
		t.Fatalf("first Apply: %+v", res)
	}
	if n := mapCount(t, d.objs.Services); n != 3 {
		t.Errorf("services map has %d entries, want 3", n)
	}
	if n := mapCount(t, d.objs.Vips); n != 2 {
		t.Errorf("vips map has %d entries, want 2", n)
	}
	var cnt uint32
	if err := d.objs.Vips.Lookup(vipKeyOf(svcKeyOf(testServices()[0])), &cnt); err != nil || cnt != 2 {
		t.Errorf("vips[192.0.2.10] = %d, %v; want 2", cnt, err)
	}
	if n := mapCount(t, d.objs.AllowList); n != 1 {
		t.Errorf("allow_list has %d entries, want 1", n)
	}
	// The installed entries say what the spec says.
	var info xlbSvcInfo
	if err := d.objs.Services.Lookup(svcKeyOf(testServices()[1]), &info); err != nil {
		t.Fatal(err)
	}
	if info.Algo != algoCodeRR || info.NatMode != natCodeFullNAT || info.IdleTimeoutS != 60 || info.AffinityTimeoutS != 10800 ||
		info.SnatPortMin != DefaultSNATPortMin || info.SnatPortMax != DefaultSNATPortMax || info.Flags&svcFlagAllowList == 0 || info.SelLen != 4 {
		t.Errorf("dns svc_info = %+v", info)
	}
	table, err := d.readTable(info.Id, info.SelLen)
	if err != nil {
		t.Fatal(err)
	}
	ids := backendIDs(d)
	a, b := ids["dns/10.0.1.1:53"], ids["dns/10.0.1.2:53"]
	if got, want := table, []uint32{a, a, b, a}; !equalU32(got, want) {
		t.Errorf("dns rr table = %v, want %v", got, want)
	}
	// The weight-0 backend of v6 is draining and not in the lc table.
	var v6 xlbSvcInfo
	d.objs.Services.Lookup(svcKeyOf(testServices()[2]), &v6)
	if v6.SelLen != 1 {
		t.Errorf("v6 sel_len = %d, want 1 (draining backend excluded)", v6.SelLen)
	}
	var bv xlbBackend
	d.objs.Backends.Lookup(ids["v6/[2001:db8:1::2]:443"], &bv)
	if bv.State != beStateDraining || bv.Gen != 1 {
		t.Errorf("weight-0 backend = %+v, want draining gen 1", bv)
	}

	res, err = d.Apply(ctx, testServices())
	if err != nil {
		t.Fatal(err)
	}
	if res.Writes != 0 || len(res.Unchanged) != 3 {
		t.Errorf("re-Apply of the same set: %+v, want zero writes", res)
	}
	if got := backendIDs(d); !equalIDs(got, ids) {
		t.Errorf("ids changed on re-apply: %v → %v", ids, got)
	}
}

func TestApplyMinimalWrites(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	if _, err := d.Apply(ctx, testServices()); err != nil {
		t.Fatal(err)
	}
	ids := backendIDs(d)

	// One weight changes in the Maglev service: the backend entry and the
	// table swap (sel_len is unchanged: same table size).
	svcs := testServices()
	svcs[0].Backends[2].Weight = 1
	res, err := d.Apply(ctx, svcs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Writes != 2 || len(res.Updated) != 1 || res.Updated[0] != "web" {
		t.Errorf("weight change: %+v, want 2 writes (backend + table) on web", res)
	}

	// Remove one backend: table swap, then the id is freed (backend
	// entry, its stats and active count), nothing else.
	svcs[0].Backends = svcs[0].Backends[:2]
	res, err = d.Apply(ctx, svcs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Writes != 6 {
		t.Errorf("backend removal: %d writes, want 6 (table + svc_info backend_count + backend + stats + active + rev_nat)", res.Writes)
	}
	got := backendIDs(d)
	for k, id := range got {
		if ids[k] != id {
			t.Errorf("backend %s changed id %d → %d", k, ids[k], id)
		}
	}
	removed := ids["web/10.0.0.3:8080"]
	var bv xlbBackend
	d.objs.Backends.Lookup(removed, &bv)
	if bv.State != beStateUnused || bv.Gen != 1 {
		t.Errorf("freed backend entry = %+v, want unused keeping gen 1", bv)
	}
	var info xlbSvcInfo
	d.objs.Services.Lookup(svcKeyOf(svcs[0]), &info)
	table, _ := d.readTable(info.Id, info.SelLen)
	for _, id := range table {
		if id == removed {
			t.Fatalf("removed backend still in the table")
		}
	}

	// A new backend may reuse a freed id (in a later Apply) with a new
	// generation.
	svcs[0].Backends = append(svcs[0].Backends, be("10.0.0.9:8080", 1))
	if _, err := d.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	nid := backendIDs(d)["web/10.0.0.9:8080"]
	d.objs.Backends.Lookup(nid, &bv)
	if nid == removed && bv.Gen != 2 {
		t.Errorf("reused id %d has gen %d, want 2", nid, bv.Gen)
	}

	// Removing a whole service deletes its entries.
	res, err = d.Apply(ctx, svcs[:1])
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 2 || mapCount(t, d.objs.Services) != 1 || mapCount(t, d.objs.AllowList) != 0 || mapCount(t, d.objs.Vips) != 1 {
		t.Errorf("after deleting 2 services: %+v, services %d allow %d vips %d", res,
			mapCount(t, d.objs.Services), mapCount(t, d.objs.AllowList), mapCount(t, d.objs.Vips))
	}
	var cnt uint32
	if err := d.objs.Vips.Lookup(vipKeyOf(svcKeyOf(svcs[0])), &cnt); err != nil || cnt != 1 {
		t.Errorf("vips count = %d, %v; want 1", cnt, err)
	}
}

func TestApplyValidationChangesNothing(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	if _, err := d.Apply(ctx, testServices()); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(s []Service){
		"backends[1].port": func(s []Service) { s[0].Backends[1].Port = 0 },
		"algorithm":        func(s []Service) { s[1].Algorithm = "wrr" },
		"snatAddr":         func(s []Service) { s[1].SNATAddr = netip.Addr{} },
		"backends[0].addr": func(s []Service) { s[2].Backends[0].Addr = netip.MustParseAddr("10.0.0.1") },
		"name":             func(s []Service) { s[2].Name = "web" },
		"sourceRanges[0]":  func(s []Service) { s[1].SourceRanges[0] = netip.MustParsePrefix("2001:db8::/32") },
		"vip/port/protocol": func(s []Service) {
			s[2] = s[0]
			s[2].Name = "web2"
		},
	}
	for field, mutate := range cases {
		svcs := testServices()
		mutate(svcs)
		svcs = append(svcs, Service{Name: "extra", VIP: netip.MustParseAddr("192.0.2.99"), Port: 1, Protocol: TCP})
		_, err := d.Apply(ctx, svcs)
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != field || ve.Allowed == "" {
			t.Errorf("%s: got %v, want a ValidationError on that field", field, err)
		}
	}
	res, err := d.Apply(ctx, testServices())
	if err != nil || res.Writes != 0 {
		t.Errorf("after rejected applies the original set should be a no-op: %+v %v", res, err)
	}
}

func TestApplySetBackendState(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	svcs := testServices()
	if _, err := d.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	ids := backendIDs(d)
	var info xlbSvcInfo
	d.objs.Services.Lookup(svcKeyOf(svcs[0]), &info)
	before, _ := d.readTable(info.Id, info.SelLen)
	down := ids["web/10.0.0.1:8080"]
	if err := d.SetBackendState(ctx, "web", netip.MustParseAddr("10.0.0.1"), 8080, BackendDown); err != nil {
		t.Fatal(err)
	}
	var bv xlbBackend
	d.objs.Backends.Lookup(down, &bv)
	if bv.State != beStateDown {
		t.Errorf("state = %d, want down", bv.State)
	}
	after, _ := d.readTable(info.Id, info.SelLen)
	moved := 0
	for i := range before {
		if after[i] == down {
			t.Fatal("down backend still selected")
		}
		if before[i] != down && after[i] != before[i] {
			moved++
		}
	}
	if moved > len(before)/100 {
		t.Errorf("%d slots of healthy backends moved, want ≤ 1%% of %d", moved, len(before))
	}
	// The override survives a re-apply of the same desired set.
	if res, err := d.Apply(ctx, svcs); err != nil || res.Writes != 0 {
		t.Errorf("re-apply after health change: %+v %v, want zero writes", res, err)
	}
	if err := d.SetBackendState(ctx, "web", netip.MustParseAddr("10.0.0.1"), 8080, BackendActive); err != nil {
		t.Fatal(err)
	}
	restored, _ := d.readTable(info.Id, info.SelLen)
	if !equalU32(restored, before) {
		t.Errorf("table after recovery differs from the original")
	}
	if err := d.SetBackendState(ctx, "nope", netip.MustParseAddr("10.0.0.1"), 8080, BackendDown); err == nil {
		t.Error("unknown service: want error")
	}
}

func TestPinRestart(t *testing.T) {
	requireRoot(t)
	ctx := t.Context()
	cfg := smallConfig()
	cfg.PinPath = bpffsDir(t)

	d1, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d1.Apply(ctx, testServices()); err != nil {
		t.Fatal(err)
	}
	ids := backendIDs(d1)
	// An established flow, as the datapath would have written it.
	k := xlbCtKey{Src: addrToBE(netip.MustParseAddr("198.51.100.7")), Dst: addrToBE(netip.MustParseAddr("192.0.2.10")),
		Sport: htons(40000), Dport: htons(80), Proto: 6, Family: familyV4}
	now, _ := monotonicNow()
	v := xlbCtEntry{LastSeenNs: now, CreatedNs: now, LifetimeS: 240, SvcId: d1.byName["web"].id,
		BackendId: ids["web/10.0.0.1:8080"], BackendGen: 1, NatDst: addrToBE(netip.MustParseAddr("10.0.0.1")), NatDport: htons(8080), Flags: ctFlagRewriteDst}
	if err := d1.objs.Conntrack.Update(k, v, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	d2, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New on existing pins: %v", err)
	}
	t.Cleanup(func() { d2.Destroy(context.Background()) })
	// Before any Apply the restored state is already complete.
	if got := backendIDs(d2); len(got) != len(ids) {
		t.Errorf("restored %d backends, want %d", len(got), len(ids))
	}
	res, err := d2.Apply(ctx, testServices())
	if err != nil {
		t.Fatal(err)
	}
	if res.Writes != 0 {
		t.Errorf("Apply of the installed set after restart: %+v, want zero writes", res)
	}
	if got := backendIDs(d2); !equalIDs(got, ids) {
		t.Errorf("ids changed across restart: %v → %v", ids, got)
	}
	var got xlbCtEntry
	if err := d2.objs.Conntrack.Lookup(k, &got); err != nil || got.BackendId != v.BackendId {
		t.Errorf("conntrack entry lost across restart: %v %+v", err, got)
	}
	flows, _, err := d2.Flows(ctx, FlowFilter{})
	if err != nil || len(flows) != 1 || flows[0].Service != "web" || flows[0].Backend != addrPort("10.0.0.1:8080") {
		t.Errorf("Flows after restart = %+v, %v", flows, err)
	}

	// A capacity change is refused clearly, or re-creates when asked.
	bigger := cfg
	bigger.ConntrackFlows = 2048
	if _, err := New(ctx, bigger); !errors.Is(err, ErrMapIncompatible) {
		t.Errorf("New with a different conntrack size: %v, want ErrMapIncompatible", err)
	}
}

func TestPinRecreateAndDestroy(t *testing.T) {
	requireRoot(t)
	ctx := t.Context()
	cfg := smallConfig()
	cfg.PinPath = bpffsDir(t)
	d1, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d1.Apply(ctx, testServices()); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	cfg.ConntrackFlows = 2048
	cfg.RecreateIncompatibleMaps = true
	d2, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New with RecreateIncompatibleMaps: %v", err)
	}
	if got := d2.objs.Conntrack.MaxEntries(); got != 4096 {
		t.Errorf("conntrack capacity %d, want 4096", got)
	}
	// Services survived (only conntrack was re-created).
	if res, err := d2.Apply(ctx, testServices()); err != nil || res.Writes != 0 {
		t.Errorf("Apply after partial re-create: %+v %v", res, err)
	}
	if err := d2.Destroy(ctx); err != nil {
		ents, _ := os.ReadDir(cfg.PinPath)
		t.Fatalf("Destroy: %v (left: %v)", err, ents)
	}
	if _, err := os.Stat(cfg.PinPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory still exists after Destroy: %v", err)
	}
}

func TestStatsCounters(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	if _, err := d.Apply(ctx, testServices()); err != nil {
		t.Fatal(err)
	}
	ncpu, _ := ebpf.PossibleCPU()
	svc := make([]xlbSvcCounters, ncpu)
	bec := make([]xlbBackendCounters, ncpu)
	for i := range svc {
		svc[i] = xlbSvcCounters{Packets: 10, Bytes: 1000, NewFlows: 1}
		svc[i].Drops[1] = 2 // src_denied
		bec[i] = xlbBackendCounters{Packets: 3, Bytes: 300, NewFlows: 1}
	}
	id := d.byName["dns"].id
	bid := backendIDs(d)["dns/10.0.1.1:53"]
	if err := d.objs.SvcStats.Update(id, svc, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.BackendStats.Update(bid, bec, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	d.objs.BackendActive.Update(bid, int64(5), ebpf.UpdateAny)
	g := make([]xlbGlobalCounters, ncpu)
	for i := range g {
		g[i].Rx = 7
	}
	d.objs.GlobalStats.Update(uint32(0), g, ebpf.UpdateAny)

	stats, err := d.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var dns *ServiceStats
	for i := range stats {
		if stats[i].Name == "dns" {
			dns = &stats[i]
		}
	}
	n := uint64(ncpu)
	if dns == nil || dns.Counters != (Counters{10 * n, 1000 * n, n}) || dns.Drops["src_denied"] != 2*n || dns.Drops["no_backend"] != 0 {
		t.Fatalf("dns stats = %+v", dns)
	}
	b0 := dns.Backends[0]
	if b0.Addr != netip.MustParseAddr("10.0.1.1") || b0.Counters != (Counters{3 * n, 300 * n, n}) || b0.Active != 5 || b0.State != BackendActive {
		t.Errorf("backend stats = %+v", b0)
	}
	gs, err := d.GlobalStats(ctx)
	if err != nil || gs.RX != 7*n {
		t.Errorf("GlobalStats = %+v %v", gs, err)
	}
	// Removing the service zeroes its counters so a reused id starts clean.
	if _, err := d.Apply(ctx, testServices()[:1]); err != nil {
		t.Fatal(err)
	}
	var per []xlbSvcCounters
	d.objs.SvcStats.Lookup(id, &per)
	for _, c := range per {
		if c.Packets != 0 {
			t.Fatalf("svc_stats of a freed id not reset: %+v", c)
		}
	}
	mc, err := d.Memory(ctx)
	if err != nil || mc.PerConntrackFlow == 0 || mc.PerBackend == 0 || mc.PerMaglevService < 4*32749 {
		t.Errorf("Memory = %+v, %v", mc, err)
	}
	t.Logf("memory: per flow %d B, per service %d B, per backend %d B, per maglev table %d B",
		mc.PerConntrackFlow, mc.PerService, mc.PerBackend, mc.PerMaglevService)
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalIDs(a, b map[string]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

var _ = time.Second

// TestFragmentEntriesSizesTable: Config.FragmentEntries sizes the fragment
// table (default DefaultFragmentEntries).
func TestFragmentEntriesSizesTable(t *testing.T) {
	requireRoot(t)
	cfg := smallConfig()
	d := newDP(t, cfg)
	if got := d.objs.XlbFrags.MaxEntries(); got != DefaultFragmentEntries {
		t.Errorf("default fragment table capacity %d, want %d", got, DefaultFragmentEntries)
	}
	cfg.FragmentEntries = 1000
	d = newDP(t, cfg)
	if got := d.objs.XlbFrags.MaxEntries(); got != 1000 {
		t.Errorf("fragment table capacity %d, want 1000", got)
	}
}
