package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detourdev/detour/pkg/parity"
)

func TestParse(t *testing.T) {
	const file = `# a policy
apiVersion: parity.detour.dev/v1
kind: ParityPolicy
failOn: medium
severity:
  replicas: info
  image: high
ignore:
  - path: /metadata/labels/team
  - kind: ConfigMap
    name: "istio-*"
    reason: managed by the mesh
expected:
  - kind: Deployment
    name: web
    path: /spec/replicas
    reason: production scales out
  - category: runtime
    reason: nodes differ
`
	p, err := Parse([]byte(file), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.FailOn != parity.SeverityMedium || p.Severity[parity.CategoryReplicas] != parity.SeverityInfo || p.Severity[parity.CategoryImage] != parity.SeverityHigh {
		t.Errorf("failOn %s, severity %v", p.FailOn, p.Severity)
	}
	if len(p.Ignore) != 2 || p.Ignore[0].Path != "/metadata/labels/team" || p.Ignore[0].Origin != "p.yaml:9" ||
		p.Ignore[1].Kind != "ConfigMap" || p.Ignore[1].Name != "istio-*" || p.Ignore[1].Reason != "managed by the mesh" {
		t.Errorf("ignore %+v", p.Ignore)
	}
	if len(p.Expected) != 2 || p.Expected[0].Path != "/spec/replicas" || p.Expected[1].Category != parity.CategoryRuntime || p.Expected[1].Origin != "p.yaml:18" {
		t.Errorf("expected %+v", p.Expected)
	}
	for _, empty := range []string{"", "# nothing\n", "---\n", "null\n"} {
		if p, err := Parse([]byte(empty), "e.yaml"); err != nil || p.FailOn != "" || len(p.Ignore) != 0 {
			t.Errorf("%q: %+v, %v", empty, p, err)
		}
	}
}

// Every mistake is an error with the file and line where it is.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, file, want string
	}{
		{"unknown top key", "failOn: low\nseverty:\n  image: high\n", `p.yaml:2: unknown key "severty" in the policy`},
		{"unknown rule key", "ignore:\n  - kind: Deployment\n    paht: /spec\n", `p.yaml:3: unknown key "paht" in a rule of ignore`},
		{"unknown category key", "severity:\n  images: high\n", `p.yaml:2: unknown key "images" in severity`},
		{"bad severity", "severity:\n  image: critical\n", `p.yaml:2: severity of image: unknown severity "critical"`},
		{"none is no severity", "severity:\n  image: none\n", `p.yaml:2: severity of image`},
		{"bad failOn", "failOn: sometimes\n", `p.yaml:1: failOn: unknown severity "sometimes"`},
		{"bad category", "ignore:\n  - category: imagery\n", `p.yaml:2: unknown category "imagery"`},
		{"relative path", "ignore:\n  - path: spec/replicas\n", `p.yaml:2: path "spec/replicas": want a path starting with /`},
		{"bad glob", "ignore:\n  - path: /spec/[x\n", `p.yaml:2: path: bad pattern`},
		{"bad name glob", "ignore:\n  - name: \"[\"\n", `p.yaml:2: name: bad pattern`},
		{"match all", "ignore:\n  - reason: everything\n", `p.yaml:2: a rule of ignore with no kind, name, path or category`},
		{"no reason", "expected:\n  - path: /spec/replicas\n", `p.yaml:2: an expected difference needs a reason`},
		{"not a list", "ignore: /spec\n", `p.yaml:1: ignore: want a list of rules`},
		{"not a mapping", "- a\n- b\n", `p.yaml:1: the policy: want a mapping`},
		{"rule not a mapping", "expected:\n  - /spec\n", `p.yaml:2: a rule of expected: want a mapping`},
		{"number for a string", "ignore:\n  - path: [1]\n", `p.yaml:2: path: want a string`},
		{"twice", "failOn: low\nfailOn: high\n", `p.yaml:2:`},
		{"wrong kind", "kind: Policy\n", `p.yaml:1: kind "Policy", want ParityPolicy`},
		{"wrong apiVersion", "apiVersion: v1\n", `p.yaml:1: apiVersion "v1"`},
		{"syntax", "failOn: low\n\tignore: x\n", `p.yaml:2: not valid YAML: found a tab character`},
		{"two documents", "failOn: low\n---\nfailOn: high\n", `p.yaml:2: a policy file holds one YAML document`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.file), "p.yaml")
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a policy Error", err)
			}
			if !strings.HasPrefix(err.Error(), tt.want) && !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want %q", err, tt.want)
			}
			if pe.Line == 0 {
				t.Errorf("error %q has no line", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(f, []byte("failOn: high\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Load(f)
	if err != nil || p.FailOn != parity.SeverityHigh {
		t.Fatalf("%+v %v", p, err)
	}
	if _, err := Load(filepath.Join(dir, "none.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	big := make([]byte, MaxSize+1)
	if _, err := Parse(big, "big.yaml"); err == nil {
		t.Error("an oversized policy was taken")
	}
}

// The example policy of examples/parity parses.
func TestExamplePolicy(t *testing.T) {
	if _, err := Load("../../../examples/parity/policy.yaml"); err != nil {
		t.Fatal(err)
	}
}

// Arbitrary bytes: a policy or an Error, never a panic, and a policy that
// parses only has values the report accepts.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"failOn: low\n",
		"severity: {image: high}\nignore: [{path: /a/*}]\nexpected: [{kind: D, reason: r}]\n",
		"a: &x [*x]\n",
		"ignore:\n  - &r {path: /a}\n  - *r\n",
		"{",
		"- - -",
		"failOn: !!binary aGk=\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b, "fuzz.yaml")
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.File != "fuzz.yaml" {
				t.Fatalf("error %v is not a policy Error of fuzz.yaml", err)
			}
			return
		}
		if p.FailOn != "" {
			if _, err := parity.ParseSeverity(string(p.FailOn), true); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range append(p.Ignore, p.Expected...) {
			if r.Kind == "" && r.Name == "" && r.Path == "" && r.Category == "" {
				t.Fatal("a rule that matches everything was taken")
			}
		}
	})
}
