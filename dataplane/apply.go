package dataplane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
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
// backends first, then a complete new selection table swapped in, then the
// service entry; removals delete the service entry first. If a map write
// fails, Apply returns the error; the services touched so far are applied
// and the failed one is rewritten in full by the next Apply.
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
	want := map[xlbSvcKey]bool{}
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
	for _, s := range norm {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("apply: %w", err)
		}
		k := svcKeyOf(s)
		created := d.svcs[k] == nil
		var id uint32
		if created {
			id, svcIDs = svcIDs[0], svcIDs[1:]
		}
		before := w.n
		renamed, err := d.upsert(w, s, id, &beIDs)
		if err != nil {
			return res, fmt.Errorf("apply service %q: %w", s.Name, err)
		}
		switch {
		case created:
			res.Created = append(res.Created, s.Name)
		case w.n > before || renamed:
			res.Updated = append(res.Updated, s.Name)
		default:
			res.Unchanged = append(res.Unchanged, s.Name)
		}
	}
	var gone []*svcState
	for k, st := range d.svcs {
		if !want[k] {
			gone = append(gone, st)
		}
	}
	slices.SortFunc(gone, func(a, b *svcState) int { return cmp.Compare(a.id, b.id) })
	for _, st := range gone {
		if err := d.remove(w, st); err != nil {
			return res, fmt.Errorf("remove service %q: %w", st.name, err)
		}
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
	if _, err := d.upsert(w, st.spec, 0, &ids); err != nil {
		return fmt.Errorf("set backend state of %s in %q: %w", ap, service, err)
	}
	return nil
}

