/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ctx.h — the only place that knows tc from xdp: the context (struct xctx and its
 * builders), packet access (ld/st) and the translation of verdicts to program return codes.
 */
#ifndef XLB_LIB_CTX_H
#define XLB_LIB_CTX_H

#include "common.h"

/*
 * The one return convention of every stage (parse, conntrack, nat, fib,
 * icmp, frag, the fast path). Program return codes (XDP_*, TC_ACT_*) exist
 * only in this file: xv_ret() translates at the entry points.
 */
enum xv {
	XV_PASS = 0,     /* to the kernel: untouched, or rewritten and routed by the kernel */
	XV_DROP = 1,
	XV_TX = 2,       /* XDP only: out of the ingress interface */
	XV_REDIRECT = 3, /* bpf_redirect / bpf_redirect_neigh done: out of another interface */
	/* Continuations: never leave the pipeline. */
	XV_LB = 4,       /* parser: TCP/UDP tuple parsed, load balance */
	XV_ICMP = 5,     /* parser: ICMP/ICMPv6 at p->l4off, maybe an error to translate */
	XV_SLOW = 6,     /* fast path: not handled, no side effect yet: run the full pipeline */
	XV_NEW = 7,      /* fast path: conntrack miss and a service: the full pipeline, new flow */
	XV_FRAG = 8,     /* parser: a fragment without L4 header (p: addresses, proto, frag_id) */
	/* forward_body's failures, judged by its caller (fib_failed, lib/fib.h),
	 * which knows the entry and the original packet: never leave the pipeline. */
	XV_FIB_MTU = 9,      /* FRAG_NEEDED: longer than the egress MTU (per segment for GSO) */
	XV_FIB_NOROUTE = 10, /* no route, blackhole, unreachable, prohibit, ...: see fib_failed */
	XV_FIB_NO_NEIGH = 11, /* XDP only: no neighbour entry (XDP cannot resolve it) */
};

/*
 * tc "pass": TC_ACT_UNSPEC, which tcx calls TCX_NEXT. xlb sits at the head
 * of the tcx chain, and TC_ACT_OK (TCX_PASS) would end the chain there: the
 * programs attached after ours (a CNI's, a firewall's) would never see the
 * packet. So everything that xlb does not handle, and also a translated
 * packet that is handed to the kernel's stack (no redirect), goes on to the
 * next program; when none is left the kernel's default is to pass it.
 * Drops (TC_ACT_SHOT) and redirects end the chain, as they must.
 */
#define TC_PASS TC_ACT_UNSPEC

struct xctx {
	void *ctx;     /* struct __sk_buff * or struct xdp_md * */
	__u32 len;     /* bytes of the whole frame */
	__u32 ifindex; /* ingress ifindex */
	bool xdp;      /* program type (a compile-time constant per instantiation) */
	bool fast;     /* the fast path: direct packet access in tc too, inline forwarding */
	__u32 gso_size; /* tc: skb->gso_size (payload per segment of a GRO/GSO skb, 0 if none); XDP: 0 */
	bool vlan;     /* tc: a VLAN tag in skb metadata (skb->vlan_present): not parsed, passed */
};

/*
 * Build the context of each program type. Heavy parts of the core are
 * instantiated once per program type as __noinline subprograms (each with
 * its own stack frame, the inlined whole would exceed 512 bytes); these
 * rebuild the xctx from the raw ctx so x->xdp stays a constant.
 * XCTX_*_FAST is the fast path's context: the same stage helpers, but tc
 * packets are read and written through skb->data/data_end (only the linear
 * part: anything beyond makes the fast path hand over to the slow path).
 * gso_size is read here only: XDP frames are never GRO-merged (GRO runs
 * after XDP), a tc skb may be, and its MTU check is then per segment.
 */
#define XCTX_XDP(c) { .ctx = (c), .len = (__u32)((c)->data_end - (c)->data), .ifindex = (c)->ingress_ifindex, .xdp = true }
#define XCTX_TC(c) { .ctx = (c), .len = (c)->len, .ifindex = (c)->ingress_ifindex ? (c)->ingress_ifindex : (c)->ifindex, .xdp = false, .gso_size = (c)->gso_size, .vlan = (c)->vlan_present }
#define XCTX_XDP_FAST(c) { .ctx = (c), .len = (__u32)((c)->data_end - (c)->data), .ifindex = (c)->ingress_ifindex, .xdp = true, .fast = true }
#define XCTX_TC_FAST(c) { .ctx = (c), .len = (c)->len, .ifindex = (c)->ingress_ifindex ? (c)->ingress_ifindex : (c)->ifindex, .xdp = false, .fast = true, .gso_size = (c)->gso_size, .vlan = (c)->vlan_present }

/* ---------- packet access ---------- */

/*
 * Two methods, chosen by the (constant) context: direct pointers (XDP, and
 * tc in the fast path: bounds-checked against data_end, offsets at most
 * XLB_MAX_HDR_OFF) or the skb helpers (tc slow path:
 * bpf_skb_load_bytes/bpf_skb_store_bytes work on non-linear skbs and unclone
 * when needed). The packet pointers are re-read from the context on every
 * access, so a helper that changes the packet in between does not matter.
 */
static __always_inline bool x_direct(const struct xctx *x)
{
	return x->xdp || x->fast;
}

