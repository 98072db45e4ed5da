package main

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
)

func TestStoreBackendFlag(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.storeBackend != "bolt" || o.kubeconfig != "" {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	o, err = parseFlags([]string{"--store-backend", "kube", "--kubeconfig", "/x"}, io.Discard)
	if err != nil || o.storeBackend != "kube" || o.kubeconfig != "/x" {
		t.Fatalf("kube: %+v %v", o, err)
	}
	if _, err := parseFlags([]string{"--store-backend", "etcd"}, io.Discard); err == nil {
		t.Fatal("--store-backend etcd accepted")
	}
	var help strings.Builder
	if _, err := parseFlags([]string{"--help"}, &help); err == nil {
		t.Fatal("--help did not stop")
	}
	for _, want := range []string{"-store-backend", "bolt", "kube", "-kubeconfig", "in-cluster", "KUBECONFIG"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
}

// TestRunKube runs the whole controller with --store-backend=kube: refused
// with a clear message while the CRD is missing, then serving intercepts
// kept as resources.
func TestRunKube(t *testing.T) {
	env := envtest.Start(t)
	dir := t.TempDir()
	o := &options{
		listen:        freeAddr(t),
		metricsListen: freeAddr(t),
		storeBackend:  "kube",
		kubeconfig:    env.Kubeconfig,
		inventoryPath: filepath.Join(dir, "missing.json"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, o, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "CRD") || !strings.Contains(err.Error(), "kubectl apply -f deploy/crds/") {
		t.Fatalf("run without the CRD: %v", err)
	}
	if _, err := env.InstallCRDs(ctx, "../../deploy/crds/detour.dev_intercepts.yaml"); err != nil {
		t.Fatal(err)
	}

	stop := runController(t, ctx, o)
	c := dialControl(t, o.listen)
	// The inventory is empty, so the service cannot be found; what matters
	// here is that the call reaches a controller over the kube store.
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := c.ListIntercepts(cctx, &detourv1.ListInterceptsRequest{}, grpc.WaitForReady(true))
	ccancel()
	if err != nil || len(resp.GetIntercepts()) != 0 {
		t.Fatalf("ListIntercepts: %v %v", resp, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DetourV1alpha1().Intercepts("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}

	stop()
}
