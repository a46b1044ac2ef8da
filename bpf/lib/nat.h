/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * nat.h — the rewrite of addresses and ports with incremental checksums.
 */
#ifndef XLB_LIB_NAT_H
#define XLB_LIB_NAT_H

#include "ctx.h"
#include "csum.h"

/* ---------- rewriting ---------- */

/*
 * rewrite_l3 writes the new addresses (only those that change) and updates
 * the IPv4 header checksum incrementally (IPv6 has none). *adiff gets the
 * checksum difference of the addresses, for the L4 pseudo-header. Used alone
 * for the later fragments of a datagram (lib/frag.h), which carry no L4 header.
 */
static __always_inline int rewrite_l3(struct xctx *x, struct pkt *p, const __be32 *nsrc, const __be32 *ndst,
				      __u64 *adiffp)
{
	__u64 adiff = 0;
	if (p->t.family == XLB_AF_INET6) {
		if (!addr_eq(p->t.src, nsrc)) {
			adiff = csum_diff128(adiff, p->t.src, nsrc);
			if (st(x, ETH_HLEN_ + 8, nsrc, 16))
				return -1;
		}
		if (!addr_eq(p->t.dst, ndst)) {
			adiff = csum_diff128(adiff, p->t.dst, ndst);
			if (st(x, ETH_HLEN_ + 24, ndst, 16))
				return -1;
		}
	} else {
		if (p->t.src[0] != nsrc[0]) {
			adiff = csum_diff32(adiff, p->t.src[0], nsrc[0]);
			if (st(x, ETH_HLEN_ + 12, &nsrc[0], 4))
				return -1;
		}
		if (p->t.dst[0] != ndst[0]) {
			adiff = csum_diff32(adiff, p->t.dst[0], ndst[0]);
			if (st(x, ETH_HLEN_ + 16, &ndst[0], 4))
				return -1;
		}
		if (adiff) {
			__u16 ipcsum;
			if (ld(x, ETH_HLEN_ + 10, &ipcsum, 2))
				return -1;
			ipcsum = csum_apply(ipcsum, adiff);
			if (st(x, ETH_HLEN_ + 10, &ipcsum, 2))
				return -1;
		}
	}
	*adiffp = adiff;
	return 0;
}

/*
 * rewrite_l4 rewrites the addresses/ports of a TCP/UDP packet to
 * (nsrc:nsport -> ndst:ndport) and fixes the checksums:
 *  - IPv4 header checksum: incremental, by hand (same in TC and XDP);
 *  - L4 checksum: XDP by hand (RFC 1624); TC through bpf_l4_csum_replace,
 *    which knows the skb's ip_summed (CHECKSUM_PARTIAL on veth TX offload
 *    carries only the pseudo-header sum: address changes go in with
 *    BPF_F_PSEUDO_HDR, port changes must not touch it).
 *  - UDP: a zero checksum over IPv4 means "none" and stays zero; a result of
 *    zero is written as 0xffff (BPF_F_MARK_MANGLED_0 in TC).
 */
static __always_inline int rewrite_l4(struct xctx *x, struct pkt *p, const __be32 *nsrc, __be16 nsport,
				      const __be32 *ndst, __be16 ndport)
{
	bool v6 = p->t.family == XLB_AF_INET6;
	bool udp = p->t.proto == IPPROTO_UDP_;
	__u64 adiff = 0, pdiff = 0;

	if (rewrite_l3(x, p, nsrc, ndst, &adiff))
		return -1;
	if (p->t.sport != nsport) {
		pdiff = csum_diff16(pdiff, p->t.sport, nsport);
		if (st(x, p->l4off, &nsport, 2))
			return -1;
	}
	if (p->t.dport != ndport) {
		pdiff = csum_diff16(pdiff, p->t.dport, ndport);
		if (st(x, p->l4off + 2, &ndport, 2))
			return -1;
	}

	if (x->xdp) {
		__u16 l4csum;
		if (ld(x, p->csum_off, &l4csum, 2))
			return -1;
		if (udp && !v6 && l4csum == 0)
			return 0; /* UDP/IPv4 without checksum stays without */
		l4csum = csum_apply(l4csum, adiff + pdiff);
		if (udp && l4csum == 0)
			l4csum = 0xffff;
		return st(x, p->csum_off, &l4csum, 2);
	}

	__u64 mangled = udp ? BPF_F_MARK_MANGLED_0 : 0;
	if (adiff) {
		__u64 fl = BPF_F_PSEUDO_HDR | mangled;
		if (v6) {
			/* BPF_F_IPV6 (6.15+) keeps skb->csum right for CHECKSUM_COMPLETE;
			 * retry without it on kernels that reject the flag. */
			if (bpf_l4_csum_replace(x->ctx, p->csum_off, 0, csum_fold64(adiff), fl | BPF_F_IPV6) &&
			    bpf_l4_csum_replace(x->ctx, p->csum_off, 0, csum_fold64(adiff), fl))
				return -1;
		} else if (bpf_l4_csum_replace(x->ctx, p->csum_off, 0, csum_fold64(adiff), fl)) {
			return -1;
		}
	}
	if (pdiff && bpf_l4_csum_replace(x->ctx, p->csum_off, 0, csum_fold64(pdiff), mangled))
		return -1;
	return 0;
}

/* The addresses a CT entry rewrites a packet with tuple t to. */
static __always_inline void ct_target(const struct ct_key *t, const struct ct_entry *e, __be32 *src, __be16 *sport,
				      __be32 *dst, __be16 *dport)
{
	if (e->flags & XLB_CT_F_REWRITE_SRC) {
		addr_copy(src, e->nat_src);
		*sport = e->nat_sport;
	} else {
		addr_copy(src, t->src);
		*sport = t->sport;
	}
	if (e->flags & XLB_CT_F_REWRITE_DST) {
		addr_copy(dst, e->nat_dst);
		*dport = e->nat_dport;
	} else {
		addr_copy(dst, t->dst);
		*dport = t->dport;
	}
}

#endif /* XLB_LIB_NAT_H */
