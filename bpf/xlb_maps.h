/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map definitions shared by the tcx and XDP entry points. Go may override
 * max_entries before loading (dataplane.Config capacities). */
#ifndef XLB_MAPS_H
#define XLB_MAPS_H

#include <bpf/bpf_helpers.h>
#include "xlb.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_info);
} services SEC(".maps");

/* Any address that is a VIP of some service (port/proto ignored): lets the
 * datapath drop fragments and malformed packets addressed to a VIP without
 * touching unrelated traffic. Key: family byte + 3 pad + 16-byte address. */
struct vip_key {
	__u8 family;
	__u8 pad[3];
	__be32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_SERVICES);
	__type(key, struct vip_key);
	__type(value, __u32); /* number of services on this VIP */
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

/* Per-service selection table: backend ids. Meaning by algorithm:
 *   maglev: the Maglev lookup table (prime size M), index = hash % M
 *   rr/random/persist: weighted sequence (smooth WRR order), index = cursor or random
 *   lc: each selectable backend id once; the datapath scans for least active/weight
 * Go builds a fresh inner map and swaps it in atomically. */
struct sel_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, XLB_MAX_SERVICES);
	__type(key, __u32);
	__array(values, struct sel_inner);
} sel_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XLB_CT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XLB_AFFINITY_ENTRIES);
	__type(key, struct affinity_key);
	__type(value, struct affinity_entry);
} affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, XLB_ALLOW_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct allow_key);
	__type(value, __u8);
} allow_list SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_IFINDEX);
	__type(key, __u32);
	__type(value, struct if_addr);
} if_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_counters);
} svc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_counters);
} backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct global_counters);
} global_stats SEC(".maps");

/* Round-robin cursor per service (per CPU: exact rr per CPU, approximately
 * rr overall, without cross-CPU contention). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} rr_cursor SEC(".maps");

/* Active connections per backend for XLB_ALGO_LC. Incremented on a new
 * flow, decremented when a flow closes (FIN/RST) or is reaped by Go; Go
 * periodically rewrites exact counts from a conntrack walk (LRU evictions are
 * silent). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __s64);
} backend_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xlb_cfg);
} xlb_config SEC(".maps");

/* Replies without conntrack: backend -> service or SNAT ports (struct be_key above). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, struct be_key);
	__type(value, struct rev_nat_val);
} rev_nat SEC(".maps");

#endif /* XLB_MAPS_H */
