package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/daemon/fakedp"
	"github.com/xlb-dev/xlb/internal/state"
)

// flushingDP is the fake datapath plus FlushBackendFlows, recording calls.
type flushingDP struct {
	*fakedp.Fake
	mu      sync.Mutex
	flushes []string // "dpservice backend"
}

func (f *flushingDP) FlushBackendFlows(ctx context.Context, service string, addr netip.Addr, port uint16) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushes = append(f.flushes, service+" "+netip.AddrPortFrom(addr, port).String())
	return 1, nil
}

// take returns and forgets the recorded flushes.
func (f *flushingDP) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.flushes
	f.flushes = nil
	return out
}

type memStore struct{ snap state.Snapshot }

func (s *memStore) Load(context.Context) (state.Snapshot, error)      { return s.snap, nil }
func (s *memStore) Save(_ context.Context, snap state.Snapshot) error { s.snap = snap; return nil }

// fakeTimers replaces time.AfterFunc: timers fire only when the test says.
type fakeTimers struct {
	mu     sync.Mutex
	timers []*fakeTimer
}

type fakeTimer struct {
	d       time.Duration
	f       func()
	stopped bool
	fired   bool
}

func (ft *fakeTimers) after(d time.Duration, f func()) func() bool {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	t := &fakeTimer{d: d, f: f}
	ft.timers = append(ft.timers, t)
	return func() bool {
		ft.mu.Lock()
		defer ft.mu.Unlock()
		was := !t.stopped && !t.fired
		t.stopped = true
		return was
	}
}

// pending returns the durations of the timers neither stopped nor fired.
func (ft *fakeTimers) pending() []time.Duration {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	var out []time.Duration
	for _, t := range ft.timers {
		if !t.stopped && !t.fired {
			out = append(out, t.d)
		}
	}
	return out
}

