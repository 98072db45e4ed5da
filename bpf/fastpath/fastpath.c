//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/*
 * The fast path (docs/architecture.md, "Data path on a node", step 7): for
 * an HTTP/1.1 caller on the node, the kernel routes each request the way
 * the agent would, without the agent.
 *
 * A cgroup sock_ops program puts into fp_socks, keyed by their own 4-tuple,
 * the sockets of callers connecting to a fast port (a steered pod port the
 * agent named in fp_ports, or its Service's address, in fp_aliases) and
 * the sockets that the app and the
 * destinations accept from the agent. The agent pairs a caller it serves
 * with the upstream connections it made for it: fp_callers gives the
 * caller's entry in fp_state, fp_slots the upstream of each destination
 * slot (0: the app), fp_ups the caller of each upstream.
 *
 * The sk_msg program runs in the sender's own sendmsg. On a caller's
 * socket it reads the request head in the first bytes of the message,
 * picks the destination with the port's rules (fp_sets, fp_rules, fp_index:
 * the same answer as pkg/redirect/match's Index) and puts head and body
 * into the chosen upstream socket's receive queue (BPF_F_INGRESS); on an
 * upstream's socket it reads the response head and puts the response into
 * the caller's receive queue, while that caller's current request is on
 * that upstream. No TCP segment, no kernel worker, no process wake-up but
 * the reader's.
 *
 * Whatever the program cannot settle goes to the agent over TCP as before
 * (SK_PASS without a redirect) and the caller's mode becomes AGENT: a head
 * not complete in the first bytes, Transfer-Encoding, Expect, Upgrade,
 * Connection, a body over fp_max_body, a session that could come from
 * baggage, a field a rule reads given twice, no upstream paired for the
 * destination. A response that cannot be settled (no Content-Length,
 * chunked, an interim status, over fp_max_body: the bound on what the
 * kernel queues for a reader, which ingress redirects do not charge to its
 * receive buffer) is left to the agent the same way (FP_F_TAKEN), which
 * forwards it. The agent hands a caller back to the kernel (mode HANDBACK)
 * between requests; the program takes it back only once the agent has read
 * every byte the caller sent and the caller every byte the agent wrote, so
 * the two queues a caller reads from (TCP, and the psock queue redirects
 * fill) never hold its bytes at once.
 *
 * A request sent while the previous one's response is still on its way
 * (pipelining) goes to the agent, which serves it once that response is
 * whole. So that the agent's answer, sent over TCP, cannot reach the
 * caller before the last of the kernel's (the program lets go of a request
 * before the kernel queues what it redirects), the request marks the
 * caller's busy word (FP_BUSY_PIPE), and the upstream's program, which
 * clears that word with a compare-and-swap on the response's last bytes,
 * finds the mark and leaves those bytes to the agent instead (FP_F_TAIL):
 * they then come after everything the kernel queued, by TCP, in order.
 * One of the two wins the word: either the response ended first (the
 * request is routed as any other) or the agent has the tail. In the first
 * case the response's last bytes may still be on their way into the
 * caller's queue as the request is routed; the next response comes by the
 * same queue, and from the same upstream after them (its sendmsg calls are
 * ordered); from another only if that one answers a whole request before
 * the first finishes a sendmsg it has begun.
 */

#include "types.h"
#include "sock_ctx.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_F_MMAPABLE (1U << 10)

#define FP_CONNS 16384 /* callers served at once */
#define FP_SETS 1024 /* rule sets: two per fast port */
#define FP_RULES 16384
#define FP_COUNTERS 16384
#define FP_NAMES 8 /* header fields the rules of a port read */
#define FP_SCAN 16 /* rules of a port not found through fp_index */
#define FP_CONDS 4
#define FP_VALUE_MAX 64
#define FP_NAME_MAX 32
#define FP_HEAD_MAX 4096 /* a power of two */
#define FP_BUILTINS 8

/* Where the tracked fields of a head are in struct fp_scan. */
#define FP_H_SESSION 0
#define FP_H_BAGGAGE 1
#define FP_H_RULE 2 /* + the name's place in the set */
#define FP_HDRS (FP_H_RULE + FP_NAMES)
#define FP_H_CL 30
#define FP_H_NONE 31

/* The built-in names, fp_builtins[i], in this order. */
enum {
	FP_B_SESSION,
	FP_B_BAGGAGE,
	FP_B_CONTENT_LENGTH,
	FP_B_TRANSFER_ENCODING,
	FP_B_CONNECTION,
	FP_B_UPGRADE,
	FP_B_EXPECT,
	FP_B_COUNT,
};

/* fp_conn.mode */
enum {
	FP_MODE_AGENT = 0, /* the agent routes; everything passes */
	FP_MODE_HANDBACK = 1, /* the agent offers the caller back (see fp_handback) */
	FP_MODE_FAST = 2, /* the program routes */
	FP_MODE_CLOSED = 3, /* the agent is done with the caller */
};

/* fp_conn.flags */
#define FP_F_HEAD 1 /* the current request is a HEAD: its response has no body */
#define FP_F_RESP 2 /* its response's head was seen: resp_left counts down */
#define FP_F_TAKEN 4 /* its response was left to the agent */
#define FP_F_TAIL 8 /* with FP_F_TAKEN: only its last resp_left bytes were (a request was pipelined) */

/* fp_conn.busy: 0, or FP_BUSY while a request the kernel routed waits for
 * the end of its response, with FP_BUSY_PIPE once a request pipelined
 * behind it went to the agent. */