// upsert writes one service. id is the id for a new service; beIDs supplies
// ids for new backends. It reports whether only the name changed.
func (d *Dataplane) upsert(w *mapWriter, s Service, id uint32, beIDs *[]uint32) (renamed bool, err error) {
	key := svcKeyOf(s)
	st := d.svcs[key]
	if st == nil {
		st = &svcState{key: key, id: id, backends: map[netip.AddrPort]*beState{}, dirty: true}
		d.svcIDs.take(id)
		d.svcs[key] = st
		d.byID[id] = st
	}
	if st.name != s.Name {
		if d.byName[st.name] == st {
			delete(d.byName, st.name)
		}
		renamed = st.name != ""
		st.name = s.Name
	}
	d.byName[s.Name] = st
	st.spec = s
	// Until this function returns successfully the maps may hold a mix of
	// old and new: the next Apply must rewrite everything.
	forced := st.dirty
	st.dirty = true

	// 1. Backends.
	next := make(map[netip.AddrPort]*beState, len(s.Backends))
	var selectable []tableBackend
	for _, b := range s.Backends {
		ap := netip.AddrPortFrom(b.Addr, b.Port)
		old := st.backends[ap]
		var be beState
		if old != nil {
			be.id, be.val.Gen = old.id, old.val.Gen
		} else {
			if len(*beIDs) == 0 {
				return renamed, errors.New("no backend id left")
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
		if forced || old == nil || old.val != be.val {
			if err := w.put(d.objs.Backends, "backends", be.id, be.val); err != nil {
				return renamed, err
			}
			d.beGen[be.id] = be.val.Gen
		}
		next[ap] = &be
		if be.val.State == beStateActive {
			selectable = append(selectable, tableBackend{id: be.id, key: ap.String(), weight: b.Weight})
		}
	}
	// Deterministic table order whatever the order of the input.
	slices.SortFunc(selectable, func(a, b tableBackend) int { return cmp.Compare(a.key, b.key) })
	// Backends that leave are freed only after the new table is in place.
	var leaving []*beState
	for ap, be := range st.backends {
		if next[ap] == nil {
			leaving = append(leaving, be)
			delete(d.health, beRef{svc: st.key, addr: ap})
		}
	}
	st.backends = next

	// 2. Allow-list additions (before the flag that makes the datapath
	// consult them).
	wantAllow := allowKeys(st.id, s.SourceRanges)
	for _, k := range wantAllow {
		if forced || !slices.Contains(st.allow, k) {
			if err := w.put(d.objs.AllowList, "allow_list", k, uint8(1)); err != nil {
				return renamed, err
			}
		}
	}

	// 3. Selection table: a complete new inner map, swapped in atomically.
	table, err := buildSelTable(s.Algorithm, selectable, d.cfg.MaglevSeed)
	if err != nil {
		return renamed, err
	}
	if forced || !slices.Equal(table, st.table) {
		if err := d.swapTable(w, st.id, table, st.info.SelLen); err != nil {
			return renamed, err
		}
		st.table = table
	}

	// 4. The service entry.
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
	if forced || info != st.info {
		if err := w.put(d.objs.Services, "services", st.key, info); err != nil {
			return renamed, err
		}
		st.info = info
	}

	// 5. Allow-list removals, then backends that left.
	for _, k := range st.allow {
		if !slices.Contains(wantAllow, k) {
			if err := w.del(d.objs.AllowList, "allow_list", k); err != nil {
				return renamed, err
			}
		}
	}
	st.allow = wantAllow
	slices.SortFunc(leaving, func(a, b *beState) int { return cmp.Compare(a.id, b.id) })
	for _, be := range leaving {
		if err := d.freeBackend(w, be); err != nil {
			return renamed, err
		}
	}
	st.dirty = false
	return renamed, nil
}

// remove deletes one service: its entry first, so no new flow selects it,
// then its table, allow-list entries and backends; counters are zeroed so
// that the ids start clean when reused.
func (d *Dataplane) remove(w *mapWriter, st *svcState) error {
	if err := w.del(d.objs.Services, "services", st.key); err != nil {
		return err
	}
	if err := w.del(d.objs.SelTables, "sel_tables", st.id); err != nil {
		return err
	}
	for _, k := range st.allow {
		if err := w.del(d.objs.AllowList, "allow_list", k); err != nil {
			return err
		}
	}
	ids := make([]*beState, 0, len(st.backends))
	for _, be := range st.backends {
		ids = append(ids, be)
	}
	slices.SortFunc(ids, func(a, b *beState) int { return cmp.Compare(a.id, b.id) })
	for _, be := range ids {
		if err := d.freeBackend(w, be); err != nil {
			return err
		}
	}
	for ref := range d.health {
		if ref.svc == st.key {
			delete(d.health, ref)
		}
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := w.put(d.objs.SvcStats, "svc_stats", st.id, make([]xlbSvcCounters, ncpu)); err != nil {
		return err
	}
	if err := w.put(d.objs.RrCursor, "rr_cursor", st.id, make([]uint32, ncpu)); err != nil {
		return err
	}
	delete(d.svcs, st.key)
	delete(d.byID, st.id)
	if d.byName[st.name] == st {
		delete(d.byName, st.name)
	}
	d.svcIDs.release(st.id)
	return nil
}

// freeBackend marks an id unused (keeping its generation so that its next
// owner gets a higher one) and zeroes its counters.
func (d *Dataplane) freeBackend(w *mapWriter, be *beState) error {
	if err := w.put(d.objs.Backends, "backends", be.id, xlbBackend{Gen: be.val.Gen}); err != nil {
		return err
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := w.put(d.objs.BackendStats, "backend_stats", be.id, make([]xlbBackendCounters, ncpu)); err != nil {
		return err
	}
	if err := w.put(d.objs.BackendActive, "backend_active", be.id, int64(0)); err != nil {
		return err
	}
	d.beGen[be.id] = be.val.Gen
	d.beIDs.release(be.id)
	return nil
}

// swapTable builds a new inner map holding table and swaps it into
// sel_tables[id]. The inner map is at least as long as the old sel_len,
// padded by repeating the table, so a CPU that read the old svc_info (and
// its sel_len) before the service entry is rewritten still finds a valid
// backend at any index it computes.
func (d *Dataplane) swapTable(w *mapWriter, id uint32, table []uint32, oldLen uint32) error {
	n := max(1, len(table), int(oldLen))
	spec := d.innerSpec.Copy()
	spec.Name = "xlb_sel"
	spec.MaxEntries = uint32(n)
	spec.Pinning = ebpf.PinNone
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create selection table (%d entries): %w", n, err)
	}
	defer inner.Close() // sel_tables holds its own reference
	if len(table) > 0 {
		keys := make([]uint32, n)
		vals := make([]uint32, n)
		for i := range keys {
			keys[i] = uint32(i)
			vals[i] = table[i%len(table)]
		}
		if _, err := inner.BatchUpdate(keys, vals, nil); err != nil {
			return fmt.Errorf("fill selection table: %w", err)
		}
	}
	return w.put(d.objs.SelTables, "sel_tables", id, inner)
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

func (w *mapWriter) del(m *ebpf.Map, name string, k any) error {
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete from map %s: %w", name, err)
	}
	w.n++
	return nil
}
