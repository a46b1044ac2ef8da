package dataplane

import (
	"bufio"
	"container/heap"
	"context"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// flowCountMaxAge bounds how old the per-service flow counts of the last
// conntrack walk may be before Stats walks again.
const flowCountMaxAge = 5 * time.Second

// Stats returns the counters of every service (summed over CPUs), sorted by
// name. Flows is the number of live forward conntrack entries, from a
// conntrack walk at most a few seconds old.
func (d *Dataplane) Stats(ctx context.Context) ([]ServiceStats, error) {
	counts, _, err := d.flowStats(ctx)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]ServiceStats, 0, len(d.svcs))
	for _, st := range d.svcs {
		var per []xlbSvcCounters
		if err := d.objs.SvcStats.Lookup(st.id, &per); err != nil {
			return nil, fmt.Errorf("read svc_stats of %q: %w", st.name, err)
		}
		s := ServiceStats{Name: st.name, Drops: map[string]uint64{}, Flows: counts[st.id]}
		for _, c := range per {
			s.Counters.Packets += c.Packets
			s.Counters.Bytes += c.Bytes
			s.Counters.NewFlows += c.NewFlows
			for r, name := range dropNames {
				s.Drops[name] += c.Drops[r]
			}
		}
		for ap, be := range st.backends {
			var bper []xlbBackendCounters
			if err := d.objs.BackendStats.Lookup(be.id, &bper); err != nil {
				return nil, fmt.Errorf("read backend_stats of %s in %q: %w", ap, st.name, err)
			}
			bs := BackendStats{Addr: ap.Addr(), Port: ap.Port(), State: stateName(be.val.State)}
			for _, c := range bper {
				bs.Counters.Packets += c.Packets
				bs.Counters.Bytes += c.Bytes
				bs.Counters.NewFlows += c.NewFlows
			}
			if err := d.objs.BackendActive.Lookup(be.id, &bs.Active); err != nil {
				return nil, fmt.Errorf("read backend_active of %s in %q: %w", ap, st.name, err)
			}
			s.Backends = append(s.Backends, bs)
		}
		slices.SortFunc(s.Backends, func(a, b BackendStats) int {
			return netip.AddrPortFrom(a.Addr, a.Port).Compare(netip.AddrPortFrom(b.Addr, b.Port))
		})
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b ServiceStats) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// GlobalStats returns the datapath-wide counters summed over CPUs.
func (d *Dataplane) GlobalStats(ctx context.Context) (GlobalStats, error) {
	var per []xlbGlobalCounters
	if err := d.objs.GlobalStats.Lookup(uint32(0), &per); err != nil {
		return GlobalStats{}, fmt.Errorf("read global_stats: %w", err)
	}
	var g GlobalStats
	for _, c := range per {
		g.RX += c.Rx
		g.Passed += c.Passed
		g.Malformed += c.Malformed
		g.Fragments += c.Fragments
		g.ForwardNAT += c.FwdNat
		g.ReplyNAT += c.RevNat
		g.ICMPNAT += c.IcmpNat
		g.ConntrackCreated += c.CtCreated
		g.FragmentNAT += c.FragNat
		g.FragmentDropped += c.FragDropped
		g.Stateless += c.Stateless
		g.ConntrackRebuilt += c.CtRebuilt
		g.ReplyNATMap += c.RevNatMap
		g.FIBFragNeeded += c.FibFragNeeded
		g.FIBDropped += c.FibDropped
		g.XDPToTC += c.XdpToTc
		g.SNATMissDropped += c.SnatMissDropped
	}
	return g, ctx.Err()
}

// ConntrackUsage returns the number of conntrack entries (from a walk at
// most a few seconds old) and the capacity.
func (d *Dataplane) ConntrackUsage(ctx context.Context) (ConntrackUsage, error) {
	_, n, err := d.flowStats(ctx)
	if err != nil {
		return ConntrackUsage{}, err
	}
	g, err := d.GlobalStats(ctx)
	if err != nil {
		return ConntrackUsage{}, err
	}
	return ConntrackUsage{Entries: n, Capacity: int(d.objs.Conntrack.MaxEntries()), Stateless: g.Stateless,
		Rebuilt: g.ConntrackRebuilt, SNATMissDropped: g.SNATMissDropped}, nil
}

