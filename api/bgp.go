package api

// BGPGlobal is the body of GET/PUT /v1/bgp: the speaker-wide settings.
type BGPGlobal struct {
	// ASN: local autonomous system number, 1-4294967294.
	ASN uint32 `json:"asn"`
	// RouterID: an IPv4 address identifying this speaker.
	RouterID string `json:"routerID"`
	// ListenPort: TCP port for incoming sessions; 0 = do not listen (dial out only).
	ListenPort uint16 `json:"listenPort,omitempty"`
	// Default attributes for every announced VIP (a service's own settings win).
	Communities      []string `json:"communities,omitempty"`      // "ASN:VALUE" or well-known names
	LargeCommunities []string `json:"largeCommunities,omitempty"` // "GLOBAL:LOCAL1:LOCAL2"
	LocalPref        *uint32  `json:"localPref,omitempty"`
	MED              *uint32  `json:"med,omitempty"`
}

// BGPPeer is one neighbor (PUT /v1/bgp/peers/{address}, PUT /v1/bgp/peers).
type BGPPeer struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// Port: remote TCP port (default 179).
	Port uint16 `json:"port,omitempty"`
	// MultihopTTL > 0 enables eBGP multihop with that TTL.
	MultihopTTL uint8 `json:"multihopTTL,omitempty"`
	// Password enables TCP MD5 (RFC 2385). Write-only: never returned.
	Password string `json:"password,omitempty"`
	// HoldTimeSeconds (default 90, min 3) and KeepaliveSeconds (default hold/3).
	HoldTimeSeconds  uint32 `json:"holdTimeSeconds,omitempty"`
	KeepaliveSeconds uint32 `json:"keepaliveSeconds,omitempty"`
	// Passive: wait for the peer to connect.
	Passive bool `json:"passive,omitempty"`
	// Families: ipv4-unicast, ipv6-unicast (default: the family of Address).
	Families []string `json:"families,omitempty"`
	// LocalAddress: source address of the session (optional).
	LocalAddress string `json:"localAddress,omitempty"`
}

// BGPPeerStatus is a configured peer with its live session state.
type BGPPeerStatus struct {
	BGPPeer
	// PasswordSet tells whether an MD5 password is configured (the password itself is never returned).
	PasswordSet bool `json:"passwordSet,omitempty"`
	// State: idle, connect, active, opensent, openconfirm, established.
	State              string `json:"state"`
	UptimeSeconds      int64  `json:"uptimeSeconds,omitempty"`
	PrefixesAdvertised uint64 `json:"prefixesAdvertised"`
	PrefixesReceived   uint64 `json:"prefixesReceived"`
	UpdatesSent        uint64 `json:"updatesSent"`
	UpdatesReceived    uint64 `json:"updatesReceived"`
}

// BGPPeerList is the body of GET /v1/bgp/peers and PUT /v1/bgp/peers.
type BGPPeerList struct {
	Items []BGPPeerStatus `json:"items"`
}

// BGPPeerReplace is the body of PUT /v1/bgp/peers: the full peer set.
type BGPPeerReplace struct {
	Items []BGPPeer `json:"items"`
}

// BGPStatus is the body of GET /v1/bgp.
type BGPStatus struct {
	// Global is nil while BGP is not configured.
	Global *BGPGlobal      `json:"global,omitempty"`
	Peers  []BGPPeerStatus `json:"peers"`
	// Announced: the host routes currently announced (VIPs with at least one healthy backend).
	Announced []string `json:"announced"`
}
