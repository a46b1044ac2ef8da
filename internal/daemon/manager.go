package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/localports"
	"github.com/xlb-dev/xlb/internal/state"
)

// Dataplane is what the manager needs from the eBPF datapath (implemented
// by *dataplane.Dataplane through an adapter, and by fakes in tests).
type Dataplane interface {
	// Apply makes the datapath hold exactly desired. Applying the same set
	// twice writes nothing.
	Apply(ctx context.Context, desired []dataplane.Service) (dataplane.ApplyResult, error)
	Stats(ctx context.Context) ([]dataplane.ServiceStats, error)
	Flows(ctx context.Context, f dataplane.FlowFilter) ([]dataplane.Flow, string, error)
	Interfaces() []dataplane.AttachState
	ConntrackUsage(ctx context.Context) (dataplane.ConntrackUsage, error)
}

// Store persists the desired state (internal/state).
type Store interface {
	Load(ctx context.Context) (state.Snapshot, error)
	Save(ctx context.Context, snap state.Snapshot) error
}

// ManagerConfig wires a Manager.
type ManagerConfig struct {
	Dataplane Dataplane
	Store     Store
	Logger    *slog.Logger
	// DefaultSNAT are --snat-addresses.
	DefaultSNAT []netip.Addr
	// SNATPorts is --snat-port-range (zero: the datapath's default).
	SNATPorts localports.Range
	// PortSysctlDir is where the status reads the host's local port
	// sysctls (localports.ProcDir; empty: not reported).
	PortSysctlDir string
	// Health is the probe seam (nil: every backend counts as healthy).
	Health  BackendHealth
	Hook    string
	Version string
	// Announce receives the desired set after every successful commit,
	// Reconcile and Restore (nil set while the datapath is not programmed),
	// to announce the VIPs (see announcer). Nil: no announcements.
	Announce func(ctx context.Context, services []api.Service)
	// L2Status reports the ARP/NDP responder per interface for /v1/status
	// (nil: none).
	L2Status func() []api.L2Status
}

// mutationTimeout bounds one Apply + persist. A mutation runs detached from
// the request's context: once validated it must finish (or roll back) even
// if the client goes away, or the datapath could be left half-written.
const mutationTimeout = 60 * time.Second

// Manager owns the desired set of services: it validates changes, programs
// the datapath, persists the set, and reports live status.
type Manager struct {
	cfg    ManagerConfig
	log    *slog.Logger
	bootID string

	// mu serialises mutations and guards the fields below. Readers take
	// it shortly to copy; datapath reads (stats, flows) run without it.
	mu         sync.RWMutex
	desired    map[string]api.Service // defaulted
	generation uint64
	restored   bool
	applyErr   error // last full Apply failure, nil once one succeeded
	applied    bool
	// flows: onDown reset and drain timeouts (flowpolicy.go).
	flows flowPolicy
	after afterFunc
}

// NewManager returns a Manager with an empty desired set; call Restore
// before serving.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return &Manager{cfg: cfg, log: cfg.Logger, bootID: hex.EncodeToString(b[:]), desired: map[string]api.Service{}, after: realAfterFunc}
}

func (m *Manager) validateOptions(prefix string) api.ValidateOptions {
	return api.ValidateOptions{FieldPrefix: prefix, DefaultSNAT: m.cfg.DefaultSNAT}
}

// Restore loads the persisted desired set and programs the datapath with
// it. Services that no longer validate (e.g. after an upgrade tightened a
// rule) are skipped with an error log. A datapath failure is reported by
// Ready, not returned: the API must come up so that an operator can fix it.
func (m *Manager) Restore(ctx context.Context) error {
	snap, err := m.cfg.Store.Load(ctx)
	if err != nil {
		return fmt.Errorf("restore desired state: %w", err)
	}
	next := make(map[string]api.Service, len(snap.Services))
	for i := range snap.Services {
		s := snap.Services[i]
		if err := api.ValidateService(&s, m.validateOptions("")); err != nil {
			m.log.Error("skipping invalid persisted service", "service", s.Name, "index", i, "error", err)
			continue
		}
		d := api.DefaultService(s)
		if _, dup := next[d.Name]; dup {
			m.log.Error("skipping duplicate persisted service", "service", d.Name, "index", i)
			continue
		}
		next[d.Name] = d
		if cerr := conflict(next, d.Name); cerr != nil {
			delete(next, d.Name)
			m.log.Error("skipping conflicting persisted service", "service", d.Name, "error", cerr)
		}
	}
	m.seedHealth(ctx, next)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.desired = next
	m.generation = snap.Generation
	m.restored = true
	// Probe targets first: a backend seeded down must already be down when
	// the datapath is programmed.
	m.syncProbesLocked(ctx)
	m.applyLocked(ctx)
	m.announceLocked(ctx)
	m.log.Info("desired state restored", "services", len(next), "generation", snap.Generation, "applied", m.applied)
	return nil
}

