package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
)

// recorder collects the changes a Manager reports.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) onChange(c Change) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
}

func (r *recorder) all() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Change(nil), r.changes...)
}

// waitChange waits for the n-th change (1-based) and returns it.
func (r *recorder) waitChange(t *testing.T, n int, timeout time.Duration) Change {
	t.Helper()
	var c Change
	poll(t, timeout, func() error {
		all := r.all()
		if len(all) < n {
			return fmt.Errorf("%d changes so far, waiting for change %d", len(all), n)
		}
		c = all[n-1]
		return nil
	})
	return c
}

// startManager runs a Manager until the test ends.
func startManager(t *testing.T, targets []Target) (*Manager, *recorder) {
	t.Helper()
	rec := &recorder{}
	m := New(Config{OnChange: rec.onChange})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if err := m.Set(ctx, targets); err != nil {
		t.Fatalf("Set: %v", err)
	}
	return m, rec
}

func mustState(t *testing.T, m *Manager, svc string, b netip.AddrPort) Status {
	t.Helper()
	s, ok := m.State(svc, b)
	if !ok {
		t.Fatalf("no state for %s/%s", svc, b)
	}
	return s
}

// waitProbes waits until the target has completed at least n probes.
func waitProbes(t *testing.T, m *Manager, svc string, b netip.AddrPort, n uint64) Status {
	t.Helper()
	var s Status
	poll(t, 10*time.Second, func() error {
		s = mustState(t, m, svc, b)
		if s.Probes < n {
			return fmt.Errorf("%d probes so far, want %d", s.Probes, n)
		}
		return nil
	})
	return s
}

// With the default probe settings: a healthy backend stays up, a killed
// listener (RST) is detected within the threshold, a relistened one comes
// back after the success threshold. Detection times are logged; only a
// generous bound is asserted.
func TestManagerDetectsDeadAndRecovers(t *testing.T) {
	n := newTNet(t)
	for _, addr := range []netip.Addr{n.ns4, n.ns6} {
		t.Run(addr.String(), func(t *testing.T) {
			l := n.listenTCP(t, netip.AddrPortFrom(addr, 0).String())
			serveTCP(l)
			b := netip.MustParseAddrPort(l.Addr().String())
			m, rec := startManager(t, []Target{{Service: "web", Backend: b, Probe: api.Probe{Type: "tcp"}}})

			s := waitProbes(t, m, "web", b, 3)
			if s.State != StateUp || s.Failures != 0 {
				t.Fatalf("healthy backend: %+v", s)
			}

			l.Close()
			killed := time.Now()
			c := rec.waitChange(t, 1, 10*time.Second)
			t.Logf("listener closed: down after %v (%s)", c.At.Sub(killed), c.Reason)
			if c.Service != "web" || c.Backend != b || c.From != StateUp || c.To != StateDown {
				t.Fatalf("change = %+v, want web %s up→down", c, b)
			}
			if !strings.Contains(c.Reason, "3 consecutive failures") || !strings.Contains(c.Reason, "connection refused") {
				t.Errorf("reason %q", c.Reason)
			}

			l2 := n.listenTCP(t, b.String())
			serveTCP(l2)
			back := time.Now()
			c = rec.waitChange(t, 2, 10*time.Second)
			t.Logf("listener back: up after %v (%s)", c.At.Sub(back), c.Reason)
			if c.From != StateDown || c.To != StateUp || c.Reason != "2 consecutive successes" {
				t.Fatalf("change = %+v, want down→up after 2 successes", c)
			}
			if s := mustState(t, m, "web", b); s.State != StateUp || s.ConsecutiveFailures != 0 {
				t.Fatalf("after recovery: %+v", s)
			}
		})
	}
}

