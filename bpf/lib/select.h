/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * select.h — backend selection (maglev, rr, random, persist, lc) and the allow-list.
 */
#ifndef XLB_LIB_SELECT_H
#define XLB_LIB_SELECT_H

#include "common.h"

#define rol32(w, s) (((w) << (s)) | ((w) >> (32 - (s))))
#define jhash_mix(a, b, c)                     \
	{                                      \
		a -= c; a ^= rol32(c, 4);  c += b; \
		b -= a; b ^= rol32(a, 6);  a += c; \
		c -= b; c ^= rol32(b, 8);  b += a; \
		a -= c; a ^= rol32(c, 16); c += b; \
		b -= a; b ^= rol32(a, 19); a += c; \
		c -= b; c ^= rol32(b, 4);  b += a; \
	}
#define jhash_final(a, b, c)                    \
	{                                       \
		c ^= b; c -= rol32(b, 14);      \
		a ^= c; a -= rol32(c, 11);      \
		b ^= a; b -= rol32(a, 25);      \
		c ^= b; c -= rol32(b, 16);      \
		a ^= c; a -= rol32(c, 4);       \
		b ^= a; b -= rol32(a, 14);      \
		c ^= b; c -= rol32(b, 24);      \
	}

/* jhash2 (Bob Jenkins' lookup3, as in the kernel) over the 10 tuple words:
 * src[4], dst[4], sport|dport, proto|family. */
static __always_inline __u32 tuple_hash(const struct ct_key *t, __u32 seed)
{
	__u32 a, b, c;
	a = b = c = 0xdeadbeef + (10 << 2) + seed;
	a += t->src[0]; b += t->src[1]; c += t->src[2];
	jhash_mix(a, b, c);
	a += t->src[3]; b += t->dst[0]; c += t->dst[1];
	jhash_mix(a, b, c);
	a += t->dst[2]; b += t->dst[3]; c += ((__u32)t->sport << 16) | t->dport;
	jhash_mix(a, b, c);
	a += ((__u32)t->proto << 8) | t->family;
	jhash_final(a, b, c);
	return c;
}

/* ---------- backend selection ---------- */

static __always_inline struct backend *be_usable(__u32 id, __u32 svc_id)
{
	struct backend *b = bpf_map_lookup_elem(&backends, &id);
	if (!b || b->state != XLB_BE_ACTIVE || b->svc_id != svc_id)
		return NULL;
	return b;
}

/* Slot idx of the table, probing forward XLB_PROBE_SLOTS slots. */
static __always_inline int pick_slot(void *tbl, const struct svc_info *s, __u32 idx, __u32 *out)
{
	__u32 n = s->sel_len;
#pragma unroll
	for (int i = 0; i < XLB_PROBE_SLOTS; i++) {
		__u32 slot = (idx + i) % n;
		__u32 *id = bpf_map_lookup_elem(tbl, &slot);
		if (!id)
			return -1;
		if (be_usable(*id, s->id)) {
			*out = *id;
			return 0;
		}
	}
	return -1;
}

struct lc_state {
	void *tbl;
	__u32 svc_id;
	__u32 n;
	__u32 start;
	__u32 best;
	__s64 best_active;
	__u64 best_weight;
	bool found;
};

/* One step of the least-connection scan: keep the backend minimising
 * active/weight, compared by cross-multiplication (no division). */
static long lc_step(__u64 i, void *data)
{
	struct lc_state *st = data;
	__u32 n = st->n;
	if (n == 0)
		return 1;
	__u32 slot = (st->start + (__u32)i) % n;
	__u32 *id = bpf_map_lookup_elem(st->tbl, &slot);
	if (!id)
		return 1;
	__u32 bid = *id;
	struct backend *b = be_usable(bid, st->svc_id);
	if (!b || b->weight == 0)
		return 0;
	__s64 act = 0;
	__s64 *ap = bpf_map_lookup_elem(&backend_active, &bid);
	if (ap)
		act = *ap;
	if (act < 0)
		act = 0;
	if (!st->found || act * (__s64)st->best_weight < st->best_active * (__s64)b->weight) {
		st->found = true;
		st->best = bid;
		st->best_active = act;
		st->best_weight = b->weight;
	}
	return 0;
}

