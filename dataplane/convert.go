package dataplane

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// The maps store addresses and ports in network byte order inside host
// integers (__be32 / __be16 fields exported as uint32 / uint16), so the
// bytes in memory are the wire bytes. These helpers convert between netip
// and that layout; IPv4 lives in addr[0], the rest is zero.

func addrToBE(a netip.Addr) [4]uint32 {
	var out [4]uint32
	if a.Is4() {
		b := a.As4()
		out[0] = binary.NativeEndian.Uint32(b[:])
		return out
	}
	b := a.As16()
	for i := range 4 {
		out[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return out
}

func beToAddr(v [4]uint32, family uint8) netip.Addr {
	var b [16]byte
	for i := range 4 {
		binary.NativeEndian.PutUint32(b[4*i:], v[i])
	}
	if family == familyV4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}

func htonl(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}

func familyOf(a netip.Addr) uint8 {
	if a.Is4() {
		return familyV4
	}
	return familyV6
}

func protoNum(p Protocol) uint8 {
	if p == UDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func protoName(n uint8) Protocol {
	if n == unix.IPPROTO_UDP {
		return UDP
	}
	return TCP
}

// Constants mirrored from bpf/xlb.h.
const (
	familyV4 = 4
	familyV6 = 6

	natCodeDefault = 0
	natCodeFullNAT = 1
	natCodeOneArm  = 2

	algoCodeRR      = 0
	algoCodeRandom  = 1
	algoCodeMaglev  = 2
	algoCodePersist = 3
	algoCodeLC      = 4

	svcFlagAllowList = 1 << 0

	beStateUnused   = 0
	beStateActive   = 1
	beStateDraining = 2
	beStateDown     = 3

	ctFlagReply      = 1 << 0
	ctFlagRewriteSrc = 1 << 1
	ctFlagRewriteDst = 1 << 2
	ctFlagClosing    = 1 << 3

	cfgFlagRevNat = 1 << 1 // XLB_CFG_F_REV_NAT
)

var natCodes = map[NATMode]uint8{NATDefault: natCodeDefault, NATFullNAT: natCodeFullNAT, NATOneArm: natCodeOneArm}
var algoCodes = map[Algorithm]uint8{AlgoRR: algoCodeRR, AlgoRandom: algoCodeRandom, AlgoMaglev: algoCodeMaglev, AlgoPersist: algoCodePersist, AlgoLC: algoCodeLC}

// dropNames are the names of svc_counters.drops indexes (XLB_DROP_*).
var dropNames = [...]string{"no_backend", "src_denied", "snat_exhausted", "fragment", "malformed", "no_ifaddr", "mtu", "no_route", "ct_budget"}

// String returns the stable name of a drop reason.
func (r DropReason) String() string {
	if int(r) >= 0 && int(r) < len(dropNames) {
		return dropNames[r]
	}
	return "unknown"
}

func stateCode(s BackendState) uint8 {
	switch s {
	case BackendDraining:
		return beStateDraining
	case BackendDown:
		return beStateDown
	default:
		return beStateActive
	}
}

func stateName(c uint8) BackendState {
	switch c {
	case beStateDraining:
		return BackendDraining
	case beStateDown:
		return BackendDown
	default:
		return BackendActive
	}
}
