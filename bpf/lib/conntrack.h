/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * conntrack.h — conntrack entries: liveness, the peer key, refresh and FIN/RST handling,
 * release of a replaced entry, and the creation of a new flow's two entries.
 */
#ifndef XLB_LIB_CONNTRACK_H
#define XLB_LIB_CONNTRACK_H

#include "counters.h"
#include "select.h"
#include "fib.h"

static __always_inline bool ct_alive(const struct ct_entry *e, __u64 now)
{
	return now - e->last_seen_ns <= (__u64)e->lifetime_s * NSEC_PER_SEC;
}

/* ---------- conntrack ---------- */

/* The key of the other entry of the flow. */
static __always_inline void ct_peer_key(const struct ct_key *k, const struct ct_entry *e, struct ct_key *pk)
{
	__builtin_memset(pk, 0, sizeof(*pk));
	pk->proto = k->proto;
	pk->family = k->family;
	if (e->flags & XLB_CT_F_REPLY) {
		/* reply key (backend -> client|snat) -> forward key (client -> VIP) */
		if (e->flags & XLB_CT_F_REWRITE_DST) {
			addr_copy(pk->src, e->nat_dst);
			pk->sport = e->nat_dport;
		} else {
			addr_copy(pk->src, k->dst);
			pk->sport = k->dport;
		}
		addr_copy(pk->dst, e->nat_src);
		pk->dport = e->nat_sport;
	} else {
		/* forward key -> reply key (backend -> client|snat) */
		addr_copy(pk->src, e->nat_dst);
		pk->sport = e->nat_dport;
		if (e->flags & XLB_CT_F_REWRITE_SRC) {
			addr_copy(pk->dst, e->nat_src);
			pk->dport = e->nat_sport;
		} else {
			addr_copy(pk->dst, k->src);
			pk->dport = k->sport;
		}
	}
}

static __always_inline __u32 closing_timeout(void)
{
	struct xlb_cfg *cfg = config();
	if (cfg && cfg->tcp_closing_timeout_s)
		return cfg->tcp_closing_timeout_s;
	return XLB_DEFAULT_CLOSING_TIMEOUT;
}

/*
 * ct_touch refreshes both entries of a flow (at most every XLB_TOUCH_NS) and
 * handles the TCP FIN/RST transition: both entries get XLB_CT_F_CLOSING and
 * the short lifetime; backend_active is decremented exactly once, guarded by
 * an atomic fetch-or on the forward entry's flags.
 */
static __always_inline void ct_touch(const struct ct_key *k, struct ct_entry *e, __u64 now, __u8 tcp_flags)
{
	bool closing = k->proto == IPPROTO_TCP_ && (tcp_flags & (TCP_FIN_ | TCP_RST_)) &&
		       !(e->flags & XLB_CT_F_CLOSING);
	/* Refresh as soon as the fast path stops taking the entry (coarse
	 * age + slack >= XLB_TOUCH_NS, and the coarse age is at most the
	 * precise one), not at XLB_TOUCH_NS: with the later threshold every
	 * packet of every busy flow took the slow path for the last
	 * XLB_COARSE_SLACK_NS of each second (~5 % of the packets). */
	if (!closing && now - e->last_seen_ns < XLB_TOUCH_NS - XLB_COARSE_SLACK_NS)
		return;

	__u32 z = 0;
	struct scratch *sc = bpf_map_lookup_elem(&xlb_scratch, &z);
	if (!sc)
		return;
	struct ct_key *pk = &sc->pk;
	ct_peer_key(k, e, pk);
	struct ct_entry *peer = bpf_map_lookup_elem(&conntrack, pk);

	e->last_seen_ns = now;
	if (peer)
		peer->last_seen_ns = now;
	if (!closing)
		return;

	__u32 lt = closing_timeout();
	struct ct_entry *fwd = (e->flags & XLB_CT_F_REPLY) ? peer : e;
	if (fwd) {
		__u32 old = __sync_fetch_and_or(&fwd->flags, XLB_CT_F_CLOSING);
		if (!(old & XLB_CT_F_CLOSING)) {
			__u32 be = fwd->backend_id;
			__s64 *act = bpf_map_lookup_elem(&backend_active, &be);
			if (act)
				__sync_fetch_and_add(act, -1);
		}
		fwd->lifetime_s = lt;
	}
	struct ct_entry *rep = (e->flags & XLB_CT_F_REPLY) ? e : peer;
	if (rep) {
		__sync_fetch_and_or(&rep->flags, XLB_CT_F_CLOSING);
		rep->lifetime_s = lt;
	}
}

