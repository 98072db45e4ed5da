package environment_test

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/envmgr/cluster"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/environment"
)

func int32p(n int32) *int32 { return &n }

func template(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app, "tier": "backend"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: app, Image: "reg/" + app + ":1",
			Env: []corev1.EnvVar{{Name: "MODE", Value: "safe"}},
		}}},
	}
}

// The environments reconciler's own fork writer (envmgr.RenderFork, then
// cluster's Apply) makes the forks; Summary reports exactly the overrides
// asked for, and nothing of what only keeps a fork apart: its labels,
// selector, annotations, DETOUR_ENV and DETOUR_SESSION. So ForkPaths and
// what envmgr writes stay together.
func TestSummaryOfRenderedForks(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop", Labels: map[string]string{"team": "a"}, Annotations: map[string]string{"owner": "a"}},
			Spec:       appsv1.DeploymentSpec{Replicas: int32p(3), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}}, Template: template("api")},
		},
		&appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop"},
			Spec: appsv1.StatefulSetSpec{Replicas: int32p(1), ServiceName: "db", Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}, Template: template("db"),
				VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{ObjectMeta: metav1.ObjectMeta{Name: "data"}}}},
		},
	)
	svcs := []inventory.Service{
		{Name: "api", Namespace: "shop", Selector: map[string]string{"app": "api"}, Ports: []inventory.ServicePort{{Port: 80}}},
		{Name: "db", Namespace: "shop", Selector: map[string]string{"app": "db"}, Ports: []inventory.ServicePort{{Port: 5432}}},
	}
	w := cluster.New(kube, "test")
	fork := func(env *v1alpha1.Environment) {
		t.Helper()
		for i := range env.Spec.Forks {
			f := &env.Spec.Forks[i]
			b, err := w.Baseline(ctx, "shop", f.Workload)
			if err != nil {
				t.Fatal(err)
			}
			p, err := envmgr.RenderFork(env, f, b, svcs)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Apply(ctx, env, b, p); err != nil {
				t.Fatal(err)
			}
		}
	}
	fast := "fast"
	pr1 := &v1alpha1.Environment{
		ObjectMeta: metav1.ObjectMeta{Name: "pr-1", Namespace: "shop", UID: types.UID("11111111-1111-4111-8111-111111111111"), Generation: 2},
		Spec: v1alpha1.EnvironmentSpec{Forks: []v1alpha1.Fork{
			{Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "api"},
				Images: []v1alpha1.ImageOverride{{Image: "reg/api:2"}},
				Env:    []v1alpha1.EnvOverride{{Name: "MODE", Value: &fast}}},
			{Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadStatefulSet, Name: "db"}},
		}},
	}
	// Another environment's fork of api is not pr-1's, nor the baseline's.
	pr2 := &v1alpha1.Environment{
		ObjectMeta: metav1.ObjectMeta{Name: "pr-2", Namespace: "shop", UID: types.UID("22222222-2222-4222-8222-222222222222")},
		Spec: v1alpha1.EnvironmentSpec{Forks: []v1alpha1.Fork{{Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "api"},
			Images: []v1alpha1.ImageOverride{{Image: "reg/api:3"}}}}},
	}
	fork(pr1)
	fork(pr2)

	got, err := environment.Summary(ctx, kube, pr1)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"Deployment/api /spec/template/spec/containers/api/image",
		"Deployment/api /spec/template/spec/containers/api/env/MODE/value",
	}
	if !slices.Equal(got.Fields, want) || got.Differences != 2 || got.Truncated {
		t.Errorf("fields %q (%d differences), want %q", got.Fields, got.Differences, want)
	}
	// api's 3 replicas against the fork's 1: by design.
	if got.Expected != 1 || got.ObservedGeneration != 2 {
		t.Errorf("expected %d, generation %d; want 1 and 2", got.Expected, got.ObservedGeneration)
	}
	if !reflect.DeepEqual(got.BySeverity, map[string]int32{"high": 1, "medium": 1}) ||
		!reflect.DeepEqual(got.ByCategory, map[string]int32{"image": 1, "config": 1}) {
		t.Errorf("by severity %v, by category %v", got.BySeverity, got.ByCategory)
	}
	if time.Since(got.Time.Time) > time.Minute {
		t.Errorf("time %v", got.Time)
	}

	// Refresh: a new summary when due, the one it has otherwise, and the
	// one it has when the comparison fails.
	now := time.Now()
	p, next, err := environment.Refresh(ctx, kube, pr1, now)
	if err != nil || p == nil || p.Differences != 2 || next != environment.Interval {
		t.Errorf("Refresh of an environment without parity: %+v %v %v", p, next, err)
	}
	pr1.Status.Parity = p
	// A minute later it is the same summary, due in about Interval less a
	// minute (its time is kept to the second).
	again, next, err := environment.Refresh(ctx, kube, pr1, now.Add(time.Minute))
	if again != p || err != nil || next <= environment.Interval-time.Minute-time.Second || next > environment.Interval-time.Minute {
		t.Errorf("Refresh of a fresh summary: same %v, next %v, %v", again == p, next, err)
	}
	gone := pr1.DeepCopy()
	gone.Namespace, gone.Generation = "nowhere", 3
	if kept, next, err := environment.Refresh(ctx, kube, gone, now); err == nil || kept != gone.Status.Parity || next != environment.RetryInterval {
		t.Errorf("Refresh that cannot compare: %v %v %v", kept == gone.Status.Parity, next, err)
	}
}