// applyLocked programs the current desired set; it records the outcome for
// Ready. Called with mu held.
func (m *Manager) applyLocked(ctx context.Context) error {
	set := m.expandAll(m.desired)
	res, err := m.cfg.Dataplane.Apply(ctx, set)
	m.applyErr = err
	if err != nil {
		m.applied = false
		m.log.Error("datapath apply failed", "error", err)
		return err
	}
	m.applied = true
	m.log.Debug("datapath applied", "created", len(res.Created), "updated", len(res.Updated), "deleted", len(res.Deleted), "writes", res.Writes)
	m.applyFlowPoliciesLocked(ctx, set)
	return nil
}

// Reconcile re-applies the current desired set, e.g. after health states
// changed (see BackendHealth) or after a failed Apply. Like a commit it
// runs detached from ctx's cancellation: the prober's context ends at
// shutdown, and an Apply cut short there would leave the pinned datapath
// (which keeps forwarding while xlbd is down) half-written and withdraw
// every announcement.
func (m *Manager) Reconcile(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mutationTimeout)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.applyLocked(ctx)
	m.announceLocked(ctx)
	return err
}

func (m *Manager) expandAll(set map[string]api.Service) []dataplane.Service {
	out := make([]dataplane.Service, 0, len(set)*2)
	for _, name := range sortedNames(set) {
		out = append(out, expand(set[name], m.cfg.DefaultSNAT, m.cfg.SNATPorts, m.cfg.Health)...)
	}
	return out
}

func sortedNames(set map[string]api.Service) []string {
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// commitLocked makes next the desired set: datapath first (it is the part
// that can refuse, e.g. when full), then the state file. On any failure
// the previous set is put back into the datapath and nothing changes.
func (m *Manager) commitLocked(ctx context.Context, next map[string]api.Service) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mutationTimeout)
	defer cancel()
	rollback := func() {
		if _, err := m.cfg.Dataplane.Apply(ctx, m.expandAll(m.desired)); err != nil {
			m.log.Error("datapath rollback failed; the datapath may differ from the desired state until the next change", "error", err)
			m.applied, m.applyErr = false, err
		}
	}
	set := m.expandAll(next)
	if _, err := m.cfg.Dataplane.Apply(ctx, set); err != nil {
		rollback()
		var ve *dataplane.ValidationError
		if errors.As(err, &ve) {
			return &api.Error{Code: api.CodeInvalid, Message: "rejected by the datapath: " + ve.Error(), Value: ve.Value, Allowed: ve.Allowed}
		}
		return &api.Error{Code: api.CodeInternal, Message: "datapath apply failed: " + err.Error()}
	}
	gen := m.generation + 1
	if err := m.cfg.Store.Save(ctx, state.Snapshot{Generation: gen, Services: sortedList(next)}); err != nil {
		rollback()
		return &api.Error{Code: api.CodeInternal, Message: "persisting the desired state failed: " + err.Error()}
	}
	m.desired = next
	m.generation = gen
	m.applied, m.applyErr = true, nil
	m.applyFlowPoliciesLocked(ctx, set)
	m.syncProbesLocked(ctx)
	m.announceLocked(ctx)
	return nil
}

// healthSeeder is implemented by the health prober (Prober).
type healthSeeder interface {
	SeedDown(map[string]map[netip.AddrPort]bool)
}