#define FP_BUSY 1
#define FP_BUSY_PIPE 2

/* fp_stats: why messages went to the agent, and what the program did. */
enum {
	FP_ST_ROUTED, /* requests routed in the kernel */
	FP_ST_RESPONSES, /* responses put into a caller's queue */
	FP_ST_PASS_MODE, /* the agent routes the caller */
	FP_ST_PASS_HEAD, /* head incomplete, not HTTP/1.1, or not one the program reads */
	FP_ST_PASS_FRAMING, /* Transfer-Encoding, Expect, Upgrade, Connection, a large body */
	FP_ST_PASS_RULES, /* the rules would read what the program cannot (baggage, a repeated field) */
	FP_ST_PASS_UNPAIRED, /* no upstream paired for the destination */
	FP_ST_PASS_REDIRECT, /* the upstream's socket was gone */
	FP_ST_TAKEN, /* responses left to the agent */
	FP_ST_PIPELINED, /* requests pipelined behind a response on its way: the agent's */
	FP_ST_HANDBACKS, /* callers taken back from the agent */
	FP_ST_HANDBACK_WAIT, /* handbacks put off: bytes in flight */
	FP_ST_COUNT,
};

/* Set from Go before load: the largest body either way the kernel queues. */
const volatile __u32 fp_max_body = 256 << 10;

/* A socket as it sees itself; IPv4, or IPv4-mapped IPv6. */
struct fp_tuple {
	__u32 local_ip4; /* network byte order */
	__u32 remote_ip4; /* network byte order */
	__u16 local_port; /* host byte order */
	__u16 remote_port; /* host byte order */
};

struct fp_addr {
	__u32 ip4; /* network byte order */
	__u16 port; /* host byte order */
	__u16 pad;
};

/*
 * One caller, in the memory the agent maps (fp_state). Fields both sides
 * write change with atomic operations.
 */
struct fp_conn {
	__u32 mode; /* FP_MODE_* */
	__u32 busy; /* FP_BUSY while a request the kernel routed waits for its response's end (| FP_BUSY_PIPE) */
	__u32 slot; /* that request's destination */
	__u32 flags; /* FP_F_* */
	__u32 req_left; /* its body bytes still to come from the caller */
	__u32 resp_left; /* its response's bytes still to go to the caller (FP_F_RESP) */
	__u32 gen; /* which use of this entry; upstreams of an older one are ignored */
	__u32 isn; /* the caller sent write_seq - isn bytes over TCP ... */
	__u32 irs; /* ... and received rcv_nxt - irs (fp_isn) */
	__u32 handback_read; /* the agent read this many of the caller's (FP_MODE_HANDBACK) */
	__u32 handback_written; /* and wrote this many to it */
	__u32 pad;
	__u64 requests; /* routed in the kernel */
	__u64 responses; /* put into the caller's queue */
	__u64 passed; /* messages the caller sent that went to the agent */
	/* The fast port (pod address and port) the agent accepted the caller
	 * on: its key in fp_ports. A caller that dialled a Service's address
	 * has that address as its remote one; kube-proxy turned it into the
	 * pod's only on the way. */
	struct fp_addr port;
};

struct fp_up {
	__u32 conn; /* the caller's entry in fp_state */
	__u32 gen;
	__u32 slot;
	__u32 pad;
	struct fp_tuple caller;
	__u32 pad2;
};

struct fp_slot_key {
	__u32 conn;
	__u32 slot;
};

struct fp_port {
	__u32 set; /* its current rule set */
	__u32 pad;
};

struct fp_cond {
	__u8 kind; /* FP_K_* */
	__u8 hdr; /* for header conditions: the name's place in the set */
	__u8 len; /* of value */
	__u8 pad;
	__u8 value[FP_VALUE_MAX];
};

/* Condition kinds, as pkg/redirect/match's. */
enum {
	FP_K_SESSION = 1,
	FP_K_HEADER,
	FP_K_HEADER_PREFIX,
	FP_K_PATH,
	FP_K_PATH_PREFIX,
	FP_K_METHOD,
};

struct fp_rule {
	__u32 pos; /* the route's position: the lowest that selects a request wins */
	__u32 slot; /* destination slot */
	__u32 counter; /* in fp_counts */
	__u32 nconds;
	struct fp_cond conds[FP_CONDS];
};

/* A header field name: lower case, with its FNV-1a 64 hash. */
struct fp_name {
	__u64 hash;
	__u32 len;
	__u32 exact; /* some rule of the set is filed in fp_index under this name */
	__u8 name[FP_NAME_MAX];
};

struct fp_set {
	__u32 nnames;
	__u32 nscan;
	__u32 session; /* some rule of the set is filed under a session key */
	__u32 app_counter; /* in fp_counts: requests no rule selects */
	struct fp_name names[FP_NAMES];
	__u32 scan[FP_SCAN]; /* rules in fp_rules, in position order */
};

/* fp_index: a rule filed under a value's hash; its conditions are checked. */
struct fp_index_key {
	__u32 set;
	__u8 kind; /* FP_K_SESSION or FP_K_HEADER */
	__u8 hdr;
	__u16 pad;
	__u64 hash; /* FNV-1a 64 of the value */
};

/* Names the program knows, set from Go before load (the hash is Go's).
 * Not const: a global function may only be given writable memory. */
struct fp_name fp_builtins[FP_BUILTINS];

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct fp_tuple);
	__type(value, __u64);
} fp_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct fp_addr);
	__type(value, struct fp_port);
} fp_ports SEC(".maps");

