/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xlb.h — the contract between the C datapath (bpf/xlb.c) and the Go
 * control plane (dataplane/). Every struct here is exported to Go by bpf2go
 * (-type flags in dataplane/gen.go), so layouts must stay explicit: fixed-width
 * fields, explicit padding, no bitfields. Addresses and ports are stored in
 * network byte order; an IPv4 address lives in addr[0] with addr[1..3] = 0.
 *
 * Change rules: only ever add fields/maps; never reorder. A change here must
 * be mirrored by the Go code that writes the maps (dataplane/maps.go).
 */
#ifndef XLB_H
#define XLB_H

#include <linux/types.h>

#define XLB_AF_INET  4
#define XLB_AF_INET6 6

/* Default capacities; Go overrides max_entries before loading. */
#define XLB_MAX_SERVICES   16384
#define XLB_MAX_BACKENDS   65536
#define XLB_CT_ENTRIES     (2 * 1024 * 1024) /* 2 entries per flow → 1M flows */
#define XLB_AFFINITY_ENTRIES 262144
#define XLB_ALLOW_ENTRIES  65536
#define XLB_MAX_IFINDEX    4096

/* nat_mode */
#define XLB_NAT_DEFAULT 0 /* DNAT only: backend sees the client address */
#define XLB_NAT_FULLNAT 1 /* DNAT + SNAT to svc_info.snat_addr */
#define XLB_NAT_ONEARM  2 /* DNAT + SNAT to the egress interface's address */

/* algo */
#define XLB_ALGO_RR      0
#define XLB_ALGO_RANDOM  1
#define XLB_ALGO_MAGLEV  2
#define XLB_ALGO_PERSIST 3
#define XLB_ALGO_LC      4

/* svc_info.flags */
#define XLB_SVC_F_ALLOWLIST (1u << 0) /* consult allow_list; miss = drop */

/* backend.state */
#define XLB_BE_UNUSED   0
#define XLB_BE_ACTIVE   1 /* selectable for new flows */
#define XLB_BE_DRAINING 2 /* keeps established flows, gets no new ones */
#define XLB_BE_DOWN     3 /* health-check failed: no new flows */

/* Drop reasons: index into svc_stats.drops. */
#define XLB_DROP_NO_BACKEND     0 /* selection table empty / all backends unusable */
#define XLB_DROP_SRC_DENIED     1 /* source not in the allow-list */
#define XLB_DROP_SNAT_EXHAUSTED 2 /* no free SNAT port found */
#define XLB_DROP_FRAGMENT       3 /* no longer counted: fragments are tracked (lib/frag.h), an untracked
				   * later fragment has no ports to find its service (global frag_dropped) */
#define XLB_DROP_MALFORMED      4 /* truncated / inconsistent headers to a VIP */
#define XLB_DROP_NO_IFADDR      5 /* onearm: egress interface has no address */
#define XLB_DROP_MTU            6 /* translated packet longer than the egress MTU (per segment for GSO) */
#define XLB_DROP_NO_ROUTE       7 /* translated packet not routable, and the kernel would drop it as a martian */
#define XLB_DROP_CT_BUDGET      8 /* new-flow budget spent and the mode needs state (fullnat/onearm) */
#define XLB_DROP_MAX            16 /* svc_counters.drops size: room for new reasons */

/* ct_entry.flags */
#define XLB_CT_F_REPLY      (1u << 0) /* entry translates backend→client replies */
#define XLB_CT_F_REWRITE_SRC (1u << 1) /* rewrite source to nat_src:nat_sport */
#define XLB_CT_F_REWRITE_DST (1u << 2) /* rewrite destination to nat_dst:nat_dport */
#define XLB_CT_F_CLOSING    (1u << 3) /* FIN or RST seen: short lifetime */
#define XLB_CT_F_UNREPLIED  (1u << 4) /* no reply from the backend yet: short lifetime (syn_timeout_s) */

/* Key of the services map: one load-balanced (VIP, port, protocol). */
struct svc_key {
	__be32 vip[4];
	__be16 port;
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family; /* XLB_AF_INET or XLB_AF_INET6 */
};

struct svc_info {
	__u32 id;          /* index into per-service arrays (stats, sel_tables, rr_cursor) */
	__u32 flags;       /* XLB_SVC_F_* */
	__u8 nat_mode;     /* XLB_NAT_* */
	__u8 algo;         /* XLB_ALGO_* */
	__u8 family;       /* family of the backends (== VIP family today; NAT64 later) */
	__u8 pad0;
	__u32 sel_len;     /* valid entries in sel_tables[id] */
	__u32 idle_timeout_s;     /* conntrack idle timeout for this service */
	__u32 affinity_timeout_s; /* XLB_ALGO_PERSIST: client affinity lifetime */
	__be32 snat_addr[4];      /* XLB_NAT_FULLNAT source address */
	__u16 snat_port_min;      /* host order; SNAT port range (fullnat/onearm) */
	__u16 snat_port_max;
	__u32 backend_count;
};

/* backends: ARRAY indexed by a global backend id allocated by Go. */
struct backend {
	__be32 addr[4];
	__be16 port;
	__u8 family;
	__u8 state;   /* XLB_BE_* */
	__u32 weight;
	__u32 svc_id;
	__u32 gen;    /* bumped whenever the id is reused, so stale CT entries are not honoured */
};

