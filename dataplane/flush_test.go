package dataplane

import (
	"testing"

	"github.com/cilium/ebpf"
)

// TestFlushBackendFlows: only the flows of the named service to the named
// backend lose both entries; backend_active drops by the flows it counted.
func TestFlushBackendFlows(t *testing.T) {
	d := newDP(t, smallConfig())
	ctx := t.Context()
	if _, err := d.Apply(ctx, testServices()); err != nil {
		t.Fatal(err)
	}
	now, _ := monotonicNow()
	dead, live := addrPort("10.0.0.1:8080"), addrPort("10.0.0.2:8080")
	d1f, d1r := flowPair(t, d, addrPort("198.51.100.1:1000"), "web", dead, now)
	d2f, d2r := flowPair(t, d, addrPort("198.51.100.2:1000"), "web", dead, now)
	lf, lr := flowPair(t, d, addrPort("198.51.100.3:1000"), "web", live, now)
	deadID := d.byName["web"].backends[dead].id
	if err := d.objs.BackendActive.Update(deadID, int64(2), ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}

	n, err := d.FlushBackendFlows(ctx, "web", dead.Addr(), dead.Port())
	if err != nil || n != 2 {
		t.Fatalf("FlushBackendFlows = %d, %v; want 2 flows", n, err)
	}
	var v xlbCtEntry
	for _, k := range []xlbCtKey{d1f, d1r, d2f, d2r} {
		if err := d.objs.Conntrack.Lookup(k, &v); err == nil {
			t.Errorf("entry %+v of a flushed flow is still there", k)
		}
	}
	for _, k := range []xlbCtKey{lf, lr} {
		if err := d.objs.Conntrack.Lookup(k, &v); err != nil {
			t.Errorf("entry %+v of another backend's flow was deleted: %v", k, err)
		}
	}
	var active int64
	if err := d.objs.BackendActive.Lookup(deadID, &active); err != nil || active != 0 {
		t.Errorf("backend_active = %d, %v after the flush, want 0", active, err)
	}
	// Idempotent; unknown names are errors.
	if n, err := d.FlushBackendFlows(ctx, "web", dead.Addr(), dead.Port()); err != nil || n != 0 {
		t.Errorf("second flush = %d, %v; want 0, nil", n, err)
	}
	if _, err := d.FlushBackendFlows(ctx, "nope", dead.Addr(), dead.Port()); err == nil {
		t.Error("flush of an unknown service: want an error")
	}
	if _, err := d.FlushBackendFlows(ctx, "web", dead.Addr(), 9); err == nil {
		t.Error("flush of an unknown backend: want an error")
	}
}
