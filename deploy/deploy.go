// Package deploy holds Detour's Kubernetes manifests: the kustomize base
// that `kubectl apply -k deploy/` applies, embedded so that `detour
// install` applies the very same files.
package deploy

import "embed"

// FS is this directory's kustomization.yaml and the YAML files of its
// subdirectories (crds, rbac, controller, daemonset, each with its own
// kustomization.yaml).
//
//go:embed kustomization.yaml */*.yaml
var FS embed.FS