/* Connection tracking. Each flow has two entries: the forward one keyed by
 * the packet as it arrives from the client (client → VIP) and the reply one
 * keyed by the packet as it arrives from the backend (backend → client or
 * backend → SNAT address). Both say how to rewrite a matching packet. */
struct ct_key {
	__be32 src[4];
	__be32 dst[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct ct_entry {
	__u64 last_seen_ns;  /* bpf_ktime_get_ns() of the last packet */
	__u32 lifetime_s;    /* idle lifetime now in force */
	__u32 svc_id;
	__u32 backend_id;
	__u32 backend_gen;
	__be32 nat_src[4];
	__be32 nat_dst[4];
	__be16 nat_sport;
	__be16 nat_dport;
	__u32 flags;         /* XLB_CT_F_* */
	__u64 created_ns;
};

/* Client affinity for XLB_ALGO_PERSIST (sessionAffinity: ClientIP). */
struct affinity_key {
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
	__be32 client[4];
};

struct affinity_entry {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 backend_gen;
};

/* allow_list: LPM trie. data = svc_id (big endian) + 16-byte address with
 * IPv4 written as ::ffff:a.b.c.d. prefixlen = 32 + 96 + v4len or 32 + v6len. */
struct allow_key {
	__u32 prefixlen;
	__be32 svc_id;
	__be32 addr[4];
};

/* if_addrs: ARRAY indexed by ifindex, for onearm SNAT. */
struct if_addr {
	__be32 v4;
	__be32 v6[4];
	__u32 pad;
};

struct svc_counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 drops[XLB_DROP_MAX];
};

struct backend_counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/* global_stats: PERCPU_ARRAY[1]. */
struct global_counters {
	__u64 rx;          /* packets seen */
	__u64 passed;      /* not for us: passed untouched */
	__u64 malformed;   /* truncated/invalid headers (passed or dropped) */
	__u64 fragments;   /* IP fragments seen */
	__u64 fwd_nat;     /* forward translations */
	__u64 rev_nat;     /* reply translations */
	__u64 icmp_nat;    /* ICMP errors translated */
	__u64 ct_created;  /* conntrack entries created */
	__u64 frag_nat;    /* non-first fragments translated by the fragment table (bpf/lib/frag.h) */
	__u64 frag_dropped; /* non-first fragments to a VIP whose first fragment was not seen: dropped */
	__u64 stateless;   /* new-flow packets served without conntrack (budget spent) */
	__u64 ct_rebuilt;  /* missing peer entries rebuilt from the remaining one */
	__u64 rev_nat_map; /* replies without conntrack translated through rev_nat */
	__u64 fib_frag_needed; /* translated packets dropped: longer than the egress MTU */
	__u64 fib_dropped;     /* translated packets dropped: no route and a source the kernel rejects */
	__u64 xdp_to_tc;       /* XDP: no neighbour entry, original packet handed to the tc companion */
	__u64 snat_miss_dropped; /* TCP/UDP from a fullnat/onearm-only backend to an SNAT port,
				  * without conntrack (reply entry evicted): dropped, not RST by the kernel */
};

/* config: ARRAY[1], written by Go at start and on change. */
struct xlb_cfg {
	__u32 maglev_seed;
	__u32 tcp_closing_timeout_s; /* lifetime after FIN/RST (default 10) */
	__u32 flags;                 /* XLB_CFG_F_* */
	__u32 pad;
	__u32 syn_timeout_s;         /* lifetime of a flow until the backend's first reply (default 5) */
	__u32 new_flow_budget;       /* conntrack insertions per CPU per second; 0 = unlimited */
};

/* xlb_cfg.flags (added by the datapath engineer) */
#define XLB_CFG_F_NO_FIB (1u << 0) /* after a rewrite return PASS and let the kernel
				    * route, instead of bpf_fib_lookup + redirect */
#define XLB_CFG_F_REV_NAT (1u << 1) /* rev_nat is not empty: look up packets that miss
				     * conntrack and services (else they pass at once) */

/* rev_nat: key = a backend (address, port, protocol, family) that belongs
 * either to exactly one service, a default-mode one (value: that service's
 * key, flags 0), or only to fullnat/onearm services (value: flags
 * XLB_REVNAT_F_SNAT and the hull of their SNAT port ranges). A packet from
 * the backend that misses conntrack (a stateless flow, or an evicted reply
 * entry) and is no service is, respectively, source-rewritten to the VIP, or
 * dropped when its destination port is an SNAT port (the kernel would answer
 * it with a RST: nobody listens on those ports). */
struct be_key {
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 family;
};

#define XLB_REVNAT_F_SNAT (1u << 0) /* fullnat/onearm-only backend: drop SNAT-port misses */

struct rev_nat_val {
	struct svc_key svc;    /* flags 0: the source replies get (VIP, port) */
	__u16 snat_port_min;   /* XLB_REVNAT_F_SNAT: host order, inclusive */
	__u16 snat_port_max;
	__u32 flags;           /* XLB_REVNAT_F_* */
};

#endif /* XLB_H */
