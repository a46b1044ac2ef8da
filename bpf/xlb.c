/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xlb.c — the xlb L4 load-balancer datapath.
 *
 * One core (xlb_process) shared by two entry points: xlb_tc (tcx ingress) and
 * xlb_xdp. The core is written against a tiny context abstraction (struct
 * xctx) whose `xdp` member is a compile-time constant in each entry point, so
 * every helper call that exists for only one program type is folded away.
 *
 * Packet access is by offset: ld()/st() copy header fields to/from the stack.
 * XDP uses direct packet access (bounds checked); TC uses
 * bpf_skb_load_bytes/bpf_skb_store_bytes, which work on non-linear skbs
 * and unclone as needed, so no bpf_skb_pull_data is required.
 *
 * See bpf/README.md for the full description of behaviour.
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

static __always_inline int apply_and_forward(struct xctx *x, struct pkt *p, const struct ct_entry *e)
{
	__be32 nsrc[4], ndst[4];
	__be16 nsport, ndport;
	ct_target(&p->t, e, nsrc, &nsport, ndst, &ndport);
	if (rewrite_l4(x, p, nsrc, nsport, ndst, ndport)) {
		/* Only reachable on a helper failure after a partial write. */
		GINC(malformed);
		return XV_DROP;
	}
	return forward(x, p->t.family, p->t.proto, nsrc, ndst, p->l3len);
}

