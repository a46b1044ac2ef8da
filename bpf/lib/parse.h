/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h — Ethernet, IPv4, IPv6 and TCP/UDP parsing, and the handling of malformed packets.
 */
#ifndef XLB_LIB_PARSE_H
#define XLB_LIB_PARSE_H

#include "ctx.h"
#include "counters.h"
#include "frag.h"


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

/* TCP/UDP header at p->l4off, within l3end. */
static __always_inline int l4(struct xctx *x, struct pkt *p, __u32 l3end)
{
	if (p->t.proto == IPPROTO_TCP_) {
		struct tcp_hdr *th = &container_of_pkt(p)->h4.tcp;
		if (ld(x, p->l4off, th, sizeof(*th))) {
			__be16 ports[2];
			if (!ld(x, p->l4off, ports, 4)) {
				p->t.sport = ports[0];
				p->t.dport = ports[1];
				return malformed(x, p, true);
			}
			return malformed(x, p, false);
		}
		p->t.sport = th->sport;
		p->t.dport = th->dport;
		if ((th->doff >> 4) < 5 || p->l4off + (th->doff >> 4) * 4 > l3end)
			return malformed(x, p, true);
		p->tcp_flags = th->flags;
		p->csum_off = p->l4off + 16;
	} else {
		struct udp_hdr *uh = &container_of_pkt(p)->h4.udp;
		if (ld(x, p->l4off, uh, sizeof(*uh))) {
			__be16 ports[2];
			if (!ld(x, p->l4off, ports, 4)) {
				p->t.sport = ports[0];
				p->t.dport = ports[1];
				return malformed(x, p, true);
			}
			return malformed(x, p, false);
		}
		p->t.sport = uh->sport;
		p->t.dport = uh->dport;
		__u32 ulen = bpf_ntohs(uh->len);
		if (ulen < 8 || p->l4off + ulen > l3end)
			return malformed(x, p, true);
		p->csum_off = p->l4off + 6;
	}
	return XV_LB;
}

static __always_inline int process_v4(struct xctx *x, struct pkt *p)
{
	struct ip4_hdr *ip = &container_of_pkt(p)->h3.ip4;
	if (ld(x, ETH_HLEN_, ip, sizeof(*ip)))
		return malformed(x, p, false);
	p->t.family = XLB_AF_INET;
	p->t.proto = ip->proto;
	p->t.src[0] = ip->saddr;
	p->t.dst[0] = ip->daddr;

	__u32 ihl = ip->vihl & 0xf;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if ((ip->vihl >> 4) != 4 || ihl < 5)
		return malformed(x, p, false);
	p->l4off = ETH_HLEN_ + ihl * 4;
	p->l3len = tot;
	if (tot < ihl * 4 || ETH_HLEN_ + tot > x->len) {
		/* Inconsistent length: attribute to a service if the ports are there. */
		__be16 ports[2];
		if ((ip->proto == IPPROTO_TCP_ || ip->proto == IPPROTO_UDP_) && !ld(x, p->l4off, ports, 4)) {
			p->t.sport = ports[0];
			p->t.dport = ports[1];
			return malformed(x, p, true);
		}
		return malformed(x, p, false);
	}
	__u16 frag = bpf_ntohs(ip->frag_off);
	if (frag & (IP_MF_ | IP_OFFMASK_))
		return fragment(x, p, p->l4off, (frag & IP_OFFMASK_) == 0);

	switch (ip->proto) {
	case IPPROTO_TCP_:
	case IPPROTO_UDP_:
		return l4(x, p, ETH_HLEN_ + tot);
	case IPPROTO_ICMP_:
		return XV_ICMP;
	}
	GINC(passed);
	return XV_PASS;
}

static __always_inline int process_v6(struct xctx *x, struct pkt *p)
{
	struct ip6_hdr *ip = &container_of_pkt(p)->h3.ip6;
	if (ld(x, ETH_HLEN_, ip, sizeof(*ip)))
		return malformed(x, p, false);
	p->t.family = XLB_AF_INET6;
	addr_copy(p->t.src, ip->saddr);
	addr_copy(p->t.dst, ip->daddr);
	if ((bpf_ntohl(ip->vtcfl) >> 28) != 6)
		return malformed(x, p, false);
	__u32 plen = bpf_ntohs(ip->plen);
	p->l3len = plen + sizeof(*ip);
	if (ETH_HLEN_ + sizeof(*ip) + plen > x->len)
		return malformed(x, p, false);
	__u32 l3end = ETH_HLEN_ + sizeof(*ip) + plen;

	__u8 nh = ip->nexthdr;
	__u32 off = ETH_HLEN_ + sizeof(*ip);
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
	p->t.proto = nh;
	p->l4off = off;
	if (off > l3end)
		return malformed(x, p, false);

	switch (nh) {
	case IPV6_FRAGMENT_: {
		/* Fragment header: next header, reserved, offset|flags. */
		struct {
			__u8 nh;
			__u8 res;
			__be16 off;
		} fh;
		if (ld(x, off, &fh, sizeof(fh)))
			return malformed(x, p, false);
		p->t.proto = fh.nh;
		return fragment(x, p, off + 8, (bpf_ntohs(fh.off) & 0xfff8) == 0);
	}
	case IPPROTO_TCP_:
	case IPPROTO_UDP_:
		return l4(x, p, l3end);
	case IPPROTO_ICMPV6_:
		return XV_ICMP;
	}
	/* Routing headers (the destination is not final), too many extension
	 * headers, other protocols: never translated. */
	GINC(passed);
	return XV_PASS;
}

#endif /* XLB_LIB_PARSE_H */