/* Services' addresses (ClusterIP and port) of fast ports: a caller that
 * dials one is a caller of a fast port, as one that dials the pod's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct fp_addr);
	__type(value, __u32);
} fp_aliases SEC(".maps");

/* Addresses of the destinations of fast ports: the sockets they accept
 * from a fast port's pod address (fp_froms) go into fp_socks too. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct fp_addr);
	__type(value, __u32);
} fp_dests SEC(".maps");

/* The pod addresses of fast ports (IPv4, network order): the agent dials a
 * port's destinations from inside its pod, so from that address. A socket
 * a destination accepts from anywhere else (an environment's fork called
 * by another fork, redirected at connect()) is not the agent's and stays
 * out of fp_socks: in the sockhash it would pay for sk_msg on every
 * message and gain nothing. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} fp_froms SEC(".maps");

/* A caller's first sequence numbers, both ways. */
struct fp_seqs {
	__u32 snd; /* snd_nxt when established: its first byte's */
	__u32 rcv; /* rcv_nxt when established */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fp_tuple);
	__type(value, struct fp_seqs);
} fp_isn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_CONNS);
	__type(key, struct fp_tuple);
	__type(value, __u32);
} fp_callers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, FP_CONNS);
	__type(key, __u32);
	__type(value, struct fp_conn);
} fp_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fp_slot_key);
	__type(value, struct fp_tuple);
} fp_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fp_tuple);
	__type(value, struct fp_up);
} fp_ups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FP_SETS);
	__type(key, __u32);
	__type(value, struct fp_set);
} fp_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FP_RULES);
	__type(key, __u32);
	__type(value, struct fp_rule);
} fp_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_RULES);
	__type(key, struct fp_index_key);
	__type(value, __u32);
} fp_index SEC(".maps");

/* Requests routed in the kernel, per intercept (and per port for the app). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} fp_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_ST_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} fp_stats SEC(".maps");

/* The kernel's view of a TCP socket, for the handback (CO-RE). */
struct tcp_sock {
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 write_seq;
} __attribute__((preserve_access_index));

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static __always_inline void fp_stat(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&fp_stats, &i);

	if (v)
		*v += 1;
}

static __always_inline void fp_count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&fp_counts, &i);

	if (v)
		*v += 1;
}

static __always_inline __u8 fp_lower(__u8 c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* RFC 9110 tchar. */
static __always_inline int fp_tchar(__u8 c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
	case '+': case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

/* An IPv4 address from an IPv4-mapped IPv6 one; 0 if it is not one. */
static __always_inline __u32 fp_v4mapped(__u32 a0, __u32 a1, __u32 a2, __u32 a3)
{
	if (a0 || a1 || a2 != bpf_htonl(0xffff))
		return 0;
	return a3;
}

static __always_inline int fp_tuple_msg(struct sk_msg_md *msg, struct fp_tuple *t)
{
	if (msg->family == AF_INET) {
		t->local_ip4 = msg->local_ip4;
		t->remote_ip4 = msg->remote_ip4;
	} else if (msg->family == AF_INET6) {
		t->local_ip4 = fp_v4mapped(msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2], msg->local_ip6[3]);
		t->remote_ip4 = fp_v4mapped(msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2], msg->remote_ip6[3]);
		if (!t->local_ip4 || !t->remote_ip4)
			return 0;
	} else {
		return 0;
	}
	t->local_port = msg->local_port;
	t->remote_port = bpf_ntohl(msg->remote_port);
	return 1;
}

static __always_inline int fp_tuple_ops(struct bpf_sock_ops *skops, struct fp_tuple *t)
{
	if (skops->family == AF_INET) {
		t->local_ip4 = skops->local_ip4;
		t->remote_ip4 = skops->remote_ip4;
	} else if (skops->family == AF_INET6) {
		t->local_ip4 = fp_v4mapped(skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3]);
		t->remote_ip4 = fp_v4mapped(skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3]);
		if (!t->local_ip4 || !t->remote_ip4)
			return 0;
	} else {
		return 0;
	}
	t->local_port = skops->local_port;
	t->remote_port = bpf_ntohl(skops->remote_port);
	return 1;
}

/*
 * sock_ops: callers of fast ports, and the sockets the app and the
 * destinations accept, go into fp_socks once established.
 */
SEC("sockops")
int fp_sockops(struct bpf_sock_ops *skops)
{
	struct fp_tuple t = {};
	struct fp_addr a = {};
	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	if (!fp_tuple_ops(skops, &t))
		return 1;
	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		/* A caller dials a fast port. The agent's own connections to
		 * the app come from the pod's address and are left alone. */
		a.ip4 = t.remote_ip4;
		a.port = t.remote_port;
		if (t.local_ip4 == t.remote_ip4 ||
		    (!bpf_map_lookup_elem(&fp_ports, &a) && !bpf_map_lookup_elem(&fp_aliases, &a)))
			return 1;
		struct fp_seqs seqs = { .snd = skops->snd_nxt, .rcv = skops->rcv_nxt };

		bpf_map_update_elem(&fp_isn, &t, &seqs, BPF_ANY);
	} else {
		/* The app accepts the agent's connection (from the pod's own
		 * address), or a destination accepts one (from a fast port's
		 * pod address). */
		a.ip4 = t.local_ip4;
		a.port = t.local_port;
		if (bpf_map_lookup_elem(&fp_dests, &a)) {
			if (!bpf_map_lookup_elem(&fp_froms, &t.remote_ip4))
				return 1;
		} else if (t.local_ip4 != t.remote_ip4 || !bpf_map_lookup_elem(&fp_ports, &a)) {
			return 1;
		}
	}
	bpf_sock_hash_update(skops, &fp_socks, &t, BPF_ANY);
	return 1;
}

