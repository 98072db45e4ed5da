package v1alpha1_test

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// The ParityCheck CRD's schema and CEL rules, as a real API server
// enforces them.
func TestParityCheckSchema(t *testing.T) {
	env := envtest.Start(t)
	ctx := context.Background()
	if _, err := env.InstallCRDs(ctx, "../../../../deploy/crds/detour.dev_paritychecks.yaml"); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(kubetest.Config(t, env.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	pcs := dyn.Resource(v1alpha1.SchemeGroupVersion.WithResource("paritychecks")).Namespace("default")
	create := func(name string, spec map[string]any) error {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "detour.dev/v1alpha1", "kind": "ParityCheck",
			"metadata": map[string]any{"name": name}, "spec": spec,
		}}
		_, err := pcs.Create(ctx, u, metav1.CreateOptions{})
		return err
	}
	valid := map[string]any{"left": "staging", "right": "production", "interval": "5m", "runtime": true,
		"policy": map[string]any{"failOn": "medium", "severity": map[string]any{"replicas": "info"},
			"ignore":   []any{map[string]any{"path": "/metadata/labels/team"}},
			"expected": []any{map[string]any{"kind": "Deployment", "path": "/spec/replicas", "reason": "scaled per environment"}}}}
	if err := create("ok", valid); err != nil {
		t.Fatalf("a valid ParityCheck was refused: %v", err)
	}
	if err := create("from-configmap", map[string]any{"left": "a", "right": "b", "policyFrom": map[string]any{"configMap": "shop-parity"}}); err != nil {
		t.Fatalf("a ParityCheck with its policy in a ConfigMap was refused: %v", err)
	}
	tests := []struct {
		name string
		spec map[string]any
		want string
	}{
		{"same", map[string]any{"left": "a", "right": "a"}, "left and right are the same namespace"},
		{"bad namespace", map[string]any{"left": "A_B", "right": "a"}, "spec.left"},
		{"short interval", map[string]any{"left": "a", "right": "b", "interval": "30s"}, "interval must be at least 1m"},
		{"no reason", map[string]any{"left": "a", "right": "b", "policy": map[string]any{"expected": []any{map[string]any{"path": "/spec"}}}}, "an expected difference needs a reason"},
		{"empty rule", map[string]any{"left": "a", "right": "b", "policy": map[string]any{"ignore": []any{map[string]any{"reason": "x"}}}}, "would match every difference"},
		{"relative path", map[string]any{"left": "a", "right": "b", "policy": map[string]any{"ignore": []any{map[string]any{"path": "spec"}}}}, "spec.policy.ignore[0].path"},
		{"bad category", map[string]any{"left": "a", "right": "b", "policy": map[string]any{"ignore": []any{map[string]any{"category": "images"}}}}, "Unsupported value"},
		{"two policies", map[string]any{"left": "a", "right": "b", "policy": map[string]any{"failOn": "high"}, "policyFrom": map[string]any{"configMap": "p"}}, "policy and policyFrom are exclusive"},
		{"bad policy key", map[string]any{"left": "a", "right": "b", "policyFrom": map[string]any{"configMap": "p", "key": "a/b"}}, "spec.policyFrom.key"},
		{"bad failOn", map[string]any{"left": "a", "right": "b", "policy": map[string]any{"failOn": "critical"}}, "Unsupported value"},
	}
	for _, tt := range tests {
		err := create(strings.ReplaceAll(tt.name, " ", "-"), tt.spec)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}
