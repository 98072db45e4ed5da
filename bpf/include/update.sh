#!/bin/sh
# SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#
# Vendors the libbpf headers the BPF programs in bpf/ include, copied from
# Debian's libbpf-dev so that `make generate` needs no network and every
# machine compiles the same text. Refuses unless the pinned libbpf-dev is the
# one installed: bump PINNED and rerun to move to another libbpf.
set -eu

PINNED='1:1.1.2-0+deb12u1'
SRC=/usr/include/bpf
HEADERS='bpf_helpers.h bpf_helper_defs.h bpf_endian.h'

cd "$(dirname "$0")"

have=$(dpkg-query -W -f '${Version}' libbpf-dev 2>/dev/null || true)
if [ "$have" != "$PINNED" ]; then
	echo "update.sh: need libbpf-dev $PINNED, found '${have:-none}'" >&2
	exit 1
fi

for h in $HEADERS; do
	cp "$SRC/$h" "$h"
done
echo "vendored libbpf-dev $PINNED: $HEADERS"
