/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Benchmark-only XDP programs (never loaded by xlbd):
 *
 * xlb_pktgen — a packet generator. Run through BPF_PROG_TEST_RUN with
 *   BPF_F_TEST_XDP_LIVE_FRAMES, every run returns XDP_TX and the kernel sends
 *   the frame out of the ingress ifindex given in the xdp_md context. Pages
 *   are recycled without being re-initialised (and the load balancer rewrites
 *   them in place), so every run rewrites the whole frame from the template
 *   set by Go, then picks a random source port out of sport_count (a power of
 *   two) so the load balancer sees a fixed set of established flows.
 *   With new_flows set, every packet is a new flow instead: a sequence number
 *   (flow_seq, in .bss, so it carries on across runs) gives the source port
 *   1024 + (seq & 0x7fff) and the source address nf_src_base + (seq >> 15),
 *   and the IPv4 header checksum is recomputed; 2^15 ports per address, so
 *   no 5-tuple repeats for 2^39 packets.
 *
 * bench_sink — counts (per CPU) and drops UDP to sink_port over IPv4/IPv6;
 *   passes everything else (ARP, ND) so neighbour resolution still works.
 *
 * bench_fwd — the forwarding floor: UDP to sink_port gets fixed MAC addresses
 *   (fwd_macs: destination, source) and XDP_REDIRECT to fwd_ifindex, with no
 *   lookup of any kind; what an XDP load balancer costs at least on a path
 *   where it must hand every packet to another interface.
 *
 * bench_floor — parse Ethernet/IP/L4 and pass: the cost floor of an XDP
 *   program that looks at the packet, used when the datapath object has no
 *   xlb_floor.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FRAME_LEN 60 /* 64 bytes on the wire with the FCS */

volatile const __u32 tmpl[FRAME_LEN / 4];
volatile const __u16 sport_base;  /* host order */
volatile const __u16 sport_count; /* power of two, >= 1 */
volatile const __u16 sink_port;   /* host order */
volatile const __u8 new_flows;    /* 1: every packet a new source address:port */
volatile const __u32 nf_src_base; /* host order: first source address of new_flows */
__u32 flow_seq;                   /* new_flows sequence number */
volatile const __u32 fwd_ifindex;
volatile const __u8 fwd_macs[12]; /* destination, source */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int xlb_pktgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 *w = data;

	if (data + FRAME_LEN > end)
		return XDP_ABORTED;
#pragma unroll
	for (int i = 0; i < FRAME_LEN / 4; i++)
		w[i] = tmpl[i];
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	if (new_flows) {
		__u32 n = flow_seq++;
		__u16 *h = (__u16 *)ip;
		__u32 sum = 0;

		ip->saddr = bpf_htonl(nf_src_base + (n >> 15));
		udp->source = bpf_htons(1024 + (n & 0x7fff));
		ip->check = 0;
#pragma unroll
		for (int i = 0; i < 10; i++)
			sum += h[i];
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		ip->check = ~sum;
		return XDP_TX;
	}
	__u16 port = sport_base + (bpf_get_prandom_u32() & (sport_count - 1));
	udp->source = bpf_htons(port);
	return XDP_TX;
}

static __always_inline int is_sink_udp(void *data, void *end)
{
	struct ethhdr *eth = data;
	struct udphdr *udp;

	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP)
			return 0;
		udp = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return 0;
		udp = (void *)(ip6 + 1);
	} else {
		return 0;
	}
	if ((void *)(udp + 1) > end)
		return 0;
	return udp->dest == bpf_htons(sink_port);
}

SEC("xdp")
int bench_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	if (!is_sink_udp(data, end))
		return XDP_PASS;
	__u64 *c = bpf_map_lookup_elem(&sink_count, &zero);
	if (c)
		*c += 1;
	return XDP_DROP;
}

SEC("xdp")
int bench_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *eth = data;

	if (!is_sink_udp(data, end))
		return XDP_PASS;
	if ((void *)(eth + 12) > end)
		return XDP_PASS;
#pragma unroll
	for (int i = 0; i < 12; i++)
		eth[i] = fwd_macs[i];
	return bpf_redirect(fwd_ifindex, 0);
}

SEC("xdp")
int bench_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		struct udphdr *l4 = (void *)ip + ip->ihl * 4;
		if ((void *)(l4 + 1) > end)
			return XDP_PASS;
		if (l4->dest == 0) /* keep the load: the floor reads the L4 ports */
			return XDP_DROP;
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
