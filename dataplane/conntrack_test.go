package dataplane

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// flowPair writes a forward and a reply entry the way the datapath does for
// a default-NAT flow client → VIP:80 → backend.
func flowPair(t *testing.T, d *Dataplane, client netip.AddrPort, svc string, backend netip.AddrPort, lastSeen uint64) (xlbCtKey, xlbCtKey) {
	t.Helper()
	st := d.byName[svc]
	beID := st.backends[backend].id
	vip := netip.AddrPortFrom(st.spec.VIP, st.spec.Port)
	fk := xlbCtKey{Src: addrToBE(client.Addr()), Dst: addrToBE(vip.Addr()), Sport: htons(client.Port()), Dport: htons(vip.Port()), Proto: 6, Family: familyV4}
	fv := xlbCtEntry{LastSeenNs: lastSeen, CreatedNs: lastSeen, LifetimeS: 240, SvcId: st.id, BackendId: beID, BackendGen: st.backends[backend].val.Gen,
		NatDst: addrToBE(backend.Addr()), NatDport: htons(backend.Port()), Flags: ctFlagRewriteDst}
	rv := fv
	rv.Flags = ctFlagReply | ctFlagRewriteSrc
	rv.NatSrc, rv.NatSport = fk.Dst, fk.Dport
	rv.NatDst, rv.NatDport = [4]uint32{}, 0
	rk := partnerKey(&fk, &fv)
	if back := partnerKey(&rk, &rv); back != fk {
		t.Fatalf("partnerKey is not symmetric: %+v → %+v → %+v", fk, rk, back)
	}
	for _, kv := range []struct {
		k xlbCtKey
		v xlbCtEntry
	}{{fk, fv}, {rk, rv}} {
		if err := d.objs.Conntrack.Update(kv.k, kv.v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	return fk, rk
}

func TestReapExpired(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	if _, err := d.Apply(ctx, testServices()); err != nil {
		t.Fatal(err)
	}
	now, _ := monotonicNow()
	backend := addrPort("10.0.0.1:8080")
	oldF, oldR := flowPair(t, d, addrPort("198.51.100.1:1000"), "web", backend, now-uint64(300*time.Second))
	liveF, liveR := flowPair(t, d, addrPort("198.51.100.2:1000"), "web", backend, now)
	beID := d.byName["web"].backends[backend].id
	d.objs.BackendActive.Update(beID, int64(2), ebpf.UpdateAny)

	d.lastActiveCalc = time.Now() // exercise the decrement path first
	res, err := d.Reap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Scanned != 4 || res.Expired != 2 || res.ActiveRecomputed {
		t.Errorf("Reap = %+v, want 4 scanned, 2 expired", res)
	}
	var v xlbCtEntry
	for _, k := range []xlbCtKey{oldF, oldR} {
		if err := d.objs.Conntrack.Lookup(k, &v); err == nil {
			t.Errorf("expired entry %+v still present", k)
		}
	}
	for _, k := range []xlbCtKey{liveF, liveR} {
		if err := d.objs.Conntrack.Lookup(k, &v); err != nil {
			t.Errorf("live entry %+v reaped: %v", k, err)
		}
	}
	var active int64
	d.objs.BackendActive.Lookup(beID, &active)
	if active != 1 {
		t.Errorf("backend_active = %d after one flow expired without FIN, want 1", active)
	}

	// Exact recompute: drift is corrected from the walk.
	d.objs.BackendActive.Update(beID, int64(17), ebpf.UpdateAny)
	d.lastActiveCalc = time.Time{}
	if res, err = d.Reap(ctx); err != nil || !res.ActiveRecomputed {
		t.Fatalf("Reap = %+v, %v", res, err)
	}
	d.objs.BackendActive.Lookup(beID, &active)
	if active != 1 {
		t.Errorf("recomputed backend_active = %d, want 1", active)
	}

	// A flow to a backend that left is stale and reaped.
	svcs := testServices()
	svcs[0].Backends = svcs[0].Backends[1:]
	if _, err := d.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	if res, err = d.Reap(ctx); err != nil || res.Stale == 0 || res.Expired != 2 {
		t.Errorf("Reap after backend removal = %+v, %v; want the 2 stale entries gone", res, err)
	}
	if u, err := d.ConntrackUsage(ctx); err != nil || u.Entries != 0 || u.Capacity != 2048 {
		t.Errorf("ConntrackUsage = %+v, %v", u, err)
	}
}

func TestFlowsPaging(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	if _, err := d.Apply(ctx, testServices()); err != nil {
		t.Fatal(err)
	}
	now, _ := monotonicNow()
	for i := range 5 {
		flowPair(t, d, netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(2000+i)), "web", addrPort("10.0.0.2:8080"), now)
	}
	flowPair(t, d, addrPort("198.51.100.9:3000"), "web", addrPort("10.0.0.3:8080"), now)

	seen := map[netip.AddrPort]bool{}
	cursor, pages := "", 0
	for {
		page, next, err := d.Flows(ctx, FlowFilter{Limit: 2, After: cursor, Client: netip.MustParseAddr("198.51.100.1")})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, f := range page {
			if seen[f.Client] {
				t.Errorf("flow %s returned twice", f.Client)
			}
			seen[f.Client] = true
			if f.Service != "web" || f.Backend != addrPort("10.0.0.2:8080") || f.VIP != addrPort("192.0.2.10:80") || f.Protocol != TCP || f.Lifetime != 240*time.Second {
				t.Errorf("flow = %+v", f)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != 5 || pages != 3 {
		t.Errorf("paged %d flows in %d pages, want 5 in 3", len(seen), pages)
	}
	all, next, err := d.Flows(ctx, FlowFilter{VIP: netip.MustParseAddr("192.0.2.10")})
	if err != nil || len(all) != 6 || next != "" {
		t.Errorf("filter by VIP: %d flows, next %q, %v; want 6", len(all), next, err)
	}
	if _, _, err := d.Flows(ctx, FlowFilter{After: "!!"}); err == nil {
		t.Error("bad cursor: want error")
	}
	stats, err := d.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stats {
		if s.Name == "web" && s.Flows != 6 {
			t.Errorf("web live flows = %d, want 6", s.Flows)
		}
	}
}