static __always_inline int pick_lc(void *tbl, const struct svc_info *s, __u32 *out)
{
	struct lc_state st = {};
	st.tbl = tbl;
	st.svc_id = s->id;
	st.n = s->sel_len;
	/* Random start: ties are broken randomly instead of always favouring
	 * the first backend of the table. */
	st.start = bpf_get_prandom_u32() % s->sel_len;
	__u32 loops = s->sel_len;
	if (loops > XLB_LC_MAX_SCAN)
		loops = XLB_LC_MAX_SCAN;
	bpf_loop(loops, lc_step, &st, 0);
	if (!st.found)
		return -1;
	*out = st.best;
	return 0;
}

static __always_inline int pick_persist(void *tbl, const struct svc_info *s, const struct ct_key *t, __u64 now,
					__u32 *out)
{
	struct affinity_key ak = {};
	ak.svc_id = s->id;
	ak.family = t->family;
	addr_copy(ak.client, t->src);
	__u64 tmo = s->affinity_timeout_s ? s->affinity_timeout_s : XLB_DEFAULT_AFFINITY_TIMEOUT;

	struct affinity_entry *ae = bpf_map_lookup_elem(&affinity, &ak);
	if (ae && now - ae->last_used_ns <= tmo * NSEC_PER_SEC) {
		__u32 bid = ae->backend_id;
		struct backend *b = be_usable(bid, s->id);
		if (b && b->gen == ae->backend_gen) {
			ae->last_used_ns = now;
			*out = bid;
			return 0;
		}
	}
	/* Weighted random: the table holds each backend weight-many times. */
	if (pick_slot(tbl, s, bpf_get_prandom_u32() % s->sel_len, out))
		return -1;
	struct backend *b = bpf_map_lookup_elem(&backends, out);
	if (!b)
		return -1;
	struct affinity_entry ne = {};
	ne.last_used_ns = now;
	ne.backend_id = *out;
	ne.backend_gen = b->gen;
	bpf_map_update_elem(&affinity, &ak, &ne, BPF_ANY);
	return 0;
}

static __noinline int select_backend(const struct svc_info *s, const struct ct_key *t, __u64 now, __u32 *out)
{
	__u32 sid = s->id;
	void *tbl = bpf_map_lookup_elem(&sel_tables, &sid);
	if (!tbl || s->sel_len == 0)
		return -1;

	switch (s->algo) {
	case XLB_ALGO_MAGLEV: {
		struct xlb_cfg *cfg = config();
		__u32 seed = cfg ? cfg->maglev_seed : 0;
		return pick_slot(tbl, s, tuple_hash(t, seed) % s->sel_len, out);
	}
	case XLB_ALGO_RR: {
		__u32 *cur = bpf_map_lookup_elem(&rr_cursor, &sid);
		__u32 idx = 0;
		if (cur) {
			idx = *cur % s->sel_len;
			*cur = idx + 1;
		}
		return pick_slot(tbl, s, idx, out);
	}
	case XLB_ALGO_PERSIST:
		return pick_persist(tbl, s, t, now, out);
	case XLB_ALGO_LC:
		return pick_lc(tbl, s, out);
	case XLB_ALGO_RANDOM:
	default:
		return pick_slot(tbl, s, bpf_get_prandom_u32() % s->sel_len, out);
	}
}

/* The flow hash's slot of the selection table, whatever the algorithm (for
 * maglev exactly select_backend's choice): flows served without conntrack
 * stay on one backend without state. */
static __always_inline int select_by_hash(const struct svc_info *s, const struct ct_key *t, __u32 *out)
{
	__u32 sid = s->id;
	void *tbl = bpf_map_lookup_elem(&sel_tables, &sid);
	if (!tbl || s->sel_len == 0)
		return -1;
	struct xlb_cfg *cfg = config();
	__u32 seed = cfg ? cfg->maglev_seed : 0;
	return pick_slot(tbl, s, tuple_hash(t, seed) % s->sel_len, out);
}

static __always_inline bool allowed(const struct svc_info *s, const struct ct_key *t)
{
	struct allow_key k = {};
	k.svc_id = bpf_htonl(s->id);
	if (t->family == XLB_AF_INET6) {
		k.prefixlen = 32 + 128;
		addr_copy(k.addr, t->src);
	} else {
		k.prefixlen = 32 + 128;
		k.addr[2] = bpf_htonl(0xffff);
		k.addr[3] = t->src[0];
	}
	return bpf_map_lookup_elem(&allow_list, &k) != NULL;
}

#endif /* XLB_LIB_SELECT_H */