static __always_inline int new_flow(struct xctx *x, struct scratch *sc, struct svc_info *s, __u64 now)
{
	struct pkt *p = &sc->p;
	int r = ct_new(x->ctx, sc, s, now);
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
	return apply_and_forward(x, p, &sc->fe);
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
			return apply_and_forward(x, p, e);
		}
		bool syn_only = p->t.proto == IPPROTO_TCP_ && (p->tcp_flags & (TCP_SYN_ | TCP_ACK_)) == TCP_SYN_;
		__u32 bid = e->backend_id;
		struct backend *b = bpf_map_lookup_elem(&backends, &bid);
		/* DOWN/DRAINING backends keep their established flows; a reused id
		 * (gen changed) or a removed backend does not. A SYN on a closing
		 * flow is a new connection reusing the 5-tuple. */
		if (b && b->gen == e->backend_gen && b->state != XLB_BE_UNUSED &&
		    !(syn_only && (e->flags & XLB_CT_F_CLOSING))) {
			ct_touch(&p->t, e, now, p->tcp_flags);
			GINC(fwd_nat);
			count_fwd(e, x->len, false);
			return apply_and_forward(x, p, e);
		}
		ct_release(e);
	}

	struct svc_info *s = svc_lookup(&p->t);
	if (!s) {
		GINC(passed);
		return XV_PASS;
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

static __always_inline int xlb_process(struct xctx *x, bool ct_miss)
{
	__be16 proto;
	struct scratch *sc = scratch();
	if (!sc)
		return XV_PASS;
	struct pkt *p = &sc->p;
	__builtin_memset(p, 0, sizeof(*p));
	p->ifindex = x->ifindex;
	GINC(rx);
	if (ld(x, 12, &proto, 2)) {
		GINC(passed);
		return XV_PASS;
	}
	int r;
	if (proto == bpf_htons(ETH_P_IP_)) {
		r = process_v4(x, p);
	} else if (proto == bpf_htons(ETH_P_IPV6_)) {
		r = process_v6(x, p);
	} else {
		/* ARP, VLAN-tagged (not parsed), ...: not ours. */
		GINC(passed);
		return XV_PASS;
	}
	/* The heavy parts run as subprograms called from this small frame. */
	if (r == XV_LB)
		return x->xdp ? lb_xdp(x->ctx, p, ct_miss) : lb_tc(x->ctx, p, ct_miss);
	if (r == XV_ICMP)
		return icmp_error(x, p, p->l4off);
	return r;
}

/* ---------- the fast path ---------- */

/*
 * fast_body handles the common packet in place, with direct packet access
 * and no scratch map: a well-formed IPv4 (no options) or IPv6 (no extension
 * headers) TCP/UDP packet that either
 *  - hits an alive conntrack entry that needs no bookkeeping (no FIN/RST,
 *    last_seen refreshed less than XLB_TOUCH_NS ago, backend still valid),
 *  - or matches no conntrack entry and no service (passed untouched).
 * Everything else returns XV_SLOW before any side effect (counter, write)
 * and is handled by xlb_process, which re-parses: the two paths produce the
 * same bytes, verdicts and counters (see bpf/README.md).
 */

static __always_inline int fast_body(void *ctx, bool xdp)
{
	void *data, *end;
	__u32 len, ifindex;
	if (xdp) {
		struct xdp_md *m = ctx;
		data = (void *)(long)m->data;
		end = (void *)(long)m->data_end;
		len = (__u32)(end - data);
		ifindex = m->ingress_ifindex;
	} else {
		struct __sk_buff *skb = ctx;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		len = skb->len;
		ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	}

	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XV_SLOW;

	struct ct_key k;
	__builtin_memset(&k, 0, sizeof(k));
	__u32 l3hl, l3end, l3len;
	if (eth->proto == bpf_htons(ETH_P_IP_)) {
		struct ip4_hdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->vihl != 0x45)
			return XV_SLOW;
		l3len = bpf_ntohs(ip->tot_len);
		if (l3len < sizeof(*ip) || ETH_HLEN_ + l3len > len)
			return XV_SLOW;
		if (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFMASK_))
			return XV_SLOW;
		k.family = XLB_AF_INET;
		k.proto = ip->proto;
		k.src[0] = ip->saddr;
		k.dst[0] = ip->daddr;
		l3hl = sizeof(*ip);
	} else if (eth->proto == bpf_htons(ETH_P_IPV6_)) {
		struct ip6_hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || (ip6->vtcfl & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000))
			return XV_SLOW;
		l3len = (__u32)bpf_ntohs(ip6->plen) + sizeof(*ip6);
		if (ETH_HLEN_ + l3len > len)
			return XV_SLOW;
		k.family = XLB_AF_INET6;
		k.proto = ip6->nexthdr;
		addr_copy(k.src, ip6->saddr);
		addr_copy(k.dst, ip6->daddr);
		l3hl = sizeof(*ip6);
	} else {
		return XV_SLOW;
	}
	l3end = ETH_HLEN_ + l3len;

	__u32 l4off = ETH_HLEN_ + l3hl, csum_off;
	__u8 tcp_flags = 0;
	if (k.proto == IPPROTO_TCP_) {
		struct tcp_hdr *th = data + l4off;
		if ((void *)(th + 1) > end)
			return XV_SLOW;
		__u32 doff = th->doff >> 4;
		if (doff < 5 || l4off + doff * 4 > l3end)
			return XV_SLOW;
		tcp_flags = th->flags;
		k.sport = th->sport;
		k.dport = th->dport;
		csum_off = l4off + 16;
	} else if (k.proto == IPPROTO_UDP_) {
		struct udp_hdr *uh = data + l4off;
		if ((void *)(uh + 1) > end)
			return XV_SLOW;
		__u32 ulen = bpf_ntohs(uh->len);
		if (ulen < 8 || l4off + ulen > l3end)
			return XV_SLOW;
		k.sport = uh->sport;
		k.dport = uh->dport;
		csum_off = l4off + 6;
	} else {
		return XV_SLOW;
	}

	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, &k);
	if (!e) {
		struct svc_key sk;
		__builtin_memset(&sk, 0, sizeof(sk));
		addr_copy(sk.vip, k.dst);
		sk.port = k.dport;
		sk.proto = k.proto;
		sk.family = k.family;
		if (bpf_map_lookup_elem(&services, &sk))
			return XV_NEW; /* new flow */
		struct global_counters *g = gstats();
		if (g) {
			g->rx++;
			g->passed++;
		}
		return XV_PASS;
	}

	/* Age with the coarse clock (a precise bpf_ktime_get_ns costs ~30 ns
	 * here, more than the conntrack lookup). It lags the precise one by at
	 * most a tick, so an entry is surely alive and needs no refresh when
	 * coarse_age + XLB_COARSE_SLACK_NS is within both limits; anything
	 * closer to a limit (or expired, or lifetime 0) takes the slow path,
	 * which decides with the precise clock. last_seen_ns written by another
	 * CPU may be ahead of the coarse clock: a negative age counts as 0. */
	__u64 cnow = bpf_ktime_get_coarse_ns();
	__s64 age = (__s64)(cnow - e->last_seen_ns);
	if (age < 0)
		age = 0;
	age += XLB_COARSE_SLACK_NS;
	if ((__u64)age >= XLB_TOUCH_NS || (__u64)age > (__u64)e->lifetime_s * NSEC_PER_SEC)
		return XV_SLOW;

	/* Bookkeeping (FIN/RST) and stale backends are the slow path's. */
	__u32 fl = e->flags;
	if (k.proto == IPPROTO_TCP_ && (tcp_flags & (TCP_FIN_ | TCP_RST_)))
		return XV_SLOW;
	bool reply = fl & XLB_CT_F_REPLY;
	if (!reply) {
		__u32 bid = e->backend_id;
		struct backend *b = bpf_map_lookup_elem(&backends, &bid);
		if (!b || b->gen != e->backend_gen || b->state == XLB_BE_UNUSED)
			return XV_SLOW;
		if ((fl & XLB_CT_F_CLOSING) && k.proto == IPPROTO_TCP_ &&
		    (tcp_flags & (TCP_SYN_ | TCP_ACK_)) == TCP_SYN_)
			return XV_SLOW;
	}

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
		count_fwd(e, len, false);

	__be32 nsrc[4], ndst[4];
	__be16 nsport, ndport;
	ct_target(&k, e, nsrc, &nsport, ndst, &ndport);

	bool v6 = k.family == XLB_AF_INET6;
	bool udp = k.proto == IPPROTO_UDP_;
	__u64 adiff = 0, pdiff = 0;
	/* Re-derive the header pointers (the verifier tracks them per offset). */
	if (v6) {
		struct ip6_hdr *ip6 = data + ETH_HLEN_;
		if ((void *)(ip6 + 1) > end)
			return XV_SLOW; /* unreachable: checked above */
		if (!addr_eq(k.src, nsrc)) {
			adiff = csum_diff128(adiff, k.src, nsrc);
			addr_copy(ip6->saddr, nsrc);
		}
		if (!addr_eq(k.dst, ndst)) {
			adiff = csum_diff128(adiff, k.dst, ndst);
			addr_copy(ip6->daddr, ndst);
		}
	} else {
		struct ip4_hdr *ip = data + ETH_HLEN_;
		if ((void *)(ip + 1) > end)
			return XV_SLOW;
		if (k.src[0] != nsrc[0]) {
			adiff = csum_diff32(adiff, k.src[0], nsrc[0]);
			ip->saddr = nsrc[0];
		}
		if (k.dst[0] != ndst[0]) {
			adiff = csum_diff32(adiff, k.dst[0], ndst[0]);
			ip->daddr = ndst[0];
		}
		if (adiff)
			ip->csum = csum_apply(ip->csum, adiff);
	}
	{
		__be16 *ports = data + l4off;
		if ((void *)(ports + 2) > end)
			return XV_SLOW;
		if (k.sport != nsport) {
			pdiff = csum_diff16(pdiff, k.sport, nsport);
			ports[0] = nsport;
		}
		if (k.dport != ndport) {
			pdiff = csum_diff16(pdiff, k.dport, ndport);
			ports[1] = ndport;
		}
	}
	if (xdp) {
		__u16 *cp = data + csum_off;
		if ((void *)(cp + 1) > end)
			return XV_SLOW;
		__u16 l4csum = *cp;
		if (!(udp && !v6 && l4csum == 0)) {
			l4csum = csum_apply(l4csum, adiff + pdiff);
			if (udp && l4csum == 0)
				l4csum = 0xffff;
			*cp = l4csum;
		}
	} else {
		__u64 mangled = udp ? BPF_F_MARK_MANGLED_0 : 0;
		int err = 0;
		if (adiff) {
			__u64 f = BPF_F_PSEUDO_HDR | mangled;
			if (v6) {
				if (bpf_l4_csum_replace(ctx, csum_off, 0, csum_fold64(adiff), f | BPF_F_IPV6) &&
				    bpf_l4_csum_replace(ctx, csum_off, 0, csum_fold64(adiff), f))
					err = 1;
			} else if (bpf_l4_csum_replace(ctx, csum_off, 0, csum_fold64(adiff), f)) {
				err = 1;
			}
		}
		if (!err && pdiff && bpf_l4_csum_replace(ctx, csum_off, 0, csum_fold64(pdiff), mangled))
			err = 1;
		if (err) {
			GINC(malformed);
			return XV_DROP;
		}
	}

	/* Forwarding: as forward_body. */
	int pass = XV_PASS;
	struct xlb_cfg *cfg = config();
	if (cfg && (cfg->flags & XLB_CFG_F_NO_FIB))
		return pass;
	__u8 fam = k.family, proto = k.proto;
	struct fib_slot *fs = fib_slot_get(ifindex, nsrc, ndst);
	if (!fs)
		return pass;
	__u32 oif;
	if (fib_slot_hit(fs, cnow, ifindex, fam, proto, l3len, nsrc, ndst)) {
		oif = fs->oif;
	} else {
		struct bpf_fib_lookup fib;
		__builtin_memset(&fib, 0, sizeof(fib));
		fib.family = v6 ? AF_INET6_ : AF_INET_;
		fib.l4_protocol = proto;
		fib.tot_len = l3len;
		fib.ifindex = ifindex;
		if (v6) {
			addr_copy((__be32 *)fib.ipv6_src, nsrc);
			addr_copy((__be32 *)fib.ipv6_dst, ndst);
		} else {
			fib.ipv4_src = nsrc[0];
			fib.ipv4_dst = ndst[0];
		}
		long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
			if (!xdp && rc == BPF_FIB_LKUP_RET_NO_NEIGH)
				return xv_redirect(xdp, bpf_redirect_neigh(fib.ifindex, NULL, 0, 0));
			/* No route, forwarding disabled, MTU exceeded, ...: the
			 * kernel routes the already-rewritten packet. */
			return pass;
		}
		oif = fib.ifindex;
		fib_slot_fill(fs, cnow, ifindex, fam, proto, l3len, nsrc, ndst, &fib);
	}

	if (xdp) {
		struct xdp_md *m = ctx;
		data = (void *)(long)m->data;
		end = (void *)(long)m->data_end;
	} else {
		struct __sk_buff *skb = ctx;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	eth = data;
	if ((void *)(eth + 1) > end)
		return pass;
	__builtin_memcpy(eth->dst, fs->dmac, 6);
	__builtin_memcpy(eth->src, fs->smac, 6);
	if (xdp && oif == ifindex)
		return XV_TX;
	return xv_redirect(xdp, bpf_redirect(oif, 0));
}

static __noinline int fast_xdp(struct xdp_md *ctx)
{
	return fast_body(ctx, true);
}

static __noinline int fast_tc(struct __sk_buff *ctx)
{
	return fast_body(ctx, false);
}

/* The full datapath (xlb_process) for what the fast path does not handle. */
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
