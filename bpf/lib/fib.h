/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * fib.h — forwarding after a rewrite: the FIB cache, bpf_fib_lookup, redirect/tx,
 * and the onearm egress address lookup.
 */
#ifndef XLB_LIB_FIB_H
#define XLB_LIB_FIB_H

#include "ctx.h"

/* ---------- FIB cache ---------- */

/*
 * bpf_fib_lookup costs ~45 ns per packet here (~100 ns when its entries are
 * cold), half of an established-flow packet. Both paths (fast path and
 * forward_body) keep successful results in a small per-CPU,
 * direct-mapped cache keyed by everything the lookup depends on (ingress
 * ifindex, family, L4 protocol, source and destination) and reuses them for
 * XLB_FIB_TTL_NS: a route or neighbour change reaches every flow (new or
 * established) within that time. The MTU check is kept: a slot remembers the largest L3
 * length that passed it, a longer packet does a full lookup. Only successes
 * are cached (no neighbour, no route, MTU exceeded: always the full path).
 * Per CPU, and an xlb program never nests with another on one CPU (see
 * struct scratch), so plain stores are enough.
 */
#define XLB_FIB_SLOTS 256
#define XLB_FIB_TTL_NS (100 * 1000 * 1000ULL)

struct fib_slot {
	__u64 expires_ns; /* bpf_ktime_get_coarse_ns() */
	__be32 src[4];
	__be32 dst[4];
	__u32 ifindex; /* ingress */
	__u32 oif;     /* egress (fib result) */
	__u16 max_len; /* largest L3 length that passed the MTU check */
	__u8 family;
	__u8 l4proto;
	__u32 l2[3]; /* destination then source MAC, as in the Ethernet header (words: copied as such) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_FIB_SLOTS);
	__uint(key_size, sizeof(__u32));
	/* value_size, not __type: private to the C code (not exported to Go). */
	__uint(value_size, sizeof(struct fib_slot));
} xlb_fib_cache SEC(".maps");

static __always_inline __u32 fib_slot_of(__u32 ifindex, const __be32 *src, const __be32 *dst)
{
	__u32 h = dst[0] ^ dst[1] ^ dst[2] ^ dst[3] ^ (src[3] * 0x9e3779b1u) ^ (src[0] * 0x85ebca6bu) ^ ifindex;
	h ^= h >> 16;
	h ^= h >> 8;
	return h & (XLB_FIB_SLOTS - 1);
}

/* The cache slot for (ifindex, src, dst), or NULL (never: the array has
 * every slot, but the verifier wants the check). */
static __always_inline struct fib_slot *fib_slot_get(__u32 ifindex, const __be32 *src, const __be32 *dst)
{
	__u32 slot = fib_slot_of(ifindex, src, dst);
	return bpf_map_lookup_elem(&xlb_fib_cache, &slot);
}

/* Whether fs holds a fresh result for exactly this lookup (l3len within the
 * length that passed the MTU check). */
static __always_inline bool fib_slot_hit(const struct fib_slot *fs, __u64 cnow, __u32 ifindex, __u8 fam, __u8 proto,
					 __u16 l3len, const __be32 *src, const __be32 *dst)
{
	return fs->expires_ns > cnow && fs->ifindex == ifindex && fs->family == fam && fs->l4proto == proto &&
	       l3len <= fs->max_len && addr_eq(fs->dst, dst) && addr_eq(fs->src, src);
}

/* Record a successful lookup (keeping a larger max_len of the same route). */
static __always_inline void fib_slot_fill(struct fib_slot *fs, __u64 cnow, __u32 ifindex, __u8 fam, __u8 proto,
					  __u16 l3len, const __be32 *src, const __be32 *dst,
					  const struct bpf_fib_lookup *fib)
{
	__u32 oif = fib->ifindex;
	__u16 max_len = l3len;
	if (fs->expires_ns > cnow && fs->ifindex == ifindex && fs->family == fam && fs->l4proto == proto &&
	    fs->oif == oif && fs->max_len > max_len && addr_eq(fs->dst, dst) && addr_eq(fs->src, src))
		max_len = fs->max_len;
	fs->expires_ns = cnow + XLB_FIB_TTL_NS;
	addr_copy(fs->src, src);
	addr_copy(fs->dst, dst);
	fs->ifindex = ifindex;
	fs->oif = oif;
	fs->max_len = max_len;
	fs->family = fam;
	fs->l4proto = proto;
	__builtin_memcpy((__u8 *)fs->l2, fib->dmac, 6);
	__builtin_memcpy((__u8 *)fs->l2 + 6, fib->smac, 6);
}


/* ---------- forwarding ---------- */

/* After a rewrite: route the packet ourselves (fib lookup + redirect) or let
 * the kernel do it. Returns a verdict (XV_*), or XV_FIB_* for the caller to
 * judge (it knows the entry and the original packet). a->l3len is the MTU
 * check's length (fib_len). TTL/hop limit is not decremented (the LB is a
 * translator, like IPVS/Katran). */
