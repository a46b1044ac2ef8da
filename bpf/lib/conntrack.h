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

/* Lifetime of a flow until the backend's first reply (XLB_CT_F_UNREPLIED). */
static __always_inline __u32 syn_timeout(void)
{
	struct xlb_cfg *cfg = config();
	if (cfg && cfg->syn_timeout_s)
		return cfg->syn_timeout_s;
	return XLB_DEFAULT_SYN_TIMEOUT;
}

/* The service's idle lifetime for a flow whose forward key is fk. */
static __always_inline __u32 idle_lifetime(const struct ct_key *fk)
{
	struct svc_info *s = svc_lookup(fk);
	if (s && s->idle_timeout_s)
		return s->idle_timeout_s;
	return fk->proto == IPPROTO_TCP_ ? XLB_DEFAULT_TCP_TIMEOUT : XLB_DEFAULT_UDP_TIMEOUT;
}

/*
 * ct_rebuild_peer re-creates the missing peer entry of e (key pk, from
 * ct_peer_key) and returns it (NULL if the insert failed). The two entries of
 * a flow are evicted independently by the LRU; everything the peer holds
 * follows from the remaining entry and its flags:
 *   forward  k=client->VIP, REWRITE_DST->backend [+REWRITE_SRC->snat:sport]
 *   reply    pk=backend->client|snat:sport, REPLY|REWRITE_SRC->VIP:port
 *            [+REWRITE_DST->client:cport]
 * and back. CLOSING/UNREPLIED, lifetime, ids and backend gen are copied.
 * backend_active is left alone (Go rewrites it from conntrack walks).
 */
static __noinline struct ct_entry *ct_rebuild_peer(const struct ct_key *k, const struct ct_entry *e,
						   const struct ct_key *pk, __u64 now)
{
	__u32 z = 0;
	struct scratch *sc = bpf_map_lookup_elem(&xlb_scratch, &z);
	if (!sc)
		return NULL;
	struct ct_entry *pe = &sc->pe;
	__builtin_memcpy(pe, e, sizeof(*pe));
	__u32 keep = e->flags & (XLB_CT_F_CLOSING | XLB_CT_F_UNREPLIED);
	bool snat;
	pe->last_seen_ns = now;
	__builtin_memset(pe->nat_src, 0, sizeof(pe->nat_src));
	__builtin_memset(pe->nat_dst, 0, sizeof(pe->nat_dst));
	pe->nat_sport = 0;
	pe->nat_dport = 0;
	if (e->flags & XLB_CT_F_REPLY) {
		/* reply k = backend -> client|snat: forward entry toward the backend */
		snat = e->flags & XLB_CT_F_REWRITE_DST;
		pe->flags = XLB_CT_F_REWRITE_DST | keep;
		addr_copy(pe->nat_dst, k->src);
		pe->nat_dport = k->sport;
		if (snat) {
			pe->flags |= XLB_CT_F_REWRITE_SRC;
			addr_copy(pe->nat_src, k->dst);
			pe->nat_sport = k->dport;
		}
	} else {
		/* forward k = client -> VIP: replies come from the VIP, back to the client */
		snat = e->flags & XLB_CT_F_REWRITE_SRC;
		pe->flags = XLB_CT_F_REPLY | XLB_CT_F_REWRITE_SRC | keep;
		addr_copy(pe->nat_src, k->dst);
		pe->nat_sport = k->dport;
		if (snat) {
			pe->flags |= XLB_CT_F_REWRITE_DST;
			addr_copy(pe->nat_dst, k->src);
			pe->nat_dport = k->sport;
		}
	}
	/* NOEXIST: another CPU may have rebuilt it in between; keep theirs. */
	bpf_map_update_elem(&conntrack, pk, pe, BPF_NOEXIST);
	struct ct_entry *peer = bpf_map_lookup_elem(&conntrack, pk);
	if (peer)
		GINC(ct_rebuilt);
	return peer;
}

