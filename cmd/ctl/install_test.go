package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/detourdev/detour/deploy"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/kubeclient"
)

// liveObjects reads what the cluster holds of the manifests' objects.
type liveObjects struct {
	t      *testing.T
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newLiveObjects(t *testing.T, kubeconfig string) *liveObjects {
	rc := kubetest.Config(t, kubeconfig)
	dc := discovery.NewDiscoveryClientForConfigOrDie(rc)
	return &liveObjects{t: t, dyn: dynamic.NewForConfigOrDie(rc), mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// get returns the live object, or nil when it (or its kind) is gone.
func (l *liveObjects) get(u *unstructured.Unstructured) *unstructured.Unstructured {
	l.t.Helper()
	l.mapper.Reset()
	gvk := u.GroupVersionKind()
	m, err := l.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		l.t.Fatalf("%s: %v", kubeclient.Ref(u), err)
	}
	var r dynamic.ResourceInterface = l.dyn.Resource(m.Resource)
	if u.GetNamespace() != "" {
		r = l.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
	}
	got, err := r.Get(context.Background(), u.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		l.t.Fatalf("%s: %v", kubeclient.Ref(u), err)
	}
	return got
}

func image(t *testing.T, u *unstructured.Unstructured) string {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("%s has %d containers", kubeclient.Ref(u), len(cs))
	}
	return cs[0].(map[string]any)["image"].(string)
}

// theManifests are the objects of the embedded manifests, as written.
func theManifests(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	objs, err := deploy.Objects()
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func byRef(t *testing.T, objs []*unstructured.Unstructured, ref string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		if kubeclient.Ref(u) == ref {
			return u
		}
	}
	t.Fatalf("the manifests have no %s", ref)
	return nil
}

// --dry-run prints the manifests with their images, as kubectl apply -f
// takes them, and needs no cluster.
func TestInstallDryRun(t *testing.T) {
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "absent"))
	out, msg, code := runCLI(t, "install", "--dry-run", "--agent-image", "registry.test/agent:v7")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, msg)
	}
	var docs []*unstructured.Unstructured
	r := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := r.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("output is not YAML: %v\n%s", err, out)
		}
		if len(u.Object) > 0 {
			docs = append(docs, u)
		}
	}
	want := theManifests(t)
	if len(docs) != len(want) {
		t.Fatalf("%d objects printed, the manifests have %d", len(docs), len(want))
	}
	if docs[0].GetKind() != "Namespace" || docs[1].GetKind() != "CustomResourceDefinition" || docs[len(docs)-1].GetKind() != "DaemonSet" {
		t.Errorf("not in apply order: first %s, %s, last %s", docs[0].GetKind(), docs[1].GetKind(), docs[len(docs)-1].GetKind())
	}
	if img := image(t, byRef(t, docs, "deployment.apps/detour-controller")); img != "detour.local/detour-controller:dev" {
		t.Errorf("controller image %q, want the kustomization's detour.local/detour-controller:dev", img)
	}
	if img := image(t, byRef(t, docs, "daemonset.apps/detour-agent")); img != "registry.test/agent:v7" {
		t.Errorf("agent image %q", img)
	}

	out, _, code = runCLI(t, "install", "--dry-run", "-o", "json")
	var list struct {
		Kind  string
		Items []map[string]any
	}
	if err := json.Unmarshal([]byte(out), &list); code != exitOK || err != nil || list.Kind != "List" || len(list.Items) != len(want) {
		t.Errorf("-o json: exit %d, %v, %s with %d items", code, err, list.Kind, len(list.Items))
	}

	out, _, code = runCLI(t, "uninstall", "--dry-run")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != len(want) || lines[0] != "daemonset.apps/detour-agent would be deleted" ||
		lines[len(lines)-3] != "customresourcedefinition.apiextensions.k8s.io/intercepts.detour.dev would be deleted" ||
		lines[len(lines)-2] != "customresourcedefinition.apiextensions.k8s.io/environments.detour.dev would be deleted" ||
		lines[len(lines)-1] != "namespace/detour-system would be deleted" {
		t.Errorf("uninstall --dry-run: exit %d\n%s", code, out)
	}

	if _, msg, code := runCLI(t, "install", "--dry-run", "--controller-image", ""); code != exitOK {
		t.Errorf("empty --controller-image: exit %d %s", code, msg)
	}
	if _, msg, code := runCLI(t, "install", "--detour-namespace", "other", "--dry-run"); code != exitUsage || !strings.Contains(msg, "namespace detour-system") {
		t.Errorf("--detour-namespace other: exit %d %s", code, msg)
	}
	if _, msg, code := runCLI(t, "install", "--controller", "127.0.0.1:1", "--dry-run"); code != exitUsage || !strings.Contains(msg, "--controller does not apply") {
		t.Errorf("--controller: exit %d %s", code, msg)
	}
}

