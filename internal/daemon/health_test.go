package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
)

func TestKeepAllWhenAllDown(t *testing.T) {
	be := func(w uint32, st dataplane.BackendState) dataplane.Backend {
		return dataplane.Backend{Weight: w, State: st}
	}
	cases := []struct {
		name string
		in   []dataplane.Backend
		want []dataplane.BackendState
	}{
		{"one down of two: the dead one leaves", []dataplane.Backend{be(1, dataplane.BackendDown), be(1, dataplane.BackendActive)},
			[]dataplane.BackendState{dataplane.BackendDown, dataplane.BackendActive}},
		{"all down: all kept", []dataplane.Backend{be(1, dataplane.BackendDown), be(2, dataplane.BackendDown)},
			[]dataplane.BackendState{dataplane.BackendActive, dataplane.BackendActive}},
		{"draining does not count as a candidate", []dataplane.Backend{be(0, dataplane.BackendDraining), be(1, dataplane.BackendDown)},
			[]dataplane.BackendState{dataplane.BackendDraining, dataplane.BackendActive}},
		{"only draining: untouched", []dataplane.Backend{be(0, dataplane.BackendDraining)},
			[]dataplane.BackendState{dataplane.BackendDraining}},
	}
	for _, c := range cases {
		keepAllWhenAllDown(c.in)
		for i, b := range c.in {
			if b.State != c.want[i] {
				t.Errorf("%s: backend %d state %s, want %s", c.name, i, b.State, c.want[i])
			}
		}
	}
}

func TestProberTargets(t *testing.T) {
	p := NewProber(slog.Default())
	svc := func(name, probe string) api.Service {
		s := api.Service{Name: name, Spec: api.ServiceSpec{Backends: []api.Backend{{Address: "198.18.1.10", Port: 80}, {Address: "198.18.1.11", Port: 80}}}}
		if probe != "" {
			s.Spec.Probe = &api.Probe{Type: probe}
		}
		return s
	}
	p.SetTargets(context.Background(), []api.Service{svc("probed", "tcp"), svc("none", "none"), svc("unset", "")})
	st := p.Statuses()
	if len(st) != 2 {
		t.Fatalf("got %d targets, want 2 (only the tcp-probed service): %+v", len(st), st)
	}
	for _, s := range st {
		if s.Service != "probed" {
			t.Errorf("target of service %q should not be probed", s.Service)
		}
	}
	// Unknown backends are "unknown" (treated as healthy by expand).
	if _, ok := p.BackendState("none", netip.MustParseAddrPort("198.18.1.10:80")); ok {
		t.Error("a backend without a probe has a health state")
	}
	if st, ok := p.BackendState("probed", netip.MustParseAddrPort("198.18.1.10:80")); !ok || st != dataplane.BackendActive {
		t.Errorf("new target: state %q ok=%v, want active (targets start up)", st, ok)
	}
}
