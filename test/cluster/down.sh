#!/usr/bin/env bash
# Tears down the cluster of test/cluster/up.sh and leaves the machine as it
# was: workloads deleted first (so CNI DEL runs), then kube-proxy, kubelet,
# scheduler, controller-manager; leftover containerd tasks and containers
# killed and deleted; containerd, the API server (SIGTERM twice) and etcd
# stopped; mounts under the state directory unmounted; stale pod network
# namespaces and the cluster's namespace (with cni0, the veths and every
# KUBE-* iptables chain in it) removed; kubepods cgroups removed; the kernel
# settings the kubelet changed put back. Processes are stopped by the PIDs
# up.sh recorded, never by name. Safe to run twice, or after a failed up.sh.
#
# Usage: test/cluster/down.sh [--keep-logs]   (logs then stay in $STATE/logs)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
keep_logs=false
[[ ${1:-} == --keep-logs ]] && keep_logs=true
(($(id -u) == 0)) || die "needs root"
CTR=(ctr --address "$STATE/containerd/containerd.sock" -n k8s.io)

# 1. Workloads, while the kubelet and containerd still run: CNI DEL frees
# each pod's address and veth.
if alive kube-apiserver && alive kubelet; then
	say "deleting workloads"
	kubectl_admin delete deployments,daemonsets,statefulsets,replicasets,jobs --all --all-namespaces --wait=false >/dev/null 2>&1
	kubectl_admin delete pods --all --all-namespaces --grace-period=5 --timeout=60s >/dev/null 2>&1 ||
		say "some pods did not go within 60 s: going on"
fi

# 2. Node components and the controllers.
stop_pid kube-proxy
stop_pid kubelet
stop_pid kube-scheduler
stop_pid kube-controller-manager

# 3. Whatever containerd still runs.
if alive containerd; then
	for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
		"${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
	done
	sleep 0.5
	for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
		"${CTR[@]}" tasks delete -f "$t" >/dev/null 2>&1 || say "task $t: not deleted"
	done
	for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
		"${CTR[@]}" containers delete "$c" >/dev/null 2>&1 || say "container $c: not deleted"
	done
fi
stop_pid containerd
# A shim outlives containerd when its task was not deleted: those under our
# state directory, found through their -address flag, by PID.
for p in /proc/[0-9]*; do
	if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q "^/usr/bin/containerd-shim-runc-v2 .*-address $STATE/containerd/containerd.sock"; then
		say "killing leftover shim ${p#/proc/}"
		kill -KILL "${p#/proc/}" 2>/dev/null
	fi
done

# 4. The API server (a second SIGTERM after 2 s when it ignores the first),
# then etcd.
stop_pid kube-apiserver 2
stop_pid etcd

# 5. Mounts under the state directory, deepest first (the kubelet
# bind-mounts its root directory onto itself; containerd mounts rootfs and
# shm): lazily when busy.
mounts() { awk -v s="$STATE/" 'index($5, s) == 1 || $5 == substr(s, 1, length(s) - 1) {print $5}' /proc/self/mountinfo | sort -r; }
for m in $(mounts); do
	umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "cannot unmount $m"
done

# 6. Pod network namespaces that up.sh did not see, and the cluster's own.
for ns in $(ls /run/netns 2>/dev/null | grep '^cni-'); do
	if ! grep -qx "$ns" "$STATE/netns.before" 2>/dev/null; then
		umount "/run/netns/$ns" 2>/dev/null
		rm -f "/run/netns/$ns"
	fi
done
if [[ -e /run/netns/$NETNS ]]; then
	say "deleting network namespace $NETNS (cni0, veths, KUBE-* chains)"
	ip netns delete "$NETNS"
fi

# 7. kubepods cgroups, deepest first (only empty ones can go).
for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
	[[ -d $root/kubepods ]] || continue
	find "$root/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
	[[ -d $root/kubepods ]] && say "cannot remove $root/kubepods (processes still in it?)"
done

# 8. Kernel settings.
if [[ -f $STATE/sysctl.before ]]; then
	while read -r key value; do
		[[ $(cat "/proc/sys/$key") == "$value" ]] || {
			say "restoring $key = $value"
			echo "$value" >"/proc/sys/$key"
		}
	done <"$STATE/sysctl.before"
fi

# 9. Files: what up.sh found absent outside $STATE, then $STATE.
if [[ -f $STATE/dirs.created ]]; then
	while read -r d; do
		[[ -n $d ]] && rm -rf "$d"
	done <"$STATE/dirs.created"
fi
if $keep_logs; then
	find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
	say "logs kept in $LOGS"
else
	rm -rf "$STATE"
fi

# 10. Say what is left, if anything.
left=0
[[ -e /run/netns/$NETNS ]] && { say "left: network namespace $NETNS"; left=1; }
[[ -n $(mounts) ]] && { say "left: mounts under $STATE"; left=1; }
compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null && { say "left: kubepods cgroups"; left=1; }
[[ -d $PIDS ]] && { say "left: $PIDS"; left=1; }
((left == 0)) && say "clean"
exit $left