// seedHealth tells the prober which backends the pinned datapath had down
// before this process started, so they stay out of selection until they
// pass their probes again.
func (m *Manager) seedHealth(ctx context.Context, restored map[string]api.Service) {
	hs, ok := m.cfg.Health.(healthSeeder)
	if !ok {
		return
	}
	// Before the first Apply the datapath names restored services
	// "VIP:PORT/PROTO"; map those (and our own names) to API names.
	owner := map[string]string{}
	for _, d := range m.expandAll(restored) {
		owner[dataplane.RestoredName(d.VIP, d.Port, d.Protocol)] = apiName(d.Name)
		owner[d.Name] = apiName(d.Name)
	}
	stats, err := m.cfg.Dataplane.Stats(ctx)
	if err != nil {
		m.log.Warn("reading backend states from the datapath failed; every backend starts up", "error", err)
		return
	}
	down := map[string]map[netip.AddrPort]bool{}
	for _, s := range stats {
		for _, b := range s.Backends {
			if b.State != dataplane.BackendDown {
				continue
			}
			name, ok := owner[s.Name]
			if !ok {
				continue // a service that is not restored
			}
			if down[name] == nil {
				down[name] = map[netip.AddrPort]bool{}
			}
			down[name][netip.AddrPortFrom(b.Addr, b.Port)] = true
		}
	}
	hs.SeedDown(down)
}

// probeTargetSetter is implemented by the health prober (Prober).
type probeTargetSetter interface {
	SetTargets(ctx context.Context, services []api.Service)
}

// syncProbesLocked makes the health prober probe exactly the backends of
// the desired set. Called with mu held.
func (m *Manager) syncProbesLocked(ctx context.Context) {
	if ts, ok := m.cfg.Health.(probeTargetSetter); ok {
		ts.SetTargets(ctx, sortedList(m.desired))
	}
}

func sortedList(set map[string]api.Service) []api.Service {
	out := make([]api.Service, 0, len(set))
	for _, n := range sortedNames(set) {
		out = append(out, set[n])
	}
	return out
}

func cloneSet(set map[string]api.Service) map[string]api.Service {
	out := make(map[string]api.Service, len(set)+1)
	for k, v := range set {
		out[k] = v
	}
	return out
}

type svcKey struct {
	vip   netip.Addr
	port  uint16
	proto string
}

// conflict reports whether service name claims a (VIP, port, protocol)
// that another service of set already claims.
func conflict(set map[string]api.Service, name string) error {
	s := set[name]
	mine := map[svcKey]int{}
	for i, v := range s.Spec.VIPs {
		a, _ := netip.ParseAddr(v)
		mine[svcKey{a, s.Spec.Port, s.Spec.Protocol}] = i
	}
	for _, other := range sortedNames(set) {
		if other == name {
			continue
		}
		o := set[other]
		if o.Spec.Port != s.Spec.Port || o.Spec.Protocol != s.Spec.Protocol {
			continue
		}
		for _, v := range o.Spec.VIPs {
			a, _ := netip.ParseAddr(v)
			if i, ok := mine[svcKey{a, o.Spec.Port, o.Spec.Protocol}]; ok {
				return &api.Error{
					Code:    api.CodeConflict,
					Field:   fmt.Sprintf("spec.vips[%d]", i),
					Value:   fmt.Sprintf("%s/%s", netip.AddrPortFrom(a, s.Spec.Port), s.Spec.Protocol),
					Message: fmt.Sprintf("VIP, port and protocol are already used by service %q", other),
					Allowed: "a VIP, port and protocol no other service uses",
				}
			}
		}
	}
	return nil
}

func sameService(a, b api.Service) bool {
	return a.Name == b.Name && reflect.DeepEqual(a.Labels, b.Labels) && reflect.DeepEqual(a.Spec, b.Spec)
}

