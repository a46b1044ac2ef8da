package dataplane

import (
	"net/netip"
	"time"
)

// Protocol is the L4 protocol of a service.
type Protocol string

const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// NATMode says how packets to a backend are rewritten.
type NATMode string

const (
	// NATDefault rewrites only the destination; the backend sees the client
	// address and must route replies back through the load balancer.
	NATDefault NATMode = "default"
	// NATFullNAT also rewrites the source to the service's SNAT address.
	NATFullNAT NATMode = "fullnat"
	// NATOneArm also rewrites the source to the address of the interface
	// that faces the backend.
	NATOneArm NATMode = "onearm"
)

// Algorithm selects a backend for a new flow.
type Algorithm string

const (
	AlgoRR      Algorithm = "rr"
	AlgoRandom  Algorithm = "random"
	AlgoMaglev  Algorithm = "maglev"
	AlgoPersist Algorithm = "persist"
	AlgoLC      Algorithm = "lc"
)

// BackendState is the selection state of one backend.
type BackendState string

const (
	BackendActive   BackendState = "active"   // selectable for new flows
	BackendDraining BackendState = "draining" // keeps established flows only
	BackendDown     BackendState = "down"     // failed health checks: no new flows
)

// Service is one load-balanced (VIP, port, protocol) as the datapath sees it.
// The REST layer expands a multi-VIP spec into one Service per VIP.
type Service struct {
	// Name identifies the service to the caller; it is unique in a desired set.
	Name      string
	VIP       netip.Addr
	Port      uint16
	Protocol  Protocol
	NATMode   NATMode
	Algorithm Algorithm
	// SNATAddr is the source address for NATFullNAT (same family as VIP).
	SNATAddr netip.Addr
	// SNATPortMin/Max bound the source ports used by fullnat/onearm
	// (0 means DefaultSNATPortMin–DefaultSNATPortMax, 10000–29999). Keep
	// the range out of the host's ephemeral ports (ip_local_port_range), or
	// reserve it in ip_local_reserved_ports: a reply to the host's own
	// connection from a port in the range may be taken for a flow's reply.
	SNATPortMin, SNATPortMax uint16
	// IdleTimeout is the conntrack idle lifetime (0 means the default: 240s
	// for TCP, 60s for UDP).
	IdleTimeout time.Duration
	// AffinityTimeout is the client-affinity lifetime for AlgoPersist
	// (0 means the default 10800s, as sessionAffinityConfig).
	AffinityTimeout time.Duration
	// SourceRanges is the allow-list of client prefixes; empty allows all.
	SourceRanges []netip.Prefix
	Backends     []Backend
}

// Backend is one destination of a service.
type Backend struct {
	Addr netip.Addr
	Port uint16
	// Weight is the relative share of new flows; 0 means draining.
	Weight uint32
	// State defaults to BackendActive when empty.
	State BackendState
}

// Hook is where the datapath program is attached.
type Hook string

const (
	HookTCX Hook = "tcx" // tcx ingress (default): keeps GSO/GRO, coexists via multi-attach
	HookXDP Hook = "xdp" // XDP: fastest per packet; native unless XDPGeneric
)

// DropReason indexes ServiceStats.Drops.
type DropReason int

const (
	DropNoBackend DropReason = iota
	DropSrcDenied
	DropSNATExhausted
	// DropFragment is no longer counted: fragments are tracked, and a later
	// fragment whose first was not seen has no ports to find its service
	// (GlobalStats.FragmentDropped counts those).
	DropFragment
	DropMalformed
	DropNoIfAddr
	DropMTU     // translated packet longer than the egress MTU (per segment for GSO)
	DropNoRoute // translated packet not routable and its source local: the kernel would drop it as a martian
)

// Counters are summed over CPUs.
type Counters struct {
	Packets  uint64
	Bytes    uint64
	NewFlows uint64
}

// ServiceStats are the live counters of one service and its backends.
type ServiceStats struct {
	Name     string
	Counters Counters
	Drops    map[string]uint64 // by reason name: no_backend, src_denied, ...
	Backends []BackendStats
	// Flows is the number of live conntrack entries (forward direction).
	Flows int
}

// BackendStats are the live counters of one backend.
type BackendStats struct {
	Addr     netip.Addr
	Port     uint16
	State    BackendState
	Counters Counters
	Active   int64 // active connections (lc bookkeeping)
}