static __always_inline int forward_body(struct xctx *x, const struct fwd_args *a)
{
	__u8 family = a->family;
	const __be32 *src = a->src, *dst = a->dst;
	int pass = XV_PASS;
	struct xlb_cfg *cfg = config();
	if (cfg && (cfg->flags & XLB_CFG_F_NO_FIB))
		return pass;

	__u32 l2[3]; /* destination and source MAC */
	__u32 oif;
	/* The FIB cache: established flows (fast path), and also new flows
	 * (e.g. all fullnat flows toward one backend) and refreshes mostly hit it. */
	__u64 cnow = a->cnow;
	struct fib_slot *fs = fib_slot_get(x->ifindex, src, dst);
	if (fs && fib_slot_hit(fs, cnow, x->ifindex, family, a->l4proto, a->l3len, src, dst)) {
		oif = fs->oif;
		l2[0] = fs->l2[0];
		l2[1] = fs->l2[1];
		l2[2] = fs->l2[2];
		goto redirect;
	}

	__u32 z = 0;
	struct scratch *sc = bpf_map_lookup_elem(&xlb_scratch, &z);
	if (!sc)
		return pass;
	struct bpf_fib_lookup *fp = &sc->fib;
	__builtin_memset(fp, 0, sizeof(*fp));
#define fib (*fp)
	fib.family = family == XLB_AF_INET6 ? AF_INET6_ : AF_INET_;
	fib.l4_protocol = a->l4proto;
	fib.tot_len = a->l3len;
	fib.ifindex = x->ifindex;
	if (family == XLB_AF_INET6) {
		addr_copy((__be32 *)fib.ipv6_src, src);
		addr_copy((__be32 *)fib.ipv6_dst, dst);
	} else {
		fib.ipv4_src = src[0];
		fib.ipv4_dst = dst[0];
	}
	long rc = bpf_fib_lookup(x->ctx, fp, sizeof(*fp), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (fs)
			fib_slot_fill(fs, cnow, x->ifindex, family, a->l4proto, a->l3len, src, dst, fp);
		oif = fib.ifindex;
		__builtin_memcpy((__u8 *)l2, fib.dmac, 6);
		__builtin_memcpy((__u8 *)l2 + 6, fib.smac, 6);
		goto redirect;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* tc: let the kernel resolve the neighbour and fill L2. XDP
		 * cannot: the caller hands the packet to the tc companion. */
		if (x->xdp)
			return XV_FIB_NO_NEIGH;
		return xv_redirect(x->xdp, bpf_redirect_neigh(fib.ifindex, NULL, 0, 0));
	}
	/* Longer than the egress MTU (a GSO skb is checked per segment, see
	 * fib_len): xlb does not fragment; the caller drops it visibly. */
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return XV_FIB_MTU;
	/* Forwarding disabled on the ingress device: the kernel will not
	 * forward either, but may deliver locally (a local backend). */
	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED)
		return pass;
	/* No route, blackhole, unreachable, prohibit, local or broadcast
	 * destination, ...: the kernel may route (or deliver, or answer) the
	 * rewritten packet only if it does not drop it as a martian. IPv4
	 * input drops a packet whose source is a local address
	 * (fib_validate_source): onearm and local-SNAT fullnat rewrite to a
	 * local source, and so do replies from a plumbed VIP. A lookup toward
	 * the source tells: a local (or broadcast/multicast, or unroutable)
	 * address is NOT_FWDED. Such a packet is dropped and counted by the
	 * caller. IPv6 has no such input check, and the same lookup toward a
	 * local IPv6 address resolves its connected route (SUCCESS), so IPv6
	 * is always left to the kernel. Failure path only: one more lookup. */
	if (family == XLB_AF_INET6)
		return pass;
	__builtin_memset(fp, 0, sizeof(*fp));
	fib.family = AF_INET_;
	fib.ifindex = x->ifindex;
	fib.ipv4_dst = src[0];
	if (bpf_fib_lookup(x->ctx, fp, sizeof(*fp), BPF_FIB_LOOKUP_SKIP_NEIGH) == BPF_FIB_LKUP_RET_NOT_FWDED)
		return XV_FIB_NOROUTE;
	return pass;
#undef fib
redirect:
	if (st(x, 0, l2, 12))
		return pass;
	if (x->xdp && oif == x->ifindex)
		return XV_TX;
	return xv_redirect(x->xdp, bpf_redirect(oif, 0));
}

static __noinline int forward_xdp(struct xdp_md *ctx, const struct fwd_args *a)
{
	struct xctx x = XCTX_XDP(ctx);
	return forward_body(&x, a);
}

static __noinline int forward_tc(struct __sk_buff *ctx, const struct fwd_args *a)
{
	struct xctx x = XCTX_TC(ctx);
	return forward_body(&x, a);
}

/*
 * The length the FIB's MTU check is about: the L3 length, or for a GSO skb
 * (tc: GRO-merged at the ingress, far longer than the MTU) the L3 length of
 * one of the segments it will be cut into on the egress: L3 + L4 headers +
 * gso_size. XDP frames are never GSO (x->gso_size is 0, folded away).
 */
