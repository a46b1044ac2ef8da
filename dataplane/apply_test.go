package dataplane

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/dataplane/maglev"
)

// TestApplyManyServices applies more services than fit in one batch of
// selection tables, then checks contents, a no-op re-apply, a small
// change, and removal of everything.
func TestApplyManyServices(t *testing.T) {
	cfg := smallConfig()
	cfg.MaxServices = 4096
	cfg.MaxBackends = 8192
	d := newDP(t, cfg)
	ctx := t.Context()
	n := 2*tablesPerBatch + 100
	svcs := manyServices(n, AlgoRR)
	svcs[7].Algorithm = AlgoMaglev
	res, err := d.Apply(ctx, svcs)
	if err != nil {
		t.Fatal(err)
	}
	// Per service: 2 backends, table, service entry, VIP, 2 rev_nat
	// entries (default mode, backends not shared).
	if len(res.Created) != n || res.Writes != 7*n {
		t.Fatalf("first Apply: %d created, %d writes; want %d, %d", len(res.Created), res.Writes, n, 7*n)
	}
	if got := mapCount(t, d.objs.Services); got != n {
		t.Errorf("services map has %d entries, want %d", got, n)
	}
	ids := backendIDs(d)
	for _, i := range []int{0, tablesPerBatch, n - 1} {
		var info xlbSvcInfo
		if err := d.objs.Services.Lookup(svcKeyOf(svcs[i]), &info); err != nil {
			t.Fatal(err)
		}
		table, err := d.readTable(info.Id, info.SelLen)
		if err != nil {
			t.Fatal(err)
		}
		a := ids[fmt.Sprintf("svc-%d/%s", i, netip.AddrPortFrom(svcs[i].Backends[0].Addr, 8080))]
		b := ids[fmt.Sprintf("svc-%d/%s", i, netip.AddrPortFrom(svcs[i].Backends[1].Addr, 8080))]
		if want := []uint32{a, b}; !equalU32(table, want) {
			t.Errorf("svc-%d table %v, want %v", i, table, want)
		}
	}
	var mg xlbSvcInfo
	d.objs.Services.Lookup(svcKeyOf(svcs[7]), &mg)
	if mg.SelLen != maglev.DefaultMinSize {
		t.Errorf("maglev sel_len %d, want %d", mg.SelLen, maglev.DefaultMinSize)
	}

	if res, err := d.Apply(ctx, svcs); err != nil || res.Writes != 0 || len(res.Unchanged) != n {
		t.Fatalf("re-Apply: %d writes, %d unchanged, %v; want 0, %d", res.Writes, len(res.Unchanged), err, n)
	}

	// One backend of one service replaced: new backend, table, service
	// entry unchanged (same length), old backend freed (entry, stats,
	// active).
	svcs[tablesPerBatch+3].Backends[1].Addr = netip.MustParseAddr("10.9.9.9")
	res, err = d.Apply(ctx, svcs)
	if err != nil {
		t.Fatal(err)
	}
	// 5 + the rev_nat entries of the old (deleted) and new backend.
	if res.Writes != 7 || len(res.Updated) != 1 || res.Updated[0] != svcs[tablesPerBatch+3].Name {
		t.Errorf("one backend replaced: %d writes, updated %v; want 7 on %s", res.Writes, res.Updated, svcs[tablesPerBatch+3].Name)
	}

	// Everything removed: entries, allow-list and VIPs are gone, every
	// backend id is free and the tables of the removed ids are empty.
	res, err = d.Apply(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != n || mapCount(t, d.objs.Services) != 0 || mapCount(t, d.objs.Vips) != 0 {
		t.Errorf("remove all: %d deleted, services %d, vips %d", len(res.Deleted), mapCount(t, d.objs.Services), mapCount(t, d.objs.Vips))
	}
	if d.beIDs.free != cfg.MaxBackends-1 || d.svcIDs.free != cfg.MaxServices-1 {
		t.Errorf("ids not freed: %d backend ids, %d service ids free", d.beIDs.free, d.svcIDs.free)
	}
	var inner *ebpf.Map
	if err := d.objs.SelTables.Lookup(mg.Id, &inner); err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	if inner.MaxEntries() != 1 {
		t.Errorf("table of a removed service has %d entries, want the 1-entry empty table", inner.MaxEntries())
	}
	// Re-creating them all reuses ids with new generations.
	if res, err := d.Apply(ctx, svcs); err != nil || len(res.Created) != n {
		t.Fatalf("re-create: %+v %v", len(res.Created), err)
	}
	var bv xlbBackend
	d.objs.Backends.Lookup(uint32(1), &bv)
	if bv.Gen != 2 {
		t.Errorf("reused backend id 1 has gen %d, want 2", bv.Gen)
	}
}

// TestMaglevTableSize: the minimum table size is configurable, validated,
// and the size depends on the configured backend count, not on how many
// are healthy.
func TestMaglevTableSize(t *testing.T) {
	requireRoot(t)
	cfg := smallConfig()
	cfg.MaglevMinTableSize = 4000
	if _, err := New(t.Context(), cfg); err == nil {
		t.Fatal("MaglevMinTableSize 4000: want an error")
	} else if want := "maglevMinTableSize 4000: allowed"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the field and allowed values", err)
	}
	cfg.MaglevMinTableSize = 4093
	d := newDP(t, cfg)
	ctx := t.Context()
	svcs := testServices()
	if _, err := d.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	var info xlbSvcInfo
	d.objs.Services.Lookup(svcKeyOf(svcs[0]), &info)
	if info.SelLen != 4093 {
		t.Errorf("sel_len %d, want 4093", info.SelLen)
	}
	// 21 backends need 200 × 21 = 4200 slots: the next size. Taking 1 of
	// them down keeps the size (otherwise every slot would move).
	svcs[0].Backends = nil
	for i := range 21 {
		svcs[0].Backends = append(svcs[0].Backends, be(fmt.Sprintf("10.0.0.%d:8080", i+1), 1))
	}
	if _, err := d.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	d.objs.Services.Lookup(svcKeyOf(svcs[0]), &info)
	if info.SelLen != 8191 {
		t.Errorf("21 backends: sel_len %d, want 8191", info.SelLen)
	}
	if err := d.SetBackendState(ctx, "web", netip.MustParseAddr("10.0.0.1"), 8080, BackendDown); err != nil {
		t.Fatal(err)
	}
	d.objs.Services.Lookup(svcKeyOf(svcs[0]), &info)
	if info.SelLen != 8191 {
		t.Errorf("one of 21 backends down: sel_len %d, want 8191 (unchanged)", info.SelLen)
	}
	mc, err := d.Memory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if mc.PerMaglevService < 4*4093 || mc.PerMaglevService > 16*4093 {
		t.Errorf("PerMaglevService %d B for 4093 slots", mc.PerMaglevService)
	}
}

