package dataplane

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
)

// Apply makes the datapath serve exactly the desired services. It is
// idempotent and writes only what differs from what is installed: applying
// the same set twice performs zero map writes.
//
// The whole set is validated first; on a validation error (a
// *ValidationError naming service, field and allowed values) or a capacity
// error nothing is changed. Services are matched to installed ones by (VIP,
// port, protocol), backends by (address, port), so ids, and with them the
// established flows of surviving backends, are kept.
//
// Writes are ordered so that the datapath never sees a half-built service:
// backends first, then complete new selection tables swapped in, then the
// service entries; removals delete the service entry first. Each step is
// one pass over all services, with batched map operations (the kernel
// waits for an RCU grace period after every write to sel_tables, a
// map-in-map: one batch per 1024 tables instead of one wait per service).
// If a map write fails, Apply returns the error; the services it was
// writing are rewritten in full by the next Apply.
func (d *Dataplane) Apply(ctx context.Context, desired []Service) (res ApplyResult, err error) {
	norm, err := d.validateSet(desired)
	if err != nil {
		return ApplyResult{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()

	// Capacity: new ids come only from ids free before this Apply, so an
	// id freed here is never handed to another backend in the same pass
	// (its old service could still select it until its table is swapped).
	newSvcs, newBes, allowAdds := 0, 0, 0
	for _, s := range norm {
		old := d.svcs[svcKeyOf(s)]
		if old == nil {
			newSvcs++
			newBes += len(s.Backends)
			allowAdds += len(s.SourceRanges)
			continue
		}
		for _, b := range s.Backends {
			if old.backends[netip.AddrPortFrom(b.Addr, b.Port)] == nil {
				newBes++
			}
		}
		allowAdds += len(s.SourceRanges)
	}
	svcIDs, ok := d.svcIDs.peek(newSvcs)
	if !ok {
		return ApplyResult{}, fmt.Errorf("apply: %d new services need ids, %d free (MaxServices %d)", newSvcs, d.svcIDs.free, d.cfg.MaxServices)
	}
	beIDs, ok := d.beIDs.peek(newBes)
	if !ok {
		return ApplyResult{}, fmt.Errorf("apply: %d new backends need ids, %d free (MaxBackends %d)", newBes, d.beIDs.free, d.cfg.MaxBackends)
	}
	installedAllow := 0
	for _, st := range d.svcs {
		installedAllow += len(st.allow)
	}
	if lim := int(d.objs.AllowList.MaxEntries()); installedAllow+allowAdds > lim {
		return ApplyResult{}, fmt.Errorf("apply: source ranges: %d installed + %d desired exceed the allow-list capacity %d", installedAllow, allowAdds, lim)
	}

	w := &mapWriter{}
	defer func() { res.Writes = w.n }()

	wantVIP := map[xlbVipKey]uint32{}
	want := make(map[xlbSvcKey]bool, len(norm))
	for _, s := range norm {
		k := svcKeyOf(s)
		want[k] = true
		wantVIP[vipKeyOf(k)]++
	}
	// A VIP is known before any of its services is.
	for k, n := range wantVIP {
		if d.vipCount[k] < n {
			if err := w.put(d.objs.Vips, "vips", k, n); err != nil {
				return res, err
			}
			d.vipCount[k] = n
		}
	}
	plans := make([]*svcPlan, 0, len(norm))
	for _, s := range norm {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("apply: %w", err)
		}
		var id uint32
		if d.svcs[svcKeyOf(s)] == nil {
			id, svcIDs = svcIDs[0], svcIDs[1:]
		}
		p, err := d.prepare(s, id, &beIDs)
		if err != nil {
			return res, fmt.Errorf("apply service %q: %w", s.Name, err)
		}
		plans = append(plans, p)
	}
	if err := d.commit(ctx, w, plans); err != nil {
		return res, fmt.Errorf("apply: %w", err)
	}
	for _, p := range plans {
		switch {
		case p.created:
			res.Created = append(res.Created, p.st.name)
		case p.writes > 0 || p.renamed:
			res.Updated = append(res.Updated, p.st.name)
		default:
			res.Unchanged = append(res.Unchanged, p.st.name)
		}
	}
	var gone []*svcState
	for k, st := range d.svcs {
		if !want[k] {
			gone = append(gone, st)
		}
	}
	slices.SortFunc(gone, func(a, b *svcState) int { return cmp.Compare(a.id, b.id) })
	if err := d.remove(w, gone); err != nil {
		return res, fmt.Errorf("remove services: %w", err)
	}
	for _, st := range gone {
		res.Deleted = append(res.Deleted, st.name)
	}
	for k, n := range d.vipCount {
		switch m := wantVIP[k]; {
		case m == 0:
			if err := w.del(d.objs.Vips, "vips", k); err != nil {
				return res, err
			}
			delete(d.vipCount, k)
		case m < n:
			if err := w.put(d.objs.Vips, "vips", k, m); err != nil {
				return res, err
			}
			d.vipCount[k] = m
		}
	}
	if err := d.syncRevNat(w); err != nil {
		return res, fmt.Errorf("apply: %w", err)
	}
	return res, nil
}

// SetBackendState overrides the state of one backend (for the health
// checker): BackendDown or BackendDraining take it out of the selection
// table, BackendActive clears the override so the desired state applies
// again. Only that service's table is rebuilt (Maglev keeps the other
// backends' slots). The override survives later Applies of the same backend.
func (d *Dataplane) SetBackendState(ctx context.Context, service string, addr netip.Addr, port uint16, state BackendState) error {
	if state != BackendActive && state != BackendDown && state != BackendDraining {
		return &ValidationError{Service: service, Field: "state", Value: string(state), Allowed: "active, draining, down"}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.byName[service]
	if st == nil {
		return fmt.Errorf("set backend state: service %q not found", service)
	}
	ap := netip.AddrPortFrom(addr.WithZone(""), port)
	if st.backends[ap] == nil {
		return fmt.Errorf("set backend state: service %q has no backend %s", service, ap)
	}
	ref := beRef{svc: st.key, addr: ap}
	if state == BackendActive {
		delete(d.health, ref)
	} else {
		d.health[ref] = stateCode(state)
	}
	w := &mapWriter{}
	ids := []uint32(nil)
	p, err := d.prepare(st.spec, 0, &ids)
	if err == nil {
		err = d.commit(ctx, w, []*svcPlan{p})
	}
	if err != nil {
		return fmt.Errorf("set backend state of %s in %q: %w", ap, service, err)
	}
	return nil
}

// svcPlan is what one Apply writes for one service. prepare fills the
// backend part and updates the Go view; commit builds the tables, diffs
// the rest and performs the writes of all services step by step.
type svcPlan struct {
	st               *svcState
	forced           bool // rewrite everything (the maps may hold a mix)
	created, renamed bool
	beIDs            []uint32 // backend entries to write
	beVals           []xlbBackend
	selectable       []tableBackend
	wantAllow        []xlbAllowKey
	inner            *ebpf.Map // new selection table to swap in (nil: unchanged)
	info             xlbSvcInfo
	writeInfo        bool
	allowAdd         []xlbAllowKey
	allowDel         []xlbAllowKey
	writes           int // map writes for this service, for ApplyResult
}

// prepare matches one desired service to the installed one (creating it
// with id if new; beIDs supplies ids for new backends), updates the Go view
// and returns the writes of its backends. The service stays dirty until
// commit has written everything.
func (d *Dataplane) prepare(s Service, id uint32, beIDs *[]uint32) (*svcPlan, error) {
	key := svcKeyOf(s)
	st := d.svcs[key]
	p := &svcPlan{}
	if st == nil {
		st = &svcState{key: key, id: id, backends: map[netip.AddrPort]*beState{}, dirty: true}
		d.svcIDs.take(id)
		d.svcs[key] = st
		d.byID[id] = st
		p.created = true
	}
	p.st = st
	if st.name != s.Name {
		if d.byName[st.name] == st {
			delete(d.byName, st.name)
		}
		p.renamed = st.name != ""
		st.name = s.Name
	}
	d.byName[s.Name] = st
	st.spec = s
	// Until commit returns successfully the maps may hold a mix of old and
	// new: the next Apply must rewrite everything.
	p.forced = st.dirty
	st.dirty = true

	next := make(map[netip.AddrPort]*beState, len(s.Backends))
	for _, b := range s.Backends {
		ap := netip.AddrPortFrom(b.Addr, b.Port)
		old := st.backends[ap]
		var be beState
		if old != nil {
			be.id, be.val.Gen = old.id, old.val.Gen
		} else {
			if len(*beIDs) == 0 {
				return nil, errors.New("no backend id left")
			}
			be.id, *beIDs = (*beIDs)[0], (*beIDs)[1:]
			// A new generation makes the datapath ignore conntrack and
			// affinity entries left by the id's previous owner.
			be.val.Gen = d.beGen[be.id] + 1
			d.beIDs.take(be.id)
		}
		be.val.Addr = addrToBE(b.Addr)
		be.val.Port = htons(b.Port)
		be.val.Family = familyOf(b.Addr)
		be.val.State = d.effectiveState(st.key, ap, b)
		be.val.Weight = b.Weight
		be.val.SvcId = st.id
		if p.forced || old == nil || old.val != be.val {
			p.beIDs = append(p.beIDs, be.id)
			p.beVals = append(p.beVals, be.val)
			d.beGen[be.id] = be.val.Gen
		}
		next[ap] = &be
		if be.val.State == beStateActive {
			p.selectable = append(p.selectable, tableBackend{id: be.id, key: ap.String(), weight: b.Weight})
		}
	}
	// Deterministic table order whatever the order of the input.
	slices.SortFunc(p.selectable, func(a, b tableBackend) int { return cmp.Compare(a.key, b.key) })
	// Backends that leave are freed only after the new table is in place
	// (st.leaving also keeps those a failed commit did not free).
	for ap, be := range st.backends {
		if next[ap] == nil {
			st.leaving = append(st.leaving, be)
			delete(d.health, beRef{svc: st.key, addr: ap})
		}
	}
	st.backends = next
	return p, nil
}

// diffAllow computes the allow-list changes of a plan.
func (d *Dataplane) diffAllow(p *svcPlan) {
	st := p.st
	p.wantAllow = allowKeys(st.id, st.spec.SourceRanges)
	for _, k := range p.wantAllow {
		if p.forced || !slices.Contains(st.allow, k) {
			p.allowAdd = append(p.allowAdd, k)
		}
	}
	for _, k := range st.allow {
		if !slices.Contains(p.wantAllow, k) {
			p.allowDel = append(p.allowDel, k)
		}
	}
}

// buildTable builds the selection table of a plan and, when it differs
// from the installed one, a new inner map holding it; it also computes the
// service entry (its sel_len is the table length). It touches only the
// plan's own service, so plans are built in parallel.
func (d *Dataplane) buildTable(p *svcPlan) error {
	st, s := p.st, p.st.spec
	table, err := buildSelTable(s.Algorithm, p.selectable, len(s.Backends), d.cfg.MaglevSeed, d.cfg.MaglevMinTableSize)
	if err != nil {
		return err
	}
	sum := tableSum(table)
	if p.forced || sum != st.tableSum {
		// Padded to the longest sel_len the services map may hold for
		// this service, so a CPU that read the old svc_info still finds a
		// valid backend at any index it computes.
		p.inner, err = d.newTable(table, max(1, len(table), int(st.selLenMax)), sum)
		if err != nil {
			return err
		}
		st.tableSum = sum
	}
	info := xlbSvcInfo{
		Id:               st.id,
		NatMode:          natCodes[s.NATMode],
		Algo:             algoCodes[s.Algorithm],
		Family:           familyOf(s.VIP),
		SelLen:           uint32(len(table)),
		IdleTimeoutS:     uint32(s.IdleTimeout / time.Second),
		AffinityTimeoutS: uint32(s.AffinityTimeout / time.Second),
		SnatPortMin:      s.SNATPortMin,
		SnatPortMax:      s.SNATPortMax,
		BackendCount:     uint32(len(s.Backends)),
	}
	if len(s.SourceRanges) > 0 {
		info.Flags |= svcFlagAllowList
	}
	if s.SNATAddr.IsValid() {
		info.SnatAddr = addrToBE(s.SNATAddr)
	}
	if p.forced || info != st.info {
		p.info, p.writeInfo = info, true
		st.info = info
		st.selLenMax = max(st.selLenMax, info.SelLen)
	}
	return nil
}

// tablesPerBatch bounds the selection tables built (and open as file
// descriptors) before they are swapped in with one batch update.
const tablesPerBatch = 1024

// buildTables runs buildTable over plans with one worker per CPU (a
// Maglev table of 16381 slots takes ~0.5 ms to compute and ~2 ms for the
// kernel to fill).
func (d *Dataplane) buildTables(ctx context.Context, plans []*svcPlan) error {
	errs := make([]error, len(plans))
	var next atomic.Int64
	var wg sync.WaitGroup
	workers := min(runtime.GOMAXPROCS(0), max(1, len(plans)/16))
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(plans) || ctx.Err() != nil {
					return
				}
				errs[i] = d.buildTable(plans[i])
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("service %q: %w", plans[i].st.name, err)
		}
	}
	return nil
}

