package environment_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/environment"
	"github.com/detourdev/detour/pkg/parity/source"
)

// One API server for the package's tests that need one (TestMain), with the
// Environment CRD installed; each test works in a namespace of its own.
var (
	apiServer *envtest.Env
	noCluster string // why there is none
	runs      atomic.Int32
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	env, err := envtest.Run(ctx, envtest.Options{})
	if errors.Is(err, envtest.ErrNoBinaries) && !testutil.InCI() {
		noCluster = err.Error()
		return m.Run()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: %v\n", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if _, err := env.InstallCRDs(ctx, "../../../deploy/crds/detour.dev_environments.yaml"); err != nil {
		fmt.Fprintf(os.Stderr, "install CRDs: %v\n", err)
		return 1
	}
	apiServer = env
	return m.Run()
}

func clients(t *testing.T) (kubernetes.Interface, versioned.Interface) {
	t.Helper()
	if apiServer == nil {
		t.Skipf("envtest: %s", noCluster)
	}
	cfg := kubetest.AdminConfig(apiServer)
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	detour, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kube, detour
}

// deployment is a workload as a person or a chart writes it, and fork the
// fork of it an environment would make, written by hand here: the
// reconciler's labels, selector, annotation and variables, and the
// environment's changes.
func deployment(name string, replicas int32, image string, env ...corev1.EnvVar) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"team": "shop"}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: image, Env: env}}},
			},
		},
	}
}

func fork(of *appsv1.Deployment, env, image string, extra ...corev1.EnvVar) *appsv1.Deployment {
	d := of.DeepCopy()
	d.Name = of.Name + "-" + env
	sel := map[string]string{v1alpha1.LabelEnvironment: env, v1alpha1.LabelForkOf: of.Name}
	d.Labels = sel
	d.Annotations = map[string]string{"detour.dev/fork-hash": "0123"}
	d.Spec.Replicas = new(int32)
	*d.Spec.Replicas = 1
	d.Spec.Selector = &metav1.LabelSelector{MatchLabels: sel}
	d.Spec.Template.Labels = map[string]string{"app": of.Name + "-" + env, v1alpha1.LabelEnvironment: env, v1alpha1.LabelForkOf: of.Name}
	c := &d.Spec.Template.Spec.Containers[0]
	c.Image = image
	c.Env = append(append(c.Env, extra...), corev1.EnvVar{Name: "DETOUR_ENV", Value: env}, corev1.EnvVar{Name: "DETOUR_SESSION", Value: env})
	return d
}

// env/NAME against a real API server: the Environment resource is read,
// its forks found by their labels and shown in place of what they fork;
// the namespace itself shows none of them (rule environment-forks).
func TestEnvironmentSide(t *testing.T) {
	kube, detour := clients(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	shop := fmt.Sprintf("shop-%d", runs.Add(1)) // -count=N: a new namespace each run
	kubetest.Namespace(t, kube, shop)
	base := deployment("api", 3, "reg/api:1", corev1.EnvVar{Name: "MODE", Value: "safe"})
	create := func(d *appsv1.Deployment) {
		t.Helper()
		if _, err := kube.AppsV1().Deployments(shop).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create(base)
	create(deployment("web", 2, "reg/web:1"))
	create(fork(base, "pr-1", "reg/api:2", corev1.EnvVar{Name: "FEATURE", Value: "on"}))
	create(fork(base, "pr-2", "reg/api:3"))
	if _, err := kube.CoreV1().ConfigMaps(shop).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg"}, Data: map[string]string{"a": "1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e, err := detour.DetourV1alpha1().Environments(shop).Create(ctx, &v1alpha1.Environment{
		ObjectMeta: metav1.ObjectMeta{Name: "pr-1"},
		Spec:       v1alpha1.EnvironmentSpec{Forks: []v1alpha1.Fork{{Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "api"}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	l := &source.Loader{
		Kube:         func(string) (kubernetes.Interface, error) { return kube, nil },
		Environments: &environment.Resolver{Detour: detour, Kube: kube, Namespace: shop},
	}
	load := func(arg string) *parity.Snapshot {
		t.Helper()
		s, err := source.Parse(arg)
		if err != nil {
			t.Fatal(err)
		}
		snap, err := l.Load(ctx, s, "")
		if err != nil {
			t.Fatalf("%s: %v", arg, err)
		}
		return snap
	}
	ns, env := load(shop), load("env/pr-1")
	var names []string
	for _, o := range ns.Objects {
		names = append(names, o.Key().String())
	}
	if want := []string{"ConfigMap/cfg", "Deployment/api", "Deployment/web"}; !slices.Equal(names, want) {
		t.Errorf("namespace %s reads %v, want %v: forks are not part of it", shop, names, want)
	}
	rep, err := parity.Diff(ns, env, parity.DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range rep.Differences {
		got = append(got, d.Object()+" "+d.Path)
	}
	want := []string{
		"Deployment/api /spec/replicas",
		"Deployment/api /spec/template/spec/containers/api/env/FEATURE",
		"Deployment/api /spec/template/spec/containers/api/image",
	}
	if !slices.Equal(got, want) || rep.Right.Source != "env/pr-1" {
		t.Errorf("the namespace against env/pr-1 (%s): %v, want %v", rep.Right.Source, got, want)
	}

	// Summary of the same environment, as its status shows it.
	sum, err := environment.Summary(ctx, kube, e)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Differences != 2 || sum.Expected != 1 || !slices.Equal(sum.Fields, []string{want[2], want[1]}) {
		t.Errorf("summary %+v", sum)
	}

	s, _ := source.Parse("env/nope")
	if _, err := l.Load(ctx, s, ""); !errors.Is(err, source.ErrNotFound) {
		t.Errorf("env/nope: %v, want not found", err)
	}
}
