package manifest

import (
	"strings"
	"testing"

	"github.com/detourdev/detour/pkg/parity"
)

func names(objs []map[string]any) []string {
	var out []string
	for _, o := range objs {
		md, _ := o["metadata"].(map[string]any)
		out = append(out, o["kind"].(string)+"/"+md["name"].(string))
	}
	return out
}

func TestDecode(t *testing.T) {
	objs, err := Decode([]byte("---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {n: 1, f: 1.5}\n...\n"), "s")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(objs); len(got) != 1 || got[0] != "ConfigMap/a" {
		t.Errorf("objects %v", got)
	}
	// A JSON stream of one object is YAML too.
	if objs, err := Decode([]byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}`), "j"); err != nil || len(objs) != 1 {
		t.Errorf("JSON: %v %v", objs, err)
	}
}

// Errors name the stream, the document and its first line, and hold no
// quoted text from the document.
func TestDecodeErrors(t *testing.T) {
	const planted = "planted-value-in-error"
	tests := []struct{ name, in, want string }{
		{"not an object", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n- a\n- b\n", "s.yaml: document 2 (line 5): not an object"},
		{"no kind", "metadata: {name: x}\n", "s.yaml: document 1 (line 1): no kind"},
		{"syntax", "kind: Secret\n---\nkind: Secret\nstringData:\n  k: \"" + planted + "\n  x: [\n", "s.yaml: document 2 (line 3):"},
		{"list item", "kind: List\nitems: [1]\n", "List item 1 is not an object"},
		{"list item kind", "kind: List\nitems: [{a: 1}]\n", "List item 1 has no kind"},
	}
	for _, tt := range tests {
		_, err := Decode([]byte(tt.in), "s.yaml")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), planted) {
			t.Errorf("%s: error shows the document's text: %v", tt.name, err)
		}
	}
}

func TestReadDir(t *testing.T) {
	objs, err := ReadDir("testdata/plain")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(names(objs), " ")
	if got != "ConfigMap/a ConfigMap/b Service/c" {
		t.Errorf("objects %s", got)
	}
}

// A kustomization is rendered in process: bases, generators (with their
// hash suffix, and references to them rewritten), images, replicas,
// namespace.
func TestKustomize(t *testing.T) {
	if !IsKustomization("testdata/kustomize/overlay") || IsKustomization("testdata/plain") {
		t.Fatal("IsKustomization")
	}
	objs, err := ReadDir("testdata/kustomize/overlay")
	if err != nil {
		t.Fatal(err)
	}
	s, err := parity.Normalize(objs, parity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Namespace != "prod" || len(s.Objects) != 2 {
		t.Fatalf("namespace %q, objects %+v", s.Namespace, s.Objects)
	}
	cm, dep := s.Objects[0], s.Objects[1]
	if !strings.HasPrefix(cm.Name, "web-config-") || cm.Fields["/data/LOG_LEVEL"] != "info" {
		t.Errorf("ConfigMap %+v", cm)
	}
	const c = "/spec/template/spec/containers/web"
	if dep.Fields[c+"/image"] != "example/web:2.1" || dep.Fields["/spec/replicas"] != "3" {
		t.Errorf("Deployment %+v", dep.Fields)
	}
	if _, ok := dep.Elements[c+"/envFrom/configMapRef:"+cm.Name]; !ok {
		t.Errorf("envFrom does not name the generated ConfigMap: %+v", dep.Elements)
	}
	if _, err := Kustomize("testdata/plain"); err == nil {
		t.Error("kustomize rendered a directory without a kustomization")
	}
}

// Arbitrary bytes as a manifest stream: objects or an error, never a
// panic, and whatever decodes normalizes or fails with an error.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n",
		"kind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: [{name: c, image: i, env: [{name: A, value: '1'}], ports: [{containerPort: 80}]}]}}}\n",
		"kind: Secret\nmetadata: {name: s}\ndata: {k: aGk=}\nstringData: {j: x}\n",
		"kind: List\nitems: [{kind: Service, metadata: {name: s}, spec: {ports: [{port: 80, targetPort: 80}], clusterIP: 1.2.3.4}}]\n",
		"kind: NetworkPolicy\nmetadata: {name: n}\nspec: {ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}], policyTypes: [Ingress]}\n",
		"kind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec: {scaleTargetRef: {kind: Deployment, name: d}, maxReplicas: 3}\n",
		"kind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: 5}}}\n",
		"kind: Deployment\nmetadata: [1]\n",
		"---\n---\n",
		"a: &a [*a]\n",
		"kind: Secret\nmetadata: {name: s}\ndata: {k: 1}\n",
	} {
		f.Add([]byte(s))
	}
	fp, err := parity.NewFingerprinter([]byte("fuzz-key-0123456789abcdef"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := Decode(b, "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz: ") {
				t.Fatalf("error without the stream's name: %v", err)
			}
			return
		}
		s, err := parity.Normalize(objs, parity.Options{Fingerprint: fp})
		if err != nil {
			return
		}
		r, err := parity.Diff(s, s, parity.DiffOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Differences) != 0 {
			t.Fatalf("a snapshot differs from itself: %+v", r.Differences)
		}
	})
}
