/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The UAPI definitions the cgroup socket-address programs (bpf/connect/) use
 * on top of types.h: the context of BPF_PROG_TYPE_CGROUP_SOCK_ADDR and
 * BPF_PROG_TYPE_CGROUP_SOCK programs, taken from the kernel's
 * include/uapi/linux/bpf.h. Kernel ABI: these structs only ever grow at the
 * end.
 */
#ifndef __DETOUR_SOCK_ADDR_H
#define __DETOUR_SOCK_ADDR_H

#include "types.h"

#define BPF_MAP_TYPE_LRU_HASH 9

#define SOCK_STREAM 1

/* Context of BPF_PROG_TYPE_CGROUP_SOCK_ADDR programs (connect4,
 * getpeername4...). */
struct bpf_sock_addr {
	__u32 user_family; /* Allows 4-byte read, but no write. */
	__u32 user_ip4; /* Allows 1,2,4-byte read and 4-byte write.
			 * Stored in network byte order. */
	__u32 user_ip6[4]; /* Allows 1,2,4,8-byte read and 4,8-byte write.
			    * Stored in network byte order. */
	__u32 user_port; /* Allows 1,2,4-byte read and 4-byte write.
			  * Stored in network byte order */
	__u32 family; /* Allows 4-byte read, but no write */
	__u32 type; /* Allows 4-byte read, but no write */
	__u32 protocol; /* Allows 4-byte read, but no write */
	__u32 msg_src_ip4; /* Allows 1,2,4-byte read and 4-byte write.
			    * Stored in network byte order. */
	__u32 msg_src_ip6[4]; /* Allows 1,2,4,8-byte read and 4,8-byte write.
			       * Stored in network byte order. */
	__bpf_md_ptr(struct bpf_sock *, sk);
};

#endif /* __DETOUR_SOCK_ADDR_H */
