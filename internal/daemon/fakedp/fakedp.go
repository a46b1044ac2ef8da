// Package fakedp is an in-memory datapath for tests of the daemon and the
// API: it records what is applied and reports fixed counters for it.
package fakedp

import (
	"context"
	"slices"
	"sync"

	"github.com/xlb-dev/xlb/dataplane"
)

// Counters reported for every applied service and backend.
const (
	ServicePackets = 100
	ServiceBytes   = 6400
	ServiceFlows   = 3
	BackendPackets = 7
)

// Fake implements daemon.ManagedDataplane.
type Fake struct {
	mu         sync.Mutex
	applied    []dataplane.Service
	applyCalls int
	failNext   error
	failAlways error
	flows      []dataplane.Flow
	lastFilter dataplane.FlowFilter
	attach     []dataplane.AttachState
	closed     bool
	destroyed  bool
}

// New returns a Fake attached to the given interfaces.
func New(ifaces ...string) *Fake {
	f := &Fake{}
	for _, i := range ifaces {
		f.attach = append(f.attach, dataplane.AttachState{Name: i, Attached: true, Mode: "tcx"})
	}
	return f
}

// Apply records desired (or fails as configured).
func (f *Fake) Apply(ctx context.Context, desired []dataplane.Service) (dataplane.ApplyResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applyCalls++
	if err := f.failNext; err != nil {
		f.failNext = nil
		return dataplane.ApplyResult{}, err
	}
	if f.failAlways != nil {
		return dataplane.ApplyResult{}, f.failAlways
	}
	f.applied = slices.Clone(desired)
	return dataplane.ApplyResult{}, nil
}

// FailNextApply makes the next Apply return err.
func (f *Fake) FailNextApply(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// FailApplies makes every Apply return err (nil: succeed again).
func (f *Fake) FailApplies(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAlways = err
}

// Applied returns the last successfully applied set and the number of
// Apply calls so far.
func (f *Fake) Applied() ([]dataplane.Service, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.applied), f.applyCalls
}

// Stats reports fixed counters for every applied service.
func (f *Fake) Stats(ctx context.Context) ([]dataplane.ServiceStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]dataplane.ServiceStats, 0, len(f.applied))
	for _, s := range f.applied {
		st := dataplane.ServiceStats{
			Name:     s.Name,
			Counters: dataplane.Counters{Packets: ServicePackets, Bytes: ServiceBytes, NewFlows: ServiceFlows},
			Drops:    map[string]uint64{"no_backend": 0, "src_denied": 2},
			Flows:    ServiceFlows,
		}
		for _, b := range s.Backends {
			state := b.State
			if state == "" {
				state = dataplane.BackendActive
			}
			st.Backends = append(st.Backends, dataplane.BackendStats{Addr: b.Addr, Port: b.Port, State: state,
				Counters: dataplane.Counters{Packets: BackendPackets, Bytes: 64 * BackendPackets, NewFlows: 1}, Active: 1})
		}
		out = append(out, st)
	}
	return out, nil
}

// SetFlows sets what Flows returns.
func (f *Fake) SetFlows(flows []dataplane.Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flows = flows
}

// LastFilter is the filter of the last Flows call.
func (f *Fake) LastFilter() dataplane.FlowFilter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastFilter
}

// Flows returns the flows set with SetFlows; the cursor is "next" when
// more than the limit exist.
func (f *Fake) Flows(ctx context.Context, filter dataplane.FlowFilter) ([]dataplane.Flow, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastFilter = filter
	if filter.Limit > 0 && len(f.flows) > filter.Limit {
		return slices.Clone(f.flows[:filter.Limit]), "next", nil
	}
	return slices.Clone(f.flows), "", nil
}

// SetAttachments replaces the reported interface states.
func (f *Fake) SetAttachments(a []dataplane.AttachState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attach = a
}

// Interfaces reports the attach states.
func (f *Fake) Interfaces() []dataplane.AttachState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.attach)
}

// ConntrackUsage reports two entries per flow of every applied service.
func (f *Fake) ConntrackUsage(ctx context.Context) (dataplane.ConntrackUsage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return dataplane.ConntrackUsage{Entries: 2 * ServiceFlows * len(f.applied), Capacity: 2048}, nil
}

// Close records a close (pins kept).
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// Destroy records a detach.
func (f *Fake) Destroy(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroyed, f.closed = true, true
	return nil
}

// Lifecycle reports whether Close and Destroy were called.
func (f *Fake) Lifecycle() (closed, destroyed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed, f.destroyed
}