/* A pointer to len packet bytes at off, or NULL (direct access only). */
static __always_inline void *pkt_ptr(struct xctx *x, __u32 off, const __u32 len)
{
	void *data, *end;
	if (x->xdp) {
		struct xdp_md *m = x->ctx;
		data = (void *)(long)m->data;
		end = (void *)(long)m->data_end;
	} else {
		struct __sk_buff *skb = x->ctx;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	if (off > XLB_MAX_HDR_OFF)
		return NULL;
	void *p = data + off;
	if (p + len > end)
		return NULL;
	return p;
}

/* The len bytes at off, to be read only: a pointer into the packet (direct
 * access, no copy) or to buf after a copy (skb helpers). NULL when they are
 * not in the packet. Parsers read headers through this. */
static __always_inline void *ld_ptr(struct xctx *x, __u32 off, void *buf, const __u32 len)
{
	if (x_direct(x))
		return pkt_ptr(x, off, len);
	if (bpf_skb_load_bytes(x->ctx, off, buf, len))
		return NULL;
	return buf;
}

/*
 * Copies between the packet (direct access) and a buffer. The packet side is
 * accessed in 4- or 2-byte words: through a void pointer, __builtin_memcpy
 * assumes no alignment and the BPF backend then moves single bytes (the
 * typed header accesses of the parser are words too; unaligned packet
 * access is fine where the verifier allows it, as on x86). may_alias:
 * these words alias whatever the buffer holds.
 */
typedef __u32 __attribute__((may_alias)) xlb_u32a;
typedef __u16 __attribute__((may_alias)) xlb_u16a;

static __always_inline void pkt_read(void *buf, const void *pkt, const __u32 len)
{
	if (len % 4 == 0) {
#pragma unroll
		for (__u32 i = 0; i < len / 4; i++) {
			__u32 v = ((const xlb_u32a *)pkt)[i];
			__builtin_memcpy((__u8 *)buf + 4 * i, &v, 4);
		}
	} else if (len % 2 == 0) {
#pragma unroll
		for (__u32 i = 0; i < len / 2; i++) {
			__u16 v = ((const xlb_u16a *)pkt)[i];
			__builtin_memcpy((__u8 *)buf + 2 * i, &v, 2);
		}
	} else {
		__builtin_memcpy(buf, pkt, len);
	}
}

static __always_inline void pkt_write(void *pkt, const void *buf, const __u32 len)
{
	if (len % 4 == 0) {
#pragma unroll
		for (__u32 i = 0; i < len / 4; i++) {
			__u32 v;
			__builtin_memcpy(&v, (const __u8 *)buf + 4 * i, 4);
			((xlb_u32a *)pkt)[i] = v;
		}
	} else if (len % 2 == 0) {
#pragma unroll
		for (__u32 i = 0; i < len / 2; i++) {
			__u16 v;
			__builtin_memcpy(&v, (const __u8 *)buf + 2 * i, 2);
			((xlb_u16a *)pkt)[i] = v;
		}
	} else {
		__builtin_memcpy(pkt, buf, len);
	}
}

static __always_inline int ld(struct xctx *x, __u32 off, void *buf, const __u32 len)
{
	if (x_direct(x)) {
		void *p = pkt_ptr(x, off, len);
		if (!p)
			return -1;
		pkt_read(buf, p, len);
		return 0;
	}
	return bpf_skb_load_bytes(x->ctx, off, buf, len);
}

static __always_inline int st(struct xctx *x, __u32 off, const void *buf, const __u32 len)
{
	if (x_direct(x)) {
		void *p = pkt_ptr(x, off, len);
		if (!p)
			return -1;
		pkt_write(p, buf, len);
		return 0;
	}
	return bpf_skb_store_bytes(x->ctx, off, buf, len, 0);
}

/* The result of bpf_redirect / bpf_redirect_neigh (a program return code)
 * as a verdict: a redirect, or a drop when the helper refused. */
static __always_inline int xv_redirect(bool xdp, long rc)
{
	if (rc == (xdp ? XDP_REDIRECT : TC_ACT_REDIRECT))
		return XV_REDIRECT;
	return XV_DROP;
}

/*
 * XDP -> tc hand-over (XDP cannot resolve a neighbour): the XDP program
 * passes the original packet with this word in the metadata area, and the
 * companion tc program (xlb_tc_xdp) processes only packets that carry it.
 */
#define XLB_META_TO_TC 0x786c6274u /* "xlbt" */

static __always_inline bool xdp_mark_for_tc(struct xctx *x)
{
	if (!x->xdp)
		return false;
	struct xdp_md *m = x->ctx;
	if (bpf_xdp_adjust_meta(m, -(int)sizeof(__u32)))
		return false;
	void *meta = (void *)(long)m->data_meta;
	void *data = (void *)(long)m->data;
	if (meta + sizeof(__u32) > data)
		return false;
	*(__u32 *)meta = XLB_META_TO_TC;
	return true;
}

static __always_inline bool tc_marked_by_xdp(struct __sk_buff *skb)
{
	void *meta = (void *)(long)skb->data_meta;
	void *data = (void *)(long)skb->data;
	if (meta + sizeof(__u32) > data)
		return false;
	return *(__u32 *)meta == XLB_META_TO_TC;
}

/* Verdict -> program return code (entry points only). */
static __always_inline int xv_ret(bool xdp, int v)
{
	switch (v) {
	case XV_DROP:
		return xdp ? XDP_DROP : TC_ACT_SHOT;
	case XV_TX:
		return xdp ? XDP_TX : TC_PASS; /* never produced in tc */
	case XV_REDIRECT:
		return xdp ? XDP_REDIRECT : TC_ACT_REDIRECT;
	default:
		return xdp ? XDP_PASS : TC_PASS;
	}
}

#endif /* XLB_LIB_CTX_H */