// TestPinRestartTableSize: a restart with the same configuration writes
// nothing (the table sums come from the pinned tables' names), one with
// another minimum Maglev size rebuilds the Maglev tables only.
func TestPinRestartTableSize(t *testing.T) {
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
	d2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := d2.Apply(ctx, testServices()); err != nil || res.Writes != 0 {
		t.Errorf("same config after restart: %+v %v, want zero writes", res, err)
	}
	d2.Close()
	cfg.MaglevMinTableSize = 8191
	d3, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d3.Destroy(t.Context()) })
	res, err := d3.Apply(ctx, testServices())
	if err != nil {
		t.Fatal(err)
	}
	// web (Maglev): table and service entry (sel_len). (All three count as
	// updated: restored services are renamed by the first Apply.)
	if res.Writes != 2 {
		t.Errorf("new Maglev size after restart: %+v, want 2 writes on web", res)
	}
}

func TestTableSumName(t *testing.T) {
	for _, table := range [][]uint32{nil, {1}, {1, 2}, {2, 1}} {
		sum := tableSum(table)
		name := tableName(sum)
		if len(name) > 15 {
			t.Errorf("name %q longer than a map name", name)
		}
		if got, ok := parseTableName(name); !ok || got != sum {
			t.Errorf("parseTableName(%q) = %x, %v; want %x", name, got, ok, sum)
		}
	}
	if tableSum([]uint32{1, 2}) == tableSum([]uint32{2, 1}) || tableSum(nil) == tableSum([]uint32{0}) {
		t.Error("different tables, same sum")
	}
	for _, bad := range []string{"xlb_sel", "xs", "xs12345678901zz", ""} {
		if _, ok := parseTableName(bad); ok {
			t.Errorf("parseTableName(%q) accepted", bad)
		}
	}
}