/*
 * ct_touch refreshes both entries of a flow (at most every XLB_TOUCH_NS),
 * rebuilds the peer entry when the LRU evicted it, ends the short
 * XLB_CT_F_UNREPLIED lifetime at the backend's first reply, and handles the
 * TCP FIN/RST transition: both entries get XLB_CT_F_CLOSING and the short
 * lifetime; backend_active is decremented exactly once, guarded by an atomic
 * fetch-or on the forward entry's flags.
 */
static __always_inline void ct_touch(const struct ct_key *k, struct ct_entry *e, __u64 now, __u8 tcp_flags)
{
	bool closing = k->proto == IPPROTO_TCP_ && (tcp_flags & (TCP_FIN_ | TCP_RST_)) &&
		       !(e->flags & XLB_CT_F_CLOSING);
	/* The first packet from the backend: the flow is established. */
	bool replied = (e->flags & (XLB_CT_F_REPLY | XLB_CT_F_UNREPLIED)) == (XLB_CT_F_REPLY | XLB_CT_F_UNREPLIED);
	/* Refresh as soon as the fast path stops taking the entry (coarse
	 * age + slack >= XLB_TOUCH_NS, and the coarse age is at most the
	 * precise one), not at XLB_TOUCH_NS: with the later threshold every
	 * packet of every busy flow took the slow path for the last
	 * XLB_COARSE_SLACK_NS of each second (~5 % of the packets). */
	if (!closing && !replied && now - e->last_seen_ns < XLB_TOUCH_NS - XLB_COARSE_SLACK_NS)
		return;

	__u32 z = 0;
	struct scratch *sc = bpf_map_lookup_elem(&xlb_scratch, &z);
	if (!sc)
		return;
	struct ct_key *pk = &sc->pk;
	ct_peer_key(k, e, pk);
	struct ct_entry *peer = bpf_map_lookup_elem(&conntrack, pk);
	if (!peer)
		peer = ct_rebuild_peer(k, e, pk, now);

	e->last_seen_ns = now;
	if (peer)
		peer->last_seen_ns = now;
	if (replied) {
		/* pk is the forward key here (e is the reply entry). */
		__u32 lt = idle_lifetime(pk);
		__sync_fetch_and_and(&e->flags, ~XLB_CT_F_UNREPLIED);
		if (!(e->flags & XLB_CT_F_CLOSING))
			e->lifetime_s = lt;
		if (peer) {
			__sync_fetch_and_and(&peer->flags, ~XLB_CT_F_UNREPLIED);
			if (!(peer->flags & XLB_CT_F_CLOSING))
				peer->lifetime_s = lt;
		}
	}
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
	/* A reply on an unreplied flow ends its short lifetime: ct_touch. */
	if ((e->flags & (XLB_CT_F_REPLY | XLB_CT_F_UNREPLIED)) == (XLB_CT_F_REPLY | XLB_CT_F_UNREPLIED))
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

/* ---------- new-flow budget ---------- */

/*
 * Per-CPU budget of conntrack insertions (xlb_cfg.new_flow_budget per CPU
 * per second, a burst of one second's worth), as a GCRA: tat is the
 * theoretical arrival time of the next insertion. Per CPU and never nested,
 * so plain stores. Private to the C code.
 */
struct ct_budget {
	__u64 tat;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct ct_budget));
} xlb_ct_budget SEC(".maps");

static __always_inline bool ct_budget_take(__u64 now)
{
	struct xlb_cfg *cfg = config();
	if (!cfg || !cfg->new_flow_budget)
		return true;
	__u32 z = 0;
	struct ct_budget *b = bpf_map_lookup_elem(&xlb_ct_budget, &z);
	if (!b)
		return true;
	__u64 cost = NSEC_PER_SEC / cfg->new_flow_budget;
	__u64 tat = b->tat;
	if (tat < now)
		tat = now;
	if (tat + cost - now > NSEC_PER_SEC)
		return false;
	b->tat = tat + cost;
	return true;
}

/* ct_new's result for a flow served without conntrack (not a drop). */
#define XLB_CT_NEW_STATELESS (XLB_DROP_MAX + 1)

