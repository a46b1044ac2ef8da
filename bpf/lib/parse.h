/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h — Ethernet, IPv4, IPv6 and TCP/UDP parsing, and the handling of malformed packets.
 */
#ifndef XLB_LIB_PARSE_H
#define XLB_LIB_PARSE_H

#include "ctx.h"
#include "counters.h"


/*
 * One parser for both paths. In the slow path (x->fast false) every outcome
 * is final: malformed packets and fragments are counted and judged here,
 * anything that is not TCP/UDP/ICMP is passed. In the fast path (x->fast)
 * only a plain packet is parsed: IPv4 without options or IPv6 without
 * extension headers, TCP or UDP, not a fragment, headers within reach of
 * direct access; every other outcome is XV_SLOW, returned before any side
 * effect, and the slow path parses the packet again from scratch. Results:
 * XV_LB (p holds the tuple and offsets), XV_ICMP (slow path: ICMP at
 * p->l4off), XV_PASS/XV_DROP (slow path: judged), XV_SLOW (fast path).
 */
#define PARSE_END(x, expr) ((x)->fast ? XV_SLOW : (expr))

/* Header buffer for the skb-helper access method (direct access reads the
 * packet in place and needs none). */
#define PARSE_BUF(x, p, member) (x_direct(x) ? NULL : (void *)&container_of_pkt(p)->member)

/* Malformed packet: never translated. Dropped only when it can be attributed
 * to a service (destination VIP:port:proto known), otherwise passed. */
static __always_inline int malformed(struct xctx *x, struct pkt *p, bool have_ports)
{
	GINC(malformed);
	if (have_ports) {
		struct svc_info *s = svc_lookup(&p->t);
		if (s) {
			svc_drop(s->id, XLB_DROP_MALFORMED);
			return XV_DROP;
		}
	}
	return XV_PASS;
}

/* Not ours (not IP, other protocols, IPv6 Routing header, ...): untouched. */
static __always_inline int not_ours(void)
{
	GINC(passed);
	return XV_PASS;
}

/* Malformed L4 header: attributed to a service if the ports can be read. */
static __always_inline int malformed_l4(struct xctx *x, struct pkt *p)
{
	__be16 ports[2];
	if (!ld(x, p->l4off, ports, 4)) {
		p->t.sport = ports[0];
		p->t.dport = ports[1];
		return malformed(x, p, true);
	}
	return malformed(x, p, false);
}

/* TCP/UDP header at p->l4off, within l3end. In a first fragment
 * (p->frag == XLB_PKT_FRAG_FIRST) the datagram goes on past l3end: the whole
 * header must be in this fragment, the UDP length may exceed it. */
static __always_inline int parse_l4(struct xctx *x, struct pkt *p, __u32 l3end)
{
	bool first_frag = !x->fast && p->frag == XLB_PKT_FRAG_FIRST;
	if (p->t.proto == IPPROTO_TCP_) {
		struct tcp_hdr *th = ld_ptr(x, p->l4off, PARSE_BUF(x, p, h4.tcp), sizeof(*th));
		if (!th)
			return PARSE_END(x, malformed_l4(x, p));
		p->t.sport = th->sport;
		p->t.dport = th->dport;
		__u32 doff = th->doff >> 4;
		if (doff < 5 || p->l4off + doff * 4 > l3end)
			return PARSE_END(x, malformed(x, p, true));
		p->tcp_flags = th->flags;
		p->csum_off = p->l4off + 16;
	} else {
		struct udp_hdr *uh = ld_ptr(x, p->l4off, PARSE_BUF(x, p, h4.udp), sizeof(*uh));
		if (!uh)
			return PARSE_END(x, malformed_l4(x, p));
		p->t.sport = uh->sport;
		p->t.dport = uh->dport;
		__u32 ulen = bpf_ntohs(uh->len);
		if (ulen < 8 || p->l4off + (first_frag ? 8 : ulen) > l3end)
			return PARSE_END(x, malformed(x, p, true));
		p->csum_off = p->l4off + 6;
	}
	return XV_LB;
}

/*
 * A fragment (slow path only; p->l4off is where the fragment's payload
 * starts). The first fragment of a TCP/UDP datagram carries the L4 header:
 * it is parsed and load balanced like an unfragmented packet of its flow
 * (XV_LB), and the translation is remembered for the datagram's later
 * fragments (lib/frag.h). Anything else (later fragments, first fragments of
 * other protocols) is XV_FRAG: lib/frag.h follows the first fragment's
 * translation, or judges it.
 */
static __always_inline int fragment(struct xctx *x, struct pkt *p, __u32 l3end, bool first)
{
	GINC(fragments);
	if (first && (p->t.proto == IPPROTO_TCP_ || p->t.proto == IPPROTO_UDP_)) {
		p->frag = XLB_PKT_FRAG_FIRST;
		return parse_l4(x, p, l3end);
	}
	p->frag = XLB_PKT_FRAG_LATER;
	return XV_FRAG;
}

