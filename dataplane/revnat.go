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

// revNatWant is what rev_nat must hold: every backend (address, port,
// protocol) that belongs to exactly one service, a default-mode one, mapped
// to that service's key. A backend shared by two services, or used by a
// fullnat/onearm service, is left out: a reply without conntrack could not
// be attributed (and fullnat replies go to the SNAT address, which needs
// the flow's state).
func (d *Dataplane) revNatWant() map[xlbBeKey]xlbSvcKey {
	want := map[xlbBeKey]xlbSvcKey{}
	shared := map[xlbBeKey]bool{}
	for _, st := range d.svcs {
		for _, be := range st.backends {
			k := xlbBeKey{Addr: be.val.Addr, Port: be.val.Port, Proto: st.key.Proto, Family: be.val.Family}
			if _, dup := want[k]; dup || shared[k] || st.info.NatMode != natCodeDefault {
				shared[k] = true
				delete(want, k)
				continue
			}
			want[k] = st.key
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
	var v xlbSvcKey
	it := d.objs.RevNat.Iterate()
	for it.Next(&k, &v) {
		d.revNat[k] = v
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read rev_nat: %w", err)
	}
	return nil
}
