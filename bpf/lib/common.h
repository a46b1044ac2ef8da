/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * common.h — what every stage shares: limits and defaults, the parsed packet (struct pkt),
 * the per-CPU scratch area, address helpers, config and service lookups.
 */
#ifndef XLB_LIB_COMMON_H
#define XLB_LIB_COMMON_H

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
#define XLB_IP4_OPT_MAX 40       /* IPv4 option bytes (IHL 15) */
#define XLB_IP4_OPT_BUF 64       /* their buffer: a power of 2, indexes are masked */

#define XLB_DEFAULT_TCP_TIMEOUT 240
#define XLB_DEFAULT_UDP_TIMEOUT 60
#define XLB_DEFAULT_CLOSING_TIMEOUT 10
#define XLB_DEFAULT_AFFINITY_TIMEOUT 10800
#define XLB_DEFAULT_SNAT_MIN 10000 /* = dataplane.DefaultSNATPortMin (outside ip_local_port_range) */
#define XLB_DEFAULT_SNAT_MAX 29999 /* = dataplane.DefaultSNATPortMax */
#define XLB_DEFAULT_SYN_TIMEOUT 5
/* last_seen_ns is written about this often per busy flow (limits cache-line
 * writes): once it is XLB_TOUCH_NS - XLB_COARSE_SLACK_NS old (see ct_touch). */
#define XLB_TOUCH_NS NSEC_PER_SEC
/* Bound on how far bpf_ktime_get_coarse_ns() lags bpf_ktime_get_ns() (one
 * tick is 1-10 ms), with margin. */
#define XLB_COARSE_SLACK_NS (50 * 1000 * 1000ULL)

/* Parsed packet: the tuple as received plus the offsets needed to rewrite it. */
struct pkt {
	struct ct_key t;
	__u32 l4off;
	__u32 csum_off; /* L4 checksum field */
	__u32 ifindex;  /* ingress interface */
	__u16 l3len;    /* IPv4 tot_len / IPv6 40 + payload length (fib MTU check) */
	__u8 tcp_flags;
	__u8 frag;      /* XLB_PKT_FRAG_*: not a fragment, first fragment, later fragment */
	__be32 frag_id; /* IPv4 identification (16 bits, as read) / IPv6 fragment header id */
};

#define XLB_PKT_FRAG_NONE 0
#define XLB_PKT_FRAG_FIRST 1 /* offset 0, more fragments: carries the L4 header */
#define XLB_PKT_FRAG_LATER 2 /* offset != 0: no L4 header */

/* Arguments of forwarding (lib/fib.h): the packet's new addresses. */
struct fwd_args {
	__u64 cnow; /* bpf_ktime_get_coarse_ns() of this packet (FIB cache) */
	__be32 src[4];
	__be32 dst[4];
	__u16 l3len; /* for the MTU check: L3 length, per segment for GSO (fib_len) */
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
	struct eth_hdr h2;
	union {
		struct ip6_hdr ip6;
		struct ip4_hdr ip4;
	} h3;
	union {
		struct tcp_hdr tcp;
		struct udp_hdr udp;
	} h4;
	struct ct_entry pe; /* peer entry rebuilt by ct_touch; reply entry from rev_nat */
	struct be_key bk;   /* rev_nat key */
	/* Parser: IPv4 options, checked in the slow path. */
	__u8 ip4_opts[XLB_IP4_OPT_BUF];
	__u32 ip4_opt_pos;
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

#endif /* XLB_LIB_COMMON_H */
