//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/*
 * The sk_msg mechanism alone, for the ping-pong microbenchmark
 * (test/bench/pingpong, docs/performance.md, "Kernel redirects, alone"):
 * two connected sockets in pp_socks, and every message one of them sends
 * is put straight into the peer's receive queue
 * (bpf_msg_redirect_hash with BPF_F_INGRESS), in the sender's own
 * sendmsg. No parsing, no routing: what the fast path
 * (bpf/fastpath) could cost at best.
 *
 * Sockets are keyed by their IPv4 4-tuple as they see it, so a socket's
 * peer is the one under its mirrored tuple (sk_msg programs cannot ask for
 * a socket cookie).
 */

#include "types.h"
#include "sock_ctx.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define BPF_MAP_TYPE_ARRAY 2

struct pp_key {
	__u32 local_ip4; /* network byte order */
	__u32 remote_ip4; /* network byte order */
	__u32 local_port; /* host byte order */
	__u32 remote_port; /* host byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1024);
	__type(key, struct pp_key);
	__type(value, __u64);
} pp_socks SEC(".maps");

/* [0] messages redirected, [1] bytes redirected, [2] messages passed */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} pp_counts SEC(".maps");

static __always_inline void pp_count(__u32 i, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&pp_counts, &i);

	if (c)
		__sync_fetch_and_add(c, n);
}

SEC("sk_msg")
int pp_redirect(struct sk_msg_md *msg)
{
	struct pp_key peer = {
		.local_ip4 = msg->remote_ip4,
		.remote_ip4 = msg->local_ip4,
		/* remote_port holds the port in network byte order in its
		 * upper 16 bits (little endian) */
		.local_port = bpf_ntohl(msg->remote_port),
		.remote_port = msg->local_port,
	};
	__u32 size = msg->size;

	/* A message the kernel cannot redirect (no peer, peer gone) goes out
	 * of the socket as TCP: never drop what the sender believes sent. */
	if (msg->family != AF_INET ||
	    bpf_msg_redirect_hash(msg, &pp_socks, &peer, BPF_F_INGRESS) != SK_PASS) {
		pp_count(2, 1);
		return SK_PASS;
	}
	pp_count(0, 1);
	pp_count(1, size);
	return SK_PASS;
}