// A real server process killed by PID, and a host that vanishes (interface
// down: probes time out instead of being refused), both with defaults.
func TestManagerDetectsKilledProcessAndDeadHost(t *testing.T) {
	n := newTNet(t)
	cmd, b1 := startHelper(t, n.name, "tcp", netip.AddrPortFrom(n.ns4, 0).String())
	l := n.listenTCP(t, netip.AddrPortFrom(n.ns6, 0).String())
	serveTCP(l)
	b2 := netip.MustParseAddrPort(l.Addr().String())
	pingB := netip.AddrPortFrom(n.ns4, 0)
	m, rec := startManager(t, []Target{
		{Service: "proc", Backend: b1, Probe: api.Probe{Type: "tcp"}},
		{Service: "host", Backend: b2, Probe: api.Probe{Type: "tcp"}},
		{Service: "icmp", Backend: pingB, Probe: api.Probe{Type: "ping"}},
	})
	waitProbes(t, m, "proc", b1, 2)
	waitProbes(t, m, "host", b2, 2)
	waitProbes(t, m, "icmp", pingB, 2)
	if len(rec.all()) != 0 {
		t.Fatalf("changes while healthy: %+v", rec.all())
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed := time.Now()
	c := rec.waitChange(t, 1, 10*time.Second)
	t.Logf("process killed: down after %v (%s)", c.At.Sub(killed), c.Reason)
	if c.Service != "proc" || c.To != StateDown {
		t.Fatalf("first change %+v, want proc down", c)
	}

	n.setNSLink(t, false)
	cut := time.Now()
	down := map[string]time.Duration{}
	poll(t, 10*time.Second, func() error {
		for _, c := range rec.all()[1:] {
			if c.To == StateDown {
				down[c.Service] = c.At.Sub(cut)
			}
		}
		if len(down) < 2 {
			return fmt.Errorf("down so far: %v", down)
		}
		return nil
	})
	t.Logf("interface down: tcp down after %v, ping down after %v", down["host"], down["icmp"])
	if s := mustState(t, m, "host", b2); !strings.Contains(s.LastError, "timeout") {
		t.Errorf("dead host error %q, want a timeout", s.LastError)
	}
}

// flakyHTTP serves 200 except for the requests whose (1-based) numbers are
// in fail, which get 503.
type flakyHTTP struct {
	count atomic.Int64
	fail  map[int64]bool
}

func (f *flakyHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.fail[f.count.Add(1)] {
		http.Error(w, "hiccup", http.StatusServiceUnavailable)
	}
}

// One or two lost probes in a row (below the failure threshold of 3) never
// mark a backend down; three do.
func TestManagerNoFlap(t *testing.T) {
	n := newTNet(t)
	for _, tc := range []struct {
		fail     []int64
		wantDown bool
	}{
		{fail: []int64{3}},
		{fail: []int64{3, 4}},
		{fail: []int64{3, 5, 7, 9}}, // alternating: never 3 in a row
		{fail: []int64{3, 4, 5}, wantDown: true},
	} {
		t.Run(fmt.Sprint(tc.fail), func(t *testing.T) {
			f := &flakyHTTP{fail: map[int64]bool{}}
			for _, i := range tc.fail {
				f.fail[i] = true
			}
			srv := n.serveHTTP(t, netip.AddrPortFrom(n.ns4, 0).String(), f, nil)
			// A short interval keeps the test quick; the state machine
			// does not depend on the cadence.
			probe := api.Probe{Type: "http", IntervalMillis: 100}
			m, rec := startManager(t, []Target{{Service: "web", Backend: srv.addr, Probe: probe}})
			s := waitProbes(t, m, "web", srv.addr, uint64(tc.fail[len(tc.fail)-1]+5))
			if s.Failures != uint64(len(tc.fail)) {
				t.Fatalf("failures = %d, want %d (%+v)", s.Failures, len(tc.fail), s)
			}
			got := rec.all()
			if !tc.wantDown {
				if len(got) != 0 || s.State != StateUp {
					t.Fatalf("flapped: state %s, changes %+v", s.State, got)
				}
				return
			}
			// Down after the third failure, up again after two successes.
			if len(got) != 2 || got[0].To != StateDown || got[1].To != StateUp {
				t.Fatalf("changes %+v, want down then up", got)
			}
			if !strings.Contains(got[0].Reason, "status 503") {
				t.Errorf("reason %q", got[0].Reason)
			}
		})
	}
}

// Set is idempotent: unchanged targets keep state and counters, changed
// probes keep the state, removed targets disappear, new ones start up.
func TestManagerSetKeepsState(t *testing.T) {
	n := newTNet(t)
	l := n.listenTCP(t, netip.AddrPortFrom(n.ns4, 0).String())
	serveTCP(l)
	good := netip.MustParseAddrPort(l.Addr().String())
	dl := n.listenTCP(t, netip.AddrPortFrom(n.ns4, 0).String())
	dead := netip.MustParseAddrPort(dl.Addr().String())
	dl.Close() // nothing listens: refused
	fast := api.Probe{Type: "tcp", IntervalMillis: 100}
	targets := []Target{
		{Service: "a", Backend: good, Probe: fast},
		{Service: "a", Backend: dead, Probe: fast},
	}
	m, rec := startManager(t, targets)
	rec.waitChange(t, 1, 10*time.Second)
	waitProbes(t, m, "a", good, 5)
	before := mustState(t, m, "a", dead)
	if before.State != StateDown {
		t.Fatalf("dead backend: %+v", before)
	}

	// Same set plus a new service: nothing resets.
	ctx := context.Background()
	newcomer := netip.AddrPortFrom(n.ns4, good.Port())
	if err := m.Set(ctx, append(targets, Target{Service: "b", Backend: newcomer, Probe: fast})); err != nil {
		t.Fatal(err)
	}
	after := mustState(t, m, "a", dead)
	if after.State != StateDown || after.Probes < before.Probes || after.LastChange != before.LastChange {
		t.Fatalf("unchanged target was reset: before %+v after %+v", before, after)
	}
	if s := mustState(t, m, "b", newcomer); s.State != StateUp {
		t.Fatalf("new target: %+v", s)
	}

	// A changed probe keeps the state but restarts the streak.
	slower := fast
	slower.IntervalMillis = 200
	changed := []Target{{Service: "a", Backend: good, Probe: fast}, {Service: "a", Backend: dead, Probe: slower}}
	if err := m.Set(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if s := mustState(t, m, "a", dead); s.State != StateDown || s.ConsecutiveFailures != 0 {
		t.Fatalf("changed probe: %+v, want down with a fresh streak", s)
	}
	if _, ok := m.State("b", newcomer); ok {
		t.Fatal("removed target still present")
	}
	if got := len(m.States()); got != 2 {
		t.Fatalf("%d targets, want 2", got)
	}
	// It stays down (no up/down noise from the change) while still probed.
	waitProbes(t, m, "a", dead, after.Probes+3)
	if c := rec.all(); len(c) != 1 {
		t.Fatalf("changes %+v, want only the first down", c)
	}

	// Switching the probe off brings the backend up at once.
	if err := m.Set(ctx, []Target{{Service: "a", Backend: dead, Probe: api.Probe{Type: "none"}}}); err != nil {
		t.Fatal(err)
	}
	c := rec.waitChange(t, 2, 10*time.Second)
	if c.Backend != dead || c.To != StateUp || c.Reason != "probe type none" {
		t.Fatalf("change %+v, want up by probe type none", c)
	}

	// Invalid input changes nothing.
	err := m.Set(ctx, []Target{{Service: "x", Backend: good, Probe: api.Probe{Type: "icmp"}}})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "type" {
		t.Fatalf("invalid type: err %v, want a FieldError on type", err)
	}
	if len(m.States()) != 1 {
		t.Fatalf("a failed Set changed the targets: %+v", m.States())
	}
}

// The state machine on its own (pure logic).
func TestObserve(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		start   State
		results []error
		want    []State // state after each result
	}{
		{"stays up on 2 failures", StateUp, []error{boom, boom, nil, boom, boom, nil}, []State{StateUp, StateUp, StateUp, StateUp, StateUp, StateUp}},
		{"down on the 3rd failure", StateUp, []error{boom, boom, boom, boom}, []State{StateUp, StateUp, StateDown, StateDown}},
		{"up on the 2nd success", StateDown, []error{nil, boom, nil, nil, nil}, []State{StateDown, StateDown, StateDown, StateUp, StateUp}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := normalize(api.Probe{Type: "tcp"})
			if err != nil {
				t.Fatal(err)
			}
			tg := &target{spec: s, state: tc.start}
			for i, r := range tc.results {
				if to, _, changed := tg.observe(r); changed {
					tg.state = to
				}
				if tg.state != tc.want[i] {
					t.Fatalf("after result %d (%v): %s, want %s", i, r, tg.state, tc.want[i])
				}
			}
		})
	}
}

