/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * counters.h — global, per-service and per-backend counters.
 */
#ifndef XLB_LIB_COUNTERS_H
#define XLB_LIB_COUNTERS_H

#include "common.h"

/* ---------- counters ---------- */

static __always_inline struct global_counters *gstats(void)
{
	__u32 z = 0;
	return bpf_map_lookup_elem(&global_stats, &z);
}

#define GINC(field)                                \
	do {                                       \
		struct global_counters *g_ = gstats(); \
		if (g_)                            \
			g_->field++;               \
	} while (0)

static __always_inline void svc_drop(__u32 svc_id, __u32 reason)
{
	struct svc_counters *c = bpf_map_lookup_elem(&svc_stats, &svc_id);
	if (c && reason < XLB_DROP_MAX)
		c->drops[reason]++;
}

static __always_inline void count_fwd_ids(__u32 sid, __u32 bid, __u32 len, bool new_flow)
{
	struct svc_counters *sc = bpf_map_lookup_elem(&svc_stats, &sid);
	if (sc) {
		sc->packets++;
		sc->bytes += len;
		if (new_flow)
			sc->new_flows++;
	}
	struct backend_counters *bc = bpf_map_lookup_elem(&backend_stats, &bid);
	if (bc) {
		bc->packets++;
		bc->bytes += len;
		if (new_flow)
			bc->new_flows++;
	}
}

static __always_inline void count_fwd(const struct ct_entry *e, __u32 len, bool new_flow)
{
	count_fwd_ids(e->svc_id, e->backend_id, len, new_flow);
}

/* Take back count_fwd(e, len, false) (XDP hands the packet over to tc,
 * which counts it). */
static __always_inline void uncount_fwd(const struct ct_entry *e, __u32 len)
{
	__u32 sid = e->svc_id, bid = e->backend_id;
	struct svc_counters *sc = bpf_map_lookup_elem(&svc_stats, &sid);
	if (sc) {
		sc->packets--;
		sc->bytes -= len;
	}
	struct backend_counters *bc = bpf_map_lookup_elem(&backend_stats, &bid);
	if (bc) {
		bc->packets--;
		bc->bytes -= len;
	}
}

#endif /* XLB_LIB_COUNTERS_H */