// PutService creates or replaces one service. created reports whether it
// did not exist. An identical spec changes nothing (no datapath call, no
// write, same generation).
func (m *Manager) PutService(ctx context.Context, in api.Service) (out api.Service, created bool, err error) {
	if err := api.ValidateService(&in, m.validateOptions("")); err != nil {
		return api.Service{}, false, err
	}
	svc := api.DefaultService(in)
	m.mu.Lock()
	defer m.mu.Unlock()
	old, exists := m.desired[svc.Name]
	if exists && sameService(old, svc) {
		return old, false, nil
	}
	next := cloneSet(m.desired)
	next[svc.Name] = svc
	if err := conflict(next, svc.Name); err != nil {
		return api.Service{}, false, err
	}
	if err := m.commitLocked(ctx, next); err != nil {
		return api.Service{}, false, err
	}
	m.log.Info("service stored", "service", svc.Name, "created", !exists, "generation", m.generation)
	return svc, !exists, nil
}

// DeleteService removes one service; *api.Error not_found when absent.
func (m *Manager) DeleteService(ctx context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.desired[name]; !ok {
		return notFound(name)
	}
	next := cloneSet(m.desired)
	delete(next, name)
	if err := m.commitLocked(ctx, next); err != nil {
		return err
	}
	m.log.Info("service deleted", "service", name, "generation", m.generation)
	return nil
}

func notFound(name string) error {
	return &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("service %q not found", name), Field: "name", Value: name}
}

// ReplaceServices is the bulk re-sync: see api.BulkReplace.
func (m *Manager) ReplaceServices(ctx context.Context, req api.BulkReplace) (api.BulkResult, error) {
	if err := api.ValidateSelector("selector", req.Selector); err != nil {
		return api.BulkResult{}, err
	}
	body := make(map[string]api.Service, len(req.Services))
	for i := range req.Services {
		s := req.Services[i]
		prefix := fmt.Sprintf("services[%d].", i)
		if err := api.ValidateService(&s, m.validateOptions(prefix)); err != nil {
			return api.BulkResult{}, err
		}
		if !api.SelectorMatches(req.Selector, s.Labels) {
			return api.BulkResult{}, &api.Error{Code: api.CodeInvalid, Field: prefix + "labels", Value: formatLabels(s.Labels),
				Message: "every service of a bulk replace must match its selector", Allowed: "labels including " + formatLabels(req.Selector)}
		}
		if _, dup := body[s.Name]; dup {
			return api.BulkResult{}, &api.Error{Code: api.CodeInvalid, Field: prefix + "name", Value: s.Name, Message: "service named twice in the body", Allowed: "unique names"}
		}
		body[s.Name] = api.DefaultService(s)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	res := api.BulkResult{Created: []string{}, Updated: []string{}, Unchanged: []string{}, Deleted: []string{}}
	next := cloneSet(m.desired)
	for _, name := range sortedNames(m.desired) {
		if _, keep := body[name]; !keep && api.SelectorMatches(req.Selector, m.desired[name].Labels) {
			delete(next, name)
			res.Deleted = append(res.Deleted, name)
		}
	}
	for _, name := range sortedNames(body) {
		old, exists := m.desired[name]
		switch {
		case !exists:
			res.Created = append(res.Created, name)
		case sameService(old, body[name]):
			res.Unchanged = append(res.Unchanged, name)
		default:
			res.Updated = append(res.Updated, name)
		}
		next[name] = body[name]
	}
	for i, s := range req.Services {
		if err := conflict(next, s.Name); err != nil {
			var e *api.Error
			if errors.As(err, &e) {
				e.Field = fmt.Sprintf("services[%d].%s", i, e.Field)
			}
			return api.BulkResult{}, err
		}
	}
	if len(res.Created)+len(res.Updated)+len(res.Deleted) == 0 {
		return res, nil
	}
	if err := m.commitLocked(ctx, next); err != nil {
		return api.BulkResult{}, err
	}
	m.log.Info("bulk replace", "selector", formatLabels(req.Selector), "created", len(res.Created), "updated", len(res.Updated),
		"deleted", len(res.Deleted), "unchanged", len(res.Unchanged), "generation", m.generation)
	return res, nil
}

func formatLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := ""
	for i, k := range keys {
		if i > 0 {
			out += ","
		}
		out += k + "=" + l[k]
	}
	return out
}