/* Scanning a head, one byte per bpf_loop step. */
enum {
	P_METHOD,
	P_TARGET,
	P_QUERY,
	P_VERSION,
	P_LF,
	P_NAME,
	P_OWS,
	P_VALUE,
	P_VALUE_LF,
	P_END_LF,
	P_RVERSION,
	P_CODE,
	P_REASON,
};

#define FP_HTTP11 0x485454502f312e31ULL /* "HTTP/1.1" */

struct fp_scan {
	__u64 hash; /* of the field name so far */
	__u64 ver; /* the version's bytes so far */
	__u32 phase;
	__u32 tok; /* where the current token starts */
	__u32 vend; /* after the last byte of the value that is not whitespace */
	__u32 hdr; /* FP_H_* of the current field */
	__u32 end; /* the head's length, once its end is seen */
	__u32 body; /* Content-Length */
	__u32 status;
	__u32 method_len;
	__u32 path_off;
	__u32 path_len;
	__u16 off[FP_HDRS];
	__u16 len[FP_HDRS];
	__u8 cnt[FP_HDRS];
	__u32 set; /* the port's rule set */
	__u8 request; /* a request head (else a response's) */
	__u8 cl; /* Content-Length: 1 digits seen, 2 then whitespace, 0x80 done */
	__u8 stat; /* FP_ST_PASS_* when the scan gives up */
	__u8 pad;
};

static __always_inline long fp_fail(struct fp_scan *s, __u8 why)
{
	s->stat = why;
	return 1;
}

/*
 * The loops over bytes below are global functions: the verifier checks
 * each once, not again at every call in every state of its caller.
 */

/* Whether the field name of n bytes at tok, whose hash is hash, is want
 * (lower case). */
__noinline int fp_name_eq(struct sk_msg_md *msg, __u32 tok, __u32 n, __u64 hash, const struct fp_name *want)
{
	void *data, *end;
	__u32 k;

	if (!msg || !want || want->len != n || want->hash != hash)
		return 0;
	data = (void *)(long)msg->data;
	end = (void *)(long)msg->data_end;
	for (k = 0; k < FP_NAME_MAX; k++) {
		__u8 *p;

		if (k >= n)
			return 1;
		p = data + ((tok + k) & (FP_HEAD_MAX - 1));
		if ((void *)(p + 1) > end)
			return 0;
		if (fp_lower(*p) != want->name[k])
			return 0;
	}
	return 1;
}

static __always_inline int fp_is(struct sk_msg_md *msg, struct fp_scan *s, __u32 n, const struct fp_name *want)
{
	return fp_name_eq(msg, s->tok, n, s->hash, want);
}

/* The field name ended at i: which one is it? */
static __always_inline long fp_field(struct sk_msg_md *msg, struct fp_scan *s, __u32 i)
{
	__u32 n = i - s->tok;
	struct fp_set *set;
	__u32 k;

	s->hdr = FP_H_NONE;
	s->phase = P_OWS;
	if (fp_is(msg, s, n, &fp_builtins[FP_B_CONTENT_LENGTH])) {
		s->hdr = FP_H_CL;
		return 0;
	}
	if (fp_is(msg, s, n, &fp_builtins[FP_B_TRANSFER_ENCODING]) ||
	    fp_is(msg, s, n, &fp_builtins[FP_B_UPGRADE]))
		return fp_fail(s, FP_ST_PASS_FRAMING);
	if (!s->request) /* a response: nothing else matters */
		return 0;
	if (fp_is(msg, s, n, &fp_builtins[FP_B_CONNECTION]) ||
	    fp_is(msg, s, n, &fp_builtins[FP_B_EXPECT]))
		return fp_fail(s, FP_ST_PASS_FRAMING);
	if (fp_is(msg, s, n, &fp_builtins[FP_B_SESSION])) {
		s->hdr = FP_H_SESSION;
		return 0;
	}
	if (fp_is(msg, s, n, &fp_builtins[FP_B_BAGGAGE])) {
		s->hdr = FP_H_BAGGAGE;
		return 0;
	}
	set = bpf_map_lookup_elem(&fp_sets, &s->set);
	if (!set)
		return 0;
	for (k = 0; k < FP_NAMES; k++) {
		if (k >= set->nnames)
			break;
		if (fp_is(msg, s, n, &set->names[k])) {
			s->hdr = FP_H_RULE + k;
			return 0;
		}
	}
	return 0;
}

/* One byte of a field value. */
static __always_inline long fp_value(struct fp_scan *s, __u32 i, __u8 c)
{
	if (c == '\r') {
		s->phase = P_VALUE_LF;
		return 0;
	}
	if ((c < 0x20 && c != '\t') || c == 0x7f)
		return fp_fail(s, FP_ST_PASS_HEAD);
	if (c != ' ' && c != '\t')
		s->vend = i + 1;
	if (s->hdr != FP_H_CL)
		return 0;
	/* Content-Length: digits only, one value (a list goes to the agent). */
	if (c >= '0' && c <= '9') {
		if (s->cl == 2 || s->body > 100000000)
			return fp_fail(s, FP_ST_PASS_FRAMING);
		s->body = s->body * 10 + (c - '0');
		s->cl = 1;
		return 0;
	}
	if ((c == ' ' || c == '\t') && s->cl == 1) {
		s->cl = 2;
		return 0;
	}
	return fp_fail(s, FP_ST_PASS_FRAMING);
}

