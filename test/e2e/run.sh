#!/usr/bin/env bash
# make e2e: Detour on a real single-node Kubernetes. Builds the images
# (make images), starts the cluster (test/cluster/up.sh), loads the images
# into its containerd, runs the e2e test inside the cluster's network
# namespace, and tears the cluster down (test/cluster/down.sh) whatever
# happened. Root only. DETOUR_E2E_KEEP=1 leaves the cluster up afterwards
# (remove it with test/cluster/down.sh); DETOUR_E2E_RUN=REGEXP narrows the
# subtests.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../cluster/lib.sh
source test/cluster/lib.sh
[[ $(id -u) == 0 ]] || die "needs root (it starts a kubelet and loads eBPF)"
[[ -e $PIDS/kube-apiserver ]] && die "a test cluster is already up ($STATE): test/cluster/down.sh first"

say "images"
make --no-print-directory images >/dev/null
say "PostgreSQL image, from Debian's packages (environment data)"
bash test/e2e/pgimage.sh bin/images/detour-postgres.tar >/dev/null
say "e2e test binary"
go test -c -tags e2e -o bin/e2e.test ./test/e2e

# The DaemonSet keeps the agent's state in this host directory; the machine
# is left as it was found.
AGENT_STATE_DIR=/var/lib/detour/agent
[[ -e $AGENT_STATE_DIR ]] && agent_state_existed=1 || agent_state_existed=0

teardown() {
	local rc=$?
	if [[ ${DETOUR_E2E_KEEP:-} == 1 ]]; then
		say "cluster left up (DETOUR_E2E_KEEP=1): test/cluster/down.sh removes it"
	elif ((rc == 0)); then
		bash test/cluster/down.sh
		((agent_state_existed)) || rm -rf "$AGENT_STATE_DIR"
		rmdir /var/lib/detour 2>/dev/null || true
	else
		# What Detour's pods said, for the CI log and for later.
		if [[ -e $PIDS/kube-apiserver ]]; then
			kubectl_admin -n detour-system logs --all-containers --prefix --tail=-1 -l app.kubernetes.io/part-of=detour \
				>"$LOGS/detour-pods.log" 2>&1 || true
			kubectl_admin get pods -A -o wide >>"$LOGS/detour-pods.log" 2>&1 || true
			echo "--- last lines of Detour's pod logs ($LOGS/detour-pods.log)"
			tail -n 80 "$LOGS/detour-pods.log" || true
		fi
		bash test/cluster/down.sh --keep-logs >/dev/null 2>&1 || true
		((agent_state_existed)) || rm -rf "$AGENT_STATE_DIR"
		rmdir /var/lib/detour 2>/dev/null || true
		say "failed: logs kept in $LOGS"
	fi
	exit $rc
}
trap teardown EXIT

bash test/cluster/up.sh
for img in bin/images/*.tar; do
	ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images import "$img" >/dev/null
done
say "images loaded: $(ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images ls -q | grep detour-  | tr '\n' ' ')"

say "e2e test"
(
	cd test/e2e
	in_ns env DETOUR_E2E_STATE="$STATE" DETOUR_E2E_KUBECTL="$K8S_BIN/kubectl" DETOUR_E2E_BIN="$PWD/../../bin" \
		../../bin/e2e.test -test.v -test.count=1 -test.timeout=15m ${DETOUR_E2E_RUN:+-test.run "$DETOUR_E2E_RUN"}
)
say "e2e passed"
