package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/inventory"
)

func labelsOf(app string) map[string]string { return map[string]string{"app": app} }

func podTemplate(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labelsOf(app)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: app, Image: "reg/" + app + ":1",
			Env: []corev1.EnvVar{{Name: "FEATURE_X", Value: "off"}},
		}}},
	}
}

func three() *int32 { n := int32(3); return &n }

// TestWorkloads forks a Deployment and a StatefulSet of a real API server:
// what is made, that the baseline is untouched, that an unchanged plan is
// not written again, what Observe reports from the workload and its pods,
// and that Delete and Forks agree.
func TestWorkloads(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kube := kubetest.Clientset(t, env.Kubeconfig)
	kubetest.Namespace(t, kube, "shop")

	base := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"},
		Spec: appsv1.DeploymentSpec{
			Replicas: three(), Selector: &metav1.LabelSelector{MatchLabels: labelsOf("api")},
			Template:        podTemplate("api"),
			MinReadySeconds: 7,
		},
	}
	base, err := kube.AppsV1().Deployments("shop").Create(ctx, base, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop"},
		Spec: appsv1.StatefulSetSpec{
			Replicas: three(), Selector: &metav1.LabelSelector{MatchLabels: labelsOf("db")},
			ServiceName: "db", Template: podTemplate("db"),
		},
	}
	if _, err := kube.AppsV1().StatefulSets("shop").Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e := &v1alpha1.Environment{ObjectMeta: metav1.ObjectMeta{Name: "pr-42", Namespace: "shop", UID: types.UID("0d5c5e4e-1111-4444-8888-1234567890ab")}}
	svcs := []inventory.Service{{Name: "api", Namespace: "shop", Selector: labelsOf("api"), Ports: []inventory.ServicePort{{Port: 80}}}}
	w := New(kube, "detour-test")

	// Unknown workloads and kinds are refusals, not retries.
	if _, err := w.Baseline(ctx, "shop", v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "nope"}); !errors.Is(err, envmgr.ErrWorkloadNotFound) || !envmgr.IsRefusal(err) {
		t.Errorf("Baseline(nope) = %v", err)
	}
	if _, err := w.Baseline(ctx, "shop", v1alpha1.WorkloadRef{Kind: "DaemonSet", Name: "api"}); !errors.Is(err, envmgr.ErrUnsupported) || !strings.Contains(err.Error(), "only Deployment and StatefulSet") {
		t.Errorf("Baseline(DaemonSet) = %v", err)
	}

	b, err := w.Baseline(ctx, "shop", v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "api"})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := envmgr.RenderFork(e, &v1alpha1.Fork{Workload: b.Ref, Images: []v1alpha1.ImageOverride{{Container: "api", Image: "reg/api:pr-42"}}}, b, svcs)
	if err != nil {
		t.Fatal(err)
	}
	if o, err := w.Observe(ctx, plan); err != nil || o.Exists {
		t.Fatalf("Observe before Apply: %+v, %v", o, err)
	}
	if err := w.Apply(ctx, e, b, plan); err != nil {
		t.Fatal(err)
	}
	fork, err := kube.AppsV1().Deployments("shop").Get(ctx, "api-pr-42", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := metav1.GetControllerOf(fork)
	if c == nil || c.Kind != "Environment" || c.Name != "pr-42" || c.UID != e.UID || c.APIVersion != "detour.dev/v1alpha1" {
		t.Errorf("fork's controller = %+v", c)
	}
	if *fork.Spec.Replicas != 1 || fork.Spec.MinReadySeconds != 7 || fork.Spec.Template.Spec.Containers[0].Image != "reg/api:pr-42" ||
		fork.Spec.Template.Labels["app"] != "api-pr-42" || fork.Labels[v1alpha1.LabelEnvironment] != "pr-42" {
		t.Errorf("fork spec: replicas %d minReady %d image %s labels %v/%v", *fork.Spec.Replicas, fork.Spec.MinReadySeconds,
			fork.Spec.Template.Spec.Containers[0].Image, fork.Spec.Template.Labels, fork.Labels)
	}
	if after, _ := kube.AppsV1().Deployments("shop").Get(ctx, "api", metav1.GetOptions{}); after.ResourceVersion != base.ResourceVersion {
		t.Error("the baseline Deployment was written")
	}
	// Idempotent: an unchanged plan writes nothing.
	if err := w.Apply(ctx, e, b, plan); err != nil {
		t.Fatal(err)
	}
	if again, _ := kube.AppsV1().Deployments("shop").Get(ctx, "api-pr-42", metav1.GetOptions{}); again.ResourceVersion != fork.ResourceVersion {
		t.Error("an unchanged plan was written again")
	}
	// A changed plan is.
	plan.Replicas = 2
	if err := w.Apply(ctx, e, b, plan); err != nil {
		t.Fatal(err)
	}
	if again, _ := kube.AppsV1().Deployments("shop").Get(ctx, "api-pr-42", metav1.GetOptions{}); *again.Spec.Replicas != 2 {
		t.Error("a changed plan was not applied")
	}
	// Another environment's (or anyone's) object of that name is not taken.
	other := e.DeepCopy()
	other.UID = "ffffffff-1111-4444-8888-1234567890ab"
	if err := w.Apply(ctx, other, b, plan); !errors.Is(err, envmgr.ErrNotOurs) {
		t.Errorf("Apply over another owner's fork: %v", err)
	}

	// Observe: ready pods come from the status, problems from the pods.
	fork, _ = kube.AppsV1().Deployments("shop").Get(ctx, "api-pr-42", metav1.GetOptions{})
	fork.Status = appsv1.DeploymentStatus{ObservedGeneration: fork.Generation, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 1}
	if _, err := kube.AppsV1().Deployments("shop").UpdateStatus(ctx, fork, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api-pr-42-abc", Namespace: "shop", Labels: plan.Template.Labels},
		Spec:       plan.Template.Spec,
	}
	pod, err = kube.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	o, err := w.Observe(ctx, plan)
	if err != nil || !o.Exists || o.Ready != 1 || o.Failed {
		t.Errorf("Observe: %+v, %v", o, err)
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "api", State: corev1.ContainerState{
		Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: `Back-off pulling image "reg/api:pr-42"`}}}}
	if _, err := kube.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	o, err = w.Observe(ctx, plan)
	if err != nil || !o.Failed || !strings.Contains(o.Message, `pod api-pr-42-abc container api: ImagePullBackOff: Back-off pulling image "reg/api:pr-42"`) {
		t.Errorf("Observe with an image that cannot be pulled: %+v, %v", o, err)
	}

	// A StatefulSet fork's claims go with it.
	sb, err := w.Baseline(ctx, "shop", v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadStatefulSet, Name: "db"})
	if err != nil {
		t.Fatal(err)
	}
	splan, err := envmgr.RenderFork(e, &v1alpha1.Fork{Workload: sb.Ref}, sb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(ctx, e, sb, splan); err != nil {
		t.Fatal(err)
	}
	sf, err := kube.AppsV1().StatefulSets("shop").Get(ctx, "db-pr-42", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := sf.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenDeleted != appsv1.DeletePersistentVolumeClaimRetentionPolicyType || sf.Spec.ServiceName != "db" {
		t.Errorf("StatefulSet fork: retention %+v, serviceName %q", p, sf.Spec.ServiceName)
	}

	forks, err := w.Forks(ctx, "shop", "pr-42")
	if err != nil || len(forks) != 2 {
		t.Fatalf("Forks = %+v, %v", forks, err)
	}
	for _, f := range forks {
		if err := w.Delete(ctx, "shop", f); err != nil {
			t.Error(err)
		}
		if err := w.Delete(ctx, "shop", f); err != nil {
			t.Errorf("second Delete of %s: %v", f.Name, err)
		}
	}
	if forks, err := w.Forks(ctx, "shop", "pr-42"); err != nil || len(forks) != 0 {
		t.Errorf("Forks after Delete = %+v, %v", forks, err)
	}
	for _, name := range []string{"api", "db"} {
		if _, err := kube.AppsV1().Deployments("shop").Get(ctx, name, metav1.GetOptions{}); name == "api" && err != nil {
			t.Errorf("baseline %s: %v", name, err)
		}
	}
}