/* A field line ended. */
static __always_inline long fp_line(struct fp_scan *s)
{
	__u32 h = s->hdr;

	if (h == FP_H_CL) {
		/* no digits, or a second Content-Length */
		if (!(s->cl & 3) || s->cl & 0x80)
			return fp_fail(s, FP_ST_PASS_FRAMING);
		s->cl = 0x80;
		return 0;
	}
	if (h >= FP_HDRS)
		return 0;
	if (s->cnt[h] < 2)
		s->cnt[h]++;
	s->off[h] = s->tok;
	s->len[h] = s->vend > s->tok ? s->vend - s->tok : 0;
	return 0;
}

/*
 * One byte of a head. A global function, so the verifier checks it once
 * rather than for every state the scan could be in.
 */
__noinline long fp_step(struct sk_msg_md *msg, struct fp_scan *s, __u32 i, __u8 c)
{
	if (!msg || !s)
		return 1;
	switch (s->phase) {
	case P_METHOD:
		if (c == ' ') {
			if (i == 0 || i > 16)
				return fp_fail(s, FP_ST_PASS_HEAD);
			s->method_len = i;
			s->phase = P_TARGET;
			s->tok = i + 1;
			return 0;
		}
		return fp_tchar(c) ? 0 : fp_fail(s, FP_ST_PASS_HEAD);
	case P_TARGET:
		if (i == s->tok && c != '/') /* origin form only */
			return fp_fail(s, FP_ST_PASS_HEAD);
		if (c == '?' || c == '#' || c == ' ') {
			s->path_off = s->tok;
			s->path_len = i - s->tok;
			s->phase = c == ' ' ? P_VERSION : P_QUERY;
			s->tok = i + 1;
			return 0;
		}
		return c > ' ' && c != 0x7f ? 0 : fp_fail(s, FP_ST_PASS_HEAD);
	case P_QUERY:
		if (c == ' ') {
			s->phase = P_VERSION;
			s->tok = i + 1;
			return 0;
		}
		return c > ' ' && c != 0x7f ? 0 : fp_fail(s, FP_ST_PASS_HEAD);
	case P_VERSION:
		if (c == '\r') {
			if (i - s->tok != 8 || s->ver != FP_HTTP11)
				return fp_fail(s, FP_ST_PASS_HEAD);
			s->phase = P_LF;
			return 0;
		}
		if (i - s->tok >= 8)
			return fp_fail(s, FP_ST_PASS_HEAD);
		s->ver = s->ver << 8 | c;
		return 0;
	case P_LF:
		if (c != '\n')
			return fp_fail(s, FP_ST_PASS_HEAD);
		s->phase = P_NAME;
		s->tok = i + 1;
		s->hash = FNV_OFFSET;
		return 0;
	case P_NAME:
		if (i == s->tok && c == '\r') {
			s->phase = P_END_LF;
			return 0;
		}
		if (c == ':') {
			if (i == s->tok)
				return fp_fail(s, FP_ST_PASS_HEAD);
			return fp_field(msg, s, i);
		}
		if (!fp_tchar(c))
			return fp_fail(s, FP_ST_PASS_HEAD);
		s->hash = (s->hash ^ fp_lower(c)) * FNV_PRIME;
		return 0;
	case P_OWS:
		if (c == ' ' || c == '\t')
			return 0;
		s->phase = P_VALUE;
		s->tok = i;
		s->vend = i;
		return fp_value(s, i, c);
	case P_VALUE:
		return fp_value(s, i, c);
	case P_VALUE_LF:
		if (c != '\n')
			return fp_fail(s, FP_ST_PASS_HEAD);
		if (fp_line(s))
			return 1;
		s->phase = P_NAME;
		s->tok = i + 1;
		s->hash = FNV_OFFSET;
		return 0;
	case P_END_LF:
		if (c != '\n')
			return fp_fail(s, FP_ST_PASS_HEAD);
		s->end = i + 1;
		return 1;
	case P_RVERSION:
		if (i < 8) {
			s->ver = s->ver << 8 | c;
			return 0;
		}
		if (c != ' ' || s->ver != FP_HTTP11)
			return fp_fail(s, FP_ST_PASS_HEAD);
		s->phase = P_CODE;
		return 0;
	case P_CODE:
		if (i < 12) {
			if (c < '0' || c > '9')
				return fp_fail(s, FP_ST_PASS_HEAD);
			s->status = s->status * 10 + (c - '0');
			return 0;
		}
		if (c == '\r') {
			s->phase = P_LF;
			return 0;
		}
		if (c != ' ')
			return fp_fail(s, FP_ST_PASS_HEAD);
		s->phase = P_REASON;
		return 0;
	case P_REASON:
		if (c == '\r') {
			s->phase = P_LF;
			return 0;
		}
		return (c >= 0x20 && c != 0x7f) || c == '\t' ? 0 : fp_fail(s, FP_ST_PASS_HEAD);
	}
	return fp_fail(s, FP_ST_PASS_HEAD);
}

struct fp_loop {
	struct sk_msg_md *msg;
	struct fp_scan *s;
};