static __always_inline __u16 fib_len(struct xctx *x, const struct pkt *p)
{
	if (!x->gso_size)
		return p->l3len;
	__u32 hl = p->l4off - ETH_HLEN_ + 8; /* UDP */
	if (p->t.proto == IPPROTO_TCP_) {
		__u8 doff;
		if (ld(x, p->l4off + 12, &doff, 1))
			return p->l3len;
		hl = p->l4off - ETH_HLEN_ + (doff >> 4) * 4;
	}
	__u32 n = hl + x->gso_size;
	return n < p->l3len ? n : p->l3len;
}

/* Forward a rewritten packet whose addresses are now src -> dst. The fast
 * path inlines forward_body (its arguments on its own small stack frame);
 * the slow path calls it as a subprogram with the arguments in scratch. */
static __always_inline int forward(struct xctx *x, __u8 family, __u8 l4proto, const __be32 *src, const __be32 *dst,
				   __u16 l3len, __u64 cnow)
{
	if (x->fast) {
		struct fwd_args fa;
		fa.cnow = cnow;
		addr_copy(fa.src, src);
		addr_copy(fa.dst, dst);
		fa.l3len = l3len;
		fa.family = family;
		fa.l4proto = l4proto;
		return forward_body(x, &fa);
	}
	struct scratch *sc = scratch();
	if (!sc)
		return XV_PASS;
	struct fwd_args *a = &sc->fa;
	a->cnow = cnow;
	addr_copy(a->src, src);
	addr_copy(a->dst, dst);
	a->l3len = l3len;
	a->family = family;
	a->l4proto = l4proto;
	if (x->xdp)
		return forward_xdp(x->ctx, a);
	return forward_tc(x->ctx, a);
}

/* Whether the kernel would deliver src -> dst locally (bpf_fib_lookup says
 * "not forwarded"): packets of this host's own connections. False with
 * XLB_CFG_F_NO_FIB (the tests' mode: no routing decisions at all). */
static __noinline bool dst_is_local_(void *ctx, __u32 ifindex, __u8 family, const __be32 *src, const __be32 *dst)
{
	struct xlb_cfg *cfg = config();
	if (cfg && (cfg->flags & XLB_CFG_F_NO_FIB))
		return false;
	__u32 z = 0;
	struct scratch *sc = bpf_map_lookup_elem(&xlb_scratch, &z);
	if (!sc)
		return true;
	struct bpf_fib_lookup *fp = &sc->fib;
	__builtin_memset(fp, 0, sizeof(*fp));
	fp->family = family == XLB_AF_INET6 ? AF_INET6_ : AF_INET_;
	fp->ifindex = ifindex;
	if (family == XLB_AF_INET6) {
		addr_copy((__be32 *)fp->ipv6_src, src);
		addr_copy((__be32 *)fp->ipv6_dst, dst);
	} else {
		fp->ipv4_src = src[0];
		fp->ipv4_dst = dst[0];
	}
	long rc = bpf_fib_lookup(ctx, fp, sizeof(*fp), BPF_FIB_LOOKUP_SKIP_NEIGH);
	return rc == BPF_FIB_LKUP_RET_NOT_FWDED;
}

#define dst_is_local(x, family, src, dst) dst_is_local_((x)->ctx, (x)->ifindex, family, src, dst)

/* Onearm: the address of the interface the kernel would use toward dst. */
static __noinline int egress_addr(void *ctx, __u32 ifindex, __u8 family, const __be32 *dst, __be32 *out)
{
	__u32 z = 0;
	struct scratch *sc = bpf_map_lookup_elem(&xlb_scratch, &z);
	if (!sc)
		return -1;
	struct bpf_fib_lookup *fp = &sc->fib;
	__builtin_memset(fp, 0, sizeof(*fp));
#define fib (*fp)
	fib.family = family == XLB_AF_INET6 ? AF_INET6_ : AF_INET_;
	fib.ifindex = ifindex;
	if (family == XLB_AF_INET6)
		addr_copy((__be32 *)fib.ipv6_dst, dst);
	else
		fib.ipv4_dst = dst[0];
	/* SKIP_NEIGH: only the egress device is wanted here. */
	long rc = bpf_fib_lookup(ctx, fp, sizeof(*fp), BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	__u32 ifi = fib.ifindex;
	struct if_addr *ia = bpf_map_lookup_elem(&if_addrs, &ifi);
	if (!ia)
		return -1;
	__builtin_memset(out, 0, 16);
	if (family == XLB_AF_INET6) {
		if (!(ia->v6[0] | ia->v6[1] | ia->v6[2] | ia->v6[3]))
			return -1;
		addr_copy(out, ia->v6);
	} else {
		if (!ia->v4)
			return -1;
		out[0] = ia->v4;
	}
	return 0;
#undef fib
}

#endif /* XLB_LIB_FIB_H */