// Forks tells env's forks, other environments' and the rest apart.
func TestForks(t *testing.T) {
	obj := func(kind, name string, labels map[string]any) map[string]any {
		return map[string]any{"kind": kind, "metadata": map[string]any{"name": name, "labels": labels}}
	}
	objs := []map[string]any{
		obj("Deployment", "api", map[string]any{"app": "api"}),
		obj("Deployment", "api-a", map[string]any{v1alpha1.LabelEnvironment: "a", v1alpha1.LabelForkOf: "api"}),
		obj("StatefulSet", "db-a", map[string]any{v1alpha1.LabelEnvironment: "a", v1alpha1.LabelForkOf: "db"}),
		obj("Deployment", "api-b", map[string]any{v1alpha1.LabelEnvironment: "b", v1alpha1.LabelForkOf: "api"}),
		obj("ConfigMap", "cfg-a", map[string]any{v1alpha1.LabelEnvironment: "a"}),
	}
	got := environment.Forks(objs, "a")
	want := map[parity.ObjectKey]parity.ObjectKey{
		{Kind: "Deployment", Name: "api-a"}: {Kind: "Deployment", Name: "api"},
		{Kind: "StatefulSet", Name: "db-a"}: {Kind: "StatefulSet", Name: "db"},
		{Kind: "Deployment", Name: "api-b"}: {},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Forks = %v, want %v", got, want)
	}
}

// pkg/parity names the label without importing the API types.
func TestEnvironmentLabel(t *testing.T) {
	if parity.EnvironmentLabel != v1alpha1.LabelEnvironment {
		t.Errorf("parity.EnvironmentLabel %q, v1alpha1.LabelEnvironment %q", parity.EnvironmentLabel, v1alpha1.LabelEnvironment)
	}
	for _, v := range []string{envmgr.EnvVarEnvironment, envmgr.EnvVarSession} {
		n := 0
		for _, p := range environment.ForkPaths {
			if parity.MatchPath(p, "/spec/template/spec/containers/x/env/"+v) || parity.MatchPath(p, "/spec/template/spec/initContainers/x/env/"+v) {
				n++
			}
		}
		if n != 2 {
			t.Errorf("ForkPaths match %s in containers and init containers %d times, want 2", v, n)
		}
	}
}

func TestDue(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	env := func(gen, observed int64, at time.Time) *v1alpha1.Environment {
		e := &v1alpha1.Environment{ObjectMeta: metav1.ObjectMeta{Generation: gen}}
		if !at.IsZero() {
			e.Status.Parity = &v1alpha1.EnvironmentParity{ObservedGeneration: observed, Time: metav1.NewTime(at)}
		}
		return e
	}
	tests := []struct {
		name string
		env  *v1alpha1.Environment
		due  bool
		wait time.Duration
	}{
		{"never taken", env(1, 0, time.Time{}), true, 0},
		{"another generation", env(2, 1, now), true, 0},
		{"fresh", env(1, 1, now.Add(-time.Minute)), false, environment.Interval - time.Minute},
		{"old", env(1, 1, now.Add(-environment.Interval)), true, 0},
	}
	for _, tt := range tests {
		due, wait := environment.Due(tt.env, now)
		if due != tt.due || wait != tt.wait {
			t.Errorf("%s: Due = %v %v, want %v %v", tt.name, due, wait, tt.due, tt.wait)
		}
	}
}