static long fp_scan_byte(__u32 i, struct fp_loop *l)
{
	struct sk_msg_md *msg = l->msg;
	void *data = (void *)(long)msg->data;
	void *end = (void *)(long)msg->data_end;
	__u32 j = i & (FP_HEAD_MAX - 1);
	__u8 *p = data + j;
	long r;

	if ((void *)(p + 1) > end)
		return 1; /* the head did not end in the bytes at hand */
	r = fp_step(msg, l->s, j, *p);
	/* The verifier knows nothing of a global function's result: clang,
	 * which does, must not drop the test that bounds it. */
	asm volatile("" : "+r"(r));
	return r ? 1 : 0;
}

/* Scans the head at the start of msg; s->end is its length once complete. */
static __always_inline void fp_scan_head(struct sk_msg_md *msg, struct fp_scan *s)
{
	struct fp_loop l = { .msg = msg, .s = s };
	__u32 n = msg->size;

	if (n > FP_HEAD_MAX)
		n = FP_HEAD_MAX;
	/* Make the first n bytes one run (a no-op when they are already). */
	if ((long)msg->data_end - (long)msg->data < n)
		bpf_msg_pull_data(msg, 0, n, 0);
	bpf_loop(n, fp_scan_byte, &l, 0);
}

/* FNV-1a 64 of n bytes of the message at off (n <= FP_VALUE_MAX). */
__noinline __u64 fp_hash(struct sk_msg_md *msg, __u32 off, __u32 n)
{
	void *data, *end;
	__u64 h = FNV_OFFSET;
	__u32 k;

	if (!msg)
		return 0;
	data = (void *)(long)msg->data;
	end = (void *)(long)msg->data_end;
	for (k = 0; k < FP_VALUE_MAX; k++) {
		__u8 *p;

		if (k >= n)
			break;
		p = data + ((off + k) & (FP_HEAD_MAX - 1));
		if ((void *)(p + 1) > end)
			break;
		h = (h ^ *p) * FNV_PRIME;
	}
	return h;
}

/* Whether n bytes of the message at off are c's value's first n. */
__noinline int fp_bytes_eq(struct sk_msg_md *msg, __u32 off, __u32 n, const struct fp_cond *c)
{
	void *data, *end;
	__u32 k;

	if (!msg || !c || n > FP_VALUE_MAX)
		return 0;
	data = (void *)(long)msg->data;
	end = (void *)(long)msg->data_end;
	for (k = 0; k < FP_VALUE_MAX; k++) {
		__u8 *p;

		if (k >= n)
			return 1;
		p = data + ((off + k) & (FP_HEAD_MAX - 1));
		if ((void *)(p + 1) > end)
			return 0;
		if (*p != c->value[k])
			return 0;
	}
	return 1;
}

/* Whether every condition of r holds for the scanned head. */
__noinline int fp_rule_holds(struct sk_msg_md *msg, const struct fp_scan *s, const struct fp_rule *r)
{
	__u32 k;

	if (!msg || !s || !r)
		return 0;
	for (k = 0; k < FP_CONDS; k++) {
		const struct fp_cond *c;
		__u32 off, len, h;

		if (k >= r->nconds)
			return 1;
		c = &r->conds[k];
		switch (c->kind) {
		case FP_K_SESSION:
			h = FP_H_SESSION;
			goto field;
		case FP_K_HEADER:
		case FP_K_HEADER_PREFIX:
			h = FP_H_RULE + (c->hdr & (FP_NAMES - 1));
field:
			if (h >= FP_HDRS || s->cnt[h] != 1)
				return 0;
			off = s->off[h];
			len = s->len[h];
			if (c->kind == FP_K_HEADER_PREFIX ? len < c->len : len != c->len)
				return 0;
			if (!fp_bytes_eq(msg, off, c->len, c))
				return 0;
			break;
		case FP_K_PATH:
			if (s->path_len != c->len || !fp_bytes_eq(msg, s->path_off, c->len, c))
				return 0;
			break;
		case FP_K_PATH_PREFIX:
			if (s->path_len < c->len || !fp_bytes_eq(msg, s->path_off, c->len, c))
				return 0;
			break;
		case FP_K_METHOD:
			if (s->method_len != c->len || !fp_bytes_eq(msg, 0, c->len, c))
				return 0;
			break;
		default:
			return 0;
		}
	}
	return 1;
}

struct fp_choice {
	__u32 pos;
	__u32 slot;
	__u32 counter;
};

static __always_inline void fp_try(struct sk_msg_md *msg, struct fp_scan *s, __u32 id, struct fp_choice *best)
{
	struct fp_rule *r = bpf_map_lookup_elem(&fp_rules, &id);

	if (r && r->pos < best->pos && fp_rule_holds(msg, s, r)) {
		best->pos = r->pos;
		best->slot = r->slot;
		best->counter = r->counter;
	}
}

static __always_inline void fp_try_index(struct sk_msg_md *msg, struct fp_scan *s, __u32 set, __u8 kind, __u32 h, struct fp_choice *best)
{
	struct fp_index_key key = { .set = set, .kind = kind };
	__u32 *id;

	if (h >= FP_HDRS || s->cnt[h] != 1 || s->len[h] > FP_VALUE_MAX)
		return;
	key.hdr = kind == FP_K_SESSION ? 0 : h - FP_H_RULE;
	key.hash = fp_hash(msg, s->off[h], s->len[h]);
	id = bpf_map_lookup_elem(&fp_index, &key);
	if (id)
		fp_try(msg, s, *id, best);
}

/*
 * The destination of the scanned request under set: the first rule (by
 * position) that selects it, or the app (slot 0). Returns 0, or an
 * FP_ST_PASS_* when the agent must decide.
 */
