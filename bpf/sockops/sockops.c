//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/*
 * Flow metrics (docs/architecture.md, "Data path on a node", step 5): a
 * cgroup sock_ops program that turns on the RTT, retransmit, RTO and state
 * callbacks for the established TCP connections of a cgroup (optionally only
 * those with a port in flow_ports) and keeps per flow its smoothed RTT and
 * retransmits, plus node-wide totals that only grow (a log2 histogram of RTT
 * samples, retransmitted segments, RTOs) for Prometheus.
 *
 * Flows are keyed by socket cookie, as splice_socks in bpf/splice/splice.c.
 */

#include "types.h"
#include "sock_ctx.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Histogram buckets: bucket i counts samples <= 2^i µs, for i < last; the
 * last one counts the rest (above 2^(FLOW_RTT_BUCKETS-2) µs, about 67 s). */
#define FLOW_RTT_BUCKETS 28

/* Set from Go before load: only flows with a port in flow_ports. */
const volatile __u8 filter_ports = 0;

struct flow {
	__u32 local_ip[4]; /* network byte order; IPv4 in [0] */
	__u32 remote_ip[4]; /* network byte order; IPv4 in [0] */
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 local_port; /* host byte order */
	__u16 remote_port; /* host byte order */
	__u16 pad; /* always zero */
	__u32 srtt_us; /* smoothed RTT, µs, at the last sample */
	__u32 total_retrans; /* segments retransmitted */
	__u32 rtos; /* retransmission timeouts */
	__u32 pad2; /* always zero */
	__u64 rtt_samples;
};

struct flow_totals {
	__u64 rtt_buckets[FLOW_RTT_BUCKETS];
	__u64 rtt_sum_us;
	__u64 rtt_count;
	__u64 retrans; /* segments retransmitted */
	__u64 rtos;
	__u64 flows; /* flows ever tracked */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* socket cookie */
	__type(value, struct flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_totals);
} flow_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16); /* host byte order */
	__type(value, __u8);
} flow_ports SEC(".maps");

/* The smallest i with us <= 2^i, capped at the overflow bucket. */
static __always_inline __u32 flow_rtt_bucket(__u32 us)
{
	__u32 i = 1, v;

	if (us <= 1)
		return 0;
	v = us - 1;
	if (v >= 1 << 16) {
		v >>= 16;
		i += 16;
	}
	if (v >= 1 << 8) {
		v >>= 8;
		i += 8;
	}
	if (v >= 1 << 4) {
		v >>= 4;
		i += 4;
	}
	if (v >= 1 << 2) {
		v >>= 2;
		i += 2;
	}
	if (v >= 1 << 1)
		i += 1;
	return i < FLOW_RTT_BUCKETS - 1 ? i : FLOW_RTT_BUCKETS - 1;
}

static __always_inline int flow_wanted(__u16 local_port, __u16 remote_port)
{
	if (!filter_ports)
		return 1;
	return bpf_map_lookup_elem(&flow_ports, &local_port) ||
	       bpf_map_lookup_elem(&flow_ports, &remote_port);
}

static __always_inline struct flow_totals *flow_totals_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&flow_stats, &zero);
}

static __always_inline void flow_start(struct bpf_sock_ops *skops)
{
	__u16 lport = (__u16)skops->local_port;
	__u16 rport = (__u16)bpf_ntohl(skops->remote_port);
	struct flow f = { .local_port = lport, .remote_port = rport };
	struct flow_totals *t;
	__u64 cookie;

	if (!flow_wanted(lport, rport))
		return;
	f.family = (__u16)skops->family;
	if (f.family == AF_INET) {
		f.local_ip[0] = skops->local_ip4;
		f.remote_ip[0] = skops->remote_ip4;
	} else if (f.family == AF_INET6) {
		f.local_ip[0] = skops->local_ip6[0];
		f.local_ip[1] = skops->local_ip6[1];
		f.local_ip[2] = skops->local_ip6[2];
		f.local_ip[3] = skops->local_ip6[3];
		f.remote_ip[0] = skops->remote_ip6[0];
		f.remote_ip[1] = skops->remote_ip6[1];
		f.remote_ip[2] = skops->remote_ip6[2];
		f.remote_ip[3] = skops->remote_ip6[3];
	} else {
		return;
	}
	cookie = bpf_get_socket_cookie(skops);
	if (bpf_map_update_elem(&flows, &cookie, &f, BPF_ANY))
		return; /* map full: the flow goes untracked */
	bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG |
						 BPF_SOCK_OPS_RTO_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG);
	t = flow_totals_get();
	if (t)
		t->flows++;
}

static __always_inline void flow_rtt(struct bpf_sock_ops *skops, struct flow *f)
{
	__u32 us = skops->srtt_us >> 3; /* tcp_sock keeps srtt << 3 */
	struct flow_totals *t = flow_totals_get();

	f->srtt_us = us;
	f->total_retrans = skops->total_retrans;
	f->rtt_samples++;
	if (!t)
		return;
	/* Per-CPU value: no other CPU writes it. */
	t->rtt_buckets[flow_rtt_bucket(us)]++;
	t->rtt_sum_us += us;
	t->rtt_count++;
}

SEC("sockops")
int flow_sockops(struct bpf_sock_ops *skops)
{
	struct flow_totals *t;
	struct flow *f;
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		flow_start(skops);
		return 1;
	case BPF_SOCK_OPS_RTT_CB:
	case BPF_SOCK_OPS_RETRANS_CB:
	case BPF_SOCK_OPS_RTO_CB:
	case BPF_SOCK_OPS_STATE_CB:
		break;
	default:
		return 1;
	}

	cookie = bpf_get_socket_cookie(skops);
	f = bpf_map_lookup_elem(&flows, &cookie);
	switch (skops->op) {
	case BPF_SOCK_OPS_RTT_CB:
		if (f)
			flow_rtt(skops, f);
		break;
	case BPF_SOCK_OPS_RETRANS_CB:
		/* args: first seq, segments, tcp_transmit_skb's result */
		if (skops->args[2] != 0)
			break;
		if (f)
			f->total_retrans = skops->total_retrans;
		t = flow_totals_get();
		if (t)
			t->retrans += skops->args[1];
		break;
	case BPF_SOCK_OPS_RTO_CB:
		if (f)
			f->rtos++;
		t = flow_totals_get();
		if (t)
			t->rtos++;
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* args: old state, new state */
		if (skops->args[1] == BPF_TCP_CLOSE)
			bpf_map_delete_elem(&flows, &cookie);
		break;
	}
	return 1;
}