// GetService returns one service with its live status.
func (m *Manager) GetService(ctx context.Context, name string) (api.Service, error) {
	m.mu.RLock()
	s, ok := m.desired[name]
	m.mu.RUnlock()
	if !ok {
		return api.Service{}, notFound(name)
	}
	out := []api.Service{s}
	m.addStatus(ctx, out)
	return out[0], nil
}

// ListServices returns the services matching sel (nil: all), sorted by
// name, with their live status.
func (m *Manager) ListServices(ctx context.Context, sel map[string]string) ([]api.Service, error) {
	m.mu.RLock()
	out := make([]api.Service, 0, len(m.desired))
	for _, n := range sortedNames(m.desired) {
		if api.SelectorMatches(sel, m.desired[n].Labels) {
			out = append(out, m.desired[n])
		}
	}
	m.mu.RUnlock()
	m.addStatus(ctx, out)
	return out, nil
}

// addStatus fills Status from the datapath counters. Reading counters must
// not make the desired state unreadable: on error the status is left out.
func (m *Manager) addStatus(ctx context.Context, svcs []api.Service) {
	stats, err := m.cfg.Dataplane.Stats(ctx)
	if err != nil {
		m.log.Warn("reading datapath stats failed", "error", err)
		return
	}
	byName := make(map[string]*dataplane.ServiceStats, len(stats))
	for i := range stats {
		byName[stats[i].Name] = &stats[i]
	}
	for i := range svcs {
		svcs[i].Status = m.status(svcs[i], byName)
	}
}

func (m *Manager) status(s api.Service, byName map[string]*dataplane.ServiceStats) *api.ServiceStatus {
	st := &api.ServiceStatus{Backends: make([]api.BackendStatus, 0, len(s.Spec.Backends))}
	type beKey = netip.AddrPort
	beStats := map[beKey]dataplane.BackendStats{}
	for _, is4 := range []bool{true, false} {
		ds, ok := byName[dpName(s.Name, is4)]
		if !ok {
			continue
		}
		st.Packets += ds.Counters.Packets
		st.Bytes += ds.Counters.Bytes
		st.NewFlows += ds.Counters.NewFlows
		st.Flows += ds.Flows
		for reason, n := range ds.Drops {
			if n == 0 {
				continue
			}
			if st.Drops == nil {
				st.Drops = map[string]uint64{}
			}
			st.Drops[reason] += n
		}
		for _, b := range ds.Backends {
			beStats[netip.AddrPortFrom(b.Addr, b.Port)] = b
		}
	}
	for _, b := range s.Spec.Backends {
		a, _ := netip.ParseAddr(b.Address)
		ap := netip.AddrPortFrom(a, b.Port)
		bs := api.BackendStatus{Address: b.Address, Port: b.Port, State: string(dataplane.BackendActive)}
		if b.Weight != nil && *b.Weight == 0 {
			bs.State = string(dataplane.BackendDraining)
		}
		if d, ok := beStats[ap]; ok {
			if d.State != "" {
				bs.State = string(d.State)
			}
			bs.Packets, bs.Bytes, bs.NewFlows, bs.Active = d.Counters.Packets, d.Counters.Bytes, d.Counters.NewFlows, d.Active
		}
		// The probe's verdict wins over the datapath's: when every backend
		// is down the datapath keeps them all selectable (see expand), but
		// the operator must still see that they failed their probes.
		if m.cfg.Health != nil {
			if hs, ok := m.cfg.Health.BackendState(s.Name, ap); ok && hs == dataplane.BackendDown {
				bs.State = string(dataplane.BackendDown)
			}
		}
		st.Backends = append(st.Backends, bs)
	}
	return st
}

