package main

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -type pp_key pingpong ../../../bpf/pingpong/pingpong.c -- -I../../../bpf/include
