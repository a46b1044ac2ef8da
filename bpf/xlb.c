/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xlb.c — the xlb L4 load-balancer datapath: the pipeline and the entry
 * points. Every stage lives in one header of lib/ (see bpf/README.md):
 *
 *   parse.h      Ethernet, IPv4/IPv6, TCP/UDP; malformed packets
 *   frag.h       fragments: the later fragments follow the first one's translation
 *   conntrack.h  conntrack entries: liveness, refresh, FIN/RST, new flows
 *   select.h     backend selection and the allow-list
 *   nat.h        rewrite + incremental checksums
 *   fib.h        forwarding: FIB cache, bpf_fib_lookup, redirect/tx
 *   icmp.h       ICMP error translation
 *   counters.h   counters;  csum.h  checksum arithmetic
 *   ctx.h        the only tc/xdp-specific code: context, packet access,
 *                verdicts (enum xv) -> program return codes
 *
 * Every stage returns an XV_* verdict; xv_ret() translates it in the entry
 * points. The fast path (fast_body) is built from the same stage helpers as
 * the slow path (xlb_process); its context (XCTX_*_FAST) makes the parser
 * stop at anything but a plain TCP/UDP packet and gives tc direct packet
 * access.
 */
#include "lib/common.h"
#include "lib/ctx.h"
#include "lib/counters.h"
#include "lib/parse.h"
#include "lib/frag.h"
#include "lib/conntrack.h"
#include "lib/select.h"
#include "lib/nat.h"
#include "lib/fib.h"
#include "lib/icmp.h"

/*
 * A translated packet forward_body could not send (bpf/README.md,
 * "Forwarding after a rewrite"): never hand the kernel a packet it drops
 * as a martian.
 *  - XV_FIB_MTU, XV_FIB_NOROUTE: drop, counted (global and on the service).
 *  - XV_FIB_NO_NEIGH (XDP only): undo the rewrite and the counters of this
 *    packet and pass the ORIGINAL packet marked for the tc companion
 *    (xlb_tc_xdp), which finds the conntrack entry, translates it and
 *    sends it with bpf_redirect_neigh (the kernel resolves the neighbour).
 *    The packet is counted once, by tc; xdp_to_tc says how many went so.
 * nsrc/ndst/nsport/ndport: what p was rewritten to (clobbered).
 */
static __always_inline int fwd_failed(struct xctx *x, struct pkt *p, const struct ct_entry *e, int r, __be32 *nsrc,
				      __be16 nsport, __be32 *ndst, __be16 ndport)
{
	struct global_counters *g = gstats();
	if (r == XV_FIB_MTU || r == XV_FIB_NOROUTE) {
		if (g) {
			if (r == XV_FIB_MTU)
				g->fib_frag_needed++;
			else
				g->fib_dropped++;
		}
		svc_drop(e->svc_id, r == XV_FIB_MTU ? XLB_DROP_MTU : XLB_DROP_NO_ROUTE);
		return XV_DROP;
	}
	/* XV_FIB_NO_NEIGH: swap p's tuple with the new one, rewrite back. */
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__be32 t = p->t.src[i];
		p->t.src[i] = nsrc[i];
		nsrc[i] = t;
		t = p->t.dst[i];
		p->t.dst[i] = ndst[i];
		ndst[i] = t;
	}
	__be16 osport = p->t.sport, odport = p->t.dport;
	p->t.sport = nsport;
	p->t.dport = ndport;
	if (rewrite_l4(x, p, nsrc, osport, ndst, odport)) {
		GINC(malformed);
		return XV_DROP;
	}
	bool reply = e->flags & XLB_CT_F_REPLY;
	if (g) {
		g->rx--;
		if (reply)
			g->rev_nat--;
		else
			g->fwd_nat--;
		g->xdp_to_tc++;
	}
	if (!reply)
		uncount_fwd(e, x->len);
	xdp_mark_for_tc(x);
	return XV_PASS;
}