// Probes of one target start at least one interval apart, even when the
// prober fell behind: no catch-up bursts.
func TestNextDue(t *testing.T) {
	t0 := time.Unix(1000, 0)
	const i = 500 * time.Millisecond
	for _, tc := range []struct {
		name       string
		late       time.Duration // start - due
		wantAfterT time.Duration // next - due
	}{
		{"on time keeps the phase", 0, i},
		{"late slips by the lag", 200 * time.Millisecond, i + 200*time.Millisecond},
		{"very late slips, no burst", 3 * i, 4 * i},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := t0.Add(tc.late)
			next := nextDue(t0, start, i)
			if got := next.Sub(t0); got != tc.wantAfterT {
				t.Fatalf("next - due = %v, want %v", got, tc.wantAfterT)
			}
			if next.Sub(start) < i {
				t.Fatalf("next probe %v after the last start, want at least %v", next.Sub(start), i)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	s, err := normalize(api.Probe{Type: "http"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Interval != 500*time.Millisecond || s.Timeout != 400*time.Millisecond || s.FailureThreshold != 3 || s.SuccessThreshold != 2 || s.Method != "GET" || s.Path != "/" {
		t.Fatalf("defaults: %+v", s)
	}
	if s, _ := normalize(api.Probe{Type: "tcp", IntervalMillis: 5000}); s.Timeout != time.Second {
		t.Fatalf("timeout for a 5 s interval: %v, want 1s", s.Timeout)
	}
	if s, _ := normalize(api.Probe{Type: "tcp", IntervalMillis: 200}); s.Timeout != 160*time.Millisecond {
		t.Fatalf("timeout for a 200 ms interval: %v, want 160ms", s.Timeout)
	}
	a, _ := normalize(api.Probe{Type: "http", ExpectStatus: []int{}})
	b, _ := normalize(api.Probe{Type: "http"})
	if !a.equal(b) {
		t.Fatal("an empty and a nil expectStatus differ")
	}
	for _, tc := range []struct {
		p     api.Probe
		field string
	}{
		{api.Probe{Type: "icmp"}, "type"},
		{api.Probe{Type: "ping", Port: 80}, "port"},
		{api.Probe{Type: "tcp", IntervalMillis: 10}, "intervalMillis"},
		{api.Probe{Type: "tcp", TimeoutMillis: 600}, "timeoutMillis"},
		{api.Probe{Type: "tcp", FailureThreshold: 1000}, "failureThreshold"},
		{api.Probe{Type: "http", Path: "health"}, "path"},
		{api.Probe{Type: "http", ExpectStatus: []int{200, 99}}, "expectStatus[1]"},
	} {
		_, err := normalize(tc.p)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || fe.Allowed == "" {
			t.Errorf("%+v: err %v, want a FieldError on %s", tc.p, err, tc.field)
		}
	}
}

// Thousands of targets with the default settings: 1,000 services × 2
// backends (4,000 probes/s). When one backend dies, all 1,000 of its targets
// go down and none of the other backend's do.
func TestManagerManyTargets(t *testing.T) {
	n := newTNet(t)
	la := n.listenTCP(t, netip.AddrPortFrom(n.ns4, 0).String())
	lb := n.listenTCP(t, netip.AddrPortFrom(n.ns6, 0).String())
	serveTCP(la)
	serveTCP(lb)
	a := netip.MustParseAddrPort(la.Addr().String())
	b := netip.MustParseAddrPort(lb.Addr().String())
	const services = 1000
	var targets []Target
	for i := range services {
		svc := fmt.Sprintf("svc-%04d", i)
		targets = append(targets,
			Target{Service: svc, Backend: a, Probe: api.Probe{Type: "tcp"}},
			Target{Service: svc, Backend: b, Probe: api.Probe{Type: "tcp"}})
	}
	m, rec := startManager(t, targets)
	poll(t, 10*time.Second, func() error {
		for _, s := range m.States() {
			if s.Probes < 2 {
				return fmt.Errorf("%s/%s: %d probes", s.Service, s.Backend, s.Probes)
			}
		}
		return nil
	})
	if c := rec.all(); len(c) != 0 {
		t.Fatalf("%d changes while all healthy, first %+v", len(c), c[0])
	}

	var failsB uint64
	for _, s := range m.States() {
		if s.Backend == b {
			failsB += s.Failures
		}
	}
	t.Logf("failed probes of the backend before it is killed: %d", failsB)
	lb.Close()
	killed := time.Now()
	poll(t, 10*time.Second, func() error {
		if got := len(rec.all()); got < services {
			return fmt.Errorf("%d of %d targets down", got, services)
		}
		return nil
	})
	var first, last time.Duration
	seen := map[string]bool{}
	for i, c := range rec.all() {
		if c.Backend != b || c.To != StateDown {
			t.Fatalf("unexpected change %+v", c)
		}
		if seen[c.Service] {
			t.Fatalf("two changes for %s", c.Service)
		}
		seen[c.Service] = true
		if d := c.At.Sub(killed); i == 0 || d < first {
			first = d
		}
		last = max(last, c.At.Sub(killed))
	}
	var maxLag time.Duration
	var failsA uint64
	for _, s := range m.States() {
		maxLag = max(maxLag, s.Lag)
		if s.Backend == a {
			failsA += s.Failures
		}
	}
	// Probes of the live backend that failed (a starved accept loop under
	// -race drops SYNs): a dead backend's streak may have started early.
	t.Logf("failed probes of the live backend: %d", failsA)
	t.Logf("%d targets of the dead backend down between %v and %v after the kill; max schedule lag %v",
		services, first.Round(time.Millisecond), last.Round(time.Millisecond), maxLag.Round(time.Millisecond))
}
