//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/*
 * Splice (DESIGN.md, data path step 3): once a connection's route is settled
 * for its whole life, the agent puts its two TCP sockets (the accepted client
 * side and the dialled upstream side) into splice_socks, and this sk_skb
 * stream verdict program sends every byte received on one socket out of the
 * other (bpf_sk_redirect_hash without BPF_F_INGRESS = the peer's egress). The
 * bytes never reach the agent's userspace.
 *
 * Sockets are keyed by their socket cookie: unique for the life of the
 * kernel, across network namespaces (a 4-tuple is not: the agent holds
 * sockets in many pod namespaces) and the same for IPv4 and IPv6.
 */

#include "types.h"
#include "sock_ctx.h"
#include "bpf_helpers.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/*
 * The direction has fallen back to userspace: a redirect failed (the peer was
 * not in splice_socks yet), the skb was passed to the socket's own receive
 * queue, and every later skb must follow it there to keep the byte order.
 */
#define SPLICE_F_USERSPACE 1

/* One direction of a splice, keyed by the cookie of the receiving socket. */
struct splice_peer {
	__u64 peer; /* cookie of the socket the bytes go out of */
	__u64 bytes; /* redirected to the peer */
	__u64 skbs; /* redirected to the peer */
	__u64 passed_bytes; /* left to userspace (SPLICE_F_USERSPACE) */
	__u32 flags; /* SPLICE_F_* */
	__u32 pad; /* always zero */
};

/* The spliced sockets, by cookie. The agent updates them by fd. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} splice_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct splice_peer);
} splice_peers SEC(".maps");

/*
 * Verdicts for one socket run one at a time under its socket lock, so the
 * plain updates of flags and passed_bytes do not race; the agent only reads.
 */
static __always_inline int splice_pass(struct splice_peer *p, __u32 len)
{
	p->flags |= SPLICE_F_USERSPACE;
	p->passed_bytes += len;
	return SK_PASS;
}

static __always_inline int splice_redirect(struct __sk_buff *skb, struct splice_peer *p)
{
	__u64 peer = p->peer;
	__u32 len = skb->len;

	/*
	 * The skb that carries a FIN can be empty. The kernel takes a 0 from
	 * any send of its psock backlog for a hard error and breaks that
	 * socket's pipe (sk_err = EPIPE, the rest of its queue dropped):
	 * redirected, an empty skb breaks the peer; passed, it is queued
	 * behind the peer's bytes still waiting to go out of this socket and
	 * breaks this one. Dropped, it only bumps sk_drops: TCP has taken the
	 * FIN already, and the agent passes it on as a half-close once the
	 * bytes before it have left.
	 */
	if (len == 0)
		return SK_DROP;
	if (p->flags & SPLICE_F_USERSPACE)
		return splice_pass(p, len);
	/* SK_PASS with a redirect set means "redirect"; SK_DROP means the peer
	 * is not in the map. Never drop: the bytes are acknowledged already. */
	if (bpf_sk_redirect_hash(skb, &splice_socks, &peer, 0) != SK_PASS)
		return splice_pass(p, len);
	__sync_fetch_and_add(&p->bytes, len);
	__sync_fetch_and_add(&p->skbs, 1);
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int splice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct splice_peer *p;

	p = bpf_map_lookup_elem(&splice_peers, &cookie);
	if (!p)
		return SK_PASS; /* not spliced (yet): userspace reads it */
	return splice_redirect(skb, p);
}
