#!/usr/bin/env bash
# Brings up a real single-node Kubernetes v1.33.13 on this machine, as root,
# with no Docker and no registry: etcd, kube-apiserver, containerd (Debian's,
# with restrict_oom_score_adj), the CNI bridge, kubelet, kube-proxy
# (iptables), kube-controller-manager and kube-scheduler. Everything runs in
# the network namespace detour-k8s (see lib.sh); state, logs and PIDs go
# under /var/lib/detour-cluster. test/cluster/down.sh undoes all of it.
#
# Usage: test/cluster/up.sh        then: test/cluster/smoke.sh, down.sh
#   kubectl: test/cluster/kubectl.sh get nodes
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($(id -u) == 0)) || die "needs root (containerd, kubelet, network namespace)"
[[ -e /run/netns/$NETNS || -d $PIDS ]] && die "a cluster is already up (or was not torn down): run test/cluster/down.sh"

# --- packages (the project's own files install what it needs) ---
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
	say "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- binaries and images ---
DETOUR_K8S_CACHE=$(dirname "$K8S_BIN") bash "$CLUSTER_DIR/build.sh"
mkdir -p "$STATE" "$PIDS" "$LOGS" "$PKI" "$STATE/images"
say "building the pause and hello images"
(
	cd "$CLUSTER_DIR/k8sbuild"
	export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
	go build -trimpath -ldflags "-s -w" -o "$STATE/images/" ./cmd/pause ./cmd/hello
)
(cd "$CLUSTER_DIR/../.." && CGO_ENABLED=0 go build -o "$STATE/images/mkimage" ./hack/mkimage)
"$STATE/images/mkimage" -tag detour.local/pause:1 -o "$STATE/images/pause.tar" "$STATE/images/pause" >/dev/null
"$STATE/images/mkimage" -tag detour.local/hello:1 -o "$STATE/images/hello.tar" "$STATE/images/hello" >/dev/null

# --- what down.sh must put back ---
for s in "${KERNEL_SYSCTLS[@]}"; do echo "$s $(cat "/proc/sys/$s")"; done >"$STATE/sysctl.before"
for d in "${OUTSIDE_DIRS[@]}"; do [[ -e $d ]] || echo "$d"; done >"$STATE/dirs.created"
ls /run/netns 2>/dev/null | grep '^cni-' >"$STATE/netns.before" || true

# --- network namespace: loopback, the node's address on a link of its own, and
# a default route into that link so that connections to Service IPs get
# routed (then DNATed by kube-proxy); nothing leaves the namespace. ---
say "network namespace $NETNS, node address $NODE_IP"
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
# (A veth pair with both ends inside: the dummy driver is not everywhere.)
ip -n "$NETNS" link add node0 type veth peer name node0-peer
ip -n "$NETNS" addr add "$NODE_IP/32" dev node0
ip -n "$NETNS" link set node0-peer up
ip -n "$NETNS" link set node0 up
ip -n "$NETNS" route add default dev node0

