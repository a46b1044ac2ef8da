/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * frag.h — IP fragments (IPv4 MF/offset, IPv6 Fragment header), tracked as
 * Cilium does.
 *
 * Only the first fragment of a datagram carries the L4 header, so only it
 * can be matched to a flow. The parser (lib/parse.h, fragment()) hands a
 * TCP/UDP first fragment to the load balancer like any packet (conntrack
 * hit in either direction, or a new flow; the L4 checksum covers the whole
 * datagram and is updated incrementally with the same deltas), and
 * apply_and_forward records the translation here, keyed by the fragment key
 * (source, destination, IP identification / IPv6 fragment id, protocol,
 * family) of the packet as it arrived. The later fragments (XV_FRAG) look
 * that key up and get the same addresses (IPv4 header checksum updated; no
 * ports, no L4 header in them) and the same forwarding.
 *
 * A later fragment whose first fragment was not seen (lost, or out of
 * order: it arrived before the first) cannot be attributed to a flow. It is
 * dropped when addressed to a VIP (`frag_dropped`: the client retransmits
 * the datagram, and forwarding it untranslated would send the VIP's bytes
 * to the host, a passing one a backend address to a client), and passed
 * untouched otherwise. Cilium has the same policy.
 */
#ifndef XLB_LIB_FRAG_H
#define XLB_LIB_FRAG_H

#include "ctx.h"
#include "counters.h"
#include "nat.h"
#include "fib.h"

/* Fragment table: 64k datagrams in flight (LRU; the kernel charges 160 bytes
 * per entry on 6.18, 10 MiB). An entry is used for XLB_FRAG_TTL_NS after its first
 * fragment: Linux's own reassembly timeout (net.ipv4.ipfrag_time), after
 * which the receiver has given the datagram up anyway. A new first fragment
 * with the same key replaces the entry (IP id reuse). */
#define XLB_FRAG_ENTRIES 65536 /* Go overrides it (dataplane.Config.FragmentEntries) */
#define XLB_FRAG_TTL_NS (30 * NSEC_PER_SEC)

struct frag_key {
	__be32 src[4];
	__be32 dst[4];
	__be32 id;    /* IPv4: the 16-bit identification as read; IPv6: fragment header id */
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

#define XLB_FRAG_F_REPLY (1u << 0) /* reply direction: counted in frag_nat only */
#define XLB_FRAG_F_PASS  (1u << 1) /* the first fragment went to the kernel untouched: so do these */

struct frag_entry {
	__u64 created_ns; /* bpf_ktime_get_coarse_ns() of the first fragment */
	__be32 src[4];    /* new addresses */
	__be32 dst[4];
	__u32 svc_id;     /* forward direction: counted on the service and the backend */
	__u32 backend_id;
	__u32 flags;      /* XLB_FRAG_F_* */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XLB_FRAG_ENTRIES);
	__uint(key_size, sizeof(struct frag_key));
	/* value_size, not __type: private to the C code (not exported to Go). */
	__uint(value_size, sizeof(struct frag_entry));
} xlb_frags SEC(".maps");

static __always_inline void frag_key_of(struct frag_key *k, const struct pkt *p)
{
	addr_copy(k->src, p->t.src);
	addr_copy(k->dst, p->t.dst);
	k->id = p->frag_id;
	k->proto = p->t.proto;
	k->family = p->t.family;
}

/* First fragment, translated with entry e to (nsrc, ndst), or passed
 * (e NULL; recorded only when addressed to a VIP, the only destination whose
 * untracked fragments are dropped): remember it for the later fragments.
 * A subprogram: its key and value stay off the caller's stack frame. */
static __noinline void frag_record(const struct pkt *p, const struct ct_entry *e, const __be32 *nsrc,
				   const __be32 *ndst)
{
	if (!e && !is_vip(p->t.family, p->t.dst))
		return;
	struct frag_key k = {};
	frag_key_of(&k, p);
	struct frag_entry v = {};
	v.created_ns = bpf_ktime_get_coarse_ns();
	if (e && nsrc && ndst) {
		addr_copy(v.src, nsrc);
		addr_copy(v.dst, ndst);
		v.svc_id = e->svc_id;
		v.backend_id = e->backend_id;
		if (e->flags & XLB_CT_F_REPLY)
			v.flags = XLB_FRAG_F_REPLY;
	} else {
		v.flags = XLB_FRAG_F_PASS;
	}
	bpf_map_update_elem(&xlb_frags, &k, &v, BPF_ANY);
}

/* A later fragment (or a first fragment of another protocol, which never
 * has an entry): follow its first fragment, or judge it. */
static __always_inline int frag_follow(struct xctx *x, struct pkt *p)
{
	struct frag_key k = {};
	frag_key_of(&k, p);
	__u64 cnow = bpf_ktime_get_coarse_ns();
	struct frag_entry *f = bpf_map_lookup_elem(&xlb_frags, &k);
	if (f && cnow - f->created_ns <= XLB_FRAG_TTL_NS) {
		if (f->flags & XLB_FRAG_F_PASS) {
			GINC(passed);
			return XV_PASS;
		}
		__be32 nsrc[4], ndst[4];
		__u64 adiff;
		addr_copy(nsrc, f->src);
		addr_copy(ndst, f->dst);
		if (!(f->flags & XLB_FRAG_F_REPLY))
			/* Frame bytes (the Ethernet trailer of a short last fragment
			 * aside): x->len is not used here, the subprogram's frame is
			 * tighter without it. */
			count_fwd_ids(f->svc_id, f->backend_id, ETH_HLEN_ + p->l3len, false);
		GINC(frag_nat);
		if (rewrite_l3(x, p, nsrc, ndst, &adiff)) {
			GINC(malformed);
			return XV_DROP;
		}
		int r = forward(x, p->t.family, p->t.proto, nsrc, ndst, p->l3len, cnow);
		if (r < XV_FIB_MTU)
			return r;
		/* Not forwardable (longer than the egress MTU, no route, or on
		 * XDP no neighbour entry: a later fragment carries no ports, so
		 * the tc companion could not find its flow): dropped, counted,
		 * never handed to the kernel half-translated. */
		if (r == XV_FIB_MTU)
			GINC(fib_frag_needed);
		else
			GINC(fib_dropped);
		return XV_DROP;
	}
	if (!is_vip(p->t.family, p->t.dst)) {
		GINC(passed);
		return XV_PASS;
	}
	GINC(frag_dropped);
	return XV_DROP;
}

static __noinline int frag_xdp(struct xdp_md *ctx, struct pkt *p)
{
	struct xctx x = XCTX_XDP(ctx);
	return frag_follow(&x, p);
}

static __noinline int frag_tc(struct __sk_buff *ctx, struct pkt *p)
{
	struct xctx x = XCTX_TC(ctx);
	return frag_follow(&x, p);
}

#endif /* XLB_LIB_FRAG_H */
