package dataplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// RunReaper calls Reap and RefreshInterfaceAddrs every interval until ctx
// is done; after a long walk the next Reap waits longer (see reaperPause),
// the address refresh does not. Errors are logged, not fatal.
func (d *Dataplane) RunReaper(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var next time.Time // after a long walk: earliest start of the next one
	for {
		if now := time.Now(); !now.Before(next) {
			if _, err := d.Reap(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn("conntrack reaper", "err", err)
			}
			took := time.Since(now)
			pause, long := reaperPause(interval, took)
			next = time.Time{}
			d.reapMu.Lock()
			d.flowCountsMaxAge = 0
			if long {
				next = time.Now().Add(pause)
				d.flowCountsMaxAge = pause + took
				d.log.Debug("conntrack reaper: long walk, pausing longer", "walk", took, "pause", pause)
			}
			d.reapMu.Unlock()
		}
		if err := d.RefreshInterfaceAddrs(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("refresh interface addresses", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reaperDuty bounds the reaper's share of a CPU: after a walk that took w,
// the next starts at least reaperDuty·w later. A walk reads every entry of
// the map: with 10M flows (20M entries) one took ~20 s wall and ~5.6 s CPU
// on a 2-vCPU VM, longer than the 10 s interval, so without the bound the
// reaper ran back to back. Expired flows are then deleted later, which costs
// nothing but memory already allocated (the map is preallocated, and a full
// LRU evicts the least recently used entries anyway).
const reaperDuty = 4

// reaperPause is the wait after a walk that took took: the rest of the
// interval (walks start every interval), or reaperDuty times the walk when
// that is longer (long reports that case; RunReaper then skips ticks).
func reaperPause(interval, took time.Duration) (pause time.Duration, long bool) {
	if reaperDuty*took > interval-took {
		return reaperDuty * took, true
	}
	return interval - took, false
}

// Reap walks the conntrack map once and deletes
//   - flows idle for longer than their lifetime: both entries, and only
//     when both directions are idle (a one-way UDP stream keeps its reply
//     entry alive through its forward one);
//   - entries of services or backends that no longer exist (the datapath
//     already ignores them and re-selects; this frees the memory).
//
// Flows that expire without FIN/RST decrement backend_active (the datapath
// decrements it itself on FIN/RST). About once a minute backend_active is
// instead rewritten from the walk, which also corrects the drift left by
// LRU evictions (silent) and by read-modify-write races with the datapath.
// Expired client-affinity entries are deleted too.
func (d *Dataplane) Reap(ctx context.Context) (ReapResult, error) {
	d.reapMu.Lock()
	defer d.reapMu.Unlock()
	var res ReapResult
	now, err := monotonicNow()
	if err != nil {
		return res, err
	}

	// Snapshot what is alive.
	d.mu.Lock()
	svcAlive := make(map[uint32]*svcState, len(d.byID))
	for id, st := range d.byID {
		svcAlive[id] = st
	}
	gen := map[uint32]uint32{}
	for _, st := range d.svcs {
		for _, be := range st.backends {
			gen[be.id] = be.val.Gen
		}
	}
	d.mu.Unlock()
	stale := func(v *xlbCtEntry) bool {
		if svcAlive[v.SvcId] == nil {
			return true
		}
		g, ok := gen[v.BackendId]
		return !ok || g != v.BackendGen
	}

	recompute := time.Since(d.lastActiveCalc) >= defaultActiveRecomputeEvery
	active := map[uint32]int64{}
	flows := map[uint32]int{}
	type cand struct {
		k     xlbCtKey
		v     xlbCtEntry
		stale bool
	}
	var cands []cand
	err = d.walkConntrack(ctx, func(k *xlbCtKey, v *xlbCtEntry) {
		res.Scanned++
		s := stale(v)
		if s || expired(v, now) {
			cands = append(cands, cand{*k, *v, s})
			return
		}
		if v.Flags&ctFlagReply == 0 {
			flows[v.SvcId]++
			if v.Flags&ctFlagClosing == 0 {
				active[v.BackendId]++
			}
		}
	})
	if err != nil {
		return res, err
	}

	var del []xlbCtKey
	seen := map[xlbCtKey]bool{}
	decrement := map[uint32]int64{}
	for _, c := range cands {
		if seen[c.k] {
			continue
		}
		pk := partnerKey(&c.k, &c.v)
		var pv xlbCtEntry
		perr := d.objs.Conntrack.Lookup(pk, &pv)
		havePartner := perr == nil
		if havePartner && !c.stale && !expired(&pv, now) {
			// The other direction is still active: the flow lives. Count
			// it as live.
			if c.v.Flags&ctFlagReply == 0 {
				flows[c.v.SvcId]++
				if c.v.Flags&ctFlagClosing == 0 {
					active[c.v.BackendId]++
				}
			}
			continue
		}
		seen[c.k] = true
		del = append(del, c.k)
		if c.stale {
			res.Stale++
		}
		if havePartner && !seen[pk] {
			seen[pk] = true
			del = append(del, pk)
		}
		fwd := c.v
		if c.v.Flags&ctFlagReply != 0 && havePartner {
			fwd = pv
		}
		if !c.stale && fwd.Flags&ctFlagReply == 0 && fwd.Flags&ctFlagClosing == 0 {
			decrement[fwd.BackendId]++
		}
	}
	for start := 0; start < len(del); start += walkBatch {
		end := min(start+walkBatch, len(del))
		n, err := d.objs.Conntrack.BatchDelete(del[start:end], nil)
		res.Expired += n
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			// A key the datapath evicted meanwhile stops a batch: finish
			// one by one.
			for _, k := range del[start+n : end] {
				if err := d.objs.Conntrack.Delete(k); err == nil {
					res.Expired++
				}
			}
		}
	}

	if recompute {
		for id := range gen {
			var cur int64
			if err := d.objs.BackendActive.Lookup(id, &cur); err != nil {
				return res, fmt.Errorf("read backend_active[%d]: %w", id, err)
			}
			if cur != active[id] {
				if err := d.objs.BackendActive.Update(id, active[id], ebpf.UpdateAny); err != nil {
					return res, fmt.Errorf("write backend_active[%d]: %w", id, err)
				}
			}
		}
		d.lastActiveCalc = time.Now()
		res.ActiveRecomputed = true
	} else {
		for id, n := range decrement {
			if _, ok := gen[id]; !ok {
				continue
			}
			var cur int64
			if err := d.objs.BackendActive.Lookup(id, &cur); err != nil {
				return res, fmt.Errorf("read backend_active[%d]: %w", id, err)
			}
			if err := d.objs.BackendActive.Update(id, max(0, cur-n), ebpf.UpdateAny); err != nil {
				return res, fmt.Errorf("write backend_active[%d]: %w", id, err)
			}
		}
	}
	d.flowCounts, d.flowCountsAt, d.ctEntries = flows, time.Now(), res.Scanned-res.Expired

	if err := d.reapAffinity(ctx, now, svcAlive, gen); err != nil {
		return res, err
	}
	return res, nil
}

func (d *Dataplane) reapAffinity(ctx context.Context, now uint64, svcs map[uint32]*svcState, gen map[uint32]uint32) error {
	var del []xlbAffinityKey
	var k xlbAffinityKey
	var v xlbAffinityEntry
	it := d.objs.Affinity.Iterate()
	for it.Next(&k, &v) {
		st := svcs[k.SvcId]
		if st == nil || gen[v.BackendId] != v.BackendGen ||
			(v.LastUsedNs < now && now-v.LastUsedNs > uint64(st.info.AffinityTimeoutS)*uint64(time.Second)) {
			del = append(del, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read affinity: %w", err)
	}
	for _, k := range del {
		if err := d.objs.Affinity.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete affinity entry: %w", err)
		}
	}
	return ctx.Err()
}