# --- PKI: a CA, the API server's serving cert, an admin client cert (also
# the API server's kubelet client), the service-account key pair ---
say "certificates"
(
	cd "$PKI"
	ossl() { openssl "$@" 2>/dev/null; }
	ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
		-keyout ca.key -out ca.crt -subj /CN=detour-cluster-ca
	leaf() { # name subject extensions
		ossl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
		ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -out "$1.crt" -extfile <(printf '%b' "$3")
		rm -f "$1.csr"
	}
	leaf apiserver /CN=kube-apiserver "subjectAltName=IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature"
	leaf admin "/O=system:masters/CN=detour-admin" "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature"
	ossl ecparam -name prime256v1 -genkey -noout -out sa.key
	ossl ec -in sa.key -pubout -out sa.pub
	chmod 600 ./*.key
)

# Static tokens: one identity per component, the names the default RBAC
# policy binds (system:node:<name> for the Node authorizer and NodeRestriction).
token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
declare -A TOKENS=(
	[admin]=$(token) [kubelet]=$(token) [kube-proxy]=$(token)
	[controller-manager]=$(token) [scheduler]=$(token)
	[alice]=$(token) [mallory]=$(token)
)
cat >"$PKI/tokens.csv" <<EOF
${TOKENS[admin]},detour-admin,uid-admin,"system:masters"
${TOKENS[kubelet]},system:node:$NODE_NAME,uid-node,"system:nodes"
${TOKENS[kube-proxy]},system:kube-proxy,uid-proxy
${TOKENS[controller-manager]},system:kube-controller-manager,uid-kcm
${TOKENS[scheduler]},system:kube-scheduler,uid-sched
${TOKENS[alice]},dev-alice,uid-alice,"detour-e2e:developers"
${TOKENS[mallory]},dev-mallory,uid-mallory,"detour-e2e:developers"
EOF
chmod 600 "$PKI/tokens.csv"
kubeconfig() { # file token
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: detour
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: user
  user:
    token: $2
contexts:
- name: detour
  context: {cluster: detour, user: user}
current-context: detour
EOF
	chmod 600 "$1"
}
for c in "${!TOKENS[@]}"; do kubeconfig "$STATE/$c.kubeconfig" "${TOKENS[$c]}"; done

# start NAME ARGS...: runs in the namespace, output to $LOGS/NAME.log, PID in
# $PIDS/NAME. nsenter execs the command, so $! is its PID.
start() {
	local name=$1
	shift
	nsenter --net="/run/netns/$NETNS" -- "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
	echo $! >"$PIDS/$name"
	say "started $name (pid $!)"
}
https_ok() { in_ns curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer ${TOKENS[admin]}" "$1"; }

# --- control plane ---
start etcd "$K8S_BIN/etcd" --name=detour --data-dir="$STATE/etcd" \
	--listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
	--listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
	--initial-cluster=detour=http://127.0.0.1:2380 --listen-metrics-urls= --log-level=warn
wait_until 30 "etcd healthy" in_ns curl -sf http://127.0.0.1:2379/health

start kube-apiserver "$K8S_BIN/kube-apiserver" \
	--etcd-servers=http://127.0.0.1:2379 \
	--bind-address=0.0.0.0 --secure-port=$API_PORT --advertise-address=$NODE_IP \
	--cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
	--client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
	--kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
	--kubelet-preferred-address-types=InternalIP \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
	--service-cluster-ip-range=$SERVICE_CIDR \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--allow-privileged=true --profiling=false
wait_until 60 "kube-apiserver /readyz" https_ok "https://127.0.0.1:$API_PORT/readyz"

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
	--kubeconfig="$STATE/controller-manager.kubeconfig" \
	--authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
	--authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 --leader-elect=false \
	--allocate-node-cidrs --cluster-cidr=$POD_CIDR --node-cidr-mask-size=24 \
	--service-cluster-ip-range=$SERVICE_CIDR \
	--root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
	--use-service-account-credentials \
	--flex-volume-plugin-dir="$STATE/kubelet-plugins/volume/exec"
start kube-scheduler "$K8S_BIN/kube-scheduler" \
	--kubeconfig="$STATE/scheduler.kubeconfig" \
	--authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
	--authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
	--bind-address=127.0.0.1 --leader-elect=false

# --- containerd: its own root, state, socket and CNI configuration ---
mkdir -p "$STATE/containerd" "$STATE/cni/net.d" "$STATE/cni/ipam"
cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$STATE/containerd/containerd.sock"
[ttrpc]
  address = "$STATE/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "detour.local/pause:1"
  # This VM lacks CAP_SYS_RESOURCE: runc cannot set a negative
  # oom_score_adj, and every sandbox fails without this.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
cat >"$STATE/cni/net.d/10-detour.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "detour",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
start containerd containerd --config "$STATE/containerd/config.toml"
CTR=(ctr --address "$STATE/containerd/containerd.sock" -n k8s.io)
wait_until 30 "containerd answering" "${CTR[@]}" version
for img in pause hello; do
	"${CTR[@]}" images import "$STATE/images/$img.tar" >/dev/null
done
say "images: $("${CTR[@]}" images ls -q | tr '\n' ' ')"

# --- kubelet ---
mkdir -p "$STATE/kubelet" "$STATE/kubelet-plugins" "$STATE/pod-logs"
cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$STATE/containerd/containerd.sock
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
podLogsDir: $STATE/pod-logs
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
EOF
start kubelet "$K8S_BIN/kubelet" --config="$STATE/kubelet.yaml" \
	--kubeconfig="$STATE/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
	--cert-dir="$STATE/kubelet/pki" --volume-plugin-dir="$STATE/kubelet-plugins" \
	--hostname-override=$NODE_NAME --node-ip=$NODE_IP

# --- kube-proxy ---
cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack table size and timeouts alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "$K8S_BIN/kube-proxy" --config="$STATE/kube-proxy.yaml"

node_ready() {
	kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}
wait_until 90 "node $NODE_NAME Ready" node_ready
for p in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
	alive "$p" || die "$p exited: see $LOGS/$p.log"
done
say "cluster up: node $NODE_NAME Ready; test/cluster/kubectl.sh get nodes; test/cluster/down.sh to remove"
