// Package health actively probes load-balancer backends (tcp, udp, http,
// https, ping, none) and reports when one goes down or comes back.
//
// A Manager holds the desired set of targets (service, backend, probe),
// probes each on its own jittered schedule with a bounded number of probes
// in flight, runs an up/down state machine with consecutive-failure and
// consecutive-success thresholds per target, and calls Config.OnChange on
// every transition. xlbd maps StateUp to dataplane.BackendActive and
// StateDown to dataplane.BackendDown; the "every backend is down, keep them
// all" policy belongs to the daemon, which can read States to apply it.
// See docs/health.md.
package health

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/xlb-dev/xlb/api"
)

// State is the health of one target.
type State string

const (
	// StateUp: the backend may receive new flows. Every target starts up,
	// so that a new service serves at once and a false alarm during
	// start-up cannot black-hole it; a dead backend is marked down after
	// FailureThreshold probes (about 1.5 s with the defaults).
	StateUp State = "up"
	// StateDown: FailureThreshold consecutive probes failed; it comes back
	// up after SuccessThreshold consecutive successes.
	StateDown State = "down"
)

// DefaultMaxConcurrent bounds the probes in flight when Config leaves it 0.
// A probe of a black-holed backend holds its slot for the whole timeout, so
// the bound, not CPU, limits how many dead backends are detected on time:
// 1024 slots / 0.4 s = 2560 timing-out probes per second, i.e. 1280 targets
// dying at once at the default 500 ms interval. Healthy probes take well
// under a millisecond. See docs/health.md.
const DefaultMaxConcurrent = 1024

// Target is one backend of one service to probe. The pair (Service,
// Backend) identifies it across Set calls.
type Target struct {
	Service string
	Backend netip.AddrPort
	// Probe is the service's probe; Port 0 probes Backend's port. The zero
	// Probe (Type "") means no probing, like a nil api.ServiceSpec.Probe.
	Probe api.Probe
	// InitialState is the state of a target that is new to the Manager
	// (zero = StateUp). A restarted daemon passes StateDown for backends
	// that were down before the restart, so a still-dead backend does not
	// get new flows until it passes SuccessThreshold probes.
	InitialState State
}

// Change is one state transition, reported through Config.OnChange.
type Change struct {
	Service  string
	Backend  netip.AddrPort
	From, To State
	// Reason says why, e.g. "3 consecutive failures: tcp connect: ...
	// connection refused" or "2 consecutive successes".
	Reason string
	At     time.Time
}

// Status is a snapshot of one target for status pages and metrics.
type Status struct {
	Service string
	Backend netip.AddrPort
	Type    string
	State   State
	// ConsecutiveSuccesses and ConsecutiveFailures are the current streaks
	// (one of them is 0).
	ConsecutiveSuccesses uint32
	ConsecutiveFailures  uint32
	Probes               uint64 // probes completed since the target was added
	Failures             uint64 // of which failed
	LastError            string // error of the most recent failed probe ("" if none yet)
	LastProbe            time.Time
	LastDuration         time.Duration // how long the last probe took
	// Lag is how late the last probe started against its schedule; a
	// growing lag means MaxConcurrent is too small for the target count.
	Lag time.Duration
	// LastChange is when State last changed, or when the target was added.
	LastChange time.Time
}

// Config configures a Manager.
type Config struct {
	// MaxConcurrent bounds the probes in flight (0: DefaultMaxConcurrent).
	MaxConcurrent int
	// OnChange is called for every transition, in order, from a single
	// goroutine, never while the Manager holds a lock: it may call States
	// or Set. A slow OnChange delays later notifications but not probing.
	// Changes of a target removed meanwhile may still be delivered.
	OnChange func(Change)
}

// Manager probes a set of targets. Create it with New, start it with Run,
// and update the set with Set at any time.
type Manager struct {
	maxConcurrent int
	onChange      func(Change)
	pinger        *pinger

	mu      sync.Mutex
	running bool
	targets map[targetKey]*target
	queue   dueQueue      // targets waiting for their next probe
	wake    chan struct{} // the queue's head changed
	pending []Change      // not yet delivered to onChange
	notify  chan struct{} // pending is not empty
}

type targetKey struct {
	service string
	backend netip.AddrPort
}

type target struct {
	key    targetKey
	spec   spec
	dst    netip.AddrPort // backend address, probe port
	prober prober
	gen    uint64 // bumped on every spec change; stale results are dropped

	state                State
	okStreak, failStreak uint32
	probes, failures     uint64
	lastErr              string
	lastProbe            time.Time
	lastDur, lag         time.Duration
	lastChange           time.Time

	due      time.Time
	index    int  // position in the queue, -1 when not queued
	inFlight bool // a probe is running; it re-queues the target when done
	removed  bool
}

