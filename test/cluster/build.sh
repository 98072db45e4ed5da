#!/usr/bin/env bash
# Builds the Kubernetes v1.33.13 control plane and node binaries and etcd
# v3.5.21 from source, through the Go module proxy, into a cache directory:
#
#   ${DETOUR_K8S_CACHE:-/var/cache/detour/k8s-v1.33.13}/bin
#
# (or ~/.cache/detour/k8s-v1.33.13/bin when /var/cache is not writable).
#
# There is no container registry or release download on these machines, so
# the binaries come from the scratch module test/cluster/k8sbuild (its own
# go.mod: the main module never imports it). A stamp file records the version
# and the hash of that module's go.mod and go.sum; when it matches and every
# binary is there, nothing is built. Cold (empty Go build cache) this takes
# about 5 minutes on 2 cores; warm, seconds.
#
# Usage: test/cluster/build.sh [--force]
#   DETOUR_K8S_CACHE   cache directory (default above)
#   DETOUR_K8S_NICE    niceness for the compiler (default 19: the machine is shared)
set -euo pipefail

K8S_VERSION=v1.33.13
ETCD_VERSION=v3.5.21
K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod=$here/k8sbuild
cache=${DETOUR_K8S_CACHE:-/var/cache/detour/k8s-$K8S_VERSION}
# Not root and /var/cache is closed: the user's cache, as internal/envtest does.
if [[ -z ${DETOUR_K8S_CACHE:-} ]] && ! mkdir -p "$cache" 2>/dev/null; then
	cache=${XDG_CACHE_HOME:-$HOME/.cache}/detour/k8s-$K8S_VERSION
fi
bin=$cache/bin
stamp=$bin/.stamp
force=false
[[ ${1:-} == --force ]] && force=true

start=$(date +%s)
say() { echo "build.sh: [$(( $(date +%s) - start ))s] $*"; }

mkdir -p "$cache"
# One build at a time per cache: `go test ./...` runs packages in parallel,
# and several may ask for the binaries at once.
exec 9>"$cache/.lock"
if ! flock -n 9; then
	say "another build holds $cache/.lock; waiting for it"
	flock 9
fi

# Without these, kubectl and every client see v0.0.0-master. The same
# variables as Kubernetes' own hack/lib/version.sh, for both version packages.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$K8S_VERSION"
	ldflags+=" -X $pkg.gitMajor=$(echo "${K8S_VERSION#v}" | cut -d. -f1)"
	ldflags+=" -X $pkg.gitMinor=$(echo "${K8S_VERSION#v}" | cut -d. -f2)"
	ldflags+=" -X $pkg.gitTreeState=clean"
done

want=$(
	echo "kubernetes $K8S_VERSION"
	echo "etcd $ETCD_VERSION"
	echo "components ${K8S_COMPONENTS[*]} etcd"
	echo "ldflags $ldflags"
	cat "$mod/go.mod" "$mod/go.sum" | sha256sum | awk '{print "module " $1}'
)

up_to_date() {
	[[ -f $stamp ]] && [[ "$(cat "$stamp")" == "$want" ]] || return 1
	local b
	for b in "${K8S_COMPONENTS[@]}" etcd; do
		[[ -x $bin/$b ]] || return 1
	done
}

if ! $force && up_to_date; then
	say "Kubernetes $K8S_VERSION and etcd $ETCD_VERSION already built in $bin"
	exit 0
fi

say "building Kubernetes $K8S_VERSION (${K8S_COMPONENTS[*]}) and etcd $ETCD_VERSION into $bin"
say "cold (empty Go build cache) this takes about 5 minutes on 2 cores"

export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

tmp=$(mktemp -d "$cache/bin.tmp.XXXXXX")
ticker=
cleanup() {
	[[ -n $ticker ]] && kill "$ticker" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

# The compiler prints nothing for minutes: say that it is alive.
( while sleep 30; do say "still compiling..."; done ) &
ticker=$!

cd "$mod"
say "downloading modules (skipped when the module cache has them)"
go mod download

pkgs=()
for c in "${K8S_COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
say "compiling ${K8S_COMPONENTS[*]}"
nice -n "${DETOUR_K8S_NICE:-19}" go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}"

say "compiling etcd"
nice -n "${DETOUR_K8S_NICE:-19}" go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3

kill "$ticker" 2>/dev/null || true
ticker=

mkdir -p "$bin"
rm -f "$stamp"
for b in "${K8S_COMPONENTS[@]}" etcd; do
	mv -f "$tmp/$b" "$bin/$b"
done
printf '%s\n' "$want" >"$stamp"

"$bin/kube-apiserver" --version | sed 's/^/build.sh: /'
"$bin/etcd" --version | head -1 | sed 's/^/build.sh: /'
say "done: $bin"