// commit writes the plans, one step over all services at a time:
// backends, allow-list additions, tables, service entries, allow-list
// removals, backends that left. On success the services are clean.
func (d *Dataplane) commit(ctx context.Context, w *mapWriter, plans []*svcPlan) error {
	// 1. Backends.
	var ids []uint32
	var vals []xlbBackend
	for _, p := range plans {
		ids = append(ids, p.beIDs...)
		vals = append(vals, p.beVals...)
		p.writes += len(p.beIDs)
	}
	if err := w.putBatch(d.objs.Backends, "backends", ids, vals); err != nil {
		return err
	}

	// 2. Allow-list additions (before the flag that makes the datapath
	// consult them). The LPM trie has no batch operations.
	for _, p := range plans {
		d.diffAllow(p)
		for _, k := range p.allowAdd {
			if err := w.put(d.objs.AllowList, "allow_list", k, uint8(1)); err != nil {
				return fmt.Errorf("service %q: %w", p.st.name, err)
			}
		}
		p.writes += len(p.allowAdd)
	}

	// 3. Selection tables: complete new inner maps, swapped in.
	for rest := plans; len(rest) > 0; {
		chunk := rest[:min(len(rest), tablesPerBatch)]
		rest = rest[len(chunk):]
		if err := d.swapTables(ctx, w, chunk); err != nil {
			return err
		}
	}

	// 4. Service entries.
	var keys []xlbSvcKey
	var infos []xlbSvcInfo
	for _, p := range plans {
		if p.writeInfo {
			keys = append(keys, p.st.key)
			infos = append(infos, p.info)
			p.writes++
		}
	}
	if err := w.putBatch(d.objs.Services, "services", keys, infos); err != nil {
		return err
	}

	// 5. Allow-list removals, then backends that left.
	var leaving []*beState
	for _, p := range plans {
		for _, k := range p.allowDel {
			if err := w.del(d.objs.AllowList, "allow_list", k); err != nil {
				return fmt.Errorf("service %q: %w", p.st.name, err)
			}
		}
		p.st.allow = p.wantAllow
		p.writes += len(p.allowDel) + 3*len(p.st.leaving)
		leaving = append(leaving, p.st.leaving...)
	}
	slices.SortFunc(leaving, func(a, b *beState) int { return cmp.Compare(a.id, b.id) })
	if err := d.freeBackends(w, leaving); err != nil {
		return err
	}
	for _, p := range plans {
		p.st.leaving = nil
		p.st.dirty = false
		p.st.selLenMax = p.st.info.SelLen
	}
	return nil
}

