//go:build tools

// Package k8sbuild pins the commands that test/cluster/build.sh builds, so
// that `go mod tidy` keeps every module they need in go.sum. The build tag
// keeps it out of every ordinary build: main packages cannot be imported.
package k8sbuild

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