// New returns a Manager that probes nothing until Set and Run are called.
func New(cfg Config) *Manager {
	n := cfg.MaxConcurrent
	if n <= 0 {
		n = DefaultMaxConcurrent
	}
	return &Manager{
		maxConcurrent: n,
		onChange:      cfg.OnChange,
		pinger:        newPinger(),
		targets:       map[targetKey]*target{},
		wake:          make(chan struct{}, 1),
		notify:        make(chan struct{}, 1),
	}
}

// Set replaces the desired set of targets. Targets present before and after
// keep their state and counters (a changed probe keeps the state but
// restarts the streaks, so the new probe must earn its threshold); new
// targets start up and get their first probe at a random point within one
// interval, so that thousands of targets added at once do not fire
// together; removed targets stop being probed. On error (an invalid probe,
// a duplicate target) nothing changes.
func (m *Manager) Set(ctx context.Context, targets []Target) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("health set: %w", err)
	}
	type want struct {
		spec spec
		dst  netip.AddrPort
		init State
	}
	wanted := make(map[targetKey]want, len(targets))
	for _, t := range targets {
		k := targetKey{t.Service, t.Backend}
		if !t.Backend.IsValid() {
			return fmt.Errorf("health target %s/%s: invalid backend address", t.Service, t.Backend)
		}
		if _, dup := wanted[k]; dup {
			return fmt.Errorf("health target %s/%s: listed twice", t.Service, t.Backend)
		}
		p := t.Probe
		if p.Type == "" {
			p.Type = TypeNone
		}
		s, err := normalize(p)
		if err != nil {
			return fmt.Errorf("health target %s/%s: %w", t.Service, t.Backend, err)
		}
		dst := t.Backend
		if s.Port != 0 {
			dst = netip.AddrPortFrom(dst.Addr(), s.Port)
		}
		wanted[k] = want{s, dst, t.InitialState}
	}

	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, t := range m.targets {
		if _, ok := wanted[k]; !ok {
			t.removed = true
			if t.index >= 0 {
				heap.Remove(&m.queue, t.index)
			}
			delete(m.targets, k)
		}
	}
	for k, w := range wanted {
		t, ok := m.targets[k]
		if !ok {
			init := StateUp
			if w.init == StateDown && w.spec.Type != TypeNone {
				init = StateDown
			}
			t = &target{key: k, state: init, lastChange: now, index: -1}
			m.targets[k] = t
		} else if t.spec.equal(w.spec) && t.dst == w.dst {
			continue
		}
		t.spec, t.dst, t.gen = w.spec, w.dst, t.gen+1
		t.prober = newProber(w.spec, m.pinger)
		t.okStreak, t.failStreak = 0, 0
		if w.spec.Type == TypeNone {
			if t.index >= 0 {
				heap.Remove(&m.queue, t.index)
			}
			if t.state == StateDown {
				m.transition(t, StateUp, "probe type none", now)
			}
			continue
		}
		if t.inFlight {
			continue // the running probe re-queues it with the new interval
		}
		t.due = now.Add(jitter(w.spec.Interval))
		if t.index >= 0 {
			heap.Fix(&m.queue, t.index)
		} else {
			heap.Push(&m.queue, t)
		}
	}
	m.kick(m.wake)
	return nil
}

// States returns a snapshot of every target, sorted by service and backend.
func (m *Manager) States() []Status {
	m.mu.Lock()
	out := make([]Status, 0, len(m.targets))
	for _, t := range m.targets {
		out = append(out, t.status())
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Backend.Compare(out[j].Backend) < 0
	})
	return out
}

// State returns the snapshot of one target, for the daemon to program a
// backend in its current state when it (re)creates a service.
func (m *Manager) State(service string, backend netip.AddrPort) (Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.targets[targetKey{service, backend}]
	if !ok {
		return Status{}, false
	}
	return t.status(), true
}

func (t *target) status() Status {
	return Status{
		Service: t.key.service, Backend: t.key.backend, Type: t.spec.Type, State: t.state,
		ConsecutiveSuccesses: t.okStreak, ConsecutiveFailures: t.failStreak,
		Probes: t.probes, Failures: t.failures, LastError: t.lastErr,
		LastProbe: t.lastProbe, LastDuration: t.lastDur, Lag: t.lag, LastChange: t.lastChange,
	}
}

// Run probes until ctx ends, then waits for the probes in flight and
// releases the ICMP sockets. It can be called once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		return errors.New("health: Run called twice")
	}
	m.running = true
	m.mu.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() { m.dispatch(ctx) })
	slots := make(chan struct{}, m.maxConcurrent)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		j, wait := m.next(time.Now())
		if j != nil {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return m.stop(&wg)
			}
			wg.Go(func() {
				defer func() { <-slots }()
				m.runProbe(ctx, j)
			})
			continue
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return m.stop(&wg)
		case <-m.wake:
		case <-timer.C:
		}
	}
}