// Flows lists conntrack entries, with datapath names mapped to API names.
func (m *Manager) Flows(ctx context.Context, f dataplane.FlowFilter) (api.FlowList, error) {
	flows, next, err := m.cfg.Dataplane.Flows(ctx, f)
	if err != nil {
		// A bad filter (e.g. an "after" cursor that was not returned by a
		// previous call) is the client's mistake: 400 naming the parameter,
		// not a 500 that suggests the daemon is broken.
		var ve *dataplane.ValidationError
		if errors.As(err, &ve) {
			return api.FlowList{}, &api.Error{Code: api.CodeInvalid, Field: ve.Field, Value: ve.Value, Allowed: ve.Allowed,
				Message: "invalid conntrack query parameter " + ve.Field}
		}
		return api.FlowList{}, &api.Error{Code: api.CodeInternal, Message: "reading conntrack failed: " + err.Error()}
	}
	out := api.FlowList{Items: make([]api.Flow, 0, len(flows)), Next: next}
	for _, fl := range flows {
		af := api.Flow{
			Service:     apiName(fl.Service),
			Protocol:    string(fl.Protocol),
			Client:      fl.Client.String(),
			VIP:         fl.VIP.String(),
			Backend:     fl.Backend.String(),
			AgeSeconds:  fl.Age.Seconds(),
			IdleSeconds: fl.Idle.Seconds(),
			Closing:     fl.Closing,
		}
		if fl.SNAT.IsValid() {
			af.SNAT = fl.SNAT.String()
		}
		out.Items = append(out.Items, af)
	}
	return out, nil
}

// Ready reports whether the daemon serves its desired state: state
// restored, last Apply succeeded, every interface attached. The reason
// says what is missing.
func (m *Manager) Ready() (bool, string) {
	m.mu.RLock()
	restored, applied, applyErr := m.restored, m.applied, m.applyErr
	m.mu.RUnlock()
	switch {
	case !restored:
		return false, "desired state not restored yet"
	case !applied && applyErr != nil:
		return false, "datapath apply failed: " + applyErr.Error()
	case !applied:
		return false, "datapath not programmed yet"
	}
	atts := m.cfg.Dataplane.Interfaces()
	if len(atts) == 0 {
		return false, "no interface attached"
	}
	for _, a := range atts {
		if !a.Attached {
			msg := "interface " + a.Name + " not attached"
			if a.Error != "" {
				msg += ": " + a.Error
			}
			return false, msg
		}
	}
	return true, "ok"
}

// Status is GET /v1/status.
func (m *Manager) Status(ctx context.Context) api.Status {
	ready, _ := m.Ready()
	m.mu.RLock()
	st := api.Status{
		Version:    m.cfg.Version,
		BootID:     m.bootID,
		Generation: m.generation,
		Ready:      ready,
		Hook:       m.cfg.Hook,
		Services:   len(m.desired),
		Interfaces: []api.InterfaceStatus{},
	}
	m.mu.RUnlock()
	if m.cfg.SNATPorts != (localports.Range{}) {
		st.SNATPortRange = m.cfg.SNATPorts.String()
	}
	if m.cfg.PortSysctlDir != "" {
		// Read live: someone may have edited the sysctls since the start.
		if eph, err := localports.ReadEphemeral(m.cfg.PortSysctlDir); err == nil {
			st.EphemeralPortRange = eph.String()
		}
		if res, err := localports.ReadReserved(m.cfg.PortSysctlDir); err == nil && st.SNATPortRange != "" {
			st.SNATPortsReserved = localports.Covered(res, m.cfg.SNATPorts)
		}
	}
	for _, a := range m.cfg.Dataplane.Interfaces() {
		st.Interfaces = append(st.Interfaces, api.InterfaceStatus{Name: a.Name, Attached: a.Attached, Mode: a.Mode, Error: a.Error,
			Ifindex: a.Ifindex, Reattaches: a.Reattaches})
	}
	if m.cfg.L2Status != nil {
		st.L2 = m.cfg.L2Status()
	}
	if u, err := m.cfg.Dataplane.ConntrackUsage(ctx); err == nil {
		st.ConntrackEntries, st.ConntrackCapacity = u.Entries, u.Capacity
		st.ConntrackStateless, st.ConntrackRebuilt = u.Stateless, u.Rebuilt
		st.ConntrackSNATMissDropped = u.SNATMissDropped
	} else {
		m.log.Warn("reading conntrack usage failed", "error", err)
	}
	return st
}

// Snapshot returns the desired set and generation (for shutdown persistence).
func (m *Manager) Snapshot() state.Snapshot {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return state.Snapshot{Generation: m.generation, Services: slices.Clone(sortedList(m.desired))}
}