// swapTables builds the tables of plans and swaps the changed ones into
// sel_tables with one batch update (the kernel waits for an RCU grace
// period once per update of a map-in-map, batch or not).
func (d *Dataplane) swapTables(ctx context.Context, w *mapWriter, plans []*svcPlan) error {
	defer func() {
		for _, p := range plans {
			if p.inner != nil {
				p.inner.Close() // sel_tables holds its own reference
				p.inner = nil
			}
		}
	}()
	if err := d.buildTables(ctx, plans); err != nil {
		return err
	}
	var ids, fds []uint32
	for _, p := range plans {
		if p.inner != nil {
			ids = append(ids, p.st.id)
			fds = append(fds, uint32(p.inner.FD()))
			p.writes++
		}
	}
	return w.putBatch(d.objs.SelTables, "sel_tables", ids, fds)
}

// remove deletes services: their entries first, so no new flow selects
// them, then their tables, allow-list entries and backends; counters are
// zeroed so that the ids start clean when reused.
func (d *Dataplane) remove(w *mapWriter, gone []*svcState) error {
	if len(gone) == 0 {
		return nil
	}
	for _, st := range gone {
		st.dirty = true
		if err := w.del(d.objs.Services, "services", st.key); err != nil {
			return fmt.Errorf("service %q: %w", st.name, err)
		}
	}
	// A deleted sel_tables entry costs a grace period per key (there is no
	// batch delete for map-in-map); pointing the ids at one shared empty
	// table costs one per batch and frees the old tables all the same.
	// Nothing reads sel_tables[id] of an id that has no service entry.
	if err := d.clearTables(w, gone); err != nil {
		return err
	}
	var leaving []*beState
	for _, st := range gone {
		for _, k := range st.allow {
			if err := w.del(d.objs.AllowList, "allow_list", k); err != nil {
				return fmt.Errorf("service %q: %w", st.name, err)
			}
		}
		st.allow = nil
		for _, be := range st.backends {
			leaving = append(leaving, be)
		}
		leaving = append(leaving, st.leaving...)
	}
	slices.SortFunc(leaving, func(a, b *beState) int { return cmp.Compare(a.id, b.id) })
	if err := d.freeBackends(w, leaving); err != nil {
		return err
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	ids := make([]uint32, len(gone))
	for i, st := range gone {
		ids[i] = st.id
	}
	if err := w.putBatch(d.objs.SvcStats, "svc_stats", ids, make([]xlbSvcCounters, len(ids)*ncpu)); err != nil {
		return err
	}
	if err := w.putBatch(d.objs.RrCursor, "rr_cursor", ids, make([]uint32, len(ids)*ncpu)); err != nil {
		return err
	}
	for _, st := range gone {
		st.backends, st.leaving = nil, nil
		for ref := range d.health {
			if ref.svc == st.key {
				delete(d.health, ref)
			}
		}
		delete(d.svcs, st.key)
		delete(d.byID, st.id)
		if d.byName[st.name] == st {
			delete(d.byName, st.name)
		}
		d.svcIDs.release(st.id)
	}
	return nil
}

// freeBackends marks ids unused (keeping their generation so that the next
// owner gets a higher one) and zeroes their counters.
func (d *Dataplane) freeBackends(w *mapWriter, bes []*beState) error {
	if len(bes) == 0 {
		return nil
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	ids := make([]uint32, len(bes))
	vals := make([]xlbBackend, len(bes))
	for i, be := range bes {
		ids[i] = be.id
		vals[i] = xlbBackend{Gen: be.val.Gen}
	}
	if err := w.putBatch(d.objs.Backends, "backends", ids, vals); err != nil {
		return err
	}
	if err := w.putBatch(d.objs.BackendStats, "backend_stats", ids, make([]xlbBackendCounters, len(ids)*ncpu)); err != nil {
		return err
	}
	if err := w.putBatch(d.objs.BackendActive, "backend_active", ids, make([]int64, len(ids))); err != nil {
		return err
	}
	for _, be := range bes {
		d.beGen[be.id] = be.val.Gen
		d.beIDs.release(be.id)
	}
	return nil
}

// clearTables points sel_tables[id] of removed services at an empty table.
func (d *Dataplane) clearTables(w *mapWriter, gone []*svcState) error {
	empty, err := d.newTable(nil, 1, tableSum(nil))
	if err != nil {
		return err
	}
	defer empty.Close()
	ids := make([]uint32, len(gone))
	fds := make([]uint32, len(gone))
	for i, st := range gone {
		ids[i], fds[i] = st.id, uint32(empty.FD())
	}
	return w.putBatch(d.objs.SelTables, "sel_tables", ids, fds)
}

// newTable creates an inner map of n entries holding table repeated (all
// zero, "no backend", when table is empty). Its name carries the table's
// sum (tableName), so that a restarted xlbd knows what a pinned table holds
// without reading it.
func (d *Dataplane) newTable(table []uint32, n int, sum uint64) (*ebpf.Map, error) {
	spec := d.innerSpec.Copy()
	spec.Name = tableName(sum)
	spec.MaxEntries = uint32(n)
	spec.Pinning = ebpf.PinNone
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create selection table (%d entries): %w", n, err)
	}
	if len(table) > 0 {
		keys := make([]uint32, n)
		vals := make([]uint32, n)
		for i := range keys {
			keys[i] = uint32(i)
			vals[i] = table[i%len(table)]
		}
		if _, err := inner.BatchUpdate(keys, vals, nil); err != nil {
			inner.Close()
			return nil, fmt.Errorf("fill selection table: %w", err)
		}
	}
	return inner, nil
}

// tableSum identifies the content of a selection table (its length and
// entries) in 52 bits: Go keeps the sum, not the table (a Maglev table is
// 64 KiB), and compares sums to decide whether a table must be swapped.
func tableSum(table []uint32) uint64 {
	h := sha256.New()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(len(table)))
	h.Write(b[:])
	buf := make([]byte, 4*len(table))
	for i, v := range table {
		binary.LittleEndian.PutUint32(buf[4*i:], v)
	}
	h.Write(buf)
	return binary.BigEndian.Uint64(h.Sum(nil)) >> 12
}