/* Rewrite the packet with entry e, then forward it. */
static __always_inline int apply_and_forward(struct xctx *x, struct pkt *p, const struct ct_entry *e, __u64 cnow)
{
	__be32 nsrc[4], ndst[4];
	__be16 nsport, ndport;
	ct_target(&p->t, e, nsrc, &nsport, ndst, &ndport);
	/* Before the rewrite: a TCP header read for a GSO skb's MTU length. */
	__u16 mtu_len = fib_len(x, p);
	if (rewrite_l4(x, p, nsrc, nsport, ndst, ndport)) {
		/* Only reachable on a helper failure after a partial write. */
		GINC(malformed);
		return XV_DROP;
	}
	/* The fast path never sees fragments (x->fast is a constant). */
	if (!x->fast && p->frag == XLB_PKT_FRAG_FIRST)
		frag_record(p, e, nsrc, ndst);
	int r = forward(x, p->t.family, p->t.proto, nsrc, ndst, mtu_len, cnow);
	if (r >= XV_FIB_MTU)
		return fwd_failed(x, p, e, r, nsrc, nsport, ndst, ndport);
	return r;
}

/* ---------- slow path ---------- */

static __always_inline int new_flow(struct xctx *x, struct scratch *sc, struct svc_info *s, __u64 now)
{
	struct pkt *p = &sc->p;
	int r = ct_new(x->ctx, sc, s, now);
	if (r == XLB_CT_NEW_STATELESS) {
		/* Budget spent: translated, nothing inserted. */
		struct global_counters *g = gstats();
		if (g) {
			g->stateless++;
			g->fwd_nat++;
		}
		count_fwd(&sc->fe, x->len, false);
		return apply_and_forward(x, p, &sc->fe, bpf_ktime_get_coarse_ns());
	}
	if (r) {
		svc_drop(s->id, r - 1);
		return XV_DROP;
	}
	struct global_counters *g = gstats();
	if (g) {
		g->ct_created += 2;
		g->fwd_nat++;
	}
	count_fwd(&sc->fe, x->len, true);

	/* A first packet that already carries FIN/RST (mid-flow pickup after a
	 * restart) closes the fresh flow right away. */
	if (p->t.proto == IPPROTO_TCP_ && (p->tcp_flags & (TCP_FIN_ | TCP_RST_))) {
		struct ct_entry *e = bpf_map_lookup_elem(&conntrack, &p->t);
		if (e)
			ct_touch(&p->t, e, now, p->tcp_flags);
	}
	return apply_and_forward(x, p, &sc->fe, bpf_ktime_get_coarse_ns());
}

/* The rev_nat key of a packet's source (a backend's reply). */
static __always_inline void be_key_of(const struct ct_key *t, struct be_key *bk)
{
	addr_copy(bk->addr, t->src);
	bk->port = t->sport;
	bk->proto = t->proto;
	bk->family = t->family;
}

/*
 * A packet without conntrack entry and not to a service, from a backend in
 * rev_nat (a flow served without conntrack, or whose reply entry was
 * evicted):
 *  - a default-mode backend's reply gets the VIP as its source, so no
 *    backend address leaks to the client. Not for packets to this host
 *    itself (its own connections to a backend, e.g. health probes): only
 *    when the destination is forwarded.
 *  - a fullnat/onearm-only backend's packet to an SNAT port is dropped
 *    (snat_miss_dropped): the kernel, where nobody listens on those ports
 *    (xlbd reserves them), would answer a TCP segment with a RST and kill
 *    the flow on the backend's side before the forward direction's next
 *    refresh rebuilds the reply entry (ct_touch). Any other port passes.
 */
static __always_inline int rev_nat_reply(struct xctx *x, struct pkt *p)
{
	struct scratch *sc = container_of_pkt(p);
	be_key_of(&p->t, &sc->bk);
	struct rev_nat_val *rv = bpf_map_lookup_elem(&rev_nat, &sc->bk);
	if (!rv)
		return not_ours();
	if (rv->flags & XLB_REVNAT_F_SNAT) {
		__u16 dport = bpf_ntohs(p->t.dport);
		if (dport < rv->snat_port_min || dport > rv->snat_port_max)
			return not_ours();
		GINC(snat_miss_dropped);
		return XV_DROP;
	}
	if (dst_is_local(x, p->t.family, p->t.src, p->t.dst))
		return not_ours();
	struct ct_entry *re = &sc->pe;
	__builtin_memset(re, 0, sizeof(*re));
	re->flags = XLB_CT_F_REPLY | XLB_CT_F_REWRITE_SRC;
	addr_copy(re->nat_src, rv->svc.vip);
	re->nat_sport = rv->svc.port;
	struct global_counters *g = gstats();
	if (g) {
		g->rev_nat++;
		g->rev_nat_map++;
	}
	return apply_and_forward(x, p, re, bpf_ktime_get_coarse_ns());
}

