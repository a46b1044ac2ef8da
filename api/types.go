// Package api holds the wire types of xlbd's REST API v1. They are shared by
// the server (cmd/xlbd), the client (lbclient) and the CCM (provider).
package api

// Version is the API version served under /v1.
const Version = "v1"

// Well-known label keys the CCM puts on every service it owns, so that
// bulk re-sync and garbage collection are exact.
const (
	LabelCluster    = "xlb.dev/cluster"
	LabelServiceUID = "xlb.dev/service-uid"
	LabelNamespace  = "xlb.dev/namespace"
	LabelName       = "xlb.dev/name"
)

// Service is one load-balanced (VIPs, port, protocol) with its backends.
type Service struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	Spec   ServiceSpec       `json:"spec"`
	Status *ServiceStatus    `json:"status,omitempty"`
}

// ServiceSpec is the desired state. Zero values take the documented defaults.
type ServiceSpec struct {
	// VIPs: at most one IPv4 and one IPv6 address. Backends of each family
	// serve the VIP of that family.
	VIPs     []string `json:"vips"`
	Port     uint16   `json:"port"`
	Protocol string   `json:"protocol"` // tcp | udp
	// NATMode: default | fullnat | onearm (default "default").
	NATMode string `json:"natMode,omitempty"`
	// Algorithm: rr | random | maglev | persist | lc (default "maglev").
	Algorithm string `json:"algorithm,omitempty"`
	// SNATAddresses: source addresses for fullnat, at most one per family.
	SNATAddresses []string `json:"snatAddresses,omitempty"`
	// IdleTimeoutSeconds: conntrack idle timeout (default 240 TCP, 60 UDP).
	IdleTimeoutSeconds uint32 `json:"idleTimeoutSeconds,omitempty"`
	// AffinityTimeoutSeconds: client affinity for "persist" (default 10800).
	AffinityTimeoutSeconds uint32 `json:"affinityTimeoutSeconds,omitempty"`
	// SourceRanges: allowed client CIDRs (loadBalancerSourceRanges); empty = all.
	SourceRanges []string  `json:"sourceRanges,omitempty"`
	Backends     []Backend `json:"backends"`
	// DrainTimeoutSeconds: how long a draining backend (weight 0) keeps its
	// established flows; when it passes, they are cut (their conntrack
	// entries deleted, see docs/health.md). 0 (default) = no timeout: they
	// live until they end.
	DrainTimeoutSeconds uint32 `json:"drainTimeoutSeconds,omitempty"`
	// Probe: active health checking of the backends (nil = none).
	Probe *Probe `json:"probe,omitempty"`
	// BGP: per-service announcement settings (nil = global defaults).
	BGP *ServiceBGP `json:"bgp,omitempty"`
	// L2: answer ARP/NDP for the VIPs on a local interface (nil = no L2
	// announcement; see docs/announce.md).
	L2 *ServiceL2 `json:"l2,omitempty"`
}

// Backend is one destination.
type Backend struct {
	Address string `json:"address"`
	Port    uint16 `json:"port"`
	// Weight: relative share of new flows (default 1 when omitted; 0 = drain).
	Weight *uint32 `json:"weight,omitempty"`
	// Name: optional human label (e.g. the node name).
	Name string `json:"name,omitempty"`
}

// Probe configures active health checks (see docs/health.md).
type Probe struct {
	Type               string `json:"type"`           // tcp | udp | http | https | ping | none
	Port               uint16 `json:"port,omitempty"` // default: backend port
	Path               string `json:"path,omitempty"`
	Method             string `json:"method,omitempty"`
	Host               string `json:"host,omitempty"`
	ExpectStatus       []int  `json:"expectStatus,omitempty"`
	ExpectBody         string `json:"expectBody,omitempty"`
	Request            string `json:"request,omitempty"`  // udp payload
	Response           string `json:"response,omitempty"` // expected udp reply substring
	InsecureSkipVerify bool   `json:"insecureSkipVerify,omitempty"`
	IntervalMillis     uint32 `json:"intervalMillis,omitempty"`
	TimeoutMillis      uint32 `json:"timeoutMillis,omitempty"`
	FailureThreshold   uint32 `json:"failureThreshold,omitempty"`
	SuccessThreshold   uint32 `json:"successThreshold,omitempty"`
	// OnDown: what happens to the established flows of a backend the probe
	// marks down: keep (default: they continue, only new flows avoid it) or
	// reset (they are cut at once and re-balanced; see docs/health.md).
	OnDown string `json:"onDown,omitempty"`
}

// ServiceBGP are per-service announcement settings.
type ServiceBGP struct {
	Advertise        *bool    `json:"advertise,omitempty"` // default true
	Communities      []string `json:"communities,omitempty"`
	LargeCommunities []string `json:"largeCommunities,omitempty"`
	LocalPref        *uint32  `json:"localPref,omitempty"`
	MED              *uint32  `json:"med,omitempty"`
}

// ServiceL2 are per-service L2 announcement settings: xlbd answers ARP
// (IPv4) and NDP (IPv6) for the service's VIPs on Interface while the
// service has a usable backend of the VIP's family.
type ServiceL2 struct {
	// Interface is the name of the local interface on the VIPs' segment.
	Interface string `json:"interface"`
}

// ServiceStatus is live state read from the datapath.
type ServiceStatus struct {
	Packets  uint64            `json:"packets"`
	Bytes    uint64            `json:"bytes"`
	NewFlows uint64            `json:"newFlows"`
	Flows    int               `json:"flows"`
	Drops    map[string]uint64 `json:"drops,omitempty"`
	Backends []BackendStatus   `json:"backends"`
}

