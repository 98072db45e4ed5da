//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/*
 * Connect-time redirect (docs/architecture.md, "Data path on a node",
 * step 4): cgroup programs that send a TCP connect() to an intercepted pod
 * address and port straight to the developer's pod, so that an L4
 * intercept's callers on this node have no relay in their path at all.
 *
 * - connect4 rewrites the destination of a connect() found in
 *   connect_redirects, for the caller's network namespace or for any, and
 *   remembers the address the caller asked for, by
 *   socket cookie, in connect_origins;
 * - getpeername4 answers with that remembered address, so the caller sees
 *   the peer it dialled;
 * - sock_release forgets it when the socket goes.
 *
 * Callers in the host's network namespace (host_netns, set before load) are
 * left alone: node daemons and host-network pods, and the agent itself,
 * reach the pod through the steering and the agent's relay as before.
 * Attached to the cgroup v2 root, the programs see every process's sockets
 * in every namespace.
 */

#include "types.h"
#include "sock_addr.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* The host's network namespace cookie: its callers are never redirected. */
const volatile __u64 host_netns = 0;

/* An intercepted destination, the pod's (or its Service's) IPv4 address and
 * port, as dialled from one network namespace (netns, a cookie) or from any
 * (netns 0). */
struct connect_key {
	__u64 netns;
	__u32 addr; /* network byte order, as ctx->user_ip4 */
	__u16 port; /* host byte order */
	__u16 pad; /* always zero */
};

/* Where its connections go instead, and how many went. */
struct connect_dest {
	__u32 addr; /* network byte order */
	__u16 port; /* host byte order */
	__u16 pad; /* always zero */
	__u64 connections; /* connect() calls redirected */
};

/* The address a redirected socket's caller asked for. */
struct connect_origin {
	__u32 addr; /* network byte order */
	__u32 port; /* network byte order, as ctx->user_port */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct connect_key);
	__type(value, struct connect_dest);
} connect_redirects SEC(".maps");

/* By socket cookie. LRU: should a release be missed, old entries go first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct connect_origin);
} connect_origins SEC(".maps");

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct connect_key key = {};
	struct connect_origin origin;
	struct connect_dest *dest;
	__u64 cookie;

	if (ctx->type != SOCK_STREAM)
		return 1;
	key.netns = bpf_get_netns_cookie(ctx);
	if (key.netns == host_netns)
		return 1;
	key.addr = ctx->user_ip4;
	key.port = bpf_ntohs((__u16)ctx->user_port);
	/* This caller's namespace first (an intercept for some sources), then
	 * any namespace (an intercept for every source). */
	dest = bpf_map_lookup_elem(&connect_redirects, &key);
	if (!dest) {
		key.netns = 0;
		dest = bpf_map_lookup_elem(&connect_redirects, &key);
	}
	if (!dest)
		return 1;

	origin.addr = ctx->user_ip4;
	origin.port = ctx->user_port;
	cookie = bpf_get_socket_cookie(ctx);
	/* Without the origin, getpeername would show the developer's pod; a
	 * full map is no reason to refuse the redirect. */
	bpf_map_update_elem(&connect_origins, &cookie, &origin, BPF_ANY);

	ctx->user_ip4 = dest->addr;
	ctx->user_port = bpf_htons(dest->port);
	__sync_fetch_and_add(&dest->connections, 1);
	return 1;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	struct connect_origin *origin;
	__u64 cookie = bpf_get_socket_cookie(ctx);

	origin = bpf_map_lookup_elem(&connect_origins, &cookie);
	if (origin) {
		ctx->user_ip4 = origin->addr;
		ctx->user_port = origin->port;
	}
	return 1;
}

SEC("cgroup/sock_release")
int sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);

	bpf_map_delete_elem(&connect_origins, &cookie);
	return 1;
}
