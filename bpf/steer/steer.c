//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/*
 * Steering (docs/architecture.md, "Data path on a node", step 1): an
 * sk_lookup program attached to a pod's network namespace hands new TCP
 * connections for an intercepted address and port to the agent's listener in
 * that namespace. Everything else, including the agent's own connections to
 * the app, is left to the kernel's normal socket lookup.
 */

#include "types.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* An intercepted destination: the pod's IPv4 address and port. */
struct steer_key {
	__u32 addr; /* network byte order, as ctx->local_ip4 */
	__u16 port; /* host byte order, as ctx->local_port */
	__u16 pad;  /* always zero */
};

struct steer_stat {
	__u64 connections; /* lookups handed to the agent's listener */
};

/* The agent's listening socket for each intercepted destination. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, struct steer_key);
	__type(value, __u64);
} steer_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct steer_key);
	__type(value, struct steer_stat);
} steer_stats SEC(".maps");

/*
 * The agent reaches the app by dialling from inside the pod's namespace from
 * the pod's own address, so its connections have remote == local. Loopback
 * sources are the pod talking to itself. Neither is ever steered.
 */
static __always_inline int steer_exempt(__be32 remote, __be32 local)
{
	return remote == local || (bpf_ntohl(remote) >> 24) == 127;
}

static __always_inline int steer_candidate(const struct bpf_sk_lookup *ctx)
{
	return ctx->family == AF_INET && ctx->protocol == IPPROTO_TCP &&
	       !steer_exempt(ctx->remote_ip4, ctx->local_ip4);
}

static __always_inline void steer_count(const struct steer_key *key)
{
	struct steer_stat *st, init = { .connections = 1 };

	st = bpf_map_lookup_elem(&steer_stats, key);
	if (st) {
		__sync_fetch_and_add(&st->connections, 1);
		return;
	}
	/* Lost a race with another CPU creating it: count there. */
	if (bpf_map_update_elem(&steer_stats, key, &init, BPF_NOEXIST)) {
		st = bpf_map_lookup_elem(&steer_stats, key);
		if (st)
			__sync_fetch_and_add(&st->connections, 1);
	}
}

SEC("sk_lookup")
int steer_lookup(struct bpf_sk_lookup *ctx)
{
	struct steer_key key = {};
	struct bpf_sock *sk;
	long err;

	if (!steer_candidate(ctx))
		return SK_PASS;

	key.addr = ctx->local_ip4;
	key.port = (__u16)ctx->local_port;
	sk = bpf_map_lookup_elem(&steer_sockets, &key);
	if (!sk)
		return SK_PASS;

	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	/* Fail open: if the kernel refuses the socket, the app gets it. */
	if (!err)
		steer_count(&key);
	return SK_PASS;
}
