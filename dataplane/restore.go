package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
)

// restore rebuilds the Go view (ids, generations, tables, VIP counts) from
// the maps, which are non-empty only when they were re-opened from pins. The
// desired names are not stored in the maps: until the next Apply a restored
// service is named after its key; Apply matches services by key anyway, so
// re-applying the set that was installed writes nothing.
func (d *Dataplane) restore(ctx context.Context) error {
	// Backends (an array: every id has a value).
	bySvc := map[uint32][]beState{}
	var cursor ebpf.MapBatchCursor
	keys := make([]uint32, 4096)
	vals := make([]xlbBackend, 4096)
	for {
		n, err := d.objs.Backends.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			d.beGen[keys[i]] = vals[i].Gen
			if vals[i].State != beStateUnused {
				bySvc[vals[i].SvcId] = append(bySvc[vals[i].SvcId], beState{id: keys[i], val: vals[i]})
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("read backends: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	allow := map[uint32][]xlbAllowKey{}
	var ak xlbAllowKey
	var one uint8
	it := d.objs.AllowList.Iterate()
	for it.Next(&ak, &one) {
		id := htonl(ak.SvcId) // htonl is its own inverse
		allow[id] = append(allow[id], ak)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read allow_list: %w", err)
	}

	var key xlbSvcKey
	var info xlbSvcInfo
	sit := d.objs.Services.Iterate()
	for sit.Next(&key, &info) {
		if info.Id == 0 || int(info.Id) >= d.cfg.MaxServices {
			d.log.Warn("ignoring pinned service with an invalid id", "id", info.Id)
			continue
		}
		st := &svcState{key: key, id: info.Id, info: info, selLenMax: info.SelLen, backends: map[netip.AddrPort]*beState{}, allow: allow[info.Id]}
		st.spec = Service{
			VIP:             beToAddr(key.Vip, key.Family),
			Port:            ntohs(key.Port),
			Protocol:        protoName(key.Proto),
			IdleTimeout:     time.Duration(info.IdleTimeoutS) * time.Second,
			AffinityTimeout: time.Duration(info.AffinityTimeoutS) * time.Second,
			SNATPortMin:     info.SnatPortMin,
			SNATPortMax:     info.SnatPortMax,
		}
		for m, c := range natCodes {
			if c == info.NatMode {
				st.spec.NATMode = m
			}
		}
		for a, c := range algoCodes {
			if c == info.Algo {
				st.spec.Algorithm = a
			}
		}
		if st.spec.NATMode == NATFullNAT {
			st.spec.SNATAddr = beToAddr(info.SnatAddr, info.Family)
		}
		for _, k := range st.allow {
			a := beToAddr(k.Addr, familyV6)
			bits := int(k.Prefixlen) - 32
			if a.Is4In6() {
				a, bits = a.Unmap(), bits-96
			}
			st.spec.SourceRanges = append(st.spec.SourceRanges, netip.PrefixFrom(a, bits))
		}
		st.name = RestoredName(st.spec.VIP, st.spec.Port, st.spec.Protocol)
		st.spec.Name = st.name
		for _, be := range bySvc[info.Id] {
			be := be
			ap := netip.AddrPortFrom(beToAddr(be.val.Addr, be.val.Family), ntohs(be.val.Port))
			st.backends[ap] = &be
			d.beIDs.take(be.id)
			b := Backend{Addr: ap.Addr(), Port: ap.Port(), Weight: be.val.Weight}
			switch {
			case be.val.State == beStateDown:
				// Restored as part of the spec, not as a SetBackendState
				// override: the caller's next Apply says what it is now
				// (xlbd seeds its prober with this state, see Stats).
				b.State = BackendDown
			case be.val.State == beStateDraining && be.val.Weight > 0:
				b.State = BackendDraining
			}
			st.spec.Backends = append(st.spec.Backends, b)
		}
		sum, err := d.readTableSum(info.Id, info.SelLen)
		if err != nil {
			d.log.Warn("selection table unreadable; it will be rebuilt", "service", st.name, "err", err)
			st.dirty = true
		}
		st.tableSum = sum
		d.svcIDs.take(info.Id)
		d.svcs[key] = st
		d.byID[info.Id] = st
		d.byName[st.name] = st
		d.vipCount[vipKeyOf(key)]++
	}
	if err := sit.Err(); err != nil {
		return fmt.Errorf("read services: %w", err)
	}
	// Start from what the vips map holds, so that the next Apply corrects
	// any count a crash left wrong (a VIP missing from the map counts 0
	// and is written; an extra one is deleted).
	computed := d.vipCount
	d.vipCount = map[xlbVipKey]uint32{}
	var vk xlbVipKey
	var cnt uint32
	vit := d.objs.Vips.Iterate()
	for vit.Next(&vk, &cnt) {
		d.vipCount[vk] = cnt
	}
	if err := vit.Err(); err != nil {
		return fmt.Errorf("read vips: %w", err)
	}
	for k := range computed {
		if _, ok := d.vipCount[k]; !ok {
			d.vipCount[k] = 0
		}
	}
	if len(d.svcs) > 0 {
		d.log.Info("restored datapath state from pinned maps", "services", len(d.svcs), "backends", d.cfg.MaxBackends-1-d.beIDs.free)
	}
	return nil
}

// readTableSum returns the tableSum of sel_tables[id]: from the inner
// map's name when xlbd created it (one syscall instead of reading up to a
// million entries), else from its first n entries.
func (d *Dataplane) readTableSum(id, n uint32) (uint64, error) {
	if n == 0 {
		return tableSum(nil), nil
	}
	var inner *ebpf.Map
	if err := d.objs.SelTables.Lookup(id, &inner); err != nil {
		return 0, fmt.Errorf("read sel_tables[%d]: %w", id, err)
	}
	info, err := inner.Info()
	inner.Close()
	if err == nil && inner.MaxEntries() >= n {
		if sum, ok := parseTableName(info.Name); ok {
			return sum, nil
		}
	}
	table, err := d.readTable(id, n)
	if err != nil {
		return 0, err
	}
	return tableSum(table), nil
}

func (d *Dataplane) readTable(id, n uint32) ([]uint32, error) {
	if n == 0 {
		return nil, nil
	}
	var inner *ebpf.Map
	if err := d.objs.SelTables.Lookup(id, &inner); err != nil {
		return nil, fmt.Errorf("read sel_tables[%d]: %w", id, err)
	}
	defer inner.Close()
	if inner.MaxEntries() < n {
		return nil, fmt.Errorf("sel_tables[%d] has %d entries, sel_len %d", id, inner.MaxEntries(), n)
	}
	out := make([]uint32, n)
	keys := make([]uint32, n)
	var cursor ebpf.MapBatchCursor
	got := 0
	for got < int(n) {
		c, err := inner.BatchLookup(&cursor, keys[got:], out[got:], nil)
		got += c
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read sel_tables[%d]: %w", id, err)
		}
	}
	return out[:n], nil
}

// RestoredName is the name a service read back from pinned maps carries
// until the first Apply names it ("VIP:PORT/PROTO"): the maps do not store
// the caller's names, so callers match restored services by this key.
func RestoredName(vip netip.Addr, port uint16, proto Protocol) string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(vip, port), proto)
}
