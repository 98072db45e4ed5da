#!/usr/bin/env bash
# The parity demo: what differs between two environments, from two
# directories of manifests (examples/parity), secret-safe, with the policy
# of expected differences. Needs no cluster and no root; `make build` first.
# It exits 0 when detour reports the drift planted in the examples (its
# exit code 5), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."
DETOUR=${DETOUR:-$PWD/bin/detour}

echo "== parity: staging vs production (examples/parity, no cluster needed)"
echo "\$ detour parity diff examples/parity/staging examples/parity/production --policy examples/parity/policy.yaml"
"$DETOUR" parity diff examples/parity/staging examples/parity/production --policy examples/parity/policy.yaml 2>&1
code=$?
echo "exit code: $code (0 no drift, 5 drift, 1 failure, 2 bad usage, 3 not found)"
if [[ $code != 5 ]]; then echo "WRONG: the examples differ by design, want exit code 5"; exit 1; fi
echo "== parity demo ok: the planted image tag, memory limit, flag default and secret key reported; replicas expected"
