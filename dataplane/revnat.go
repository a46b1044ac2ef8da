package dataplane

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
)

// DefaultNewFlowBudget is the new-flow budget (conntrack insertions per CPU
// per second) that keeps a flood from filling more than about half of a
// table of conntrackFlows flows: in one SYN lifetime all CPUs together
// insert at most conntrackFlows/2 flows (unreplied entries live synTimeout;
// the LRU evicts them first as nothing touches them). At least 1.
func DefaultNewFlowBudget(conntrackFlows int, synTimeout time.Duration, cpus int) int {
	secs := int(synTimeout / time.Second)
	if secs < 1 {
		secs = 1
	}
	if cpus < 1 {
		cpus = runtime.NumCPU()
	}
	return max(1, conntrackFlows/2/secs/cpus)
}

// revNatFlagSNAT is XLB_REVNAT_F_SNAT: the backend belongs only to
// fullnat/onearm services; packets from it that miss conntrack and go to an
// SNAT port are dropped (the kernel would answer them with a RST).
const revNatFlagSNAT = 1 << 0

// revNatWant is what rev_nat must hold: every backend (address, port,
// protocol) that belongs to exactly one service, a default-mode one, mapped
// to that service's key; and every backend that belongs only to
// fullnat/onearm services, flagged revNatFlagSNAT with the smallest range
// holding all their SNAT port ranges. A backend shared by a default-mode
// service and another service is left out: a reply without conntrack could
// not be attributed.
func (d *Dataplane) revNatWant() map[xlbBeKey]xlbRevNatVal {
	type use struct {
		defaults, snats int
		val             xlbRevNatVal
	}
	uses := map[xlbBeKey]*use{}
	for _, st := range d.svcs {
		for _, be := range st.backends {
			k := xlbBeKey{Addr: be.val.Addr, Port: be.val.Port, Proto: st.key.Proto, Family: be.val.Family}
			u := uses[k]
			if u == nil {
				u = &use{}
				uses[k] = u
			}
			if st.info.NatMode == natCodeDefault {
				u.defaults++
				u.val.Svc = st.key
				continue
			}
			if u.snats == 0 || st.info.SnatPortMin < u.val.SnatPortMin {
				u.val.SnatPortMin = st.info.SnatPortMin
			}
			if u.snats == 0 || st.info.SnatPortMax > u.val.SnatPortMax {
				u.val.SnatPortMax = st.info.SnatPortMax
			}
			u.snats++
		}
	}
	want := map[xlbBeKey]xlbRevNatVal{}
	for k, u := range uses {
		switch {
		case u.defaults == 1 && u.snats == 0:
			want[k] = xlbRevNatVal{Svc: u.val.Svc}
		case u.defaults == 0 && u.snats > 0:
			want[k] = xlbRevNatVal{SnatPortMin: u.val.SnatPortMin, SnatPortMax: u.val.SnatPortMax, Flags: revNatFlagSNAT}
		}
	}
	return want
}

// syncRevNat writes the difference between what rev_nat holds and what it
// must hold (nothing when nothing changed).
func (d *Dataplane) syncRevNat(w *mapWriter) error {
	want := d.revNatWant()
	wasEmpty := len(d.revNat) == 0
	defer func() {
		if (len(d.revNat) == 0) != wasEmpty {
			if err := d.writeConfig(); err != nil {
				d.log.Error("write xlb_config after a rev_nat change", "err", err)
			}
		}
	}()
	for k := range d.revNat {
		if _, ok := want[k]; !ok {
			if err := w.del(d.objs.RevNat, "rev_nat", k); err != nil {
				return err
			}
			delete(d.revNat, k)
		}
	}
	for k, v := range want {
		if cur, ok := d.revNat[k]; ok && cur == v {
			continue
		}
		if err := w.put(d.objs.RevNat, "rev_nat", k, v); err != nil {
			return err
		}
		d.revNat[k] = v
	}
	return nil
}

// loadRevNat reads what a previous process left in a pinned rev_nat, so the
// first Apply writes only differences.
func (d *Dataplane) loadRevNat() error {
	var k xlbBeKey
	var v xlbRevNatVal
	it := d.objs.RevNat.Iterate()
	for it.Next(&k, &v) {
		d.revNat[k] = v
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read rev_nat: %w", err)
	}
	return nil
}
