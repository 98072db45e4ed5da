#!/usr/bin/env bash
# kubectl, as the admin, for the cluster of test/cluster/up.sh (which lives
# in its own network namespace: see lib.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -e /run/netns/$NETNS ]] || die "no cluster: run test/cluster/up.sh"
kubectl_admin "$@"