/*
 * Whether a forward entry still applies to this packet. DOWN/DRAINING
 * backends keep their established flows; a reused id (gen changed) or a
 * removed backend does not. A SYN on a closing flow is a new connection
 * reusing the 5-tuple. (Reply entries always apply while alive.)
 */
static __always_inline bool ct_fwd_usable(const struct ct_entry *e, const struct pkt *p)
{
	bool syn_only = p->t.proto == IPPROTO_TCP_ && (p->tcp_flags & (TCP_SYN_ | TCP_ACK_)) == TCP_SYN_;
	__u32 bid = e->backend_id;
	struct backend *b = bpf_map_lookup_elem(&backends, &bid);
	return b && b->gen == e->backend_gen && b->state != XLB_BE_UNUSED &&
	       !(syn_only && (e->flags & XLB_CT_F_CLOSING));
}

/*
 * The fast path's test: e is surely alive and ct_touch would do nothing for
 * this packet (no refresh due, no FIN/RST).
 *
 * Age with the coarse clock (a precise bpf_ktime_get_ns costs ~30 ns here,
 * more than the conntrack lookup). It lags the precise one by at most a
 * tick, so an entry is surely alive and needs no refresh when coarse_age +
 * XLB_COARSE_SLACK_NS is within both limits; anything closer to a limit (or
 * expired, or lifetime 0) goes to the slow path, which decides with the
 * precise clock. last_seen_ns written by another CPU may be ahead of the
 * coarse clock: a negative age counts as 0.
 */
static __always_inline bool ct_settled(const struct ct_entry *e, const struct pkt *p, __u64 cnow)
{
	__s64 age = (__s64)(cnow - e->last_seen_ns);
	if (age < 0)
		age = 0;
	age += XLB_COARSE_SLACK_NS;
	if ((__u64)age >= XLB_TOUCH_NS || (__u64)age > (__u64)e->lifetime_s * NSEC_PER_SEC)
		return false;
	return !(p->t.proto == IPPROTO_TCP_ && (p->tcp_flags & (TCP_FIN_ | TCP_RST_)));
}

/* Old entry being replaced (stale backend, expired, or a new SYN on a
 * closing flow): give its backend_active slot back if it still holds one. */
static __always_inline void ct_release(struct ct_entry *old)
{
	if (old->flags & XLB_CT_F_CLOSING)
		return;
	__u32 old_flags = __sync_fetch_and_or(&old->flags, XLB_CT_F_CLOSING);
	if (old_flags & XLB_CT_F_CLOSING)
		return;
	__u32 bid = old->backend_id;
	struct backend *b = bpf_map_lookup_elem(&backends, &bid);
	if (!b || b->gen != old->backend_gen)
		return; /* id reused: Go reset its count */
	__s64 *act = bpf_map_lookup_elem(&backend_active, &bid);
	if (act)
		__sync_fetch_and_add(act, -1);
}

/*
 * ct_new handles a new flow up to the conntrack entries: allow-list, backend
 * selection, SNAT address/port, reply entry, forward entry (copied to *fe).
 * Returns 0 or XLB_DROP_* + 1.
 */