/* TCP/UDP packet with a parsed tuple. ct_miss: the fast path has just
 * looked the tuple up and found no entry (a lookup costs ~30 ns even when
 * warm; another CPU inserting the same tuple in between is the same race as
 * between any lookup and insert). */
static __always_inline int lb_body(struct xctx *x, struct pkt *p, bool ct_miss)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_entry *e = NULL;
	if (!ct_miss)
		e = bpf_map_lookup_elem(&conntrack, &p->t);

	if (e && ct_alive(e, now)) {
		if (e->flags & XLB_CT_F_REPLY) {
			ct_touch(&p->t, e, now, p->tcp_flags);
			GINC(rev_nat);
			return apply_and_forward(x, p, e, bpf_ktime_get_coarse_ns());
		}
		if (ct_fwd_usable(e, p)) {
			ct_touch(&p->t, e, now, p->tcp_flags);
			GINC(fwd_nat);
			count_fwd(e, x->len, false);
			return apply_and_forward(x, p, e, bpf_ktime_get_coarse_ns());
		}
		ct_release(e);
	}

	struct svc_info *s = svc_lookup(&p->t);
	if (!s) {
		/* A first fragment to a VIP that is no service of ours (the host's
		 * own port on a plumbed VIP): its later fragments pass too. */
		if (p->frag == XLB_PKT_FRAG_FIRST)
			frag_record(p, NULL, NULL, NULL);
		return rev_nat_reply(x, p);
	}
	return new_flow(x, container_of_pkt(p), s, now);
}

static __noinline int lb_xdp(struct xdp_md *ctx, struct pkt *p, bool ct_miss)
{
	struct xctx x = XCTX_XDP(ctx);
	return lb_body(&x, p, ct_miss);
}

static __noinline int lb_tc(struct __sk_buff *ctx, struct pkt *p, bool ct_miss)
{
	struct xctx x = XCTX_TC(ctx);
	return lb_body(&x, p, ct_miss);
}

/* The full pipeline: parse, then load balancing or ICMP error translation
 * (malformed packets, fragments and foreign traffic are judged by the
 * parser). The heavy parts run as subprograms called from this small frame. */
static __always_inline int xlb_process(struct xctx *x, bool ct_miss)
{
	struct scratch *sc = scratch();
	if (!sc)
		return XV_PASS;
	struct pkt *p = &sc->p;
	__builtin_memset(p, 0, sizeof(*p));
	p->ifindex = x->ifindex;
	GINC(rx);
	int r = parse(x, p);
	if (r == XV_LB)
		return x->xdp ? lb_xdp(x->ctx, p, ct_miss) : lb_tc(x->ctx, p, ct_miss);
	if (r == XV_ICMP)
		return icmp_error(x, p, p->l4off);
	if (r == XV_FRAG)
		return x->xdp ? frag_xdp(x->ctx, p) : frag_tc(x->ctx, p);
	return r;
}

/* ---------- fast path ---------- */

/*
 * The common packet, from the same stage helpers with the fast context
 * (direct packet access in tc too, the parser stops at anything unusual, a
 * small stack frame of its own, no scratch map unless the FIB cache misses):
 *  - an alive conntrack entry that needs no bookkeeping (ct_settled) and,
 *    for a forward entry, still applies (ct_fwd_usable): counters, rewrite,
 *    forward — exactly what lb_body would do for this packet;
 *  - no conntrack entry and no service: counted and passed untouched.
 * Everything else returns XV_SLOW (XV_NEW for a conntrack miss with a
 * service) before any side effect, and xlb_process starts over: the two
 * paths produce the same bytes, verdicts and counters.
 */
