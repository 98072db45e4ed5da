//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/*
 * Splice (docs/architecture.md, "Data path on a node", step 3): once a
 * connection's route is settled for its whole life, the agent puts its two
 * TCP sockets (the accepted client side and the dialled upstream side) into
 * splice_socks, and this sk_skb stream verdict program sends every byte
 * received on one socket out of the other (bpf_sk_redirect_hash without
 * BPF_F_INGRESS = the peer's egress). The bytes never reach userspace.
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
/* next_seq holds the sequence number after the last byte the verdict took. */
#define SPLICE_F_SEQ 2
/*
 * An skb repeated more bytes than the program could cut off: the stream is
 * corrupt from there on, and the agent resets the connection.
 */
#define SPLICE_F_OVERLAP 4

/*
 * The most bytes bpf_skb_adjust_room takes off the front of an sk_skb in one
 * call, and how many calls the program makes at most: 128 of them cover an
 * skb of 512 KiB, the largest BIG TCP aggregate.
 */
#define SPLICE_TRIM_CHUNK 0xfff
#define SPLICE_TRIM_CALLS 128

/* One direction of a splice, keyed by the cookie of the receiving socket. */
struct splice_peer {
	__u64 peer; /* cookie of the socket the bytes go out of */
	__u64 bytes; /* redirected to the peer */
	__u64 skbs; /* redirected to the peer */
	__u64 passed_bytes; /* left to userspace (SPLICE_F_USERSPACE) */
	__u64 trimmed_bytes; /* repeated bytes cut off the front of skbs */
	__u32 flags; /* SPLICE_F_* */
	__u32 next_seq; /* TCP sequence after the last byte taken (SPLICE_F_SEQ) */
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
 * The kernel's own view of the skb and its socket, for the TCP sequence
 * numbers the UAPI context does not carry. CO-RE: relocated against the
 * running kernel's BTF at load.
 */
struct sk_buff {
	char cb[48] __attribute__((aligned(8))); /* struct tcp_skb_cb: __u32 seq first */
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 copied_seq;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/*
 * splice_trim cuts off the front of the skb the bytes the socket has
 * delivered already, and returns how many it cut, or -1 if it could not.
 *
 * The verdict without a stream parser is fed by tcp_read_skb()
 * (net/ipv4/tcp.c), which hands over each skb of the receive queue whole,
 * from its first byte, on the assumption that the queue never repeats a
 * byte. It does: a segment that starts before rcv_nxt and ends after it
 * (a retransmission cut differently from the original, once a loss made
 * the sender re-segment) is queued as it came, by tcp_data_queue()'s
 * "partial packet" branch and by tcp_ofo_queue() (net/ipv4/tcp_input.c);
 * tcp_recvmsg() and tcp_read_sock() skip the repeated head by reading from
 * copied_seq, tcp_read_skb() does not. Redirected or passed, the repeated
 * head would go out twice.
 *
 * The reference is where the last skb the program took ended; for the first
 * one, the socket's copied_seq (what userspace read before the insert). The
 * program cannot rely on copied_seq later: a passed skb only moves it when
 * userspace reads it. Verdicts for a socket run one at a time (socket lock).
 */
static __always_inline int splice_trim(struct __sk_buff *ctx, struct splice_peer *p)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	__u32 seq = *(__u32 *)skb->cb, next, end;
	__s32 dup;
	int i;

	if (p->flags & SPLICE_F_SEQ) {
		next = p->next_seq;
		asm volatile("" : "+r"(next));
	} else {
		struct bpf_sock *sk = ctx->sk;
		struct tcp_sock *tp;

		if (!sk)
			return -1;
		tp = bpf_skc_to_tcp_sock(sk);
		if (!tp)
			return -1;
		next = tp->copied_seq;
		/* Keep clang from merging the two loads of next into one
		 * instruction: the verifier refuses a load from a map value
		 * and from a tcp_sock at the same instruction. */
		asm volatile("" : "+r"(next));
	}
	/* The end only moves forward: an skb that only repeats leaves it. */
	end = seq + ctx->len;
	p->next_seq = (__s32)(end - next) > 0 ? end : next;
	p->flags |= SPLICE_F_SEQ;
	dup = (__s32)(next - seq);
	if (dup <= 0)
		return 0;
	/*
	 * Cut dup bytes, or the whole skb if it only repeats (tcp_data_queue
	 * drops those before they are queued, so this is only for safety):
	 * an empty skb is dropped without moving copied_seq (tcp_eat_skb).
	 */
	if ((__u32)dup > ctx->len)
		dup = ctx->len;
	for (i = 0; i < SPLICE_TRIM_CALLS && dup > 0; i++) {
		__s32 n = dup < SPLICE_TRIM_CHUNK ? dup : SPLICE_TRIM_CHUNK;

		if (bpf_skb_adjust_room(ctx, -n, 0, 0))
			return -1;
		dup -= n;
		p->trimmed_bytes += n;
	}
	return dup > 0 ? -1 : 0;
}

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
	if (splice_trim(skb, p) < 0)
		p->flags |= SPLICE_F_OVERLAP;
	return splice_redirect(skb, p);
}
