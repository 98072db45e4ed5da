package v1alpha1

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/detourdev/detour/pkg/redirect/match"
)

// allKinds lists the kinds in the schema's enum order.
var allKinds = []ConditionKind{
	ConditionSession, ConditionHeaderExact, ConditionHeaderPrefix, ConditionHeaderRegex,
	ConditionBaggage, ConditionPathExact, ConditionPathPrefix, ConditionMethod,
}

// The generated CRD is what the API server enforces: these tests read it
// back and check that the markers on the types became the schema we mean.
// (Evaluating the CEL rules needs an API server; that test lives elsewhere.)

const crdPath = "../../../../deploy/crds/detour.dev_intercepts.yaml"

type obj = map[string]any

func loadCRD(t *testing.T) obj {
	t.Helper()
	b, err := os.ReadFile(crdPath)
	if err != nil {
		t.Fatalf("read the generated CRD (run hack/update-codegen.sh): %v", err)
	}
	var crd obj
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatalf("parse %s: %v", crdPath, err)
	}
	return crd
}

// at walks a path of map keys and list indexes, failing the test when one
// is missing.
func at(t *testing.T, v any, path ...any) any {
	t.Helper()
	for i, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(obj)
			if !ok {
				t.Fatalf("%v: not an object", path[:i])
			}
			if v, ok = m[k]; !ok {
				t.Fatalf("%v: no %q", path[:i], k)
			}
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("%v: no item %d", path[:i], k)
			}
			v = l[k]
		}
	}
	return v
}

func version(t *testing.T, crd obj) obj {
	t.Helper()
	versions := at(t, crd, "spec", "versions").([]any)
	if len(versions) != 1 {
		t.Fatalf("%d versions, want 1", len(versions))
	}
	return versions[0].(obj)
}

func schemaOf(t *testing.T, crd obj) obj {
	t.Helper()
	return at(t, version(t, crd), "schema", "openAPIV3Schema").(obj)
}

// rules returns the CEL rules of a schema node, by message.
func rules(t *testing.T, node any) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range at(t, node, "x-kubernetes-validations").([]any) {
		out[r.(obj)["message"].(string)] = r.(obj)["rule"].(string)
	}
	return out
}

func TestCRDNamesAndVersion(t *testing.T) {
	crd := loadCRD(t)
	for _, c := range []struct {
		path []any
		want any
	}{
		{[]any{"metadata", "name"}, "intercepts.detour.dev"},
		{[]any{"spec", "group"}, GroupName},
		{[]any{"spec", "scope"}, "Namespaced"},
		{[]any{"spec", "names", "kind"}, "Intercept"},
		{[]any{"spec", "names", "plural"}, "intercepts"},
		{[]any{"spec", "names", "shortNames"}, []any{"icpt"}},
		{[]any{"spec", "names", "categories"}, []any{"detour"}},
	} {
		if got := at(t, crd, c.path...); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v = %v, want %v", c.path, got, c.want)
		}
	}
	v := version(t, crd)
	if v["name"] != SchemeGroupVersion.Version || v["served"] != true || v["storage"] != true {
		t.Errorf("version %v served %v storage %v", v["name"], v["served"], v["storage"])
	}
	if got := at(t, v, "subresources", "status"); !reflect.DeepEqual(got, obj{}) {
		t.Errorf("status subresource = %v, want {}", got)
	}
	var cols []string
	for _, c := range at(t, v, "additionalPrinterColumns").([]any) {
		cols = append(cols, c.(obj)["name"].(string)+"="+c.(obj)["jsonPath"].(string))
	}
	want := []string{
		"Service=.spec.service.name", "Port=.spec.service.port", "Match=.status.matchSummary",
		"Destination=.spec.destination", "State=.status.state", "Expires=.status.expiresAt",
		"Age=.metadata.creationTimestamp",
	}
	if !slices.Equal(cols, want) {
		t.Errorf("printer columns %v, want %v", cols, want)
	}
}

