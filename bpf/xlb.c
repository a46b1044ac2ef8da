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
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "xlb_maps.h"
#include "xlb_pkt.h"

#define NSEC_PER_SEC 1000000000ULL

/* Bounded work per packet. */
#define XLB_PROBE_SLOTS 8        /* forward probes when the chosen backend is unusable */
#define XLB_SNAT_TRIES 16        /* SNAT port collision retries */
#define XLB_V6_EXT_MAX 4         /* IPv6 extension headers skipped */
#define XLB_LC_MAX_SCAN 65536    /* least-connection scan bound (bpf_loop) */
#define XLB_MAX_HDR_OFF 1024     /* direct-access offsets beyond this are not parsed */

#define XLB_DEFAULT_TCP_TIMEOUT 240
#define XLB_DEFAULT_UDP_TIMEOUT 60
#define XLB_DEFAULT_CLOSING_TIMEOUT 10
#define XLB_DEFAULT_AFFINITY_TIMEOUT 10800
#define XLB_DEFAULT_SNAT_MIN 32768
#define XLB_DEFAULT_SNAT_MAX 60999
/* last_seen_ns is written about this often per busy flow (limits cache-line
 * writes): once it is XLB_TOUCH_NS - XLB_COARSE_SLACK_NS old (see ct_touch). */
#define XLB_TOUCH_NS NSEC_PER_SEC
/* Bound on how far bpf_ktime_get_coarse_ns() lags bpf_ktime_get_ns() (one
 * tick is 1-10 ms), with margin. */
#define XLB_COARSE_SLACK_NS (50 * 1000 * 1000ULL)

