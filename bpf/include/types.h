/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The few UAPI definitions the programs in bpf/ use, taken from the kernel's
 * include/uapi/linux/bpf.h and friends. <linux/bpf.h> from linux-libc-dev
 * cannot be used with clang -target bpf as is: it pulls <asm/types.h>, which
 * Debian keeps in a per-architecture directory that the BPF target does not
 * search. These definitions are kernel ABI and never change.
 */
#ifndef __DETOUR_TYPES_H
#define __DETOUR_TYPES_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;

typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u32 __wsum;

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_SOCKHASH = 18,
};

/* flags for bpf_map_update_elem */
#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_EXIST 2

enum sk_action {
	SK_DROP = 0,
	SK_PASS,
};

#define __bpf_md_ptr(type, name) \
	union {                  \
		type name;       \
		__u64 : 64;      \
	} __attribute__((aligned(8)))

struct bpf_sock;

/* Context of BPF_PROG_TYPE_SK_LOOKUP programs. */
struct bpf_sk_lookup {
	union {
		__bpf_md_ptr(struct bpf_sock *, sk); /* Selected socket */
		__u64 cookie; /* Non-zero if socket was selected in PROG_TEST_RUN */
	};

	__u32 family; /* Protocol family (AF_INET, AF_INET6) */
	__u32 protocol; /* IP protocol (IPPROTO_TCP, IPPROTO_UDP) */
	__u32 remote_ip4; /* Network byte order */
	__u32 remote_ip6[4]; /* Network byte order */
	__be16 remote_port; /* Network byte order */
	__u16 : 16; /* Zero padding */
	__u32 local_ip4; /* Network byte order */
	__u32 local_ip6[4]; /* Network byte order */
	__u32 local_port; /* Host byte order */
	__u32 ingress_ifindex; /* The arriving interface. Determined by inet_iif. */
};

#endif /* __DETOUR_TYPES_H */