// flowStats returns forward entries per service id and the total entry
// count, walking the conntrack map unless the reaper did recently.
func (d *Dataplane) flowStats(ctx context.Context) (map[uint32]int, int, error) {
	d.reapMu.Lock()
	defer d.reapMu.Unlock()
	if d.flowCounts != nil && time.Since(d.flowCountsAt) < max(flowCountMaxAge, d.flowCountsMaxAge) {
		return d.flowCounts, d.ctEntries, nil
	}
	counts := map[uint32]int{}
	total := 0
	err := d.walkConntrack(ctx, func(k *xlbCtKey, v *xlbCtEntry) {
		total++
		if v.Flags&ctFlagReply == 0 {
			counts[v.SvcId]++
		}
	})
	if err != nil {
		return nil, 0, err
	}
	d.flowCounts, d.flowCountsAt, d.ctEntries = counts, time.Now(), total
	return counts, total, nil
}

// Flow paging limits.
const (
	DefaultFlowLimit = 1000
	MaxFlowLimit     = 10000
)

// Flows lists tracked connections (forward entries) matching f, ordered by
// their key, at most f.Limit (default 1000, at most 10000) per page. next is
// the cursor for the following page, empty at the end. Paging is exact for
// flows that exist throughout; flows created or expiring between pages may
// be missed. Each page walks the whole table (cost grows with the table,
// not with the page).
func (d *Dataplane) Flows(ctx context.Context, f FlowFilter) ([]Flow, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultFlowLimit
	}
	if limit > MaxFlowLimit {
		return nil, "", &ValidationError{Field: "limit", Value: strconv.Itoa(f.Limit), Allowed: fmt.Sprintf("1-%d", MaxFlowLimit)}
	}
	var after *[38]byte
	if f.After != "" {
		raw, err := base64.RawURLEncoding.DecodeString(f.After)
		k, ok := keyFromBytes(raw)
		if err != nil || !ok {
			return nil, "", &ValidationError{Field: "after", Value: f.After, Allowed: "a cursor returned by a previous call"}
		}
		b := keyBytes(&k)
		after = &b
	}
	var vipBE, clientBE [4]uint32
	if f.VIP.IsValid() {
		vipBE = addrToBE(f.VIP.Unmap())
	}
	if f.Client.IsValid() {
		clientBE = addrToBE(f.Client.Unmap())
	}
	now, err := monotonicNow()
	if err != nil {
		return nil, "", err
	}
	// Keep the limit+1 smallest keys after the cursor in a max-heap, so
	// memory stays bounded by the page, not the table.
	h := &flowHeap{}
	err = d.walkConntrack(ctx, func(k *xlbCtKey, v *xlbCtEntry) {
		if v.Flags&ctFlagReply != 0 {
			return
		}
		if f.VIP.IsValid() && (k.Dst != vipBE || k.Family != familyOf(f.VIP.Unmap())) {
			return
		}
		if f.VIPPort != 0 && k.Dport != htons(f.VIPPort) {
			return
		}
		if f.ClientPort != 0 && k.Sport != htons(f.ClientPort) {
			return
		}
		if f.Client.IsValid() && (k.Src != clientBE || k.Family != familyOf(f.Client.Unmap())) {
			return
		}
		kb := keyBytes(k)
		if after != nil && slices.Compare(kb[:], after[:]) <= 0 {
			return
		}
		if h.Len() == limit+1 {
			if slices.Compare(kb[:], (*h)[0].kb[:]) >= 0 {
				return
			}
			heap.Pop(h)
		}
		heap.Push(h, flowItem{kb: kb, k: *k, v: *v})
	})
	if err != nil {
		return nil, "", err
	}
	items := []flowItem(*h)
	slices.SortFunc(items, func(a, b flowItem) int { return slices.Compare(a.kb[:], b.kb[:]) })
	next := ""
	if len(items) > limit {
		items = items[:limit]
		next = base64.RawURLEncoding.EncodeToString(items[limit-1].kb[:])
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Flow, 0, len(items))
	for _, it := range items {
		k, v := &it.k, &it.v
		fl := Flow{
			Protocol: protoName(k.Proto),
			Client:   netip.AddrPortFrom(beToAddr(k.Src, k.Family), ntohs(k.Sport)),
			VIP:      netip.AddrPortFrom(beToAddr(k.Dst, k.Family), ntohs(k.Dport)),
			Backend:  netip.AddrPortFrom(beToAddr(v.NatDst, k.Family), ntohs(v.NatDport)),
			Lifetime: time.Duration(v.LifetimeS) * time.Second,
			Closing:  v.Flags&ctFlagClosing != 0,
		}
		if v.Flags&ctFlagRewriteSrc != 0 {
			fl.SNAT = netip.AddrPortFrom(beToAddr(v.NatSrc, k.Family), ntohs(v.NatSport))
		}
		if now > v.CreatedNs && v.CreatedNs != 0 {
			fl.Age = time.Duration(now - v.CreatedNs)
		}
		if now > v.LastSeenNs {
			fl.Idle = time.Duration(now - v.LastSeenNs)
		}
		if st := d.byID[v.SvcId]; st != nil {
			fl.Service = st.name
		}
		out = append(out, fl)
	}
	return out, next, nil
}

