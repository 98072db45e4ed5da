package kubeclient

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil/kubetest"
)

// TestRemoveEnvironments: uninstall deletes every Environment first, and
// when no controller removes them (it is down), takes their finalizer away
// after the grace, so that they cannot hold their CRD forever.
func TestRemoveEnvironments(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := env.InstallCRDs(ctx, "../../deploy/crds/detour.dev_environments.yaml"); err != nil {
		t.Fatal(err)
	}
	kube := kubetest.Clientset(t, env.Kubeconfig)
	kubetest.Namespace(t, kube, "shop")
	var out bytes.Buffer
	in, err := NewInstaller(kubetest.AdminConfig(env), &out)
	if err != nil {
		t.Fatal(err)
	}
	in.EnvironmentGrace, in.Poll = time.Second, 100*time.Millisecond
	// No Environment: nothing said.
	if err := in.removeEnvironments(ctx); err != nil || out.Len() != 0 {
		t.Fatalf("without environments: %v %q", err, out.String())
	}
	api := in.dyn.Resource(environmentsGVR).Namespace("shop")
	e := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "detour.dev/v1alpha1", "kind": "Environment",
		"metadata": map[string]any{"name": "pr-1", "finalizers": []any{"detour.dev/environment-cleanup"}},
		"spec":     map[string]any{"forks": []any{map[string]any{"workload": map[string]any{"name": "api"}}}},
	}}
	if _, err := api.Create(ctx, e, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := in.removeEnvironments(ctx); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if _, err := api.Get(ctx, "pr-1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("pr-1 after removal: %v", err)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("the finalizer was removed after %v, before the grace", took)
	}
	for _, want := range []string{"deleting 1 environments", "environment shop/pr-1: the controller did not remove it in 1s; removing its finalizer"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