static __always_inline int fast_body(struct xctx *x)
{
	struct pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	p.ifindex = x->ifindex;
	if (parse(x, &p) != XV_LB)
		return XV_SLOW;

	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, &p.t);
	if (!e) {
		if (svc_lookup(&p.t))
			return XV_NEW;
		struct xlb_cfg *cfg = config();
		if (cfg && (cfg->flags & XLB_CFG_F_REV_NAT)) {
			struct be_key bk = {};
			be_key_of(&p.t, &bk);
			if (bpf_map_lookup_elem(&rev_nat, &bk))
				return XV_SLOW; /* a backend's reply without conntrack */
		}
		struct global_counters *g = gstats();
		if (g) {
			g->rx++;
			g->passed++;
		}
		return XV_PASS;
	}
	__u64 cnow = bpf_ktime_get_coarse_ns();
	if (!ct_settled(e, &p, cnow))
		return XV_SLOW;
	bool reply = e->flags & XLB_CT_F_REPLY;
	if (!reply && !ct_fwd_usable(e, &p))
		return XV_SLOW;

	/* Committed: counters, then the rewrite. */
	struct global_counters *g = gstats();
	if (g) {
		g->rx++;
		if (reply)
			g->rev_nat++;
		else
			g->fwd_nat++;
	}
	if (!reply)
		count_fwd(e, x->len, false);
	return apply_and_forward(x, &p, e, cnow);
}

/* ---------- entry points ---------- */

static __noinline int fast_xdp(struct xdp_md *ctx)
{
	struct xctx x = XCTX_XDP_FAST(ctx);
	return fast_body(&x);
}

static __noinline int fast_tc(struct __sk_buff *ctx)
{
	struct xctx x = XCTX_TC_FAST(ctx);
	return fast_body(&x);
}

static __noinline int slow_xdp(struct xdp_md *ctx, bool ct_miss)
{
	struct xctx x = XCTX_XDP(ctx);
	return xlb_process(&x, ct_miss);
}

static __noinline int slow_tc(struct __sk_buff *ctx, bool ct_miss)
{
	struct xctx x = XCTX_TC(ctx);
	return xlb_process(&x, ct_miss);
}

SEC("tc")
int xlb_tc(struct __sk_buff *skb)
{
	int r = fast_tc(skb);
	if (r == XV_SLOW || r == XV_NEW)
		r = slow_tc(skb, r == XV_NEW);
	return xv_ret(false, r);
}

/* The tc companion of xlb_xdp (attached with it at tcx ingress): only the
 * packets xlb_xdp handed over because XDP cannot resolve a neighbour; every
 * other packet goes on untouched and uncounted (xlb_xdp counted it). */
SEC("tc")
int xlb_tc_xdp(struct __sk_buff *skb)
{
	if (!tc_marked_by_xdp(skb))
		return xv_ret(false, XV_PASS);
	int r = fast_tc(skb);
	if (r == XV_SLOW || r == XV_NEW)
		r = slow_tc(skb, r == XV_NEW);
	return xv_ret(false, r);
}

SEC("xdp")
int xlb_xdp(struct xdp_md *ctx)
{
	int r = fast_xdp(ctx);
	if (r == XV_SLOW || r == XV_NEW)
		r = slow_xdp(ctx, r == XV_NEW);
	return xv_ret(true, r);
}

/* Benchmark floor: the cheapest program that still parses what xlb parses
 * (Ethernet, the IPv4/IPv6 header, the L4 ports) and passes, so that
 * benchmark ratios measure xlb's own work. The empty asm statements keep the
 * loads (and so the bounds checks): without them clang folds the whole
 * program into "return XDP_PASS", an empty program. */
#define XLB_KEEP(v) asm volatile("" : : "r"(v))
SEC("xdp")
int xlb_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	__be16 *ports;
	if (eth->proto == bpf_htons(ETH_P_IP_)) {
		struct ip4_hdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		XLB_KEEP(ip->saddr);
		XLB_KEEP(ip->daddr);
		XLB_KEEP(ip->proto);
		ports = (void *)(ip + 1);
	} else if (eth->proto == bpf_htons(ETH_P_IPV6_)) {
		struct ip6_hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		XLB_KEEP(ip6->saddr[3]);
		XLB_KEEP(ip6->daddr[3]);
		XLB_KEEP(ip6->nexthdr);
		ports = (void *)(ip6 + 1);
	} else {
		return XDP_PASS;
	}
	if ((void *)(ports + 2) > end)
		return XDP_PASS;
	XLB_KEEP(ports[0]);
	XLB_KEEP(ports[1]);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
