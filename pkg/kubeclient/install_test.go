package kubeclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
)

var gvrs = map[string]schema.GroupVersionResource{
	"Namespace":                {Version: "v1", Resource: "namespaces"},
	"CustomResourceDefinition": {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	"ServiceAccount":           {Version: "v1", Resource: "serviceaccounts"},
	"ConfigMap":                {Version: "v1", Resource: "configmaps"},
	"Deployment":               {Group: "apps", Version: "v1", Resource: "deployments"},
	"DaemonSet":                {Group: "apps", Version: "v1", Resource: "daemonsets"},
	"Widget":                   {Group: "fixture.detour.dev", Version: "v1", Resource: "widgets"},
}

// get fetches the live object of u, or nil when it is not there.
func get(t *testing.T, dyn dynamic.Interface, u *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	gvr, ok := gvrs[u.GetKind()]
	if !ok {
		t.Fatalf("no resource for kind %s", u.GetKind())
	}
	var r dynamic.ResourceInterface = dyn.Resource(gvr)
	if u.GetNamespace() != "" {
		r = dyn.Resource(gvr).Namespace(u.GetNamespace())
	}
	got, err := r.Get(context.Background(), u.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err != nil && strings.Contains(err.Error(), "the server could not find the requested resource")) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func lines(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }

// The fixture applied to a real API server: every object, in dependency
// order, a custom resource right after its CRD is Established; applying
// again changes nothing; a field someone else changed is taken back;
// waiting without a kubelet ends naming what is not ready; removal waits
// for the DaemonSet's pods before anything else goes, and can be repeated.
func TestInstallerFixture(t *testing.T) {
	env := envtest.Start(t)
	rc := kubetest.Config(t, env.Kubeconfig)
	dyn := dynamic.NewForConfigOrDie(rc)
	kube := kubetest.Clientset(t, env.Kubeconfig)
	ms, err := LoadManifests(os.DirFS("testdata/deploy"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Render(ms, map[string]string{"example.test/agent": "registry.test/agent:v2"})
	if err != nil {
		t.Fatal(err)
	}
	var out testutil.SyncBuffer // the installer writes it from its goroutines
	in, err := NewInstaller(rc, &out)
	if err != nil {
		t.Fatal(err)
	}
	in.Poll = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if err := in.Apply(ctx, objs); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	var applied []string
	for _, l := range lines(out.String()) {
		if !strings.HasPrefix(l, "waiting for") && !strings.HasSuffix(l, "Established") {
			applied = append(applied, l)
		}
	}
	want := []string{
		"namespace/fixture-system created",
		"customresourcedefinition.apiextensions.k8s.io/widgets.fixture.detour.dev created",
		"serviceaccount/fixture created",
		"configmap/fixture-config created",
		"deployment.apps/fixture-app created",
		"daemonset.apps/fixture-agent created",
		"widget.fixture.detour.dev/one created",
	}
	if !reflect.DeepEqual(applied, want) {
		t.Fatalf("apply said\n%s\nwant\n%s", strings.Join(applied, "\n"), strings.Join(want, "\n"))
	}
	versions := map[string]string{}
	for _, u := range objs {
		got := get(t, dyn, u)
		if got == nil {
			t.Fatalf("%s was not created", Ref(u))
		}
		versions[Ref(u)] = got.GetResourceVersion()
		if mf := got.GetManagedFields(); len(mf) == 0 || mf[0].Manager != FieldManager || mf[0].Operation != metav1.ManagedFieldsOperationApply {
			t.Errorf("%s: managed fields %+v, want an Apply by %q", Ref(u), mf, FieldManager)
		}
	}
	if imgs := containerImages(t, get(t, dyn, find(t, objs, "DaemonSet", "fixture-agent"))); imgs["agent"] != "registry.test/agent:v2" {
		t.Errorf("daemonset images %v", imgs)
	}
	if imgs := containerImages(t, get(t, dyn, find(t, objs, "Deployment", "fixture-app"))); imgs["app"] != "example.test/app:v1" {
		t.Errorf("deployment images %v", imgs)
	}

	// Again: nothing changes.
	out.Reset()
	if err := in.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	for _, l := range lines(out.String()) {
		if !strings.HasSuffix(l, " unchanged") {
			t.Errorf("second apply: %q", l)
		}
	}
	for _, u := range objs {
		if rv := get(t, dyn, u).GetResourceVersion(); rv != versions[Ref(u)] {
			t.Errorf("%s: resourceVersion %s after the second apply, was %s", Ref(u), rv, versions[Ref(u)])
		}
	}

	// Someone edits a field the manifests set: install takes it back.
	cm, err := kube.CoreV1().ConfigMaps("fixture-system").Get(ctx, "fixture-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["greeting"] = "edited"
	if _, err := kube.CoreV1().ConfigMaps("fixture-system").Update(ctx, cm, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := in.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "configmap/fixture-config configured\n") || strings.Count(out.String(), " configured") != 1 {
		t.Errorf("apply after an edit said\n%s", out.String())
	}
	if cm, _ := kube.CoreV1().ConfigMaps("fixture-system").Get(ctx, "fixture-config", metav1.GetOptions{}); cm.Data["greeting"] != "hello" {
		t.Errorf("greeting %q after install, want the manifests' hello", cm.Data["greeting"])
	}

	// No kubelet, no controller-manager: nothing becomes ready. (The wait
	// always runs out; the timeout leaves room for a loaded machine to poll
	// a few times.)
	out.Reset()
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
	err = in.WaitReady(wctx, objs)
	wcancel()
	var te *TimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("wait without a kubelet: %v", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "timed out waiting for ") ||
		!strings.Contains(msg, "daemonset.apps/fixture-agent (0 of 0 pods ready; not yet seen by the daemonset controller)") ||
		!strings.Contains(msg, "deployment.apps/fixture-app (0 of 2 replicas ready, want 1; not yet seen by the deployment controller)") {
		t.Errorf("timeout message %q", msg)
	}
	if !strings.Contains(out.String(), "waiting for deployment.apps/fixture-app: 0 of 2 replicas ready") {
		t.Errorf("no progress:\n%s", out.String())
	}

	// An agent pod holds the removal until it is gone.
	agent := kubetest.Pod(t, kube, "fixture-system", "fixture-agent-x", map[string]string{"app": "fixture-agent"}, kubetest.PodState{Phase: corev1.PodRunning, Ready: true})
	out.Reset()
	done := make(chan error, 1)
	go func() { done <- in.Delete(ctx, objs, false) }()
	testutil.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(out.String(), "waiting for the pods of daemonset.apps/fixture-agent: 1 still there") {
			return fmt.Errorf("uninstall does not say it waits for the agent pod:\n%s", out.String())
		}
		return nil
	})
	if get(t, dyn, find(t, objs, "DaemonSet", "fixture-agent")) != nil {
		t.Error("the DaemonSet is still there")
	}
	for _, kind := range []string{"Deployment", "ConfigMap", "Widget", "CustomResourceDefinition", "Namespace"} {
		for _, u := range objs {
			if u.GetKind() == kind && get(t, dyn, u) == nil {
				t.Errorf("%s deleted while an agent pod runs", Ref(u))
			}
		}
	}
	if err := kube.CoreV1().Pods("fixture-system").Delete(ctx, agent.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("delete: %v\n%s", err, out.String())
	}
	var deleted []string
	for _, l := range lines(out.String()) {
		if !strings.Contains(l, "pods of") {
			deleted = append(deleted, l)
		}
	}
	wantDeleted := []string{
		"daemonset.apps/fixture-agent deleted",
		"widget.fixture.detour.dev/one deleted",
		"deployment.apps/fixture-app deleted",
		"configmap/fixture-config deleted",
		"serviceaccount/fixture deleted",
		"deleting customresourcedefinition.apiextensions.k8s.io/widgets.fixture.detour.dev: every Widget in the cluster is deleted with it",
		"customresourcedefinition.apiextensions.k8s.io/widgets.fixture.detour.dev deleted",
		"namespace/fixture-system deleted",
	}
	if !reflect.DeepEqual(deleted, wantDeleted) {
		t.Errorf("delete said\n%s\nwant\n%s", strings.Join(deleted, "\n"), strings.Join(wantDeleted, "\n"))
	}

	// Waiting: all is gone but the namespace, which needs the namespace
	// controller (kube-controller-manager) to finish.
	out.Reset()
	wctx, wcancel = context.WithTimeout(ctx, 8*time.Second)
	err = in.Delete(wctx, objs, true)
	wcancel()
	if !errors.As(err, &te) || len(te.Pending) != 1 || te.Pending["namespace/fixture-system"] != "terminating, finalizers kubernetes" {
		t.Fatalf("second delete: %v\n%s", err, out.String())
	}
	// Gone already ("not found"), or gone during this wait: the CRD may
	// still be finishing its own cleanup (finalizer
	// customresourcecleanup) when the second delete starts.
	for _, u := range objs {
		o := out.String()
		if u.GetKind() != "Namespace" && !strings.Contains(o, Ref(u)+" not found\n") && !strings.Contains(o, Ref(u)+" gone\n") {
			t.Errorf("second delete did not report %s gone:\n%s", Ref(u), o)
		}
	}

	// The namespace controller's part: the namespace is empty, finalize it.
	ns, err := kube.CoreV1().Namespaces().Get(ctx, "fixture-system", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Spec.Finalizers = nil
	if _, err := kube.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := in.Delete(ctx, objs, true); err != nil {
		t.Fatalf("delete when all is gone: %v", err)
	}
	if got := strings.Count(out.String(), " not found\n"); got != len(objs) {
		t.Errorf("delete when all is gone said\n%s", out.String())
	}
	for _, u := range objs {
		if get(t, dyn, u) != nil {
			t.Errorf("%s is still there", Ref(u))
		}
	}
}

// TestPollRateLimitedAtDeadline: client-go's rate limiter refuses a request
// whose turn would come after the context's deadline, a moment before the
// deadline. The wait then ends as a timeout naming what is pending, as it
// would have a moment later, not with the limiter's words; any other error
// still ends it as that error.
func TestPollRateLimitedAtDeadline(t *testing.T) {
	in := &Installer{Out: io.Discard, Poll: 10 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	lim := flowcontrol.NewTokenBucketRateLimiter(0.01, 1) // one request, the next in 100 s
	err := in.poll(ctx, "ready", func() (map[string]string, error) {
		if err := lim.Wait(ctx); err != nil {
			return nil, fmt.Errorf("client rate limiter Wait returned an error: %w", err) // as client-go's request does
		}
		return map[string]string{"deployment.apps/x": "0 of 1 replicas ready"}, nil
	})
	var te *TimeoutError
	if !errors.As(err, &te) || te.Pending["deployment.apps/x"] != "0 of 1 replicas ready" {
		t.Fatalf("poll ended with %v, want a timeout naming deployment.apps/x", err)
	}

	forbidden := errors.New("deployments.apps is forbidden")
	if err := in.poll(context.Background(), "ready", func() (map[string]string, error) { return nil, forbidden }); err != forbidden {
		t.Fatalf("poll ended with %v, want %v", err, forbidden)
	}
}