// Flow is one tracked connection, as read from the conntrack map.
type Flow struct {
	Service  string
	Protocol Protocol
	Client   netip.AddrPort
	VIP      netip.AddrPort
	Backend  netip.AddrPort
	SNAT     netip.AddrPort // zero when the mode does not rewrite the source
	Age      time.Duration
	Idle     time.Duration
	Lifetime time.Duration
	Closing  bool
}

// FlowFilter selects flows; zero fields match everything.
type FlowFilter struct {
	VIP    netip.Addr
	Client netip.Addr
	// VIPPort and ClientPort narrow the match when non-zero.
	VIPPort    uint16
	ClientPort uint16
	Limit      int
	// After is an opaque paging cursor returned by a previous call.
	After string
}

// AttachState is the attach state of one interface (GET /v1/status).
type AttachState struct {
	Name     string
	Attached bool
	// Mode is "tcx", "xdp-native" or "xdp-generic" (the configured mode,
	// also while the interface is missing).
	Mode  string
	Error string
	// Ifindex is the interface index the datapath is (or was last) attached
	// to; 0 while the interface is missing.
	Ifindex int
	// Reattaches counts re-attachments by this process after the first
	// attachment (the interface was re-created, renamed or came back).
	Reattaches uint64
}

// ApplyResult reports what an Apply changed.
type ApplyResult struct {
	Created, Updated, Deleted, Unchanged []string
	// Writes counts element writes and deletes on BPF maps (an identical
	// desired set performs zero).
	Writes int
}

// GlobalStats are datapath-wide counters summed over CPUs.
type GlobalStats struct {
	RX, Passed, Malformed, Fragments uint64
	ForwardNAT, ReplyNAT, ICMPNAT    uint64
	ConntrackCreated                 uint64
	// FragmentNAT counts later fragments (no L4 header) translated like
	// their datagram's first fragment; FragmentDropped the later fragments
	// to a VIP whose first fragment was not seen (docs/datapath.md, Fragments).
	FragmentNAT, FragmentDropped uint64
	// Stateless counts new-flow packets served without conntrack (the
	// new-flow budget was spent); ConntrackRebuilt missing peer entries
	// re-created from the remaining one; ReplyNATMap replies without
	// conntrack translated through rev_nat (also counted in ReplyNAT).
	Stateless, ConntrackRebuilt, ReplyNATMap uint64
	// Translated packets that could not be forwarded (bpf/README.md,
	// "Forwarding after a rewrite"): dropped for the egress MTU, dropped
	// as unroutable with a local source, and XDP packets handed over to
	// the tc companion because no neighbour entry existed.
	FIBFragNeeded, FIBDropped, XDPToTC uint64
	// SNATMissDropped counts TCP/UDP packets from a backend of only
	// fullnat/onearm services to an SNAT port that missed conntrack (reply
	// entry evicted): dropped rather than passed to the kernel, which would
	// answer with a RST (docs/datapath.md, Floods).
	SNATMissDropped uint64
}

// ConntrackUsage is the fill level of the conntrack map. Each flow uses two
// entries (forward and reply).
type ConntrackUsage struct {
	Entries  int
	Capacity int
	// Stateless, Rebuilt and SNATMissDropped mirror GlobalStats.Stateless,
	// ConntrackRebuilt and SNATMissDropped (flood handling,
	// docs/datapath.md "Floods").
	Stateless, Rebuilt, SNATMissDropped uint64
}

// ReapResult reports one conntrack reaper pass.
type ReapResult struct {
	Scanned int
	// Expired is the number of entries deleted (both directions count).
	Expired int
	// Stale is the number of entries deleted because their service or
	// backend no longer exists (included in Expired).
	Stale int
	// ActiveRecomputed is true when backend_active was rewritten from the
	// walk.
	ActiveRecomputed bool
}

// MemoryCost is what the kernel charges for the datapath maps (the
// "memlock" of /proc/self/fdinfo), and what that means per object.
type MemoryCost struct {
	// Maps is the charge per map name, in bytes.
	Maps map[string]uint64
	// Total is the sum over Maps (selection tables excluded; see
	// PerMaglevService).
	Total uint64
	// PerConntrackFlow is the cost of one flow (two conntrack entries).
	PerConntrackFlow uint64
	// PerService is the cost of one service slot in the per-service maps.
	PerService uint64
	// PerBackend is the cost of one backend slot in the per-backend maps.
	PerBackend uint64
	// PerMaglevService is the cost of the smallest Maglev selection table
	// (Config.MaglevMinTableSize slots).
	PerMaglevService uint64
}
