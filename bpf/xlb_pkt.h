/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xlb_pkt.h — wire headers and checksum arithmetic used by bpf/xlb.c.
 *
 * The structs are defined here instead of including linux/ip.h, linux/icmp.h
 * etc. because some of those pull libc headers that do not exist for the BPF
 * target. Only what the datapath reads or writes is declared.
 */
#ifndef XLB_PKT_H
#define XLB_PKT_H

#include <linux/types.h>

/* No libc for the BPF target. */
typedef _Bool bool;
#define true 1
#define false 0

#define ETH_HLEN_ 14
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD

#define AF_INET_ 2
#define AF_INET6_ 10

#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58
/* IPv6 extension headers. */
#define IPV6_HOPOPTS_ 0
#define IPV6_ROUTING_ 43
#define IPV6_FRAGMENT_ 44
#define IPV6_DSTOPTS_ 60

#define IP_MF_ 0x2000
#define IP_OFFMASK_ 0x1fff

#define TCP_FIN_ 0x01
#define TCP_SYN_ 0x02
#define TCP_RST_ 0x04
#define TCP_ACK_ 0x10

#define ICMP_DEST_UNREACH_ 3
#define ICMP_TIME_EXCEEDED_ 11
#define ICMPV6_DEST_UNREACH_ 1
#define ICMPV6_PKT_TOOBIG_ 2
#define ICMPV6_TIME_EXCEED_ 3

struct eth_hdr {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct ip4_hdr {
	__u8 vihl; /* version << 4 | ihl */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 proto;
	__u16 csum;
	__be32 saddr;
	__be32 daddr;
};

struct ip6_hdr {
	__be32 vtcfl; /* version, traffic class, flow label */
	__be16 plen;
	__u8 nexthdr;
	__u8 hlim;
	__be32 saddr[4];
	__be32 daddr[4];
};

struct tcp_hdr {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack;
	__u8 doff; /* data offset << 4 */
	__u8 flags;
	__be16 win;
	__u16 csum;
	__be16 urg;
};

struct udp_hdr {
	__be16 sport;
	__be16 dport;
	__be16 len;
	__u16 csum;
};

/* Common first 8 bytes of ICMPv4 and ICMPv6 messages. */
struct icmp_hdr {
	__u8 type;
	__u8 code;
	__u16 csum;
	__be32 rest;
};

#endif /* XLB_PKT_H */