// fireAll fires every pending timer (outside the lock, as time.AfterFunc).
func (ft *fakeTimers) fireAll() {
	ft.mu.Lock()
	var fs []func()
	for _, t := range ft.timers {
		if !t.stopped && !t.fired {
			t.fired = true
			fs = append(fs, t.f)
		}
	}
	ft.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// healthMap is a settable BackendHealth.
type healthMap struct {
	mu   sync.Mutex
	down map[string]bool // "service backend"
}

func (h *healthMap) BackendState(s string, ap netip.AddrPort) (dataplane.BackendState, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down[s+" "+ap.String()] {
		return dataplane.BackendDown, true
	}
	return dataplane.BackendActive, true
}

func (h *healthMap) set(key string, down bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.down[key] = down
}

func newPolicyManager(t *testing.T) (*Manager, *flushingDP, *healthMap, *fakeTimers) {
	t.Helper()
	dp := &flushingDP{Fake: fakedp.New("eth0")}
	hm := &healthMap{down: map[string]bool{}}
	ft := &fakeTimers{}
	m := NewManager(ManagerConfig{Dataplane: dp, Store: &memStore{}, Logger: slog.Default(), Health: hm})
	m.after = ft.after
	if err := m.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return m, dp, hm, ft
}

func policySvc(onDown string, drain uint32, weights ...uint32) api.Service {
	s := api.Service{Name: "web", Spec: api.ServiceSpec{VIPs: []string{"192.0.2.1", "2001:db8::1"}, Port: 80, Protocol: "tcp",
		DrainTimeoutSeconds: drain, Probe: &api.Probe{Type: "tcp", OnDown: onDown}}}
	for i, w := range weights {
		s.Spec.Backends = append(s.Spec.Backends, api.Backend{Address: fmt.Sprintf("10.0.0.%d", i+1), Port: 8080, Weight: &w})
	}
	return s
}

func put(t *testing.T, m *Manager, s api.Service) {
	t.Helper()
	if _, _, err := m.PutService(t.Context(), s); err != nil {
		t.Fatalf("PutService: %v", err)
	}
}

func wantFlushes(t *testing.T, dp *flushingDP, what string, want ...string) {
	t.Helper()
	if got := dp.take(); !slices.Equal(got, want) {
		t.Errorf("%s: flushes %q, want %q", what, got, want)
	}
}

func TestOnDownReset(t *testing.T) {
	m, dp, hm, _ := newPolicyManager(t)
	ctx := t.Context()
	put(t, m, policySvc("reset", 0, 1, 1, 1))
	wantFlushes(t, dp, "all up")

	hm.set("web 10.0.0.2:8080", true)
	if err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	wantFlushes(t, dp, "b2 down", "web/v4 10.0.0.2:8080")
	if err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	wantFlushes(t, dp, "b2 still down: flushed once only")

	// Up, then down again: flushed again.
	hm.set("web 10.0.0.2:8080", false)
	m.Reconcile(ctx)
	wantFlushes(t, dp, "b2 up")
	hm.set("web 10.0.0.2:8080", true)
	m.Reconcile(ctx)
	wantFlushes(t, dp, "b2 down again", "web/v4 10.0.0.2:8080")

	// All down: the all-down policy keeps them selectable, nothing is cut.
	hm.set("web 10.0.0.1:8080", true)
	hm.set("web 10.0.0.3:8080", true)
	m.Reconcile(ctx)
	wantFlushes(t, dp, "all down (kept serving)")
	hm.set("web 10.0.0.1:8080", false)
	hm.set("web 10.0.0.2:8080", false)
	hm.set("web 10.0.0.3:8080", false)
	m.Reconcile(ctx)

	// keep: a down backend's flows stay.
	put(t, m, policySvc("keep", 0, 1, 1, 1))
	hm.set("web 10.0.0.3:8080", true)
	m.Reconcile(ctx)
	wantFlushes(t, dp, "keep")
	// Switching to reset while it is down cuts them then.
	put(t, m, policySvc("reset", 0, 1, 1, 1))
	wantFlushes(t, dp, "keep -> reset while down", "web/v4 10.0.0.3:8080")
}

func TestDrainTimeout(t *testing.T) {
	m, dp, _, ft := newPolicyManager(t)
	put(t, m, policySvc("", 5, 1, 1))
	if p := ft.pending(); len(p) != 0 {
		t.Fatalf("timers %v with nothing draining", p)
	}

	// Drain b1: a 5 s timer; firing it flushes b1 once.
	put(t, m, policySvc("", 5, 0, 1))
	if p := ft.pending(); !slices.Equal(p, []time.Duration{5 * time.Second}) {
		t.Fatalf("pending timers %v, want one of 5s", p)
	}
	wantFlushes(t, dp, "drain started")
	ft.fireAll()
	wantFlushes(t, dp, "drain timeout", "web/v4 10.0.0.1:8080")
	put(t, m, policySvc("", 5, 0, 1)) // unchanged re-apply
	if p := ft.pending(); len(p) != 0 {
		t.Errorf("timer re-armed after it fired while still draining: %v", p)
	}
	wantFlushes(t, dp, "re-apply after the timeout")

	// Undrain cancels; drain again starts a new countdown.
	put(t, m, policySvc("", 5, 1, 1))
	put(t, m, policySvc("", 5, 0, 1))
	put(t, m, policySvc("", 5, 1, 1))
	if p := ft.pending(); len(p) != 0 {
		t.Errorf("timer not cancelled when the weight went back above 0: %v", p)
	}
	ft.fireAll()
	wantFlushes(t, dp, "cancelled timer")

	// Timeout 0: no timer. A changed timeout is re-armed (from the start).
	put(t, m, policySvc("", 0, 0, 1))
	if p := ft.pending(); len(p) != 0 {
		t.Errorf("timers %v with drainTimeoutSeconds 0", p)
	}
	put(t, m, policySvc("", 60, 0, 1))
	put(t, m, policySvc("", 30, 0, 1))
	if p := ft.pending(); len(p) != 1 || p[0] > 30*time.Second || p[0] < 29*time.Second {
		t.Errorf("after changing the timeout to 30s: pending %v, want one of ~30s", p)
	}

	// Removing the backend cancels.
	s := policySvc("", 30, 0, 1)
	s.Spec.Backends = s.Spec.Backends[1:]
	put(t, m, s)
	if p := ft.pending(); len(p) != 0 {
		t.Errorf("timer not cancelled when the backend was removed: %v", p)
	}

	// Stop cancels everything, and a timer firing late does nothing.
	put(t, m, policySvc("", 30, 0, 1))
	m.Stop()
	if p := ft.pending(); len(p) != 0 {
		t.Errorf("timers left after Stop: %v", p)
	}
	wantFlushes(t, dp, "after Stop")
}
