package daemon

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
)

// flowFlusher is implemented by the eBPF datapath (dataplane.Dataplane):
// it deletes the conntrack entries of one backend's established flows. A
// datapath without it (the fakes of other tests) simply keeps flows.
type flowFlusher interface {
	FlushBackendFlows(ctx context.Context, service string, addr netip.Addr, port uint16) (int, error)
}

// flowRef names one backend of one datapath service ("<api name>/v4").
type flowRef struct {
	dpService string
	backend   netip.AddrPort
}

// drainTimer is the pending flush of one draining backend.
type drainTimer struct {
	since   time.Time     // when the backend was first seen draining
	timeout time.Duration // spec.drainTimeoutSeconds it was armed with
	stop    func() bool
}

// flowPolicy holds what the two established-flow policies need between
// applies. It is guarded by Manager.mu.
//
//   - spec.probe.onDown "reset": when a backend becomes down (as applied to
//     the datapath, i.e. after the all-down policy), its flows are flushed
//     once, right after the Apply that took it out of selection. reset
//     remembers which down backends were flushed, so a re-apply does not
//     flush again and a backend that comes back up and goes down again is
//     flushed again.
//   - spec.drainTimeoutSeconds: a backend with weight 0 gets a timer when
//     it is first seen draining; when it fires, the remaining flows are
//     flushed (if the backend is still draining with that timeout). The
//     timer is cancelled when the weight goes back above 0, the backend or
//     its service is removed, or the timeout is set to 0; a changed timeout
//     is re-armed from the original drain start. Timers live in memory
//     only: after a restart the countdown starts again from the restore.
type flowPolicy struct {
	reset   map[flowRef]bool
	drains  map[flowRef]*drainTimer
	stopped bool
}

// afterFunc is time.AfterFunc, replaceable in tests.
type afterFunc func(d time.Duration, f func()) (stop func() bool)

func realAfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// applyFlowPoliciesLocked runs after every successful Apply of applied
// (the expansion of m.desired). Called with mu held.
func (m *Manager) applyFlowPoliciesLocked(ctx context.Context, applied []dataplane.Service) {
	fp := &m.flows
	if fp.stopped {
		return
	}
	if fp.reset == nil {
		fp.reset, fp.drains = map[flowRef]bool{}, map[flowRef]*drainTimer{}
	}
	now := time.Now()
	downNow := map[flowRef]bool{}
	draining := map[flowRef]time.Duration{}
	for _, d := range applied {
		s, ok := m.desired[apiName(d.Name)]
		if !ok {
			continue
		}
		onDown := api.OnDownKeep
		if s.Spec.Probe != nil && s.Spec.Probe.OnDown != "" {
			onDown = s.Spec.Probe.OnDown
		}
		timeout := time.Duration(s.Spec.DrainTimeoutSeconds) * time.Second
		for _, b := range d.Backends {
			ref := flowRef{d.Name, netip.AddrPortFrom(b.Addr, b.Port)}
			if b.State == dataplane.BackendDown && onDown == api.OnDownReset {
				downNow[ref] = true
			}
			if b.Weight == 0 && timeout > 0 {
				draining[ref] = timeout
			}
		}
	}

	for ref := range fp.reset {
		if !downNow[ref] {
			delete(fp.reset, ref) // up again (or gone, or policy keep): next down flushes anew
		}
	}
	for _, ref := range sortedRefs(downNow) {
		if fp.reset[ref] {
			continue
		}
		fp.reset[ref] = true
		m.flushLocked(ctx, ref, "backend down, probe.onDown reset")
	}

	for ref, dt := range fp.drains {
		timeout, ok := draining[ref]
		if ok && timeout == dt.timeout {
			continue
		}
		if dt.stop != nil {
			dt.stop()
		}
		if !ok {
			delete(fp.drains, ref) // active again, removed, or no timeout now
			continue
		}
		// Timeout changed: re-armed below, from the original start.
		fp.drains[ref] = &drainTimer{since: dt.since, timeout: timeout}
	}
	for ref, timeout := range draining {
		dt := fp.drains[ref]
		if dt == nil {
			dt = &drainTimer{since: now, timeout: timeout}
			fp.drains[ref] = dt
		}
		if dt.stop != nil {
			continue // armed already
		}
		wait := max(0, dt.since.Add(timeout).Sub(now))
		dt.stop = m.after(wait, func() { m.drainExpired(ref, dt) })
	}
}

// drainExpired flushes a draining backend's flows when its timer fires,
// unless the timer was cancelled or replaced meanwhile.
func (m *Manager) drainExpired(ref flowRef, dt *drainTimer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.flows.stopped || m.flows.drains[ref] != dt {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), mutationTimeout)
	defer cancel()
	// The timer stays in drains (fired): the backend is not flushed again
	// while it keeps draining; it is dropped when the backend leaves
	// draining, so a later drain starts a new countdown.
	m.flushLocked(ctx, ref, "drain timeout passed")
}

// flushLocked cuts the established flows of one backend. Errors are
// logged: the flows then live on as with "keep".
func (m *Manager) flushLocked(ctx context.Context, ref flowRef, why string) {
	ff, ok := m.cfg.Dataplane.(flowFlusher)
	if !ok {
		return
	}
	n, err := ff.FlushBackendFlows(ctx, ref.dpService, ref.backend.Addr(), ref.backend.Port())
	if err != nil {
		m.log.Error("cutting the established flows of a backend failed", "service", ref.dpService, "backend", ref.backend.String(), "reason", why, "error", err)
		return
	}
	m.log.Info("cut the established flows of a backend", "service", ref.dpService, "backend", ref.backend.String(), "reason", why, "flows", n)
}

// Stop cancels the pending drain timers; no flow is flushed afterwards.
// Call it before closing the datapath.
func (m *Manager) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flows.stopped = true
	for ref, dt := range m.flows.drains {
		if dt.stop != nil {
			dt.stop()
		}
		delete(m.flows.drains, ref)
	}
}

func sortedRefs(set map[flowRef]bool) []flowRef {
	out := make([]flowRef, 0, len(set))
	for r := range set {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b flowRef) int {
		if c := strings.Compare(a.dpService, b.dpService); c != 0 {
			return c
		}
		return a.backend.Compare(b.backend)
	})
	return out
}