/* Verdicts of the core, translated by each entry point. */
enum {
	XV_PASS = 0, /* untouched (or already rewritten but let the kernel route) */
	XV_DROP = 1,
	XV_FWD = 2, /* rewritten: forward (fib lookup + redirect) */
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

/* Internal results of the parser (program return codes are >= -1:
 * TC_ACT_UNSPEC is -1). */
#define XR_LB (-2)   /* TCP/UDP tuple parsed: load balance */
#define XR_ICMP (-3) /* ICMP/ICMPv6 at p->l4off: maybe an error to translate */

struct xctx {
	void *ctx;    /* struct __sk_buff * or struct xdp_md * */
	__u32 len;    /* bytes of the whole frame */
	__u32 ifindex; /* ingress ifindex */
	bool xdp;
};

/* Parsed packet: the tuple as received plus the offsets needed to rewrite it. */
struct pkt {
	struct ct_key t;
	__u32 l4off;
	__u32 csum_off; /* L4 checksum field */
	__u32 ifindex;  /* ingress interface */
	__u16 l3len;    /* IPv4 tot_len / IPv6 40 + payload length (fib MTU check) */
	__u8 tcp_flags;
	__u8 pad;
};

/* Build the context of each program type. Heavy parts of the core are
 * instantiated once per program type as __noinline subprograms (each with
 * its own stack frame, the inlined whole would exceed 512 bytes); these
 * rebuild the xctx from the raw ctx so x->xdp stays a constant. */
#define XCTX_XDP(c) { .ctx = (c), .len = (__u32)((c)->data_end - (c)->data), .ifindex = (c)->ingress_ifindex, .xdp = true }
#define XCTX_TC(c) { .ctx = (c), .len = (c)->len, .ifindex = (c)->ingress_ifindex ? (c)->ingress_ifindex : (c)->ifindex, .xdp = false }

struct fwd_args {
	__be32 src[4];
	__be32 dst[4];
	__u16 l3len;
	__u8 family;
	__u8 l4proto;
};

/* Per-CPU scratch space for the larger temporaries: the BPF stack is 512
 * bytes for the whole call chain. A program runs to completion on its CPU
 * (no nesting of xlb programs in one softirq), so one slot per CPU is enough. */
struct scratch {
	struct pkt p;
	struct ct_entry fe; /* new forward entry */
	struct ct_entry re; /* new reply entry */
	struct ct_key rk;   /* reply key */
	struct ct_key ik;   /* ICMP: reversed quoted tuple */
	struct ct_key pk;   /* peer key in ct_touch */
	struct fwd_args fa;
	struct bpf_fib_lookup fib;
	/* ICMP translation: new K src/dst, new outer src/dst, quoted header. */
	__be32 nks[4], nkd[4], osrc[4], odst[4];
	union {
		struct ip6_hdr in6;
		struct ip4_hdr in4;
	};
	/* Parser: outer headers. */
	union {
		struct ip6_hdr ip6;
		struct ip4_hdr ip4;
	} h3;
	union {
		struct tcp_hdr tcp;
		struct udp_hdr udp;
	} h4;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	/* value_size, not __type: keeps the type out of BTF so bpf2go does not
	 * try to export it to Go. */
	__uint(value_size, sizeof(struct scratch));
} xlb_scratch SEC(".maps");

/* struct pkt is the first member of struct scratch. */
#define container_of_pkt(pp) ((struct scratch *)(void *)(pp))

static __always_inline struct scratch *scratch(void)
{
	__u32 z = 0;
	return bpf_map_lookup_elem(&xlb_scratch, &z);
}

/* ---------- packet access ---------- */

static __always_inline int ld(struct xctx *x, __u32 off, void *buf, const __u32 len)
{
	if (x->xdp) {
		struct xdp_md *m = x->ctx;
		void *data = (void *)(long)m->data;
		void *end = (void *)(long)m->data_end;
		if (off > XLB_MAX_HDR_OFF)
			return -1;
		void *p = data + off;
		if (p + len > end)
			return -1;
		__builtin_memcpy(buf, p, len);
		return 0;
	}
	return bpf_skb_load_bytes(x->ctx, off, buf, len);
}

static __always_inline int st(struct xctx *x, __u32 off, const void *buf, const __u32 len)
{
	if (x->xdp) {
		struct xdp_md *m = x->ctx;
		void *data = (void *)(long)m->data;
		void *end = (void *)(long)m->data_end;
		if (off > XLB_MAX_HDR_OFF)
			return -1;
		void *p = data + off;
		if (p + len > end)
			return -1;
		__builtin_memcpy(p, buf, len);
		return 0;
	}
	return bpf_skb_store_bytes(x->ctx, off, buf, len, 0);
}

/* ---------- counters ---------- */

static __always_inline struct global_counters *gstats(void)
{
	__u32 z = 0;
	return bpf_map_lookup_elem(&global_stats, &z);
}

#define GINC(field)                                \
	do {                                       \
		struct global_counters *g_ = gstats(); \
		if (g_)                            \
			g_->field++;               \
	} while (0)

static __always_inline void svc_drop(__u32 svc_id, __u32 reason)
{
	struct svc_counters *c = bpf_map_lookup_elem(&svc_stats, &svc_id);
	if (c && reason < XLB_DROP_MAX)
		c->drops[reason]++;
}

static __always_inline struct xlb_cfg *config(void)
{
	__u32 z = 0;
	return bpf_map_lookup_elem(&xlb_config, &z);
}

/* ---------- small helpers ---------- */

static __always_inline void addr_copy(__be32 *d, const __be32 *s)
{
	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

static __always_inline bool addr_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline bool is_vip(__u8 family, const __be32 *addr)
{
	struct vip_key k = {};
	k.family = family;
	addr_copy(k.addr, addr);
	return bpf_map_lookup_elem(&vips, &k) != NULL;
}

static __always_inline struct svc_info *svc_lookup(const struct ct_key *t)
{
	struct svc_key k = {};
	addr_copy(k.vip, t->dst);
	k.port = t->dport;
	k.proto = t->proto;
	k.family = t->family;
	return bpf_map_lookup_elem(&services, &k);
}

static __always_inline bool ct_alive(const struct ct_entry *e, __u64 now)
{
	return now - e->last_seen_ns <= (__u64)e->lifetime_s * NSEC_PER_SEC;
}

#define rol32(w, s) (((w) << (s)) | ((w) >> (32 - (s))))
#define jhash_mix(a, b, c)                     \
	{                                      \
		a -= c; a ^= rol32(c, 4);  c += b; \
		b -= a; b ^= rol32(a, 6);  a += c; \
		c -= b; c ^= rol32(b, 8);  b += a; \
		a -= c; a ^= rol32(c, 16); c += b; \
		b -= a; b ^= rol32(a, 19); a += c; \
		c -= b; c ^= rol32(b, 4);  b += a; \
	}
#define jhash_final(a, b, c)                    \
	{                                       \
		c ^= b; c -= rol32(b, 14);      \
		a ^= c; a -= rol32(c, 11);      \
		b ^= a; b -= rol32(a, 25);      \
		c ^= b; c -= rol32(b, 16);      \
		a ^= c; a -= rol32(c, 4);       \
		b ^= a; b -= rol32(a, 14);      \
		c ^= b; c -= rol32(b, 24);      \
	}

/* jhash2 (Bob Jenkins' lookup3, as in the kernel) over the 10 tuple words:
 * src[4], dst[4], sport|dport, proto|family. */
static __always_inline __u32 tuple_hash(const struct ct_key *t, __u32 seed)
{
	__u32 a, b, c;
	a = b = c = 0xdeadbeef + (10 << 2) + seed;
	a += t->src[0]; b += t->src[1]; c += t->src[2];
	jhash_mix(a, b, c);
	a += t->src[3]; b += t->dst[0]; c += t->dst[1];
	jhash_mix(a, b, c);
	a += t->dst[2]; b += t->dst[3]; c += ((__u32)t->sport << 16) | t->dport;
	jhash_mix(a, b, c);
	a += ((__u32)t->proto << 8) | t->family;
	jhash_final(a, b, c);
	return c;
}

/* ---------- rewriting ---------- */

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

	if (v6) {
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
	__u8 dmac[6];
	__u8 smac[6];
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
	__builtin_memcpy(fs->dmac, fib->dmac, 6);
	__builtin_memcpy(fs->smac, fib->smac, 6);
}


/* ---------- forwarding ---------- */

/* After a rewrite: route the packet ourselves (fib lookup + redirect) or let
 * the kernel do it. Returns the program's return code. TTL/hop limit is not
 * decremented (the LB is a translator, like IPVS/Katran). */
static __always_inline int forward_body(struct xctx *x, const struct fwd_args *a)
{
	__u8 family = a->family;
	const __be32 *src = a->src, *dst = a->dst;
	int pass = x->xdp ? XDP_PASS : TC_PASS;
	struct xlb_cfg *cfg = config();
	if (cfg && (cfg->flags & XLB_CFG_F_NO_FIB))
		return pass;

	struct {
		__u8 dst[6];
		__u8 src[6];
	} macs;
	__u32 oif;
	/* The FIB cache, as in the fast path: new flows (e.g. all fullnat
	 * flows toward one backend) and refreshes mostly hit it. */
	__u64 cnow = bpf_ktime_get_coarse_ns();
	struct fib_slot *fs = fib_slot_get(x->ifindex, src, dst);
	if (fs && fib_slot_hit(fs, cnow, x->ifindex, family, a->l4proto, a->l3len, src, dst)) {
		oif = fs->oif;
		__builtin_memcpy(macs.dst, fs->dmac, 6);
		__builtin_memcpy(macs.src, fs->smac, 6);
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
		__builtin_memcpy(macs.dst, fib.dmac, 6);
		__builtin_memcpy(macs.src, fib.smac, 6);
		goto redirect;
	}
	if (!x->xdp && rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		/* Let the kernel resolve the neighbour and fill L2. */
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	/* No route, forwarding disabled, MTU exceeded (the kernel sends the
	 * ICMP error), ...: the kernel routes the already-rewritten packet. */
	return pass;
#undef fib
redirect:
	if (st(x, 0, &macs, 12))
		return pass;
	if (x->xdp && oif == x->ifindex)
		return XDP_TX;
	return bpf_redirect(oif, 0);
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

static __always_inline int forward(struct xctx *x, __u8 family, __u8 l4proto, const __be32 *src, const __be32 *dst,
				   __u16 l3len)
{
	struct scratch *sc = scratch();
	if (!sc)
		return x->xdp ? XDP_PASS : TC_PASS;
	struct fwd_args *a = &sc->fa;
	addr_copy(a->src, src);
	addr_copy(a->dst, dst);
	a->l3len = l3len;
	a->family = family;
	a->l4proto = l4proto;
	if (x->xdp)
		return forward_xdp(x->ctx, a);
	return forward_tc(x->ctx, a);
}

static __always_inline int verdict(struct xctx *x, int v)
{
	if (v == XV_DROP)
		return x->xdp ? XDP_DROP : TC_ACT_SHOT;
	return x->xdp ? XDP_PASS : TC_PASS;
}

/* ---------- conntrack ---------- */

/* The key of the other entry of the flow. */
static __always_inline void ct_peer_key(const struct ct_key *k, const struct ct_entry *e, struct ct_key *pk)
{
	__builtin_memset(pk, 0, sizeof(*pk));
	pk->proto = k->proto;
	pk->family = k->family;
	if (e->flags & XLB_CT_F_REPLY) {
		/* reply key (backend -> client|snat) -> forward key (client -> VIP) */
		if (e->flags & XLB_CT_F_REWRITE_DST) {
			addr_copy(pk->src, e->nat_dst);
			pk->sport = e->nat_dport;
		} else {
			addr_copy(pk->src, k->dst);
			pk->sport = k->dport;
		}
		addr_copy(pk->dst, e->nat_src);
		pk->dport = e->nat_sport;
	} else {
		/* forward key -> reply key (backend -> client|snat) */
		addr_copy(pk->src, e->nat_dst);
		pk->sport = e->nat_dport;
		if (e->flags & XLB_CT_F_REWRITE_SRC) {
			addr_copy(pk->dst, e->nat_src);
			pk->dport = e->nat_sport;
		} else {
			addr_copy(pk->dst, k->src);
			pk->dport = k->sport;
		}
	}
}

static __always_inline __u32 closing_timeout(void)
{
	struct xlb_cfg *cfg = config();
	if (cfg && cfg->tcp_closing_timeout_s)
		return cfg->tcp_closing_timeout_s;
	return XLB_DEFAULT_CLOSING_TIMEOUT;
}

/*
 * ct_touch refreshes both entries of a flow (at most every XLB_TOUCH_NS) and
 * handles the TCP FIN/RST transition: both entries get XLB_CT_F_CLOSING and
 * the short lifetime; backend_active is decremented exactly once, guarded by
 * an atomic fetch-or on the forward entry's flags.
 */
static __always_inline void ct_touch(const struct ct_key *k, struct ct_entry *e, __u64 now, __u8 tcp_flags)
{
	bool closing = k->proto == IPPROTO_TCP_ && (tcp_flags & (TCP_FIN_ | TCP_RST_)) &&
		       !(e->flags & XLB_CT_F_CLOSING);
	/* Refresh as soon as the fast path stops taking the entry (coarse
	 * age + slack >= XLB_TOUCH_NS, and the coarse age is at most the
	 * precise one), not at XLB_TOUCH_NS: with the later threshold every
	 * packet of every busy flow took the slow path for the last
	 * XLB_COARSE_SLACK_NS of each second (~5 % of the packets). */
	if (!closing && now - e->last_seen_ns < XLB_TOUCH_NS - XLB_COARSE_SLACK_NS)
		return;

	__u32 z = 0;
	struct scratch *sc = bpf_map_lookup_elem(&xlb_scratch, &z);
	if (!sc)
		return;
	struct ct_key *pk = &sc->pk;
	ct_peer_key(k, e, pk);
	struct ct_entry *peer = bpf_map_lookup_elem(&conntrack, pk);

	e->last_seen_ns = now;
	if (peer)
		peer->last_seen_ns = now;
	if (!closing)
		return;

	__u32 lt = closing_timeout();
	struct ct_entry *fwd = (e->flags & XLB_CT_F_REPLY) ? peer : e;
	if (fwd) {
		__u32 old = __sync_fetch_and_or(&fwd->flags, XLB_CT_F_CLOSING);
		if (!(old & XLB_CT_F_CLOSING)) {
			__u32 be = fwd->backend_id;
			__s64 *act = bpf_map_lookup_elem(&backend_active, &be);
			if (act)
				__sync_fetch_and_add(act, -1);
		}
		fwd->lifetime_s = lt;
	}
	struct ct_entry *rep = (e->flags & XLB_CT_F_REPLY) ? e : peer;
	if (rep) {
		__sync_fetch_and_or(&rep->flags, XLB_CT_F_CLOSING);
		rep->lifetime_s = lt;
	}
}

/* ---------- backend selection ---------- */

static __always_inline struct backend *be_usable(__u32 id, __u32 svc_id)
{
	struct backend *b = bpf_map_lookup_elem(&backends, &id);
	if (!b || b->state != XLB_BE_ACTIVE || b->svc_id != svc_id)
		return NULL;
	return b;
}

/* Slot idx of the table, probing forward XLB_PROBE_SLOTS slots. */
static __always_inline int pick_slot(void *tbl, const struct svc_info *s, __u32 idx, __u32 *out)
{
	__u32 n = s->sel_len;
#pragma unroll
	for (int i = 0; i < XLB_PROBE_SLOTS; i++) {
		__u32 slot = (idx + i) % n;
		__u32 *id = bpf_map_lookup_elem(tbl, &slot);
		if (!id)
			return -1;
		if (be_usable(*id, s->id)) {
			*out = *id;
			return 0;
		}
	}
	return -1;
}

struct lc_state {
	void *tbl;
	__u32 svc_id;
	__u32 n;
	__u32 start;
	__u32 best;
	__s64 best_active;
	__u64 best_weight;
	bool found;
};

/* One step of the least-connection scan: keep the backend minimising
 * active/weight, compared by cross-multiplication (no division). */
static long lc_step(__u64 i, void *data)
{
	struct lc_state *st = data;
	__u32 n = st->n;
	if (n == 0)
		return 1;
	__u32 slot = (st->start + (__u32)i) % n;
	__u32 *id = bpf_map_lookup_elem(st->tbl, &slot);
	if (!id)
		return 1;
	__u32 bid = *id;
	struct backend *b = be_usable(bid, st->svc_id);
	if (!b || b->weight == 0)
		return 0;
	__s64 act = 0;
	__s64 *ap = bpf_map_lookup_elem(&backend_active, &bid);
	if (ap)
		act = *ap;
	if (act < 0)
		act = 0;
	if (!st->found || act * (__s64)st->best_weight < st->best_active * (__s64)b->weight) {
		st->found = true;
		st->best = bid;
		st->best_active = act;
		st->best_weight = b->weight;
	}
	return 0;
}

static __always_inline int pick_lc(void *tbl, const struct svc_info *s, __u32 *out)
{
	struct lc_state st = {};
	st.tbl = tbl;
	st.svc_id = s->id;
	st.n = s->sel_len;
	/* Random start: ties are broken randomly instead of always favouring
	 * the first backend of the table. */
	st.start = bpf_get_prandom_u32() % s->sel_len;
	__u32 loops = s->sel_len;
	if (loops > XLB_LC_MAX_SCAN)
		loops = XLB_LC_MAX_SCAN;
	bpf_loop(loops, lc_step, &st, 0);
	if (!st.found)
		return -1;
	*out = st.best;
	return 0;
}

static __always_inline int pick_persist(void *tbl, const struct svc_info *s, const struct ct_key *t, __u64 now,
					__u32 *out)
{
	struct affinity_key ak = {};
	ak.svc_id = s->id;
	ak.family = t->family;
	addr_copy(ak.client, t->src);
	__u64 tmo = s->affinity_timeout_s ? s->affinity_timeout_s : XLB_DEFAULT_AFFINITY_TIMEOUT;

	struct affinity_entry *ae = bpf_map_lookup_elem(&affinity, &ak);
	if (ae && now - ae->last_used_ns <= tmo * NSEC_PER_SEC) {
		__u32 bid = ae->backend_id;
		struct backend *b = be_usable(bid, s->id);
		if (b && b->gen == ae->backend_gen) {
			ae->last_used_ns = now;
			*out = bid;
			return 0;
		}
	}
	/* Weighted random: the table holds each backend weight-many times. */
	if (pick_slot(tbl, s, bpf_get_prandom_u32() % s->sel_len, out))
		return -1;
	struct backend *b = bpf_map_lookup_elem(&backends, out);
	if (!b)
		return -1;
	struct affinity_entry ne = {};
	ne.last_used_ns = now;
	ne.backend_id = *out;
	ne.backend_gen = b->gen;
	bpf_map_update_elem(&affinity, &ak, &ne, BPF_ANY);
	return 0;
}

static __noinline int select_backend(const struct svc_info *s, const struct ct_key *t, __u64 now, __u32 *out)
{
	__u32 sid = s->id;
	void *tbl = bpf_map_lookup_elem(&sel_tables, &sid);
	if (!tbl || s->sel_len == 0)
		return -1;

	switch (s->algo) {
	case XLB_ALGO_MAGLEV: {
		struct xlb_cfg *cfg = config();
		__u32 seed = cfg ? cfg->maglev_seed : 0;
		return pick_slot(tbl, s, tuple_hash(t, seed) % s->sel_len, out);
	}
	case XLB_ALGO_RR: {
		__u32 *cur = bpf_map_lookup_elem(&rr_cursor, &sid);
		__u32 idx = 0;
		if (cur) {
			idx = *cur % s->sel_len;
			*cur = idx + 1;
		}
		return pick_slot(tbl, s, idx, out);
	}
	case XLB_ALGO_PERSIST:
		return pick_persist(tbl, s, t, now, out);
	case XLB_ALGO_LC:
		return pick_lc(tbl, s, out);
	case XLB_ALGO_RANDOM:
	default:
		return pick_slot(tbl, s, bpf_get_prandom_u32() % s->sel_len, out);
	}
}

static __always_inline bool allowed(const struct svc_info *s, const struct ct_key *t)
{
	struct allow_key k = {};
	k.svc_id = bpf_htonl(s->id);
	if (t->family == XLB_AF_INET6) {
		k.prefixlen = 32 + 128;
		addr_copy(k.addr, t->src);
	} else {
		k.prefixlen = 32 + 128;
		k.addr[2] = bpf_htonl(0xffff);
		k.addr[3] = t->src[0];
	}
	return bpf_map_lookup_elem(&allow_list, &k) != NULL;
}

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

/* ---------- the load balancer ---------- */

static __always_inline void count_fwd(const struct ct_entry *e, __u32 len, bool new_flow)
{
	__u32 sid = e->svc_id, bid = e->backend_id;
	struct svc_counters *sc = bpf_map_lookup_elem(&svc_stats, &sid);
	if (sc) {
		sc->packets++;
		sc->bytes += len;
		if (new_flow)
			sc->new_flows++;
	}
	struct backend_counters *bc = bpf_map_lookup_elem(&backend_stats, &bid);
	if (bc) {
		bc->packets++;
		bc->bytes += len;
		if (new_flow)
			bc->new_flows++;
	}
}

static __always_inline int apply_and_forward(struct xctx *x, struct pkt *p, const struct ct_entry *e)
{
	__be32 nsrc[4], ndst[4];
	__be16 nsport, ndport;
	ct_target(&p->t, e, nsrc, &nsport, ndst, &ndport);
	if (rewrite_l4(x, p, nsrc, nsport, ndst, ndport)) {
		/* Only reachable on a helper failure after a partial write. */
		GINC(malformed);
		return x->xdp ? XDP_DROP : TC_ACT_SHOT;
	}
	return forward(x, p->t.family, p->t.proto, nsrc, ndst, p->l3len);
}

/* Old entry being replaced (stale backend, expired, or a new SYN on a
 * closing flow): give its backend_active slot back if it still holds one. */
static __always_inline void ct_release(struct ct_entry *old)
{
	if (old->flags & XLB_CT_F_CLOSING)
		return;
	__u32 old_flags = __sync_fetch_and_or(&old->flags, XLB_CT_F_CLOSING);
	if (old_flags & XLB_CT_F_CLOSING)
		return;
	__u32 bid = old->backend_id;
	struct backend *b = bpf_map_lookup_elem(&backends, &bid);
	if (!b || b->gen != old->backend_gen)
		return; /* id reused: Go reset its count */
	__s64 *act = bpf_map_lookup_elem(&backend_active, &bid);
	if (act)
		__sync_fetch_and_add(act, -1);
}

/*
 * ct_new handles a new flow up to the conntrack entries: allow-list, backend
 * selection, SNAT address/port, reply entry, forward entry (copied to *fe).
 * Returns 0 or XLB_DROP_* + 1.
 */
static __noinline int ct_new(void *ctx, struct scratch *sc, struct svc_info *s, __u64 now)
{
	__u32 sid = s->id;
	struct pkt *p = &sc->p;

	if ((s->flags & XLB_SVC_F_ALLOWLIST) && !allowed(s, &p->t))
		return XLB_DROP_SRC_DENIED + 1;

	__u32 bid;
	if (select_backend(s, &p->t, now, &bid))
		return XLB_DROP_NO_BACKEND + 1;
	struct backend *b = bpf_map_lookup_elem(&backends, &bid);
	if (!b)
		return XLB_DROP_NO_BACKEND + 1;

	__u32 lifetime = s->idle_timeout_s;
	if (!lifetime)
		lifetime = p->t.proto == IPPROTO_TCP_ ? XLB_DEFAULT_TCP_TIMEOUT : XLB_DEFAULT_UDP_TIMEOUT;

	struct ct_entry *fe = &sc->fe, *re = &sc->re;
	struct ct_key *rk = &sc->rk;
	__builtin_memset(fe, 0, sizeof(*fe));
	fe->last_seen_ns = now;
	fe->created_ns = now;
	fe->lifetime_s = lifetime;
	fe->svc_id = sid;
	fe->backend_id = bid;
	fe->backend_gen = b->gen;
	fe->flags = XLB_CT_F_REWRITE_DST;
	addr_copy(fe->nat_dst, b->addr);
	fe->nat_dport = b->port;

	__builtin_memcpy(re, fe, sizeof(*re));
	re->flags = XLB_CT_F_REPLY | XLB_CT_F_REWRITE_SRC;
	addr_copy(re->nat_src, p->t.dst); /* replies come from the VIP:port */
	re->nat_sport = p->t.dport;
	__builtin_memset(re->nat_dst, 0, sizeof(re->nat_dst));
	re->nat_dport = 0;

	__builtin_memset(rk, 0, sizeof(*rk));
	rk->proto = p->t.proto;
	rk->family = p->t.family;
	addr_copy(rk->src, b->addr);
	rk->sport = b->port;

	if (s->nat_mode == XLB_NAT_DEFAULT) {
		addr_copy(rk->dst, p->t.src);
		rk->dport = p->t.sport;
		if (bpf_map_update_elem(&conntrack, rk, re, BPF_ANY))
			return XLB_DROP_NO_BACKEND + 1;
	} else {
		__be32 saddr[4] = {};
		if (s->nat_mode == XLB_NAT_ONEARM) {
			if (egress_addr(ctx, p->ifindex, p->t.family, b->addr, saddr))
				return XLB_DROP_NO_IFADDR + 1;
		} else {
			addr_copy(saddr, s->snat_addr);
		}
		__u32 pmin = s->snat_port_min, pmax = s->snat_port_max;
		if (pmin == 0 && pmax == 0) {
			pmin = XLB_DEFAULT_SNAT_MIN;
			pmax = XLB_DEFAULT_SNAT_MAX;
		}
		if (pmax < pmin)
			pmax = pmin;
		__u32 span = pmax - pmin + 1;
		__u32 r = bpf_get_prandom_u32();

		re->flags |= XLB_CT_F_REWRITE_DST;
		addr_copy(re->nat_dst, p->t.src); /* replies go back to the client */
		re->nat_dport = p->t.sport;
		addr_copy(rk->dst, saddr);

		bool got = false;
		__be16 sport = 0;
#pragma unroll
		for (int i = 0; i < XLB_SNAT_TRIES; i++) {
			/* Random start, then a fixed odd stride: distinct ports for any span. */
			sport = bpf_htons((__u16)(pmin + (r + (__u32)i * 7919) % span));
			rk->dport = sport;
			struct ct_entry *cur = bpf_map_lookup_elem(&conntrack, rk);
			if (cur && ct_alive(cur, now))
				continue;
			if (bpf_map_update_elem(&conntrack, rk, re, BPF_ANY) == 0) {
				got = true;
				break;
			}
		}
		if (!got)
			return XLB_DROP_SNAT_EXHAUSTED + 1;
		fe->flags |= XLB_CT_F_REWRITE_SRC;
		addr_copy(fe->nat_src, saddr);
		fe->nat_sport = sport;
	}

	if (bpf_map_update_elem(&conntrack, &p->t, fe, BPF_ANY)) {
		bpf_map_delete_elem(&conntrack, rk);
		return XLB_DROP_NO_BACKEND + 1;
	}

	__s64 *act = bpf_map_lookup_elem(&backend_active, &bid);
	if (act)
		__sync_fetch_and_add(act, 1);
	return 0;
}

static __always_inline int new_flow(struct xctx *x, struct scratch *sc, struct svc_info *s, __u64 now)
{
	struct pkt *p = &sc->p;
	int r = ct_new(x->ctx, sc, s, now);
	if (r) {
		svc_drop(s->id, r - 1);
		return verdict(x, XV_DROP);
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
		return verdict(x, XV_PASS);
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

/* ---------- ICMP errors ---------- */

/*
 * ICMP errors quoting a translated packet. The quoted packet travelled in one
 * direction of a flow; reversed, it is the tuple of a packet of the other
 * direction, so a CT lookup of the reversed quote finds the entry E that
 * translates that other direction. Translating the quote = reversing what E
 * would do; the outer destination becomes the quote's translated source, and
 * the outer source too when the error was generated by the quoted endpoint
 * itself (e.g. port unreachable from a backend).
 *
 * Checksums: quoted IPv4 header checksum and the ICMP checksum (ICMPv6:
 * including the pseudo-header) are updated incrementally, outer IPv4 header
 * checksum too. The quoted L4 checksum is left as is (routers only quote 8
 * bytes; receivers do not verify it).
 */
static __always_inline int icmp_error_body(struct xctx *x, struct pkt *p, __u32 icmp_off)
{
	bool v6 = p->t.family == XLB_AF_INET6;
	struct icmp_hdr ic;
	if (ld(x, icmp_off, &ic, sizeof(ic)))
		goto pass;
	if (v6) {
		if (ic.type != ICMPV6_DEST_UNREACH_ && ic.type != ICMPV6_PKT_TOOBIG_ && ic.type != ICMPV6_TIME_EXCEED_)
			goto pass;
	} else if (ic.type != ICMP_DEST_UNREACH_ && ic.type != ICMP_TIME_EXCEEDED_) {
		goto pass;
	}

	__u32 in_off = icmp_off + sizeof(struct icmp_hdr);
	__u32 in_l4;
	struct scratch *sc = container_of_pkt(p);
	struct ct_key *kp = &sc->ik;
	__builtin_memset(kp, 0, sizeof(*kp));
#define k (*kp)
	__u16 in_csum = 0;
	if (v6) {
		struct ip6_hdr *in = &sc->in6;
		if (ld(x, in_off, in, sizeof(*in)))
			goto pass;
		k.proto = in->nexthdr;
		addr_copy(k.src, in->daddr);
		addr_copy(k.dst, in->saddr);
		in_l4 = in_off + sizeof(struct ip6_hdr);
	} else {
		struct ip4_hdr *in = &sc->in4;
		if (ld(x, in_off, in, sizeof(*in)))
			goto pass;
		__u32 ihl = in->vihl & 0xf;
		if ((in->vihl >> 4) != 4 || ihl < 5)
			goto pass;
		k.proto = in->proto;
		k.src[0] = in->daddr;
		k.dst[0] = in->saddr;
		in_csum = in->csum;
		in_l4 = in_off + ihl * 4;
	}
	if (k.proto != IPPROTO_TCP_ && k.proto != IPPROTO_UDP_)
		goto pass;
	k.family = p->t.family;
	__be16 ports[2];
	if (ld(x, in_l4, ports, 4))
		goto pass;
	k.sport = ports[1];
	k.dport = ports[0];

	__u64 now = bpf_ktime_get_ns();
	struct ct_entry *ep = bpf_map_lookup_elem(&conntrack, kp);
	if (!ep || !ct_alive(ep, now))
		goto pass;
	__be32 *nks = sc->nks, *nkd = sc->nkd, *osrc = sc->osrc, *odst = sc->odst;
	__be16 nksp, nkdp;
	ct_target(&k, ep, nks, &nksp, nkd, &nkdp);

	/* Quote: src <- nkd, dst <- nks. Outer: dst <- nkd; src <- nks if the
	 * error came from the quoted packet's destination itself. */
	addr_copy(osrc, p->t.src);
	addr_copy(odst, nkd);
	if (addr_eq(p->t.src, k.src))
		addr_copy(osrc, nks);

	__u64 data_diff = 0;  /* bytes inside the ICMP message */
	__u64 outer_diff = 0; /* outer addresses (IPv4 header / ICMPv6 pseudo-header) */
	__u16 icsum;
	if (ld(x, icmp_off + 2, &icsum, 2))
		goto pass;

	if (v6) {
		data_diff = csum_diff128(data_diff, k.dst, nkd);
		data_diff = csum_diff128(data_diff, k.src, nks);
		outer_diff = csum_diff128(outer_diff, p->t.src, osrc);
		outer_diff = csum_diff128(outer_diff, p->t.dst, odst);
		if (st(x, in_off + 8, nkd, 16) || st(x, in_off + 24, nks, 16) || st(x, ETH_HLEN_ + 8, osrc, 16) ||
		    st(x, ETH_HLEN_ + 24, odst, 16))
			goto bad;
	} else {
		__u64 adiff = 0;
		adiff = csum_diff32(adiff, k.dst[0], nkd[0]);
		adiff = csum_diff32(adiff, k.src[0], nks[0]);
		__u16 new_in_csum = csum_apply(in_csum, adiff);
		data_diff = csum_diff16(adiff, in_csum, new_in_csum);
		outer_diff = csum_diff32(outer_diff, p->t.src[0], osrc[0]);
		outer_diff = csum_diff32(outer_diff, p->t.dst[0], odst[0]);
		__u16 ocsum;
		if (ld(x, ETH_HLEN_ + 10, &ocsum, 2))
			goto bad;
		ocsum = csum_apply(ocsum, outer_diff);
		if (st(x, in_off + 12, &nkd[0], 4) || st(x, in_off + 16, &nks[0], 4) ||
		    st(x, in_off + 10, &new_in_csum, 2) || st(x, ETH_HLEN_ + 12, &osrc[0], 4) ||
		    st(x, ETH_HLEN_ + 16, &odst[0], 4) || st(x, ETH_HLEN_ + 10, &ocsum, 2))
			goto bad;
		outer_diff = 0; /* ICMPv4 has no pseudo-header */
	}
	data_diff = csum_diff16(data_diff, ports[0], nkdp);
	data_diff = csum_diff16(data_diff, ports[1], nksp);
	ports[0] = nkdp;
	ports[1] = nksp;
	icsum = csum_apply(icsum, data_diff + outer_diff);
	if (st(x, in_l4, ports, 4) || st(x, icmp_off + 2, &icsum, 2))
		goto bad;

	GINC(icmp_nat);
	return forward(x, p->t.family, v6 ? IPPROTO_ICMPV6_ : IPPROTO_ICMP_, osrc, odst, p->l3len);
#undef k
pass:
	GINC(passed);
	return verdict(x, XV_PASS);
bad:
	GINC(malformed);
	return verdict(x, XV_DROP);
}

static __noinline int icmp_error_xdp(struct xdp_md *ctx, struct pkt *p, __u32 icmp_off)
{
	struct xctx x = XCTX_XDP(ctx);
	return icmp_error_body(&x, p, icmp_off);
}

static __noinline int icmp_error_tc(struct __sk_buff *ctx, struct pkt *p, __u32 icmp_off)
{
	struct xctx x = XCTX_TC(ctx);
	return icmp_error_body(&x, p, icmp_off);
}

static __always_inline int icmp_error(struct xctx *x, struct pkt *p, __u32 icmp_off)
{
	if (x->xdp)
		return icmp_error_xdp(x->ctx, p, icmp_off);
	return icmp_error_tc(x->ctx, p, icmp_off);
}

/* ---------- parsing ---------- */

/* Malformed packet: never translated. Dropped only when it can be attributed
 * to a service (destination VIP:port:proto known), otherwise passed. */
static __always_inline int malformed(struct xctx *x, struct pkt *p, bool have_ports)
{
	GINC(malformed);
	if (have_ports) {
		struct svc_info *s = svc_lookup(&p->t);
		if (s) {
			svc_drop(s->id, XLB_DROP_MALFORMED);
			return verdict(x, XV_DROP);
		}
	}
	return verdict(x, XV_PASS);
}

/* Fragment: never translated; dropped when addressed to a VIP. When it is a
 * first fragment whose ports are readable and match a service, the drop is
 * also counted on that service. */
static __always_inline int fragment(struct xctx *x, struct pkt *p, __u32 l4off, bool first)
{
	GINC(fragments);
	if (!is_vip(p->t.family, p->t.dst)) {
		GINC(passed);
		return verdict(x, XV_PASS);
	}
	__be16 ports[2];
	if (first && (p->t.proto == IPPROTO_TCP_ || p->t.proto == IPPROTO_UDP_) && !ld(x, l4off, ports, 4)) {
		p->t.sport = ports[0];
		p->t.dport = ports[1];
		struct svc_info *s = svc_lookup(&p->t);
		if (s)
			svc_drop(s->id, XLB_DROP_FRAGMENT);
	}
	return verdict(x, XV_DROP);
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
	return XR_LB;
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
		return XR_ICMP;
	}
	GINC(passed);
	return verdict(x, XV_PASS);
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
		return XR_ICMP;
	}
	/* Routing headers (the destination is not final), too many extension
	 * headers, other protocols: never translated. */
	GINC(passed);
	return verdict(x, XV_PASS);
}

static __always_inline int xlb_process(struct xctx *x, bool ct_miss)
{
	__be16 proto;
	struct scratch *sc = scratch();
	if (!sc)
		return verdict(x, XV_PASS);
	struct pkt *p = &sc->p;
	__builtin_memset(p, 0, sizeof(*p));
	p->ifindex = x->ifindex;
	GINC(rx);
	if (ld(x, 12, &proto, 2)) {
		GINC(passed);
		return verdict(x, XV_PASS);
	}
	int r;
	if (proto == bpf_htons(ETH_P_IP_)) {
		r = process_v4(x, p);
	} else if (proto == bpf_htons(ETH_P_IPV6_)) {
		r = process_v6(x, p);
	} else {
		/* ARP, VLAN-tagged (not parsed), ...: not ours. */
		GINC(passed);
		return verdict(x, XV_PASS);
	}
	/* The heavy parts run as subprograms called from this small frame. */
	if (r == XR_LB)
		return x->xdp ? lb_xdp(x->ctx, p, ct_miss) : lb_tc(x->ctx, p, ct_miss);
	if (r == XR_ICMP)
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
 * Everything else returns XF_SLOW before any side effect (counter, write)
 * and is handled by xlb_process, which re-parses: the two paths produce the
 * same bytes, verdicts and counters (see bpf/README.md).
 */
#define XF_SLOW (-100) /* not a program return code (TC_PASS is -1) */
/* Slow path, and the fast path found no conntrack entry for the tuple but a
 * service: a new flow, the slow path need not look conntrack up again. */
#define XF_NEW (-101)

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
		return XF_SLOW;

	struct ct_key k;
	__builtin_memset(&k, 0, sizeof(k));
	__u32 l3hl, l3end, l3len;
	if (eth->proto == bpf_htons(ETH_P_IP_)) {
		struct ip4_hdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->vihl != 0x45)
			return XF_SLOW;
		l3len = bpf_ntohs(ip->tot_len);
		if (l3len < sizeof(*ip) || ETH_HLEN_ + l3len > len)
			return XF_SLOW;
		if (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFMASK_))
			return XF_SLOW;
		k.family = XLB_AF_INET;
		k.proto = ip->proto;
		k.src[0] = ip->saddr;
		k.dst[0] = ip->daddr;
		l3hl = sizeof(*ip);
	} else if (eth->proto == bpf_htons(ETH_P_IPV6_)) {
		struct ip6_hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || (ip6->vtcfl & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000))
			return XF_SLOW;
		l3len = (__u32)bpf_ntohs(ip6->plen) + sizeof(*ip6);
		if (ETH_HLEN_ + l3len > len)
			return XF_SLOW;
		k.family = XLB_AF_INET6;
		k.proto = ip6->nexthdr;
		addr_copy(k.src, ip6->saddr);
		addr_copy(k.dst, ip6->daddr);
		l3hl = sizeof(*ip6);
	} else {
		return XF_SLOW;
	}
	l3end = ETH_HLEN_ + l3len;

	__u32 l4off = ETH_HLEN_ + l3hl, csum_off;
	__u8 tcp_flags = 0;
	if (k.proto == IPPROTO_TCP_) {
		struct tcp_hdr *th = data + l4off;
		if ((void *)(th + 1) > end)
			return XF_SLOW;
		__u32 doff = th->doff >> 4;
		if (doff < 5 || l4off + doff * 4 > l3end)
			return XF_SLOW;
		tcp_flags = th->flags;
		k.sport = th->sport;
		k.dport = th->dport;
		csum_off = l4off + 16;
	} else if (k.proto == IPPROTO_UDP_) {
		struct udp_hdr *uh = data + l4off;
		if ((void *)(uh + 1) > end)
			return XF_SLOW;
		__u32 ulen = bpf_ntohs(uh->len);
		if (ulen < 8 || l4off + ulen > l3end)
			return XF_SLOW;
		k.sport = uh->sport;
		k.dport = uh->dport;
		csum_off = l4off + 6;
	} else {
		return XF_SLOW;
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
			return XF_NEW; /* new flow */
		struct global_counters *g = gstats();
		if (g) {
			g->rx++;
			g->passed++;
		}
		return xdp ? XDP_PASS : TC_PASS;
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
		return XF_SLOW;

	/* Bookkeeping (FIN/RST) and stale backends are the slow path's. */
	__u32 fl = e->flags;
	if (k.proto == IPPROTO_TCP_ && (tcp_flags & (TCP_FIN_ | TCP_RST_)))
		return XF_SLOW;
	bool reply = fl & XLB_CT_F_REPLY;
	if (!reply) {
		__u32 bid = e->backend_id;
		struct backend *b = bpf_map_lookup_elem(&backends, &bid);
		if (!b || b->gen != e->backend_gen || b->state == XLB_BE_UNUSED)
			return XF_SLOW;
		if ((fl & XLB_CT_F_CLOSING) && k.proto == IPPROTO_TCP_ &&
		    (tcp_flags & (TCP_SYN_ | TCP_ACK_)) == TCP_SYN_)
			return XF_SLOW;
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
			return XF_SLOW; /* unreachable: checked above */
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
			return XF_SLOW;
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
			return XF_SLOW;
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
			return XF_SLOW;
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
			return TC_ACT_SHOT;
		}
	}

	/* Forwarding: as forward_body. */
	int pass = xdp ? XDP_PASS : TC_PASS;
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
				return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
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
		return XDP_TX;
	return bpf_redirect(oif, 0);
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
	if (r != XF_SLOW && r != XF_NEW)
		return r;
	return slow_tc(skb, r == XF_NEW);
}

SEC("xdp")
int xlb_xdp(struct xdp_md *ctx)
{
	int r = fast_xdp(ctx);
	if (r != XF_SLOW && r != XF_NEW)
		return r;
	return slow_xdp(ctx, r == XF_NEW);
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
