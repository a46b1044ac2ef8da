package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

const walkBatch = 4096

// walkConntrack calls fn for every conntrack entry, reading in batches.
// Entries created or deleted during the walk may or may not be seen.
func (d *Dataplane) walkConntrack(ctx context.Context, fn func(k *xlbCtKey, v *xlbCtEntry)) error {
	keys := make([]xlbCtKey, walkBatch)
	vals := make([]xlbCtEntry, walkBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := d.objs.Conntrack.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(&keys[i], &vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read conntrack: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// monotonicNow is the clock of bpf_ktime_get_ns (CLOCK_MONOTONIC).
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	return uint64(ts.Nano()), nil
}

func expired(v *xlbCtEntry, now uint64) bool {
	return v.LastSeenNs < now && now-v.LastSeenNs > uint64(v.LifetimeS)*uint64(time.Second)
}

// partnerKey returns the key of the other direction of a flow (see struct
// ct_entry in bpf/xlb.h): the forward entry's rewrite says where the reply
// comes from (the backend) and goes to (the SNAT address, or the client);
// the reply entry's rewrite gives back the VIP (nat_src) and, with SNAT, the
// client (nat_dst).
func partnerKey(k *xlbCtKey, v *xlbCtEntry) xlbCtKey {
	p := xlbCtKey{Proto: k.Proto, Family: k.Family}
	if v.Flags&ctFlagReply == 0 {
		p.Src, p.Sport = v.NatDst, v.NatDport
		p.Dst, p.Dport = k.Src, k.Sport
		if v.Flags&ctFlagRewriteSrc != 0 {
			p.Dst, p.Dport = v.NatSrc, v.NatSport
		}
		return p
	}
	p.Src, p.Sport = k.Dst, k.Dport
	if v.Flags&ctFlagRewriteDst != 0 {
		p.Src, p.Sport = v.NatDst, v.NatDport
	}
	p.Dst, p.Dport = v.NatSrc, v.NatSport
	return p
}

// keyBytes is the canonical byte form of a conntrack key, used for the
// paging cursor and its ordering.
func keyBytes(k *xlbCtKey) [38]byte {
	var b [38]byte
	for i := range 4 {
		binary.BigEndian.PutUint32(b[4*i:], k.Src[i])
		binary.BigEndian.PutUint32(b[16+4*i:], k.Dst[i])
	}
	binary.BigEndian.PutUint16(b[32:], k.Sport)
	binary.BigEndian.PutUint16(b[34:], k.Dport)
	b[36], b[37] = k.Proto, k.Family
	return b
}

func keyFromBytes(b []byte) (xlbCtKey, bool) {
	var k xlbCtKey
	if len(b) != 38 {
		return k, false
	}
	for i := range 4 {
		k.Src[i] = binary.BigEndian.Uint32(b[4*i:])
		k.Dst[i] = binary.BigEndian.Uint32(b[16+4*i:])
	}
	k.Sport = binary.BigEndian.Uint16(b[32:])
	k.Dport = binary.BigEndian.Uint16(b[34:])
	k.Proto, k.Family = b[36], b[37]
	return k, true
}