func (m *Manager) stop(wg *sync.WaitGroup) error {
	wg.Wait()
	m.pinger.close()
	return nil
}

// job is one probe to run, with what it needs copied out of the target so
// the probe runs without the lock.
type job struct {
	t       *target
	gen     uint64
	prober  prober
	dst     netip.AddrPort
	timeout time.Duration
	due     time.Time
}

// next pops the first due target, or says how long to wait for one.
func (m *Manager) next(now time.Time) (*job, time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.queue) == 0 {
		return nil, time.Hour // Set wakes the loop
	}
	if t := m.queue[0]; t.due.After(now) {
		return nil, t.due.Sub(now)
	}
	t := heap.Pop(&m.queue).(*target)
	t.inFlight = true
	return &job{t: t, gen: t.gen, prober: t.prober, dst: t.dst, timeout: t.spec.Timeout, due: t.due}, 0
}

func (m *Manager) runProbe(ctx context.Context, j *job) {
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, j.timeout)
	err := j.prober.probe(pctx, j.dst)
	cancel()
	if ctx.Err() != nil {
		return // stopping: an aborted probe says nothing about the backend
	}
	end := time.Now()

	m.mu.Lock()
	defer m.mu.Unlock()
	t := j.t
	t.inFlight = false
	if t.removed {
		return
	}
	if t.gen == j.gen {
		t.lastProbe, t.lastDur, t.lag = start, end.Sub(start), start.Sub(j.due)
		if to, reason, changed := t.observe(err); changed {
			m.transition(t, to, reason, end)
		}
	}
	if t.spec.Type == TypeNone {
		return
	}
	if t.gen != j.gen {
		t.due = end.Add(jitter(t.spec.Interval))
	} else {
		t.due = nextDue(j.due, start, t.spec.Interval)
	}
	heap.Push(&m.queue, t)
	if t.index == 0 {
		m.kick(m.wake) // the scheduler sleeps until the old head: wake it earlier
	}
}

// nextDue schedules a target's next probe one interval after the last one
// was due, keeping its jittered phase, but never less than one interval
// after the last one started. A late probe therefore lets the schedule slip
// instead of catching up with back-to-back probes: a burst would squeeze
// FailureThreshold failures into less than (FailureThreshold-1) intervals
// and mark a backend down for a blip shorter than the design tolerates
// (and would add load exactly when the prober is already behind).
func nextDue(due, start time.Time, interval time.Duration) time.Time {
	next := due.Add(interval)
	if earliest := start.Add(interval); next.Before(earliest) {
		return earliest
	}
	return next
}

// observe folds one probe result into the streaks and says whether the
// state must change. It is the whole up/down state machine.
func (t *target) observe(err error) (State, string, bool) {
	t.probes++
	if err != nil {
		t.failures++
		t.lastErr = err.Error()
		t.failStreak++
		t.okStreak = 0
		if t.state == StateUp && t.failStreak >= t.spec.FailureThreshold {
			return StateDown, fmt.Sprintf("%d consecutive failures: %v", t.failStreak, err), true
		}
		return t.state, "", false
	}
	t.okStreak++
	t.failStreak = 0
	if t.state == StateDown && t.okStreak >= t.spec.SuccessThreshold {
		return StateUp, fmt.Sprintf("%d consecutive successes", t.okStreak), true
	}
	return t.state, "", false
}

// transition records a state change and queues its notification. m.mu held.
func (m *Manager) transition(t *target, to State, reason string, at time.Time) {
	c := Change{Service: t.key.service, Backend: t.key.backend, From: t.state, To: to, Reason: reason, At: at}
	t.state, t.lastChange = to, at
	m.pending = append(m.pending, c)
	m.kick(m.notify)
}

// dispatch delivers changes in order until ctx ends; undelivered changes
// are dropped then, as the daemon is stopping too.
func (m *Manager) dispatch(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.notify:
		}
		m.mu.Lock()
		batch := m.pending
		m.pending = nil
		m.mu.Unlock()
		for _, c := range batch {
			if ctx.Err() != nil {
				return
			}
			if m.onChange != nil {
				m.onChange(c)
			}
		}
	}
}

func (m *Manager) kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// jitter returns a random offset in [0, d) that spreads targets over their
// interval.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// dueQueue is a min-heap of targets by due time.
type dueQueue []*target

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q dueQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *dueQueue) Push(x any) {
	t := x.(*target)
	t.index = len(*q)
	*q = append(*q, t)
}
func (q *dueQueue) Pop() any {
	old := *q
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.index = -1
	*q = old[:len(old)-1]
	return t
}
