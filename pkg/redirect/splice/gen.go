package splice

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -type splice_peer splice ../../../bpf/splice/splice.c -- -I../../../bpf/include
