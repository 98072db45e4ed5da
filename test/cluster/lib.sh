# Shared settings of up.sh, down.sh and smoke.sh. Sourced, not run.
#
# The whole single-node cluster lives in its own network namespace,
# $NETNS: the cni0 bridge, the pods' veths, the node address, kube-proxy's
# and the kubelet's iptables chains and every listening port are in there,
# and nothing in it has a link to the host's network. Deleting the namespace
# takes all of that away. Addresses come from 198.18.0.0/15, the range kept
# for benchmarking (RFC 2544): never routed, and apart from the host's.

K8S_VERSION=v1.33.13
CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${DETOUR_CLUSTER_STATE:-/var/lib/detour-cluster}
NETNS=${DETOUR_CLUSTER_NETNS:-detour-k8s}
NODE_NAME=detour-node
NODE_IP=198.19.255.1
POD_CIDR=198.18.0.0/16
NODE_POD_CIDR=198.18.0.0/24
SERVICE_CIDR=198.19.0.0/24
API_SERVICE_IP=198.19.0.1
API_PORT=6443

if [[ -z ${DETOUR_K8S_CACHE:-} ]] && ! mkdir -p "/var/cache/detour/k8s-$K8S_VERSION" 2>/dev/null; then
	DETOUR_K8S_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/detour/k8s-$K8S_VERSION
fi
K8S_BIN=${DETOUR_K8S_CACHE:-/var/cache/detour/k8s-$K8S_VERSION}/bin

PIDS=$STATE/pids
LOGS=$STATE/logs
PKI=$STATE/pki

start_time=$(date +%s)
say() { echo "$(basename "$0"): [$(($(date +%s) - start_time))s] $*"; }
die() {
	say "error: $*" >&2
	exit 1
}

# in_ns runs a command in the cluster's network namespace and nothing else:
# not `ip netns exec`, whose private mount namespace would hide the kubelet's
# mounts from containerd.
in_ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }

kubectl_admin() { in_ns "$K8S_BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls every 0.2 s.
wait_until() {
	local limit=$1 what=$2
	shift 2
	local deadline=$(($(date +%s) + limit))
	until "$@" >/dev/null 2>&1; do
		(($(date +%s) < deadline)) || die "$what: not within ${limit}s"
		sleep 0.2
	done
}

alive() { [[ -f $PIDS/$1 ]] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }

# stop_pid NAME [SECOND_TERM_AFTER]: SIGTERM the recorded PID, again after
# SECOND_TERM_AFTER seconds (the API server sometimes ignores the first),
# SIGKILL after 15 s in all. Only the PID recorded at start: never by name.
stop_pid() {
	local name=$1 again=${2:-0} pid t
	[[ -f $PIDS/$name ]] || return 0
	pid=$(cat "$PIDS/$name")
	if ! kill -0 "$pid" 2>/dev/null; then
		rm -f "$PIDS/$name"
		return 0
	fi
	say "stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for ((t = 0; t < 75; t++)); do
		kill -0 "$pid" 2>/dev/null || break
		if ((again > 0 && t == again * 5)); then
			kill -TERM "$pid" 2>/dev/null || true
		fi
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "$name (pid $pid) ignored SIGTERM: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		sleep 0.5
	fi
	rm -f "$PIDS/$name"
}

# The kernel settings the kubelet changes (it sets what it wants unless
# protectKernelDefaults): recorded by up.sh, put back by down.sh.
KERNEL_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

# Directories outside $STATE that the kubelet or containerd create whatever
# their configuration says (containerd's shim sockets, libcni's cache, the
# kubelet's container log links and device-plugin socket). down.sh removes
# those that up.sh saw absent.
OUTSIDE_DIRS=(/run/containerd /var/lib/cni /var/log/containers /var/log/pods /var/lib/kubelet /usr/libexec/kubernetes)
