/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The UAPI definitions the socket-level programs (bpf/splice/, bpf/fastpath/)
 * use on top of types.h: the contexts of sk_skb, sk_msg and sock_ops
 * programs, the sock_ops
 * callbacks and TCP states, taken from the kernel's include/uapi/linux/bpf.h.
 * Kernel ABI: these structs only ever grow at the end.
 */
#ifndef __DETOUR_SOCK_CTX_H
#define __DETOUR_SOCK_CTX_H

#include "types.h"

/* More of enum bpf_map_type; types.h's enum has the ones it needs. */
#define BPF_MAP_TYPE_PERCPU_ARRAY 6

struct bpf_flow_keys;

/* Context of BPF_PROG_TYPE_SK_SKB (and tc, socket filter...) programs. */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
	__u32 napi_id;

	/* Accessed by BPF_PROG_TYPE_sk_skb types from here to ... */
	__u32 family;
	__u32 remote_ip4; /* Stored in network byte order */
	__u32 local_ip4; /* Stored in network byte order */
	__u32 remote_ip6[4]; /* Stored in network byte order */
	__u32 local_ip6[4]; /* Stored in network byte order */
	__u32 remote_port; /* Stored in network byte order */
	__u32 local_port; /* stored in host byte order */
	/* ... here. */

	__u32 data_meta;
	__bpf_md_ptr(struct bpf_flow_keys *, flow_keys);
	__u64 tstamp;
	__u32 wire_len;
	__u32 gso_segs;
	__bpf_md_ptr(struct bpf_sock *, sk);
	__u32 gso_size;
	__u8 tstamp_type;
	__u32 : 24; /* Padding, future use. */
	__u64 hwtstamp;
};

/* Context of BPF_PROG_TYPE_SK_MSG programs. */
struct sk_msg_md {
	__bpf_md_ptr(void *, data);
	__bpf_md_ptr(void *, data_end);

	__u32 family;
	__u32 remote_ip4; /* Stored in network byte order */
	__u32 local_ip4; /* Stored in network byte order */
	__u32 remote_ip6[4]; /* Stored in network byte order */
	__u32 local_ip6[4]; /* Stored in network byte order */
	__u32 remote_port; /* Stored in network byte order */
	__u32 local_port; /* stored in host byte order */
	__u32 size; /* Total size of sk_msg */

	__bpf_md_ptr(struct bpf_sock *, sk); /* current socket */
};

/* bpf_msg_redirect_hash() flags. */
#define BPF_F_INGRESS (1ULL << 0)

/* Context of BPF_PROG_TYPE_SOCK_OPS programs. */
struct bpf_sock_ops {
	__u32 op;
	union {
		__u32 args[4]; /* Optionally passed to bpf program */
		__u32 reply; /* Returned by bpf program */
		__u32 replylong[4]; /* Optionally returned by bpf prog */
	};
	__u32 family;
	__u32 remote_ip4; /* Stored in network byte order */
	__u32 local_ip4; /* Stored in network byte order */
	__u32 remote_ip6[4]; /* Stored in network byte order */
	__u32 local_ip6[4]; /* Stored in network byte order */
	__u32 remote_port; /* Stored in network byte order */
	__u32 local_port; /* stored in host byte order */
	__u32 is_fullsock;
	__u32 snd_cwnd;
	__u32 srtt_us; /* Averaged RTT << 3 in usecs */
	__u32 bpf_sock_ops_cb_flags;
	__u32 state;
	__u32 rtt_min;
	__u32 snd_ssthresh;
	__u32 rcv_nxt;
	__u32 snd_nxt;
	__u32 snd_una;
	__u32 mss_cache;
	__u32 ecn_flags;
	__u32 rate_delivered;
	__u32 rate_interval_us;
	__u32 packets_out;
	__u32 retrans_out;
	__u32 total_retrans;
	__u32 segs_in;
	__u32 data_segs_in;
	__u32 segs_out;
	__u32 data_segs_out;
	__u32 lost_out;
	__u32 sacked_out;
	__u32 sk_txhash;
	__u64 bytes_received;
	__u64 bytes_acked;
	__bpf_md_ptr(struct bpf_sock *, sk);
	__bpf_md_ptr(void *, skb_data);
	__bpf_md_ptr(void *, skb_data_end);
	__u32 skb_len;
	__u32 skb_tcp_flags;
};

/* bpf_sock_ops_cb_flags_set() flags. */
enum {
	BPF_SOCK_OPS_RTO_CB_FLAG = (1 << 0),
	BPF_SOCK_OPS_RETRANS_CB_FLAG = (1 << 1),
	BPF_SOCK_OPS_STATE_CB_FLAG = (1 << 2),
	BPF_SOCK_OPS_RTT_CB_FLAG = (1 << 3),
};

/* bpf_sock_ops->op. */
enum {
	BPF_SOCK_OPS_VOID,
	BPF_SOCK_OPS_TIMEOUT_INIT,
	BPF_SOCK_OPS_RWND_INIT,
	BPF_SOCK_OPS_TCP_CONNECT_CB,
	BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
	BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
	BPF_SOCK_OPS_NEEDS_ECN,
	BPF_SOCK_OPS_BASE_RTT,
	BPF_SOCK_OPS_RTO_CB,
	BPF_SOCK_OPS_RETRANS_CB,
	BPF_SOCK_OPS_STATE_CB,
	BPF_SOCK_OPS_TCP_LISTEN_CB,
	BPF_SOCK_OPS_RTT_CB,
};

/* TCP states as sock_ops reports them (args[1] of BPF_SOCK_OPS_STATE_CB). */
enum {
	BPF_TCP_ESTABLISHED = 1,
	BPF_TCP_SYN_SENT,
	BPF_TCP_SYN_RECV,
	BPF_TCP_FIN_WAIT1,
	BPF_TCP_FIN_WAIT2,
	BPF_TCP_TIME_WAIT,
	BPF_TCP_CLOSE,
	BPF_TCP_CLOSE_WAIT,
	BPF_TCP_LAST_ACK,
	BPF_TCP_LISTEN,
	BPF_TCP_CLOSING,
	BPF_TCP_NEW_SYN_RECV,
};

#endif /* __DETOUR_SOCK_CTX_H */
