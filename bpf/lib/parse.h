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

/* The 20-byte IPv4 header as 5 words, unrolled (the fast path's cost: five
 * loads from the header already in cache, a few additions). */
static __always_inline __u64 ip4_hdr_sum(const struct ip4_hdr *ip)
{
	const xlb_u32a *w = (const void *)ip;
	return (__u64)w[0] + w[1] + w[2] + w[3] + w[4];
}

/* A header sum (ip4_hdr_sum plus option words: < 2^36) is right when its
 * ones' complement fold is 0xffff. Three 16-bit folds reach 16 bits from 36
 * (2^16 = 1 mod 0xffff, so each keeps the value mod 0xffff); cheaper than
 * csum_fold64's general five. */
static __always_inline bool ip4_sum_ok(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s == 0xffff;
}

/*
 * IPv4 options (ihl > 5, slow path only): adds their 32-bit words to *sum
 * (the header checksum covers them) and checks the TLV chain (RFC 791): EOL
 * (0) ends the list, NOP (1) is one byte, every other option has a length
 * byte >= 2 and ends within IHL. Returns 0 when valid, -1 when malformed
 * (or not readable).
 */
static __always_inline int ip4_opts_check(struct xctx *x, struct pkt *p, __u32 ihl, __u64 *sum)
{
	__u8 *o = container_of_pkt(p)->ip4_opts;
	__u32 optlen = (ihl - 5) * 4;
	__u64 s = *sum;
#pragma unroll
	for (__u32 i = 0; i < XLB_IP4_OPT_MAX / 4; i++) {
		if (4 * i >= optlen)
			break;
		__u32 w;
		if (ld(x, ETH_HLEN_ + sizeof(struct ip4_hdr) + 4 * i, &w, 4))
			return -1;
		__builtin_memcpy(o + 4 * i, &w, 4);
		s += w;
	}
	*sum = s;
	/*
	 * Every option takes at least one byte: XLB_IP4_OPT_MAX steps suffice.
	 * The position goes through memory (volatile, in the scratch map) on
	 * every step: the verifier then sees it as any value below the mask
	 * instead of following each possible chain of option lengths (which
	 * exceeds its 1M-instruction budget).
	 */
	volatile __u32 *pos = &container_of_pkt(p)->ip4_opt_pos;
	*pos = 0;
#pragma clang loop unroll(disable)
	for (__u32 n = 0; n < XLB_IP4_OPT_MAX; n++) {
		__u32 i = *pos & (XLB_IP4_OPT_BUF - 1);
		if (i >= optlen)
			break;
		__u8 t = o[i];
		if (t == 0) /* EOL: the rest is padding */
			break;
		if (t == 1) { /* NOP */
			*pos = i + 1;
			continue;
		}
		if (i + 1 >= optlen)
			return -1; /* no room for the length byte */
		__u32 l = o[(i + 1) & (XLB_IP4_OPT_BUF - 1)];
		if (l < 2 || i + l > optlen)
			return -1;
		*pos = i + l;
	}
	return 0;
}

/* Malformed IPv4 header (length, checksum, options): attributed to a service
 * when the ports can be read where IHL places them (TCP/UDP, not a later
 * fragment). */
static __always_inline int malformed_v4(struct xctx *x, struct pkt *p, __u16 frag_off)
{
	if ((p->t.proto == IPPROTO_TCP_ || p->t.proto == IPPROTO_UDP_) && !(frag_off & bpf_htons(IP_OFFMASK_)))
		return malformed_l4(x, p);
	return malformed(x, p, false);
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
	/* Header checksum (and options): a packet the kernel's ip_rcv would drop
	 * is never translated and redirected past it. In the fast path only a
	 * 20-byte header gets here; anything wrong is the slow path's to judge. */
	__u64 hsum = ip4_hdr_sum(ip);
	if (!x->fast && ihl > 5 && ip4_opts_check(x, p, ihl, &hsum))
		return malformed_v4(x, p, ip->frag_off);
	if (!ip4_sum_ok(hsum))
		return PARSE_END(x, malformed_v4(x, p, ip->frag_off));
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
	__u32 l3end = ETH_HLEN_ + sizeof(*ip) + plen;
	/* Payload length beyond the frame: malformed, judged once the extension
	 * headers are skipped, attributed to a service when the ports are
	 * there (as for IPv4). */
	bool cut = l3end > x->len;
	if (x->fast && cut)
		return XV_SLOW;

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
	if (cut) {
		if (nh == IPPROTO_TCP_ || nh == IPPROTO_UDP_)
			return malformed_l4(x, p);
		return malformed(x, p, false);
	}
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
	/* A VLAN tag the receive path moved into skb metadata (tc; the
	 * Ethernet type then shows the inner protocol): not ours, as an inline
	 * tag is. */
	if (x->vlan)
		return PARSE_END(x, not_ours());
	struct eth_hdr *eth = ld_ptr(x, 0, PARSE_BUF(x, p, h2), sizeof(*eth));
	if (!eth)
		return PARSE_END(x, not_ours());
	if (eth->proto == bpf_htons(ETH_P_IP_))
		return parse_v4(x, p);
	if (eth->proto == bpf_htons(ETH_P_IPV6_))
		return parse_v6(x, p);
	/* ARP, VLAN-tagged inline (not parsed), ...: not ours. */
	return PARSE_END(x, not_ours());
}

#endif /* XLB_LIB_PARSE_H */