type flowItem struct {
	kb [38]byte
	k  xlbCtKey
	v  xlbCtEntry
}

// flowHeap is a max-heap on kb.
type flowHeap []flowItem

func (h flowHeap) Len() int           { return len(h) }
func (h flowHeap) Less(i, j int) bool { return slices.Compare(h[i].kb[:], h[j].kb[:]) > 0 }
func (h flowHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *flowHeap) Push(x any)        { *h = append(*h, x.(flowItem)) }
func (h *flowHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Memory reports what the kernel charges for the datapath maps, read from
// the "memlock:" line of /proc/self/fdinfo/<fd> (the figure the memory
// cgroup accounts), and derives per-flow, per-service and per-backend costs.
func (d *Dataplane) Memory(ctx context.Context) (MemoryCost, error) {
	mc := MemoryCost{Maps: map[string]uint64{}}
	m := &d.objs.xlbMaps
	named := map[string]*ebpf.Map{
		xlbMapAffinity: m.Affinity, xlbMapAllowList: m.AllowList, xlbMapBackendActive: m.BackendActive,
		xlbMapBackendStats: m.BackendStats, xlbMapBackends: m.Backends, xlbMapConntrack: m.Conntrack,
		xlbMapGlobalStats: m.GlobalStats, xlbMapIfAddrs: m.IfAddrs, xlbMapRrCursor: m.RrCursor,
		xlbMapSelTables: m.SelTables, xlbMapServices: m.Services, xlbMapSvcStats: m.SvcStats,
		xlbMapVips: m.Vips, xlbMapXlbConfig: m.XlbConfig, xlbMapXlbFrags: m.XlbFrags,
	}
	perEntry := func(name string) uint64 {
		return mc.Maps[name] / uint64(max(1, named[name].MaxEntries()))
	}
	for name, mp := range named {
		n, err := memlock(mp)
		if err != nil {
			return mc, err
		}
		mc.Maps[name] = n
		mc.Total += n
	}
	mc.PerConntrackFlow = 2 * perEntry(xlbMapConntrack)
	for _, n := range []string{xlbMapServices, xlbMapVips, xlbMapSelTables, xlbMapSvcStats, xlbMapRrCursor} {
		mc.PerService += perEntry(n)
	}
	for _, n := range []string{xlbMapBackends, xlbMapBackendStats, xlbMapBackendActive} {
		mc.PerBackend += perEntry(n)
	}
	spec := d.innerSpec.Copy()
	spec.MaxEntries = d.cfg.MaglevMinTableSize
	spec.Pinning = ebpf.PinNone
	tmp, err := ebpf.NewMap(spec)
	if err != nil {
		return mc, fmt.Errorf("measure a selection table: %w", err)
	}
	defer tmp.Close()
	if mc.PerMaglevService, err = memlock(tmp); err != nil {
		return mc, err
	}
	return mc, ctx.Err()
}

func memlock(m *ebpf.Map) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return 0, fmt.Errorf("read map fdinfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "memlock:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("map fdinfo has no memlock line: %v", sc.Err())
}
