package connect

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -type connect_key -type connect_dest connect ../../../bpf/connect/connect.c -- -I../../../bpf/include
