#!/usr/bin/env bash
# Regenerates everything derived from the Kubernetes API types in pkg/apis:
#   - zz_generated.deepcopy.go beside the types (deepcopy-gen)
#   - the typed clientset, apply configurations, listers and informers under
#     pkg/generated/ (client-gen, applyconfiguration-gen, lister-gen,
#     informer-gen)
#   - the CRD manifests under deploy/crds/ (controller-gen)
# The generators are pinned in tools/go.mod. The output depends only on the
# sources, so CI can regenerate and diff. Run from anywhere; `make generate`
# calls it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

MODULE=github.com/detourdev/detour
APIS_DIR=pkg/apis                      # holds GROUP/VERSION packages
INPUTS=(detour/v1alpha1)               # GROUP/VERSION under APIS_DIR
OUT_DIR=pkg/generated
OUT_PKG=$MODULE/$OUT_DIR
CRD_DIR=deploy/crds
BOILERPLATE=hack/boilerplate.go.txt
GO=${GO:-go}

# Build the generators once, from the tools module, into a scratch bin dir.
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
GOFLAGS= "$GO" build -modfile="$ROOT/tools/go.mod" -o "$BIN/" \
	k8s.io/code-generator/cmd/deepcopy-gen \
	k8s.io/code-generator/cmd/client-gen \
	k8s.io/code-generator/cmd/applyconfiguration-gen \
	k8s.io/code-generator/cmd/lister-gen \
	k8s.io/code-generator/cmd/informer-gen \
	sigs.k8s.io/controller-tools/cmd/controller-gen

input_pkgs=()
for gv in "${INPUTS[@]}"; do
	input_pkgs+=("$MODULE/$APIS_DIR/$gv")
done

# Start from nothing, so that output for a removed type cannot linger.
find "$APIS_DIR" -name zz_generated.deepcopy.go -delete
rm -rf "$OUT_DIR"
rm -f "$CRD_DIR"/detour.dev_*.yaml

echo "deepcopy"
"$BIN/deepcopy-gen" \
	--go-header-file "$BOILERPLATE" \
	--output-file zz_generated.deepcopy.go \
	"${input_pkgs[@]}"

echo "apply configurations"
"$BIN/applyconfiguration-gen" \
	--go-header-file "$BOILERPLATE" \
	--output-dir "$OUT_DIR/applyconfiguration" \
	--output-pkg "$OUT_PKG/applyconfiguration" \
	"${input_pkgs[@]}"

echo "clientset"
client_inputs=()
for gv in "${INPUTS[@]}"; do
	client_inputs+=(--input "$gv")
done
"$BIN/client-gen" \
	--go-header-file "$BOILERPLATE" \
	--output-dir "$OUT_DIR/clientset" \
	--output-pkg "$OUT_PKG/clientset" \
	--clientset-name versioned \
	--apply-configuration-package "$OUT_PKG/applyconfiguration" \
	--input-base "$MODULE/$APIS_DIR" \
	"${client_inputs[@]}"

echo "listers"
"$BIN/lister-gen" \
	--go-header-file "$BOILERPLATE" \
	--output-dir "$OUT_DIR/listers" \
	--output-pkg "$OUT_PKG/listers" \
	"${input_pkgs[@]}"

echo "informers"
"$BIN/informer-gen" \
	--go-header-file "$BOILERPLATE" \
	--output-dir "$OUT_DIR/informers" \
	--output-pkg "$OUT_PKG/informers" \
	--versioned-clientset-package "$OUT_PKG/clientset/versioned" \
	--listers-package "$OUT_PKG/listers" \
	"${input_pkgs[@]}"

echo "CRDs"
"$BIN/controller-gen" \
	crd:crdVersions=v1 \
	paths="./$APIS_DIR/..." \
	output:crd:artifacts:config="$CRD_DIR"