static __always_inline __u32 fp_route(struct sk_msg_md *msg, struct fp_scan *s, __u32 setid, struct fp_set *set, struct fp_choice *best)
{
	__u32 k;

	best->pos = 0xffffffff;
	best->slot = 0;
	best->counter = set->app_counter;
	/* What the userspace matcher would read joined, or from baggage. */
	for (k = 0; k < FP_HDRS; k++) {
		if (k != FP_H_BAGGAGE && s->cnt[k] > 1)
			return FP_ST_PASS_RULES;
	}
	if (set->session) {
		if (s->cnt[FP_H_SESSION] == 0 && s->cnt[FP_H_BAGGAGE] > 0)
			return FP_ST_PASS_RULES;
		fp_try_index(msg, s, setid, FP_K_SESSION, FP_H_SESSION, best);
	}
	for (k = 0; k < FP_NAMES; k++) {
		if (k >= set->nnames)
			break;
		if (set->names[k].exact)
			fp_try_index(msg, s, setid, FP_K_HEADER, FP_H_RULE + k, best);
	}
	for (k = 0; k < FP_SCAN; k++) {
		if (k >= set->nscan)
			break;
		fp_try(msg, s, set->scan[k], best);
	}
	return 0;
}

/* The agent routes the caller from now on; this message goes to it. */
static __always_inline int fp_to_agent(struct fp_conn *c, __u32 why)
{
	__sync_val_compare_and_swap(&c->mode, FP_MODE_FAST, FP_MODE_AGENT);
	__sync_fetch_and_add(&c->passed, 1);
	fp_stat(why);
	return SK_PASS;
}

/*
 * The agent offered the caller back. Take it if the agent has read every
 * byte the caller sent over TCP, and the caller has received and read
 * every byte the agent wrote: then nothing of the agent's is left in the
 * caller's TCP queue when its next response comes by the psock queue.
 */
static __always_inline int fp_take_back(struct sk_msg_md *msg, struct fp_conn *c)
{
	struct bpf_sock *sk = msg->sk;
	struct tcp_sock *tp;
	__u32 write_seq, rcv_nxt, copied_seq;

	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	write_seq = tp->write_seq;
	rcv_nxt = tp->rcv_nxt;
	copied_seq = tp->copied_seq;
	if (write_seq - c->isn != c->handback_read || rcv_nxt - c->irs != c->handback_written ||
	    rcv_nxt != copied_seq) {
		fp_stat(FP_ST_HANDBACK_WAIT);
		return 0;
	}
	if (__sync_val_compare_and_swap(&c->mode, FP_MODE_HANDBACK, FP_MODE_FAST) != FP_MODE_HANDBACK)
		return 0;
	fp_stat(FP_ST_HANDBACKS);
	return 1;
}

/* A message from a caller. */
static __always_inline int fp_request(struct sk_msg_md *msg, __u32 idx, struct fp_tuple *t)
{
	struct fp_conn *c = bpf_map_lookup_elem(&fp_state, &idx);
	struct fp_scan s = {};
	struct fp_slot_key sk = { .conn = idx };
	struct fp_choice best;
	struct fp_tuple *up;
	struct fp_addr pa = {};
	struct fp_port *port;
	struct fp_set *set;
	__u32 size = msg->size, total, mode, why;

	if (!c)
		return SK_PASS;
	if (c->req_left) {
		/* The rest of a body the kernel is forwarding. */
		__u32 n = c->req_left;

		sk.slot = c->slot;
		up = bpf_map_lookup_elem(&fp_slots, &sk);
		if (size > n)
			bpf_msg_apply_bytes(msg, n);
		else
			n = size;
		c->req_left -= n;
		if (!up || bpf_msg_redirect_hash(msg, &fp_socks, up, BPF_F_INGRESS) != SK_PASS) {
			/* The upstream went in the middle of a body: the request
			 * is lost, fail the caller's send. */
			c->mode = FP_MODE_CLOSED;
			fp_stat(FP_ST_PASS_REDIRECT);
			return SK_DROP;
		}
		return SK_PASS;
	}
	mode = c->mode;
	if (mode == FP_MODE_HANDBACK) {
		if (fp_take_back(msg, c)) {
			mode = FP_MODE_FAST;
		} else {
			/* This request is the agent's; it offers the caller
			 * back again after it. */
			__sync_val_compare_and_swap(&c->mode, FP_MODE_HANDBACK, FP_MODE_AGENT);
			mode = FP_MODE_AGENT;
		}
	}
	if (mode != FP_MODE_FAST) {
		__sync_fetch_and_add(&c->passed, 1);
		fp_stat(FP_ST_PASS_MODE);
		return SK_PASS;
	}
	if (c->busy) {
		/* Pipelined behind a response on its way: the agent's, and the
		 * end of that response with it (see the top of this file). */
		__u32 was = __sync_val_compare_and_swap(&c->busy, FP_BUSY, FP_BUSY | FP_BUSY_PIPE);

		if (was != 0)
			return fp_to_agent(c, FP_ST_PIPELINED);
		/* The response ended meanwhile: route this one. */
	}
	pa.ip4 = c->port.ip4;
	pa.port = c->port.port;
	port = bpf_map_lookup_elem(&fp_ports, &pa);
	if (!port)
		return fp_to_agent(c, FP_ST_PASS_UNPAIRED);
	__u32 setid = port->set;
	set = bpf_map_lookup_elem(&fp_sets, &setid);
	if (!set)
		return fp_to_agent(c, FP_ST_PASS_UNPAIRED);
	s.set = setid;
	s.request = 1;
	s.phase = P_METHOD;
	s.hdr = FP_H_NONE;
	fp_scan_head(msg, &s);
	if (s.stat)
		return fp_to_agent(c, s.stat);
	if (!s.end)
		return fp_to_agent(c, FP_ST_PASS_HEAD);
	if (s.body > fp_max_body)
		return fp_to_agent(c, FP_ST_PASS_FRAMING);
	why = fp_route(msg, &s, setid, set, &best);
	if (why)
		return fp_to_agent(c, why);
	sk.slot = best.slot;
	up = bpf_map_lookup_elem(&fp_slots, &sk);
	if (!up)
		return fp_to_agent(c, FP_ST_PASS_UNPAIRED);
	total = s.end + s.body;
	c->slot = best.slot;
	c->resp_left = 0;
	c->flags = 0;
	if (s.method_len == 4) {
		void *data = (void *)(long)msg->data;
		void *end = (void *)(long)msg->data_end;

		if (data + 4 <= end && *(__u32 *)data == bpf_htonl(0x48454144)) /* "HEAD" */
			c->flags = FP_F_HEAD;
	}
	if (size > total) {
		/* More than this request: the rest is looked at again,
		 * and refused (pipelined) while its response is on its way. */
		bpf_msg_apply_bytes(msg, total);
		c->req_left = 0;
	} else {
		c->req_left = total - size;
	}
	__sync_fetch_and_add(&c->busy, FP_BUSY);
	if (bpf_msg_redirect_hash(msg, &fp_socks, up, BPF_F_INGRESS) != SK_PASS) {
		__sync_fetch_and_sub(&c->busy, FP_BUSY);
		c->req_left = 0;
		return fp_to_agent(c, FP_ST_PASS_REDIRECT);
	}
	__sync_fetch_and_add(&c->requests, 1);
	fp_stat(FP_ST_ROUTED);
	fp_count(best.counter);
	return SK_PASS;
}

