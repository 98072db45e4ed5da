package flowmetrics

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -type flow -type flow_totals sockops ../../../bpf/sockops/sockops.c -- -I../../../bpf/include
