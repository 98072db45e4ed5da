package fastpath

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -type fp_tuple -type fp_addr -type fp_conn -type fp_up -type fp_slot_key -type fp_port -type fp_cond -type fp_rule -type fp_set -type fp_index_key -type fp_seqs fastpath ../../../bpf/fastpath/fastpath.c -- -I../../../bpf/include