/* A message from an upstream the agent paired with a caller. */
static __always_inline int fp_response(struct sk_msg_md *msg, struct fp_up *u)
{
	__u32 idx = u->conn, size = msg->size, n;
	struct fp_conn *c = bpf_map_lookup_elem(&fp_state, &idx);
	struct fp_scan s = {};

	if (!c || c->gen != u->gen)
		return SK_PASS;
	/* Not the answer to a request the kernel routed here: the agent's
	 * (it reads the upstream, and drops what no one asked for). */
	if (!c->busy || c->slot != u->slot || c->flags & FP_F_TAKEN)
		return SK_PASS;
	if (!(c->flags & FP_F_RESP)) {
		s.phase = P_RVERSION;
		s.hdr = FP_H_NONE;
		fp_scan_head(msg, &s);
		/* Its length is known when it has a Content-Length or cannot
		 * have a body (RFC 9112 6.3). */
		int known = (s.cl & 0x80) || s.status == 204 || s.status == 304 || (c->flags & FP_F_HEAD);

		if (s.stat || !s.end || s.status < 200 || s.status > 999 || !known || s.body > fp_max_body) {
			/* Left to the agent: it forwards this response. */
			__sync_fetch_and_or(&c->flags, FP_F_TAKEN);
			__sync_val_compare_and_swap(&c->mode, FP_MODE_FAST, FP_MODE_AGENT);
			fp_stat(FP_ST_TAKEN);
			return SK_PASS;
		}
		if (c->flags & FP_F_HEAD || s.status == 204 || s.status == 304)
			s.body = 0;
		c->resp_left = s.end + s.body;
		__sync_fetch_and_or(&c->flags, FP_F_RESP);
	}
	n = c->resp_left;
	if (size > n)
		bpf_msg_apply_bytes(msg, n); /* the rest is no one's: the agent drops it */
	else
		n = size;
	if (n == c->resp_left) {
		/* The last of it: the caller may send its next request, unless
		 * one was pipelined behind it and went to the agent: then these
		 * last bytes are the agent's to forward, after what the kernel
		 * queued (resp_left stays: how many). */
		__sync_fetch_and_and(&c->flags, ~(FP_F_RESP | FP_F_HEAD));
		c->resp_left = 0; /* before the caller may start its next */
		if (__sync_val_compare_and_swap(&c->busy, FP_BUSY, 0) != FP_BUSY) {
			c->resp_left = n;
			__sync_fetch_and_or(&c->flags, FP_F_TAKEN | FP_F_TAIL);
			fp_stat(FP_ST_TAKEN);
			return SK_PASS;
		}
		__sync_fetch_and_add(&c->responses, 1);
		fp_stat(FP_ST_RESPONSES);
	} else {
		c->resp_left -= n;
	}
	if (bpf_msg_redirect_hash(msg, &fp_socks, &u->caller, BPF_F_INGRESS) != SK_PASS)
		return SK_PASS; /* the caller is gone: the agent drops it */
	return SK_PASS;
}

SEC("sk_msg")
int fp_msg(struct sk_msg_md *msg)
{
	struct fp_tuple t = {};
	struct fp_up *u;
	__u32 *idx;

	if (!fp_tuple_msg(msg, &t))
		return SK_PASS;
	idx = bpf_map_lookup_elem(&fp_callers, &t);
	if (idx)
		return fp_request(msg, *idx, &t);
	u = bpf_map_lookup_elem(&fp_ups, &t);
	if (u)
		return fp_response(msg, u);
	return SK_PASS;
}
