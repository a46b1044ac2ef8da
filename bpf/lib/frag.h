/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * frag.h — IP fragments (IPv4 MF/offset, IPv6 Fragment header): today never translated.
 */
#ifndef XLB_LIB_FRAG_H
#define XLB_LIB_FRAG_H

#include "ctx.h"
#include "counters.h"

/* Fragment: never translated; dropped when addressed to a VIP. When it is a
 * first fragment whose ports are readable and match a service, the drop is
 * also counted on that service. */
static __always_inline int fragment(struct xctx *x, struct pkt *p, __u32 l4off, bool first)
{
	GINC(fragments);
	if (!is_vip(p->t.family, p->t.dst)) {
		GINC(passed);
		return XV_PASS;
	}
	__be16 ports[2];
	if (first && (p->t.proto == IPPROTO_TCP_ || p->t.proto == IPPROTO_UDP_) && !ld(x, l4off, ports, 4)) {
		p->t.sport = ports[0];
		p->t.dport = ports[1];
		struct svc_info *s = svc_lookup(&p->t);
		if (s)
			svc_drop(s->id, XLB_DROP_FRAGMENT);
	}
	return XV_DROP;
}

#endif /* XLB_LIB_FRAG_H */
