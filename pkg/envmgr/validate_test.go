package envmgr

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

func validEnv() *v1alpha1.Environment {
	e := testEnv("pr-42", "")
	e.Spec.Forks = []v1alpha1.Fork{{Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "api"}}}
	return e
}

// TestValidate: what the lab refuses without an API server, the way the
// CRD's schema and CEL would, plus the controller's TTL limit.
func TestValidate(t *testing.T) {
	limits := Limits{DefaultTTL: time.Hour, MaxTTL: 48 * time.Hour}
	if err := Validate(validEnv(), limits); err != nil {
		t.Fatalf("a valid environment: %v", err)
	}
	v := "x"
	for _, tc := range []struct {
		name   string
		change func(*v1alpha1.Environment)
		want   string
	}{
		{"long name", func(e *v1alpha1.Environment) { e.Name = strings.Repeat("a", 41) }, "at most 40 characters"},
		{"upper case name", func(e *v1alpha1.Environment) { e.Name = "PR-1" }, "DNS-1123 label"},
		{"bad key", func(e *v1alpha1.Environment) { e.Spec.Key = "a b" }, "key \"a b\""},
		{"no fork", func(e *v1alpha1.Environment) { e.Spec.Forks = nil }, "fork at least one workload"},
		{"kind", func(e *v1alpha1.Environment) { e.Spec.Forks[0].Workload.Kind = "Job" }, "only Deployment and StatefulSet"},
		{"forked twice", func(e *v1alpha1.Environment) { e.Spec.Forks = append(e.Spec.Forks, e.Spec.Forks[0]) }, "forked twice"},
		{"two images for one container", func(e *v1alpha1.Environment) {
			e.Spec.Forks[0].Images = []v1alpha1.ImageOverride{{Image: "a"}, {Image: "b"}}
		}, "two images for container"},
		{"image with a space", func(e *v1alpha1.Environment) { e.Spec.Forks[0].Images = []v1alpha1.ImageOverride{{Image: "a b"}} }, "want an image reference"},
		{"empty command", func(e *v1alpha1.Environment) { e.Spec.Forks[0].Commands = []v1alpha1.CommandOverride{{}} }, "give a command or arguments"},
		{"bad variable", func(e *v1alpha1.Environment) { e.Spec.Forks[0].Env = []v1alpha1.EnvOverride{{Name: "1=2", Value: &v}} }, "not a variable name"},
		{"delete with a value", func(e *v1alpha1.Environment) {
			e.Spec.Forks[0].Env = []v1alpha1.EnvOverride{{Name: "A", Value: &v, Delete: true}}
		}, "a deleted variable takes no value"},
		{"value and valueFrom", func(e *v1alpha1.Environment) {
			e.Spec.Forks[0].Env = []v1alpha1.EnvOverride{{Name: "A", Value: &v, ValueFrom: &corev1.EnvVarSource{}}}
		}, "exclusive"},
		{"neither", func(e *v1alpha1.Environment) { e.Spec.Forks[0].Env = []v1alpha1.EnvOverride{{Name: "A"}} }, "give a value"},
		{"replicas", func(e *v1alpha1.Environment) { n := int32(101); e.Spec.Forks[0].Replicas = &n }, "replicas 101"},
		{"patch not an object", func(e *v1alpha1.Environment) { e.Spec.Forks[0].Patch = &runtime.RawExtension{Raw: []byte("[]")} }, "patch is not a JSON object"},
		{"data kind", func(e *v1alpha1.Environment) { e.Spec.Data = []v1alpha1.DataSource{{Name: "db", Kind: "mysql"}} }, "want postgres-branch or job"},
		{"ttl over the maximum", func(e *v1alpha1.Environment) { e.Spec.TTL = &metav1.Duration{Duration: 49 * time.Hour} }, "longer than this controller allows (48h0m0s"},
		{"ttl zero", func(e *v1alpha1.Environment) { e.Spec.TTL = &metav1.Duration{} }, "want a positive duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := validEnv()
			tc.change(e)
			if err := Validate(e, limits); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Every problem at once, so one edit fixes them all.
	e := validEnv()
	e.Name, e.Spec.Forks[0].Workload.Kind = "UPPER", "Job"
	if err := Validate(e, limits); err == nil || !strings.Contains(err.Error(), "DNS-1123") || !strings.Contains(err.Error(), "only Deployment") {
		t.Errorf("two problems: %v", err)
	}
	if got := limits.TTL(validEnv()); got != time.Hour {
		t.Errorf("default TTL %v", got)
	}
}