// tableName is the kernel name of a selection table with sum: "xs" and 13
// hex digits (map names hold 15 characters).
func tableName(sum uint64) string { return fmt.Sprintf("xs%013x", sum) }

// parseTableName returns the sum carried by a selection table's name.
func parseTableName(name string) (uint64, bool) {
	hexSum, ok := strings.CutPrefix(name, "xs")
	if !ok || len(hexSum) != 13 {
		return 0, false
	}
	sum, err := strconv.ParseUint(hexSum, 16, 64)
	return sum, err == nil
}

func (d *Dataplane) effectiveState(svc xlbSvcKey, ap netip.AddrPort, b Backend) uint8 {
	h := d.health[beRef{svc: svc, addr: ap}]
	switch {
	case b.State == BackendDown || h == beStateDown:
		return beStateDown
	case b.State == BackendDraining || b.Weight == 0 || h == beStateDraining:
		return beStateDraining
	default:
		return beStateActive
	}
}

// allowKeys returns the LPM keys of a service's source ranges (layout in
// struct allow_key, bpf/xlb.h): svc id then the address, IPv4 as
// ::ffff:a.b.c.d.
func allowKeys(id uint32, ranges []netip.Prefix) []xlbAllowKey {
	out := make([]xlbAllowKey, 0, len(ranges))
	for _, p := range ranges {
		bits := p.Bits()
		if p.Addr().Is4() {
			bits += 96
		}
		out = append(out, xlbAllowKey{
			Prefixlen: uint32(32 + bits),
			SvcId:     htonl(id),
			Addr:      addrToBE(netip.AddrFrom16(p.Addr().As16())),
		})
	}
	return out
}

// mapWriter performs and counts map writes.
type mapWriter struct{ n int }

func (w *mapWriter) put(m *ebpf.Map, name string, k, v any) error {
	if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write map %s: %w", name, err)
	}
	w.n++
	return nil
}

// putBatch writes keys[i] → vals[i] (vals: per-CPU maps take len(keys) ×
// CPUs values) in one batch; each entry counts as one write.
func (w *mapWriter) putBatch(m *ebpf.Map, name string, keys, vals any) error {
	n := reflect.ValueOf(keys).Len()
	if n == 0 {
		return nil
	}
	done, err := m.BatchUpdate(keys, vals, nil)
	w.n += done
	if err != nil {
		return fmt.Errorf("write map %s (batch of %d): %w", name, n, err)
	}
	return nil
}

func (w *mapWriter) del(m *ebpf.Map, name string, k any) error {
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete from map %s: %w", name, err)
	}
	w.n++
	return nil
}
