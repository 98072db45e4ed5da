package deploy_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/detourdev/detour/deploy"
	"github.com/detourdev/detour/pkg/kubeclient"
)

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == kind && u.GetName() == name {
			return u
		}
	}
	t.Fatalf("the manifests have no %s %s", kind, name)
	return nil
}

// Every YAML file on disk is embedded and named by a kustomization: a file
// left out would be applied by neither kubectl apply -k nor detour install.
func TestEveryFileEmbeddedAndListed(t *testing.T) {
	var onDisk []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".yaml") && !strings.Contains(p, "testdata") {
			onDisk = append(onDisk, filepath.ToSlash(p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := kubeclient.LoadManifests(deploy.FS)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, m := range ms {
		listed[m.File] = true
	}
	for _, p := range onDisk {
		want, _ := os.ReadFile(p)
		got, err := fs.ReadFile(deploy.FS, p)
		if err != nil || string(got) != string(want) {
			t.Errorf("%s is not embedded as it is on disk (%v)", p, err)
		}
		if !listed[p] && filepath.Base(p) != "kustomization.yaml" {
			t.Errorf("%s is in no kustomization's resources", p)
		}
	}
}

// What the CLI relies on: where the controller is, how it is reached, what
// the images are called, and that users are granted what reaching it takes.
func TestManifestsMatchTheCLI(t *testing.T) {
	objs, err := deploy.Objects()
	if err != nil {
		t.Fatal(err)
	}
	ns := find(t, objs, "Namespace", kubeclient.DetourNamespace)
	for _, u := range objs {
		if u.GetNamespace() != "" && u.GetNamespace() != ns.GetName() {
			t.Errorf("%s is in namespace %s, not %s", kubeclient.Ref(u), u.GetNamespace(), ns.GetName())
		}
	}

	dep := find(t, objs, "Deployment", "detour-controller")
	podLabels, _, _ := unstructured.NestedStringMap(dep.Object, "spec", "template", "metadata", "labels")
	sel, err := labels.Parse(kubeclient.ControllerSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(podLabels)) {
		t.Errorf("the controller's pods (%v) do not match %s", podLabels, kubeclient.ControllerSelector)
	}
	cs, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	var grpcPort bool
	for _, c := range cs {
		ports, _ := c.(map[string]any)["ports"].([]any)
		for _, p := range ports {
			if p.(map[string]any)["name"] == kubeclient.ControllerPortName {
				grpcPort = true
			}
		}
	}
	if !grpcPort {
		t.Errorf("no container port named %q on the controller", kubeclient.ControllerPortName)
	}
	// The CLI checks the certificate for the name of this Service.
	find(t, objs, "Service", "detour-controller")

	images := kubeclient.Images(objs)
	if got := images["Deployment/detour-controller"]; !slices.Equal(got, []string{"detour.local/detour-controller:dev"}) {
		t.Errorf("controller images %v", got)
	}
	if got := images["DaemonSet/detour-agent"]; !slices.Equal(got, []string{"detour.local/detour-agent:dev"}) {
		t.Errorf("agent images %v", got)
	}

	// The Role --help names: list pods, create pods/portforward, get the CA.
	role := find(t, objs, "Role", "detour-client")
	rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
	grants := func(resource, verb, name string) bool {
		for _, r := range rules {
			rm := r.(map[string]any)
			res, _, _ := unstructured.NestedStringSlice(rm, "resources")
			verbs, _, _ := unstructured.NestedStringSlice(rm, "verbs")
			names, _, _ := unstructured.NestedStringSlice(rm, "resourceNames")
			if slices.Contains(res, resource) && slices.Contains(verbs, verb) && (len(names) == 0 || slices.Contains(names, name)) {
				return true
			}
		}
		return false
	}
	for _, g := range [][3]string{{"pods", "list", ""}, {"pods/portforward", "create", ""}, {"configmaps", "get", kubeclient.CAConfigMap}} {
		if !grants(g[0], g[1], g[2]) {
			t.Errorf("Role detour-client does not grant %s %s %s", g[1], g[0], g[2])
		}
	}
}