func TestCRDSchema(t *testing.T) {
	s := schemaOf(t, loadCRD(t))
	spec := at(t, s, "properties", "spec")
	cond := at(t, spec, "properties", "match", "items")

	var enum []ConditionKind
	for _, k := range at(t, cond, "properties", "kind", "enum").([]any) {
		enum = append(enum, ConditionKind(k.(string)))
	}
	if !slices.Equal(enum, allKinds) {
		t.Errorf("kind enum %v, want %v", enum, allKinds)
	}
	port := at(t, spec, "properties", "service", "properties", "port").(obj)
	if port["minimum"] != 1.0 || port["maximum"] != 65535.0 {
		t.Errorf("port bounds [%v, %v], want [1, 65535]", port["minimum"], port["maximum"])
	}
	for _, req := range []struct {
		node any
		want []any
	}{
		{spec, []any{"service"}}, // destination or destinationPods: a CEL rule
		{at(t, spec, "properties", "service"), []any{"name", "port"}},
		{cond, []any{"kind", "value"}},
		{s, []any{"spec"}},
	} {
		if got := at(t, req.node, "required"); !reflect.DeepEqual(got, req.want) {
			t.Errorf("required %v, want %v", got, req.want)
		}
	}
	if got := at(t, cond, "properties", "value", "minLength"); got != 1.0 {
		t.Errorf("value minLength %v, want 1", got)
	}
	var states []any
	for _, st := range []InterceptState{InterceptPending, InterceptActive, InterceptExpired, InterceptFailed} {
		states = append(states, string(st))
	}
	if got := at(t, s, "properties", "status", "properties", "state", "enum"); !reflect.DeepEqual(got, states) {
		t.Errorf("state enum %v, want %v", got, states)
	}

	// The rules the controller also enforces, so kubectl refuses early.
	specRules := rules(t, spec)
	for msg, rule := range map[string]string{
		"an l4 intercept takes whole connections and reads no request: give no match conditions": "!(has(self.l4) && self.l4) || !has(self.match) || size(self.match) == 0",
		"match needs at least one condition (or set l4 to take whole connections)":               "(has(self.l4) && self.l4) || (has(self.match) && size(self.match) > 0)",
		"ttl must not be negative": "!has(self.ttl) || duration(self.ttl) >= duration('0s')",
	} {
		if specRules[msg] != rule {
			t.Errorf("spec rule %q = %q, want %q", msg, specRules[msg], rule)
		}
	}
	condRules := rules(t, cond)
	for msg, rule := range map[string]string{
		"header and baggage conditions need a name":                     "!(self.kind in ['header', 'header-prefix', 'header-regex', 'baggage']) || has(self.name)",
		"session, path, path-prefix and method conditions take no name": "self.kind in ['header', 'header-prefix', 'header-regex', 'baggage'] || !has(self.name)",
	} {
		if condRules[msg] != rule {
			t.Errorf("condition rule %q = %q, want %q", msg, condRules[msg], rule)
		}
	}
	if _, ok := rules(t, s)["name must be a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"]; !ok {
		t.Error("no rule on metadata.name")
	}
}

// The schema's patterns must agree with the Go validation the CLI's path
// goes through, or the two ways in would accept different intercepts.
func TestCRDPatterns(t *testing.T) {
	s := schemaOf(t, loadCRD(t))
	spec := at(t, s, "properties", "spec")
	pattern := func(path ...any) *regexp.Regexp {
		t.Helper()
		return regexp.MustCompile(at(t, spec, append(path, "pattern")...).(string))
	}

	name := pattern("properties", "match", "items", "properties", "name")
	for c := 0; c < 256; c++ {
		if got, want := name.MatchString(string(rune(c))), match.IsTokenChar(byte(c)) && c < 0x80; got != want {
			t.Errorf("name pattern on %q: %v, match.IsTokenChar says %v", rune(c), got, want)
		}
	}

	dest := pattern("properties", "destination")
	for d, ok := range map[string]bool{
		"alice-dev:8080": true, "dev/alice-dev:1": true, "10.0.0.7:65535": true, "[fd00::7]:80": true,
		"pod.with.dots:80": true, "a:0": false, "a:65536": false, "a": false, ":80": false,
		"Alice:80": false, "a/b/c:80": false, "-a:80": false, "a:80x": false, "a:": false,
	} {
		if got := dest.MatchString(d); got != ok {
			t.Errorf("destination %q: pattern says %v, want %v", d, got, ok)
		}
	}

	pods := pattern("properties", "sources", "properties", "pods", "items")
	for p, ok := range map[string]bool{"web-1": true, "ns/web-1": true, "ns/a.b": true, "ns/": false, "a/b/c": false, "Web": false} {
		if got := pods.MatchString(p); got != ok {
			t.Errorf("source pod %q: pattern says %v, want %v", p, got, ok)
		}
	}
}
