package steer

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -type steer_key -type steer_stat steer ../../../bpf/steer/steer.c -- -I../../../bpf/include