// install and uninstall of the real manifests against a real API server.
func TestInstallUninstall(t *testing.T) {
	env := envtest.Start(t)
	t.Setenv("KUBECONFIG", env.Kubeconfig)
	t.Setenv("DETOUR_CONTROLLER", "")
	live := newLiveObjects(t, env.Kubeconfig)
	objs := theManifests(t)
	run := func(want int, args ...string) (string, string) {
		t.Helper()
		out, msg, code := runCLI(t, args...)
		if code != want {
			t.Fatalf("detour %s: exit %d (%s), want %d\n%s", strings.Join(args, " "), code, msg, want, out)
		}
		return out, msg
	}
	// results maps each object line of the output to its verb.
	results := func(out string) map[string]string {
		got := map[string]string{}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 2 && strings.Contains("created configured unchanged deleted", f[1]) {
				got[f[0]] = f[1]
			}
		}
		return got
	}
	all := func(verb string) map[string]string {
		m := map[string]string{}
		for _, u := range objs {
			m[kubeclient.Ref(u)] = verb
		}
		return m
	}

	// A user without rights is refused by the API server.
	if _, msg := run(exitRefused, "--kubeconfig", env.UserKubeconfig, "install", "--wait=false"); !strings.Contains(msg, "forbidden") {
		t.Errorf("install without rights: %q", msg)
	}

	out, _ := run(exitOK, "install", "--wait=false")
	if got := results(out); !reflect.DeepEqual(got, all("created")) {
		t.Errorf("install said %v\nwant %v", got, all("created"))
	}
	versions := map[string]string{}
	for _, u := range objs {
		got := live.get(u)
		if got == nil {
			t.Fatalf("%s was not created", kubeclient.Ref(u))
		}
		versions[kubeclient.Ref(u)] = got.GetResourceVersion()
	}
	ctl, agent := byRef(t, objs, "deployment.apps/detour-controller"), byRef(t, objs, "daemonset.apps/detour-agent")
	if img := image(t, live.get(ctl)); img != "detour.local/detour-controller:dev" {
		t.Errorf("controller image %q", img)
	}
	if img := image(t, live.get(agent)); img != "detour.local/detour-agent:dev" {
		t.Errorf("agent image %q", img)
	}

	// Again: a no-op.
	out, _ = run(exitOK, "install", "--wait=false")
	if got := results(out); !reflect.DeepEqual(got, all("unchanged")) {
		t.Errorf("second install said %v", got)
	}
	for _, u := range objs {
		if rv := live.get(u).GetResourceVersion(); rv != versions[kubeclient.Ref(u)] {
			t.Errorf("%s changed (resourceVersion %s, was %s)", kubeclient.Ref(u), rv, versions[kubeclient.Ref(u)])
		}
	}

	// Other images.
	out, _ = run(exitOK, "install", "--wait=false", "--controller-image", "registry.test/detour-controller:v2",
		"--agent-image", "registry.test/detour-agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	want := all("unchanged")
	want["deployment.apps/detour-controller"], want["daemonset.apps/detour-agent"] = "configured", "configured"
	if got := results(out); !reflect.DeepEqual(got, want) {
		t.Errorf("install with images said %v", got)
	}
	if img := image(t, live.get(ctl)); img != "registry.test/detour-controller:v2" {
		t.Errorf("controller image %q", img)
	}
	if img := image(t, live.get(agent)); img != "registry.test/detour-agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" {
		t.Errorf("agent image %q", img)
	}

	// No kubelet, no controller-manager: --wait gives up, naming both.
	start := time.Now()
	// (--timeout covers the whole command: room for a loaded machine to
	// apply everything before the wait runs out.)
	out, msg := run(exitError, "install", "--timeout", "8s")
	if time.Since(start) > 30*time.Second {
		t.Errorf("--timeout 8s took %v", time.Since(start))
	}
	for _, want := range []string{
		"Detour is installed but not ready within --timeout 8s: timed out waiting for ",
		"daemonset.apps/detour-agent (0 of 0 pods ready; not yet seen by the daemonset controller)",
		"deployment.apps/detour-controller (0 of 2 replicas ready, want 1; not yet seen by the deployment controller)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("timeout message lacks %q:\n%s", want, msg)
		}
	}
	if !strings.Contains(out, "waiting for deployment.apps/detour-controller: 0 of 2 replicas ready") {
		t.Errorf("no progress printed:\n%s", out)
	}

	// An Intercept someone made: uninstall deletes it with the CRD.
	ic := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "detour.dev/v1alpha1", "kind": "Intercept",
		"metadata": map[string]any{"name": "alice", "namespace": "default"},
		"spec":     map[string]any{"service": map[string]any{"name": "api", "port": int64(80)}, "destination": "api-alice:8080", "l4": true},
	}}
	icRes := live.dyn.Resource(schema.GroupVersionResource{Group: "detour.dev", Version: "v1alpha1", Resource: "intercepts"}).Namespace("default")
	if _, err := icRes.Create(context.Background(), ic, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Uninstall, waiting. envtest runs no namespace controller: play its
	// part once the namespace is terminating.
	kube := kubetest.Clientset(t, env.Kubeconfig)
	var uout testutil.SyncBuffer // written by the command's goroutine
	done := make(chan error, 1)
	go func() {
		root := newRootCmd()
		root.SetOut(&uout)
		root.SetErr(&uout)
		root.SetArgs([]string{"uninstall", "--timeout", "60s"})
		done <- root.Execute()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	testutil.Eventually(t, 60*time.Second, func() error {
		ns, err := kube.CoreV1().Namespaces().Get(ctx, "detour-system", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%v\n%s", err, uout.String())
		}
		if ns.DeletionTimestamp != nil {
			ns.Spec.Finalizers = nil
			if _, err := kube.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			return nil
		}
		select {
		case err := <-done:
			t.Fatalf("uninstall ended before deleting the namespace: %v\n%s", err, uout.String())
		default:
		}
		return fmt.Errorf("the namespace was not deleted:\n%s", uout.String())
	})
	if err := <-done; err != nil {
		t.Fatalf("uninstall: %v\n%s", err, uout.String())
	}
	if got := results(uout.String()); !reflect.DeepEqual(got, all("deleted")) {
		t.Errorf("uninstall said %v", got)
	}
	if !strings.Contains(uout.String(), "deleting customresourcedefinition.apiextensions.k8s.io/intercepts.detour.dev: every Intercept in the cluster is deleted with it") {
		t.Errorf("no word of the Intercepts:\n%s", uout.String())
	}
	for _, l := range strings.Split(uout.String(), "\n") {
		if strings.HasSuffix(l, " deleted") {
			if l != "daemonset.apps/detour-agent deleted" {
				t.Errorf("first deletion %q, want the DaemonSet:\n%s", l, uout.String())
			}
			break
		}
	}
	for _, u := range objs {
		if live.get(u) != nil {
			t.Errorf("%s is still there", kubeclient.Ref(u))
		}
	}
	if _, err := icRes.Get(ctx, "alice", metav1.GetOptions{}); err == nil {
		t.Error("the Intercept survived its CRD")
	}

	// Again: nothing there, nothing to do, no error.
	out, _ = run(exitOK, "uninstall")
	if strings.Contains(out, "every Intercept") {
		t.Errorf("second uninstall warns of deleting Intercepts that are gone:\n%s", out)
	}
	if n := strings.Count(out, " not found\n"); n != len(objs) {
		t.Errorf("second uninstall: %d objects not found, want %d\n%s", n, len(objs), out)
	}

	// Waiting for a namespace that cannot finish terminating says what
	// holds it.
	run(exitOK, "install", "--wait=false")
	// (The wait always runs out; the timeout leaves a loaded machine time
	// to delete everything else first.)
	out, msg = run(exitError, "uninstall", "--timeout", "10s")
	if !strings.Contains(msg, "namespace/detour-system (terminating, finalizers kubernetes)") {
		t.Errorf("uninstall timeout: %q\n%s", msg, out)
	}
}