static __noinline int ct_new(void *ctx, struct scratch *sc, struct svc_info *s, __u64 now)
{
	__u32 sid = s->id;
	struct pkt *p = &sc->p;

	if ((s->flags & XLB_SVC_F_ALLOWLIST) && !allowed(s, &p->t))
		return XLB_DROP_SRC_DENIED + 1;

	__u32 bid;
	if (select_backend(s, &p->t, now, &bid))
		return XLB_DROP_NO_BACKEND + 1;
	struct backend *b = bpf_map_lookup_elem(&backends, &bid);
	if (!b)
		return XLB_DROP_NO_BACKEND + 1;

	__u32 lifetime = s->idle_timeout_s;
	if (!lifetime)
		lifetime = p->t.proto == IPPROTO_TCP_ ? XLB_DEFAULT_TCP_TIMEOUT : XLB_DEFAULT_UDP_TIMEOUT;

	struct ct_entry *fe = &sc->fe, *re = &sc->re;
	struct ct_key *rk = &sc->rk;
	__builtin_memset(fe, 0, sizeof(*fe));
	fe->last_seen_ns = now;
	fe->created_ns = now;
	fe->lifetime_s = lifetime;
	fe->svc_id = sid;
	fe->backend_id = bid;
	fe->backend_gen = b->gen;
	fe->flags = XLB_CT_F_REWRITE_DST;
	addr_copy(fe->nat_dst, b->addr);
	fe->nat_dport = b->port;

	__builtin_memcpy(re, fe, sizeof(*re));
	re->flags = XLB_CT_F_REPLY | XLB_CT_F_REWRITE_SRC;
	addr_copy(re->nat_src, p->t.dst); /* replies come from the VIP:port */
	re->nat_sport = p->t.dport;
	__builtin_memset(re->nat_dst, 0, sizeof(re->nat_dst));
	re->nat_dport = 0;

	__builtin_memset(rk, 0, sizeof(*rk));
	rk->proto = p->t.proto;
	rk->family = p->t.family;
	addr_copy(rk->src, b->addr);
	rk->sport = b->port;

	if (s->nat_mode == XLB_NAT_DEFAULT) {
		addr_copy(rk->dst, p->t.src);
		rk->dport = p->t.sport;
		if (bpf_map_update_elem(&conntrack, rk, re, BPF_ANY))
			return XLB_DROP_NO_BACKEND + 1;
	} else {
		__be32 saddr[4] = {};
		if (s->nat_mode == XLB_NAT_ONEARM) {
			if (egress_addr(ctx, p->ifindex, p->t.family, b->addr, saddr))
				return XLB_DROP_NO_IFADDR + 1;
		} else {
			addr_copy(saddr, s->snat_addr);
		}
		__u32 pmin = s->snat_port_min, pmax = s->snat_port_max;
		if (pmin == 0 && pmax == 0) {
			pmin = XLB_DEFAULT_SNAT_MIN;
			pmax = XLB_DEFAULT_SNAT_MAX;
		}
		if (pmax < pmin)
			pmax = pmin;
		__u32 span = pmax - pmin + 1;
		__u32 r = bpf_get_prandom_u32();

		re->flags |= XLB_CT_F_REWRITE_DST;
		addr_copy(re->nat_dst, p->t.src); /* replies go back to the client */
		re->nat_dport = p->t.sport;
		addr_copy(rk->dst, saddr);

		bool got = false;
		__be16 sport = 0;
#pragma unroll
		for (int i = 0; i < XLB_SNAT_TRIES; i++) {
			/* Random start, then a fixed odd stride: distinct ports for any span. */
			sport = bpf_htons((__u16)(pmin + (r + (__u32)i * 7919) % span));
			rk->dport = sport;
			struct ct_entry *cur = bpf_map_lookup_elem(&conntrack, rk);
			if (cur && ct_alive(cur, now))
				continue;
			if (bpf_map_update_elem(&conntrack, rk, re, BPF_ANY) == 0) {
				got = true;
				break;
			}
		}
		if (!got)
			return XLB_DROP_SNAT_EXHAUSTED + 1;
		fe->flags |= XLB_CT_F_REWRITE_SRC;
		addr_copy(fe->nat_src, saddr);
		fe->nat_sport = sport;
	}

	if (bpf_map_update_elem(&conntrack, &p->t, fe, BPF_ANY)) {
		bpf_map_delete_elem(&conntrack, rk);
		return XLB_DROP_NO_BACKEND + 1;
	}

	__s64 *act = bpf_map_lookup_elem(&backend_active, &bid);
	if (act)
		__sync_fetch_and_add(act, 1);
	return 0;
}

#endif /* XLB_LIB_CONNTRACK_H */