static __always_inline int parse_v4(struct xctx *x, struct pkt *p)
{
	struct ip4_hdr *ip = ld_ptr(x, ETH_HLEN_, PARSE_BUF(x, p, h3.ip4), sizeof(*ip));
	if (!ip)
		return PARSE_END(x, malformed(x, p, false));
	p->t.family = XLB_AF_INET;
	p->t.proto = ip->proto;
	p->t.src[0] = ip->saddr;
	p->t.dst[0] = ip->daddr;

	__u8 vihl = ip->vihl;
	__u32 ihl = vihl & 0xf;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (x->fast && vihl != 0x45)
		return XV_SLOW; /* options: the slow path */
	if ((vihl >> 4) != 4 || ihl < 5)
		return PARSE_END(x, malformed(x, p, false));
	p->l4off = ETH_HLEN_ + ihl * 4;
	p->l3len = tot;
	if (tot < ihl * 4 || ETH_HLEN_ + tot > x->len) {
		if (x->fast)
			return XV_SLOW;
		/* Inconsistent length: attribute to a service if the ports are there. */
		if (ip->proto == IPPROTO_TCP_ || ip->proto == IPPROTO_UDP_)
			return malformed_l4(x, p);
		return malformed(x, p, false);
	}
	__u16 frag = bpf_ntohs(ip->frag_off);
	if (frag & (IP_MF_ | IP_OFFMASK_)) {
		if (x->fast)
			return XV_SLOW;
		p->frag_id = (__be32)ip->id;
		return fragment(x, p, ETH_HLEN_ + tot, (frag & IP_OFFMASK_) == 0);
	}

	switch (ip->proto) {
	case IPPROTO_TCP_:
	case IPPROTO_UDP_:
		return parse_l4(x, p, ETH_HLEN_ + tot);
	case IPPROTO_ICMP_:
		return PARSE_END(x, XV_ICMP);
	}
	return PARSE_END(x, not_ours());
}

static __always_inline int parse_v6(struct xctx *x, struct pkt *p)
{
	struct ip6_hdr *ip = ld_ptr(x, ETH_HLEN_, PARSE_BUF(x, p, h3.ip6), sizeof(*ip));
	if (!ip)
		return PARSE_END(x, malformed(x, p, false));
	p->t.family = XLB_AF_INET6;
	addr_copy(p->t.src, ip->saddr);
	addr_copy(p->t.dst, ip->daddr);
	if ((ip->vtcfl & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000))
		return PARSE_END(x, malformed(x, p, false));
	__u32 plen = bpf_ntohs(ip->plen);
	p->l3len = plen + sizeof(*ip);
	if (ETH_HLEN_ + sizeof(*ip) + plen > x->len)
		return PARSE_END(x, malformed(x, p, false));
	__u32 l3end = ETH_HLEN_ + sizeof(*ip) + plen;

	__u8 nh = ip->nexthdr;
	__u32 off = ETH_HLEN_ + sizeof(*ip);
	if (!x->fast) {
#pragma unroll
		for (int i = 0; i < XLB_V6_EXT_MAX; i++) {
			if (nh != IPV6_HOPOPTS_ && nh != IPV6_DSTOPTS_)
				break;
			__u8 ext[2];
			if (ld(x, off, ext, 2))
				return malformed(x, p, false);
			nh = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
		}
	}
	p->t.proto = nh;
	p->l4off = off;
	if (off > l3end)
		return PARSE_END(x, malformed(x, p, false));

	switch (nh) {
	case IPV6_FRAGMENT_: {
		if (x->fast)
			return XV_SLOW;
		/* Fragment header: next header, reserved, offset|flags, id. */
		struct {
			__u8 nh;
			__u8 res;
			__be16 off;
			__be32 id;
		} fh;
		if (ld(x, off, &fh, sizeof(fh)))
			return malformed(x, p, false);
		p->t.proto = fh.nh;
		p->frag_id = fh.id;
		p->l4off = off + 8;
		if (p->l4off > l3end)
			return malformed(x, p, false);
		return fragment(x, p, l3end, (bpf_ntohs(fh.off) & 0xfff8) == 0);
	}
	case IPPROTO_TCP_:
	case IPPROTO_UDP_:
		return parse_l4(x, p, l3end);
	case IPPROTO_ICMPV6_:
		return PARSE_END(x, XV_ICMP);
	}
	/* Routing headers (the destination is not final), too many extension
	 * headers, other protocols: never translated. */
	return PARSE_END(x, not_ours());
}

/* Ethernet, then the IP version. p must be zeroed (the tuple is a map key). */
static __always_inline int parse(struct xctx *x, struct pkt *p)
{
	struct eth_hdr *eth = ld_ptr(x, 0, PARSE_BUF(x, p, h2), sizeof(*eth));
	if (!eth)
		return PARSE_END(x, not_ours());
	if (eth->proto == bpf_htons(ETH_P_IP_))
		return parse_v4(x, p);
	if (eth->proto == bpf_htons(ETH_P_IPV6_))
		return parse_v6(x, p);
	/* ARP, VLAN-tagged (not parsed), ...: not ours. */
	return PARSE_END(x, not_ours());
}

#endif /* XLB_LIB_PARSE_H */