// BackendStatus is the live state of one backend.
type BackendStatus struct {
	Address  string `json:"address"`
	Port     uint16 `json:"port"`
	State    string `json:"state"` // active | draining | down
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	NewFlows uint64 `json:"newFlows"`
	Active   int64  `json:"activeConnections"`
}

// ServiceList is the body of GET /v1/services.
type ServiceList struct {
	Items []Service `json:"items"`
}

// BulkReplace is the body of PUT /v1/services: every existing service whose
// labels match Selector (all keys equal) and that is absent from Services is
// deleted; every entry of Services is created or replaced. Every entry of
// Services must itself match Selector.
type BulkReplace struct {
	Selector map[string]string `json:"selector"`
	Services []Service         `json:"services"`
}

// BulkResult reports what a bulk replace changed.
type BulkResult struct {
	Created   []string `json:"created"`
	Updated   []string `json:"updated"`
	Unchanged []string `json:"unchanged"`
	Deleted   []string `json:"deleted"`
}

// Status is the body of GET /v1/status.
type Status struct {
	Version           string            `json:"version"`
	BootID            string            `json:"bootID"`
	Generation        uint64            `json:"generation"`
	Ready             bool              `json:"ready"`
	Hook              string            `json:"hook"`
	Interfaces        []InterfaceStatus `json:"interfaces"`
	Services          int               `json:"services"`
	ConntrackEntries  int               `json:"conntrackEntries"`
	ConntrackCapacity int               `json:"conntrackCapacity"`
	// ConntrackStateless counts new-flow packets served without conntrack
	// (new-flow budget spent); ConntrackRebuilt missing peer entries
	// re-created (docs/datapath.md, "Floods").
	ConntrackStateless uint64 `json:"conntrackStateless"`
	ConntrackRebuilt   uint64 `json:"conntrackRebuilt"`
	// ConntrackSNATMissDropped counts fullnat/onearm backend packets to an
	// SNAT port that missed conntrack, dropped instead of letting the host
	// answer them with a RST (docs/datapath.md, "Floods").
	ConntrackSNATMissDropped uint64 `json:"conntrackSnatMissDropped"`
	// SNATPortRange is xlbd's --snat-port-range ("MIN-MAX").
	SNATPortRange string `json:"snatPortRange,omitempty"`
	// EphemeralPortRange is the host's net.ipv4.ip_local_port_range as
	// xlbd's network namespace sees it now ("MIN-MAX").
	EphemeralPortRange string `json:"ephemeralPortRange,omitempty"`
	// SNATPortsReserved: the whole SNAT port range is in
	// net.ipv4.ip_local_reserved_ports now, so the host never picks those
	// ports for its own connections.
	SNATPortsReserved bool `json:"snatPortsReserved"`
	// L2 is the L2 announcement state of every interface that has VIPs
	// to answer ARP/NDP for (spec.l2); absent when there are none.
	L2 []L2Status `json:"l2,omitempty"`
}

// L2Status is the ARP/NDP responder state of one interface.
type L2Status struct {
	Name string `json:"name"`
	// Ready: every VIP owned on the interface is answered on its current
	// ifindex.
	Ready bool `json:"ready"`
	VIPs  int  `json:"vips"`
	// Ifindex is the interface index the responder's sockets are bound
	// to; absent while the interface is missing or down.
	Ifindex int    `json:"ifindex,omitempty"`
	Error   string `json:"error,omitempty"`
	// Reopens counts socket re-opens since xlbd started (the interface
	// was re-created or came back up); each is followed by a gratuitous
	// ARP / unsolicited NA for the VIPs.
	Reopens uint64 `json:"reopens,omitempty"`
}

// InterfaceStatus is the attach state of one interface.
type InterfaceStatus struct {
	Name     string `json:"name"`
	Attached bool   `json:"attached"`
	Mode     string `json:"mode,omitempty"` // tcx | xdp-native | xdp-generic
	Error    string `json:"error,omitempty"`
	// Ifindex is the interface index the datapath is attached to (or was
	// last); absent while the interface is missing.
	Ifindex int `json:"ifindex,omitempty"`
	// Reattaches counts re-attachments since xlbd started (the interface
	// was deleted and re-created, renamed, or came back).
	Reattaches uint64 `json:"reattaches,omitempty"`
}

// Flow is one conntrack entry (GET /v1/conntrack).
type Flow struct {
	Service     string  `json:"service"`
	Protocol    string  `json:"protocol"`
	Client      string  `json:"client"`  // addr:port
	VIP         string  `json:"vip"`     // addr:port
	Backend     string  `json:"backend"` // addr:port
	SNAT        string  `json:"snat,omitempty"`
	AgeSeconds  float64 `json:"ageSeconds"`
	IdleSeconds float64 `json:"idleSeconds"`
	Closing     bool    `json:"closing,omitempty"`
}

// FlowList is the body of GET /v1/conntrack; Next is the cursor for the
// next page (empty at the end).
type FlowList struct {
	Items []Flow `json:"items"`
	Next  string `json:"next,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	// Code is a stable machine-readable reason: invalid, not_found,
	// conflict, unauthorized, too_large, internal.
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field is the JSON path of the offending field, e.g. spec.backends[2].port.
	Field string `json:"field,omitempty"`
	// Value is the rejected value, as text.
	Value string `json:"value,omitempty"`
	// Allowed describes the accepted values.
	Allowed string `json:"allowed,omitempty"`
}
