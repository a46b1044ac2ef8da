package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// FlushBackendFlows deletes the conntrack entries (both directions) of
// every flow of service to the backend addr:port and returns how many
// flows it cut. It is how established flows are taken away from a backend
// that health checks marked down (policy "reset") or whose drain timeout
// passed: the next packet of such a flow finds no entry and is
// load-balanced again, as a new flow, to a backend that is selectable now
// (for TCP the new backend does not know the connection and answers with a
// RST, so the client reconnects at once instead of waiting for timeouts).
//
// Call it after the backend has left selection (down or draining), or the
// flows' next packets may pick it again. The backend keeps its id and
// generation; its affinity entries (persist) are not honoured while it is
// not active and are left to the reaper. backend_active is decremented for
// the flows that were still counted (not closing).
func (d *Dataplane) FlushBackendFlows(ctx context.Context, service string, addr netip.Addr, port uint16) (int, error) {
	d.mu.Lock()
	st := d.byName[service]
	if st == nil {
		d.mu.Unlock()
		return 0, fmt.Errorf("flush backend flows: service %q not found", service)
	}
	ap := netip.AddrPortFrom(addr.WithZone(""), port)
	be := st.backends[ap]
	if be == nil {
		d.mu.Unlock()
		return 0, fmt.Errorf("flush backend flows: service %q has no backend %s", service, ap)
	}
	svcID, beID, gen := st.id, be.id, be.val.Gen
	d.mu.Unlock()

	// The reaper rewrites backend_active from its own walk: do not
	// interleave with it.
	d.reapMu.Lock()
	defer d.reapMu.Unlock()
	seen := map[xlbCtKey]bool{}
	var del []xlbCtKey
	flows := 0
	var counted int64
	err := d.walkConntrack(ctx, func(k *xlbCtKey, v *xlbCtEntry) {
		if v.SvcId != svcID || v.BackendId != beID || v.BackendGen != gen || seen[*k] {
			return
		}
		seen[*k] = true
		del = append(del, *k)
		if v.Flags&ctFlagReply != 0 {
			// Its forward entry is found on its own (or is gone already).
			return
		}
		flows++
		if v.Flags&ctFlagClosing == 0 {
			counted++
		}
		if pk := partnerKey(k, v); !seen[pk] {
			seen[pk] = true
			del = append(del, pk)
		}
	})
	if err != nil {
		return 0, fmt.Errorf("flush backend flows of %s in %q: %w", ap, service, err)
	}
	for start := 0; start < len(del); start += walkBatch {
		end := min(start+walkBatch, len(del))
		n, err := d.objs.Conntrack.BatchDelete(del[start:end], nil)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return flows, fmt.Errorf("flush backend flows of %s in %q: delete: %w", ap, service, err)
		}
		if err != nil {
			// A key already gone (a partner the LRU evicted, a flow the
			// reaper or the datapath removed) stops a batch: finish one by one.
			for _, k := range del[start+n : end] {
				if err := d.objs.Conntrack.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return flows, fmt.Errorf("flush backend flows of %s in %q: delete: %w", ap, service, err)
				}
			}
		}
	}
	if counted > 0 {
		var cur int64
		if err := d.objs.BackendActive.Lookup(beID, &cur); err != nil {
			return flows, fmt.Errorf("read backend_active[%d]: %w", beID, err)
		}
		if err := d.objs.BackendActive.Update(beID, max(0, cur-counted), ebpf.UpdateAny); err != nil {
			return flows, fmt.Errorf("write backend_active[%d]: %w", beID, err)
		}
	}
	if flows > 0 {
		d.log.Info("flushed established flows of a backend", "service", service, "backend", ap.String(), "flows", flows)
	}
	return flows, nil
}