/*
 * A new flow beyond the budget: the backend by the flow hash over the
 * selection table (for maglev the slot a stateful flow gets), DNAT only,
 * nothing inserted; the replies are translated through rev_nat, so the
 * backend must be in it for this very service (Go writes it when the
 * backend serves exactly one default-mode service). Fills *fe.
 */
static __always_inline int ct_stateless(struct scratch *sc, const struct svc_info *s)
{
	struct pkt *p = &sc->p;
	if (s->nat_mode != XLB_NAT_DEFAULT)
		return XLB_DROP_CT_BUDGET + 1; /* the SNAT port needs state */
	__u32 bid;
	if (select_by_hash(s, &p->t, &bid))
		return XLB_DROP_NO_BACKEND + 1;
	struct backend *b = bpf_map_lookup_elem(&backends, &bid);
	if (!b)
		return XLB_DROP_NO_BACKEND + 1;
	struct be_key *bk = &sc->bk;
	__builtin_memset(bk, 0, sizeof(*bk));
	addr_copy(bk->addr, b->addr);
	bk->port = b->port;
	bk->proto = p->t.proto;
	bk->family = p->t.family;
	struct rev_nat_val *rv = bpf_map_lookup_elem(&rev_nat, bk);
	if (!rv || (rv->flags & XLB_REVNAT_F_SNAT) || !addr_eq(rv->svc.vip, p->t.dst) || rv->svc.port != p->t.dport)
		return XLB_DROP_CT_BUDGET + 1;
	struct ct_entry *fe = &sc->fe;
	__builtin_memset(fe, 0, sizeof(*fe));
	fe->svc_id = s->id;
	fe->backend_id = bid;
	fe->backend_gen = b->gen;
	fe->flags = XLB_CT_F_REWRITE_DST;
	addr_copy(fe->nat_dst, b->addr);
	fe->nat_dport = b->port;
	return XLB_CT_NEW_STATELESS;
}

/*
 * ct_new handles a new flow up to the conntrack entries: allow-list, new-flow
 * budget, backend selection, SNAT address/port, reply entry, forward entry
 * (copied to *fe). Both entries start XLB_CT_F_UNREPLIED with the short
 * syn_timeout lifetime; the backend's first reply gives them the service's
 * idle lifetime (ct_touch). Returns 0, XLB_CT_NEW_STATELESS (budget spent:
 * *fe holds the translation, nothing was inserted) or XLB_DROP_* + 1.
 */
static __noinline int ct_new(void *ctx, struct scratch *sc, struct svc_info *s, __u64 now)
{
	__u32 sid = s->id;
	struct pkt *p = &sc->p;

	if ((s->flags & XLB_SVC_F_ALLOWLIST) && !allowed(s, &p->t))
		return XLB_DROP_SRC_DENIED + 1;

	if (!ct_budget_take(now))
		return ct_stateless(sc, s);

	__u32 bid;
	if (select_backend(s, &p->t, now, &bid))
		return XLB_DROP_NO_BACKEND + 1;
	struct backend *b = bpf_map_lookup_elem(&backends, &bid);
	if (!b)
		return XLB_DROP_NO_BACKEND + 1;

	__u32 lifetime = syn_timeout();

	struct ct_entry *fe = &sc->fe, *re = &sc->re;
	struct ct_key *rk = &sc->rk;
	__builtin_memset(fe, 0, sizeof(*fe));
	fe->last_seen_ns = now;
	fe->created_ns = now;
	fe->lifetime_s = lifetime;
	fe->svc_id = sid;
	fe->backend_id = bid;
	fe->backend_gen = b->gen;
	fe->flags = XLB_CT_F_REWRITE_DST | XLB_CT_F_UNREPLIED;
	addr_copy(fe->nat_dst, b->addr);
	fe->nat_dport = b->port;

	__builtin_memcpy(re, fe, sizeof(*re));
	re->flags = XLB_CT_F_REPLY | XLB_CT_F_REWRITE_SRC | XLB_CT_F_UNREPLIED;
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
