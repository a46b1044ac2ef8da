/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * csum.h — ones' complement checksum arithmetic (RFC 1071 / RFC 1624).
 */
#ifndef XLB_LIB_CSUM_H
#define XLB_LIB_CSUM_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/*
 * Ones' complement checksum arithmetic (RFC 1071 / RFC 1624).
 *
 * A "diff" accumulates ~old + new for every changed field; summing raw
 * 32-bit memory words in a 64-bit accumulator and folding at the end gives
 * the same result as summing 16-bit words, and the ones' complement sum is
 * byte-order independent, so raw (network order) values are used as is.
 */
static __always_inline __u16 csum_fold64(__u64 s)
{
	s = (s & 0xffffffffULL) + (s >> 32);
	s = (s & 0xffffffffULL) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline __u64 csum_diff32(__u64 acc, __u32 from, __u32 to)
{
	return acc + (__u64)(__u32)~from + (__u64)to;
}

static __always_inline __u64 csum_diff16(__u64 acc, __u16 from, __u16 to)
{
	return acc + (__u64)(__u16)~from + (__u64)to;
}

/* A subprogram, not inlined: keeps the eight loads from being hoisted and
 * spilled in the callers' frames (the BPF stack is 512 bytes per chain). */
static __noinline __u64 csum_diff128_(const __be32 *from, const __be32 *to)
{
	__u64 acc = 0;
	acc = csum_diff32(acc, from[0], to[0]);
	acc = csum_diff32(acc, from[1], to[1]);
	acc = csum_diff32(acc, from[2], to[2]);
	acc = csum_diff32(acc, from[3], to[3]);
	return acc;
}

#define csum_diff128(acc, from, to) ((acc) + csum_diff128_((from), (to)))

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). */
static __always_inline __u16 csum_apply(__u16 csum, __u64 diff)
{
	return (__u16)~csum_fold64((__u64)(__u16)~csum + diff);
}

#endif /* XLB_LIB_CSUM_H */
