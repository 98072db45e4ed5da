package kubeclient

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func kinds(objs []*unstructured.Unstructured) []string {
	out := make([]string, len(objs))
	for i, u := range objs {
		out[i] = u.GetKind() + "/" + u.GetName()
	}
	return out
}

func containerImages(t *testing.T, u *unstructured.Unstructured) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range []string{"containers", "initContainers"} {
		cs, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", f)
		for _, c := range cs {
			cm := c.(map[string]any)
			out[cm["name"].(string)] = cm["image"].(string)
		}
	}
	return out
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == kind && u.GetName() == name {
			return u
		}
	}
	t.Fatalf("no %s %s in %v", kind, name, kinds(objs))
	return nil
}

func TestLoadFixture(t *testing.T) {
	ms, err := LoadManifests(os.DirFS("testdata/deploy"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Render(ms, nil)
	if err != nil {
		t.Fatal(err)
	}
	// File order: crds first (listed first), then app's objects as written;
	// the comment-only document is no object.
	want := []string{"CustomResourceDefinition/widgets.fixture.detour.dev", "Widget/one", "DaemonSet/fixture-agent",
		"Deployment/fixture-app", "ConfigMap/fixture-config", "ServiceAccount/fixture", "Namespace/fixture-system"}
	if got := kinds(objs); !reflect.DeepEqual(got, want) {
		t.Errorf("objects %v\nwant %v", got, want)
	}
	wantApply := []string{"Namespace/fixture-system", "CustomResourceDefinition/widgets.fixture.detour.dev", "ServiceAccount/fixture",
		"ConfigMap/fixture-config", "Deployment/fixture-app", "DaemonSet/fixture-agent", "Widget/one"}
	if got := kinds(ApplyOrder(objs)); !reflect.DeepEqual(got, wantApply) {
		t.Errorf("apply order %v\nwant %v", got, wantApply)
	}
	wantDelete := []string{"DaemonSet/fixture-agent", "Widget/one", "Deployment/fixture-app", "ConfigMap/fixture-config",
		"ServiceAccount/fixture", "CustomResourceDefinition/widgets.fixture.detour.dev", "Namespace/fixture-system"}
	if got := kinds(DeleteOrder(objs)); !reflect.DeepEqual(got, wantDelete) {
		t.Errorf("delete order %v\nwant %v", got, wantDelete)
	}

	// The inner kustomization renames the helper and pins its digest; the
	// outer one tags the app; the agent is named by neither.
	imgs := containerImages(t, find(t, objs, "Deployment", "fixture-app"))
	if imgs["app"] != "example.test/app:v1" ||
		imgs["helper"] != "example.test/helper-ng@sha256:0000000000000000000000000000000000000000000000000000000000000001" {
		t.Errorf("deployment images %v", imgs)
	}
	if imgs := containerImages(t, find(t, objs, "DaemonSet", "fixture-agent")); imgs["agent"] != "example.test/agent:v0" {
		t.Errorf("daemonset images %v", imgs)
	}
	// Rendering copies: the loaded manifests keep the images as written.
	if imgs := containerImages(t, ms[3].Object); imgs["app"] != "example.test/app" {
		t.Errorf("Render changed the manifests: %v", imgs)
	}

	// Overrides replace the whole reference of the image as written, and
	// win over the kustomizations' entries.
	objs, err = Render(ms, map[string]string{"example.test/app": "registry.test/app:v9", "example.test/agent": "registry.test/agent@sha256:ab"})
	if err != nil {
		t.Fatal(err)
	}
	if imgs := containerImages(t, find(t, objs, "Deployment", "fixture-app")); imgs["app"] != "registry.test/app:v9" || !strings.HasPrefix(imgs["helper"], "example.test/helper-ng@") {
		t.Errorf("overridden deployment images %v", imgs)
	}
	if imgs := containerImages(t, find(t, objs, "DaemonSet", "fixture-agent")); imgs["agent"] != "registry.test/agent@sha256:ab" {
		t.Errorf("overridden daemonset images %v", imgs)
	}
	if _, err := Render(ms, map[string]string{"example.test/nothing": "x:1"}); err == nil || !strings.Contains(err.Error(), "no container of the manifests uses image example.test/nothing") {
		t.Errorf("unused override: %v", err)
	}
}

func TestImageEntry(t *testing.T) {
	tests := []struct {
		e         Image
		ref, want string
	}{
		{Image{Name: "a/b", NewTag: "dev"}, "a/b", "a/b:dev"},
		{Image{Name: "a/b", NewTag: "dev"}, "a/b:old", "a/b:dev"},
		{Image{Name: "a/b", NewTag: "dev"}, "a/b@sha256:1", "a/b:dev"},
		{Image{Name: "a/b", NewName: "r/c"}, "a/b:old", "r/c:old"},
		{Image{Name: "a/b", Digest: "sha256:2"}, "a/b:old", "a/b@sha256:2"},
		{Image{Name: "a/b", NewTag: "dev"}, "a/bc:old", "a/bc:old"},
		{Image{Name: "host:5000/a", NewTag: "dev"}, "host:5000/a:1", "host:5000/a:dev"},
		{Image{Name: "host:5000/a", NewTag: "dev"}, "host:5000/a", "host:5000/a:dev"},
	}
	for _, tt := range tests {
		if got := tt.e.apply(tt.ref); got != tt.want {
			t.Errorf("%+v on %q = %q, want %q", tt.e, tt.ref, got, tt.want)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	const cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: ns1\n"
	tests := []struct {
		name string
		fs   fstest.MapFS
		want string
	}{
		{"no kustomization", fstest.MapFS{"a.yaml": {Data: []byte(cm)}}, "kustomization.yaml"},
		{"unsupported field", fstest.MapFS{"kustomization.yaml": {Data: []byte("resources: [a.yaml]\nnamespace: other\n")}, "a.yaml": {Data: []byte(cm)}},
			`unknown field "namespace"`},
		{"missing resource", fstest.MapFS{"kustomization.yaml": {Data: []byte("resources: [b.yaml]\n")}}, `resource "b.yaml"`},
		{"remote resource", fstest.MapFS{"kustomization.yaml": {Data: []byte("resources: [https://example.test/x]\n")}}, "remote resource"},
		{"duplicate", fstest.MapFS{"kustomization.yaml": {Data: []byte("resources: [a.yaml, b.yaml]\n")}, "a.yaml": {Data: []byte(cm)}, "b.yaml": {Data: []byte(cm)}},
			"ConfigMap ns1/a is also in a.yaml"},
		{"no name", fstest.MapFS{"kustomization.yaml": {Data: []byte("resources: [a.yaml]\n")}, "a.yaml": {Data: []byte("apiVersion: v1\nkind: ConfigMap\n")}},
			"a.yaml, document 1"},
		{"bad yaml", fstest.MapFS{"kustomization.yaml": {Data: []byte("resources: [a.yaml]\n")}, "a.yaml": {Data: []byte(cm + "---\nkind: [\n")}},
			"a.yaml, document 2"},
		{"cycle", fstest.MapFS{"kustomization.yaml": {Data: []byte("resources: [d]\n")}, "d/kustomization.yaml": {Data: []byte("resources: [..]\n")}},
			"cycle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadManifests(tt.fs)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
