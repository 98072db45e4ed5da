package parity_test

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/manifest"
)

func decode(t *testing.T, yaml string) []map[string]any {
	t.Helper()
	objs, err := manifest.Decode([]byte(yaml), "test")
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func snap(t *testing.T, ns, yaml string, opts ...func(*parity.Options)) *parity.Snapshot {
	t.Helper()
	o := parity.Options{Source: ns, Namespace: ns, Fingerprint: fingerprinter(t)}
	for _, f := range opts {
		f(&o)
	}
	s, err := parity.Normalize(decode(t, yaml), o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func deployment(name, resources string) string {
	return `apiVersion: apps/v1
kind: Deployment
metadata: {name: ` + name + `}
spec:
  template:
    spec:
      containers:
        - name: app
          image: app:1
          resources: ` + resources + "\n"
}

func TestQuantities(t *testing.T) {
	tests := []struct {
		left, right string
		equal       bool
	}{
		{"100m", "0.1", true},
		{"1", "1000m", true},
		{"1Gi", "1024Mi", true},
		{"1G", "1000M", true},
		{"1G", "1Gi", false},
		{"1.5Gi", "1536Mi", true},
		{"128974848", "123Mi", true},
		{"500m", "0.6", false},
		{"1e3", "1k", true},
		{"1", "2", false},
		{"1Mi", "1048576", true},
		{"1500m", "1.5", true},
		{"1u", "1n", false},
	}
	for _, tt := range tests {
		l := snap(t, "a", deployment("x", "{limits: {cpu: '"+tt.left+"'}}"))
		r := snap(t, "a", deployment("x", "{limits: {cpu: '"+tt.right+"'}}"))
		rep := diff(t, l, r, nil)
		if got := len(rep.Differences) == 0; got != tt.equal {
			t.Errorf("%s vs %s: equal=%v, want %v (%+v)", tt.left, tt.right, got, tt.equal, rep.Differences)
		}
	}
}

// Objects are matched by kind and name: a renamed object is one on each
// side only; a name that differs only by the namespace's name is the same
// object, reported under both names.
func TestRenamedAndMissing(t *testing.T) {
	l := snap(t, "staging", `
apiVersion: v1
kind: ConfigMap
metadata: {name: flags}
data: {a: "1"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings-staging}
data: {a: "1"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: same}
data: {a: "1"}
---
apiVersion: v1
kind: Service
metadata: {name: same}
spec: {ports: [{port: 80}]}
`)
	r := snap(t, "prod", `
apiVersion: v1
kind: ConfigMap
metadata: {name: feature-flags}
data: {a: "1"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings-prod}
data: {a: "2"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: same}
data: {a: "1"}
`)
	rep := diff(t, l, r, nil)
	got := summarize(rep)
	want := []found{
		{"ConfigMap/feature-flags", "", parity.OnlyRight, parity.CategoryPresence},
		{"ConfigMap/flags", "", parity.OnlyLeft, parity.CategoryPresence},
		{"ConfigMap/settings-staging", "/data/a", parity.Changed, parity.CategoryConfig},
		{"Service/same", "", parity.OnlyLeft, parity.CategoryPresence},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("difference %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if rn := rep.Differences[2].RightName; rn != "settings-prod" {
		t.Errorf("rightName %q, want settings-prod", rn)
	}
}

func TestMatchPath(t *testing.T) {
	tests := []struct {
		pattern, path string
		want          bool
	}{
		{"/spec/replicas", "/spec/replicas", true},
		{"/spec/replicas", "/spec/replicasX", false},
		{"/spec", "/spec/replicas", true}, // an ancestor matches what is below it
		{"/spec/replicas", "/spec", false},
		{"/spec/template/spec/containers/*/image", "/spec/template/spec/containers/web/image", true},
		{"/spec/template/spec/containers/*/image", "/spec/template/spec/containers/web/env/A", false},
		{"**/image", "/spec/jobTemplate/spec/template/spec/containers/x/image", true},
		{"**/env/LOG_*", "/spec/template/spec/containers/x/env/LOG_LEVEL/value", true},
		{"/metadata/annotations/example.com~1owner", "/metadata/annotations/example.com~1owner", true},
		{"/metadata/annotations/*", "/metadata/annotations/example.com~1owner", true},
		{"", "/anything", true},
		{"/x", "", false},
	}
	for _, tt := range tests {
		if got := parity.MatchPath(tt.pattern, tt.path); got != tt.want {
			t.Errorf("MatchPath(%q, %q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}

// The policy marks differences ignored or expected (ignore first), sets
// severities, and decides what fails.
func TestPolicyApplied(t *testing.T) {
	l := load(t, "testdata/drift/left")
	r := load(t, "testdata/drift/right")
	pol := &parity.Policy{
		FailOn:   parity.SeverityHigh,
		Severity: map[parity.Category]parity.Severity{parity.CategoryImage: parity.SeverityMedium},
		Ignore:   []parity.Rule{{Kind: "Deployment", Name: "work*", Path: "/spec/replicas", Origin: "p.yaml:3"}},
		Expected: []parity.Rule{
			{Kind: "Deployment", Path: "/spec/replicas", Reason: "scaled per environment"},
			{Category: parity.CategorySecret, Name: "web-db", Reason: "own credentials"},
		},
	}
	rep := diff(t, l, r, pol)
	var failing int
	for _, d := range rep.Differences {
		switch {
		case d.Object() == "Deployment/worker" && d.Path == "/spec/replicas":
			if !d.Ignored || d.Expected || d.Reason != "ignored by the rule at p.yaml:3" {
				t.Errorf("worker replicas: ignored=%v expected=%v reason=%q", d.Ignored, d.Expected, d.Reason)
			}
		case d.Object() == "Deployment/web" && d.Path == "/spec/replicas":
			if !d.Expected || d.Reason != "scaled per environment" {
				t.Errorf("web replicas: expected=%v reason=%q", d.Expected, d.Reason)
			}
		case d.Kind == "Secret" && d.Name == "web-db":
			if !d.Expected {
				t.Errorf("%s %s not expected", d.Object(), d.Path)
			}
		case d.Category == parity.CategoryImage:
			if d.Severity != parity.SeverityMedium {
				t.Errorf("image severity %s, want medium", d.Severity)
			}
		}
		if d.Failing(rep.FailOn) {
			failing++
			if d.Severity != parity.SeverityHigh {
				t.Errorf("%s %s fails at %s", d.Object(), d.Path, d.Severity)
			}
		}
	}
	s := rep.Summary
	if s.Ignored != 1 || s.Expected != 3 || s.Unexpected != s.Total-4 || s.Failing != failing || failing == 0 || s.Result != parity.ResultDrift {
		t.Errorf("summary %+v (failing %d)", s, failing)
	}
	pol.FailOn = parity.SeverityNone
	if rep := diff(t, l, r, pol); rep.Drift() || rep.Summary.Result != parity.ResultPass {
		t.Errorf("--fail-on none drifted: %+v", rep.Summary)
	}
}

// A snapshot written and read back compares as the side it was taken from.
func TestSnapshotRoundTrip(t *testing.T) {
	l := load(t, "testdata/drift/left")
	r := load(t, "testdata/drift/right")
	var b bytes.Buffer
	if err := parity.WriteSnapshot(&b, l); err != nil {
		t.Fatal(err)
	}
	if !parity.IsSnapshot(b.Bytes()) {
		t.Fatal("IsSnapshot says no to a snapshot")
	}
	back, err := parity.ReadSnapshot(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := jsonOf(t, diff(t, l, r, nil))
	if got := jsonOf(t, diff(t, back, r, nil)); !bytes.Equal(got, want) {
		t.Errorf("report from the snapshot differs:\n%s", got)
	}
	if parity.IsSnapshot([]byte("apiVersion: v1\nkind: ConfigMap\n")) {
		t.Error("a ConfigMap is no snapshot")
	}
	for name, bad := range map[string]string{
		"unknown field": "apiVersion: parity.detour.dev/v1alpha1\nkind: ParitySnapshot\nsecretValues: {fingerprint: none}\nextra: 1\n",
		"other version": "apiVersion: parity.detour.dev/v9\nkind: ParitySnapshot\nsecretValues: {fingerprint: none}\n",
		"fingerprint":   "apiVersion: parity.detour.dev/v1alpha1\nkind: ParitySnapshot\nsecretValues: {fingerprint: md5}\n",
		"duplicate":     "apiVersion: parity.detour.dev/v1alpha1\nkind: ParitySnapshot\nsecretValues: {fingerprint: none}\nobjects: [{kind: A, name: b}, {kind: A, name: b}]\n",
	} {
		if _, err := parity.ReadSnapshot([]byte(bad)); err == nil {
			t.Errorf("%s: ReadSnapshot took it", name)
		}
	}
}

// Secret values are compared by HMAC: never kept in a snapshot, never in a
// report. A snapshot without a key keeps keys only, and then values are
// not compared (a note says so), nor across two different keys.
func TestSecretValues(t *testing.T) {
	const planted = "planted-secret-value-7f3a"
	yaml := func(v string) string {
		return "apiVersion: v1\nkind: Secret\nmetadata: {name: s, annotations: {kubectl.kubernetes.io/last-applied-configuration: '{\"stringData\":{\"k\":\"" + planted + "\"}}'}}\nstringData: {k: " + v + ", only: x}\n"
	}
	keyless := func(o *parity.Options) { o.Fingerprint = nil }
	// The annotation goes whatever the noise rules say.
	keepAll := func(o *parity.Options) { o.KeepNoise = []string{parity.RuleLastApplied} }
	for _, s := range []*parity.Snapshot{snap(t, "a", yaml(planted)), snap(t, "a", yaml(planted), keyless), snap(t, "a", yaml(planted), keepAll)} {
		var b bytes.Buffer
		if err := parity.WriteSnapshot(&b, s); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(b.String(), planted) || strings.Contains(b.String(), "cGxhbnRlZC") {
			t.Errorf("the snapshot holds the value:\n%s", b.String())
		}
	}
	same := diff(t, snap(t, "a", yaml(planted)), snap(t, "a", yaml(planted)), nil)
	if len(same.Differences) != 0 {
		t.Errorf("equal values differ: %+v", same.Differences)
	}
	changed := diff(t, snap(t, "a", yaml(planted)), snap(t, "a", yaml("other")), nil)
	if len(changed.Differences) != 1 || str(changed.Differences[0].Left) != parity.SecretDiffers || str(changed.Differences[0].Right) != parity.SecretDiffers {
		t.Errorf("changed value: %+v", changed.Differences)
	}
	if b := jsonOf(t, changed); strings.Contains(string(b), planted) || strings.Contains(string(b), "hmac:") {
		t.Errorf("the report holds a value or fingerprint:\n%s", b)
	}
	uncompared := diff(t, snap(t, "a", yaml(planted), keyless), snap(t, "a", yaml("other")), nil)
	if len(uncompared.Differences) != 0 || len(uncompared.Notes) != 1 || !strings.Contains(uncompared.Notes[0], "left side kept keys only") {
		t.Errorf("keys-only side: %+v, notes %q", uncompared.Differences, uncompared.Notes)
	}
	other, err := parity.NewFingerprinter([]byte("another-key-of-32-bytes-........"))
	if err != nil {
		t.Fatal(err)
	}
	otherKey := func(o *parity.Options) { o.Fingerprint = other }
	mixed := diff(t, snap(t, "a", yaml(planted), otherKey), snap(t, "a", yaml(planted)), nil)
	if len(mixed.Differences) != 0 || len(mixed.Notes) != 1 || !strings.Contains(mixed.Notes[0], "different keys") {
		t.Errorf("two keys: %+v, notes %q", mixed.Differences, mixed.Notes)
	}
	if _, err := parity.NewFingerprinter([]byte("short")); err == nil {
		t.Error("a 5-byte key was taken")
	}
}

func TestNormalizeErrors(t *testing.T) {
	const value = "cGxhbnRlZC1iYWQ" // not valid base64 (no padding)
	tests := map[string]string{
		"no kind":    "metadata: {name: x}\n",
		"no name":    "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
		"twice":      "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
		"bad base64": "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: {k: " + value + "}\n",
		"bad data":   "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: [1]\n",
	}
	for name, y := range tests {
		var objs []map[string]any
		if name == "no kind" {
			objs = []map[string]any{{"metadata": map[string]any{"name": "x"}}}
		} else {
			objs = decode(t, y)
		}
		_, err := parity.Normalize(objs, parity.Options{})
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if strings.Contains(err.Error(), value) {
			t.Errorf("%s: the error shows the value: %v", name, err)
		}
	}
	s := snap(t, "a", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\n")
	if len(s.Objects) != 0 || s.Skipped["Namespace"] != 1 || s.Skipped["Role"] != 1 {
		t.Errorf("kinds not compared: objects %d, skipped %v", len(s.Objects), s.Skipped)
	}
	rep := diff(t, s, snap(t, "b", ""), nil)
	if len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "1 Namespace, 1 Role") {
		t.Errorf("notes %q", rep.Notes)
	}
}

// What runs is compared only between two sides that read it.
func TestRuntimeOnBothSidesOnly(t *testing.T) {
	withRuntime := func(img string) string {
		return deployment("web", "{}") + "runtime:\n  pods: 2\n  containers:\n    app: {imageDigests: [" + img + "], restarts: 0}\n" +
			"---\napiVersion: parity.detour.dev/v1alpha1\nkind: Nodes\nmetadata: {name: nodes}\nkernelVersions: [" + img + "]\n"
	}
	rt := func(o *parity.Options) { o.Runtime = true }
	both := diff(t, snap(t, "a", withRuntime("sha256:aaa"), rt), snap(t, "a", withRuntime("sha256:bbb"), rt), nil)
	var cats []parity.Category
	for _, d := range both.Differences {
		cats = append(cats, d.Category)
	}
	if len(cats) != 2 || cats[0] != parity.CategoryImage || cats[1] != parity.CategoryRuntime {
		t.Errorf("runtime on both sides: %+v", both.Differences)
	}
	one := diff(t, snap(t, "a", withRuntime("sha256:aaa"), rt), snap(t, "a", deployment("web", "{}")), nil)
	if len(one.Differences) != 0 || len(one.Notes) != 1 {
		t.Errorf("runtime on one side: %+v, notes %q", one.Differences, one.Notes)
	}
}

// Kinds a side could not read are compared on neither.
func TestUnreadKinds(t *testing.T) {
	l := snap(t, "a", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n", func(o *parity.Options) { o.Unread = []string{"Secret"} })
	rep := diff(t, l, snap(t, "b", "apiVersion: v1\nkind: Secret\nmetadata: {name: t}\n"), nil)
	if len(rep.Differences) != 0 || len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "forbidden") {
		t.Errorf("%+v %q", rep.Differences, rep.Notes)
	}
}

// An environment is its baseline with each fork in place of the workload
// it forks; other forks are dropped.
func TestOverlay(t *testing.T) {
	base := snap(t, "shop", deployment("web", "{}")+"---\n"+
		strings.Replace(deployment("web-alice", "{}"), "app:1", "app:2", 1)+"---\n"+
		deployment("web-bob", "{}"))
	env := parity.Overlay(base, map[parity.ObjectKey]parity.ObjectKey{
		{Kind: "Deployment", Name: "web-alice"}: {Kind: "Deployment", Name: "web"},
		{Kind: "Deployment", Name: "web-bob"}:   {},
	}, "env/alice")
	if len(env.Objects) != 1 || env.Objects[0].Name != "web" || env.Objects[0].Fields["/spec/template/spec/containers/app/image"] != "app:2" || env.Source != "env/alice" {
		t.Errorf("overlay: %+v", env.Objects)
	}
	if len(base.Objects) != 3 || base.Objects[0].Fields["/spec/template/spec/containers/app/image"] != "app:1" {
		t.Error("Overlay changed its base")
	}
}

// Fields under a keep pattern stay the baseline workload's: what only
// makes the fork a separate object is not what the environment changes.
func TestOverlayKeep(t *testing.T) {
	fork := strings.Replace(deployment("web-alice", "{}"), "image: app:1",
		"image: app:2\n          env: [{name: DETOUR_ENV, value: alice}, {name: MODE, value: fast}]", 1)
	fork = strings.Replace(fork, "{name: web-alice}", "{name: web-alice, labels: {detour.dev/environment: alice}}", 1)
	// An environment's side is read with its forks (rule environment-forks off).
	base := snap(t, "shop", strings.Replace(deployment("web", "{}"), "{name: web}", "{name: web, labels: {team: a}}", 1)+"---\n"+fork,
		func(o *parity.Options) { o.KeepNoise = []string{parity.RuleEnvironmentForks} })
	env := parity.Overlay(base, map[parity.ObjectKey]parity.ObjectKey{
		{Kind: "Deployment", Name: "web-alice"}: {Kind: "Deployment", Name: "web"},
	}, "env/alice", "/metadata/labels", "/spec/template/spec/containers/*/env/DETOUR_ENV")
	rep := diff(t, parity.Overlay(base, map[parity.ObjectKey]parity.ObjectKey{{Kind: "Deployment", Name: "web-alice"}: {}}, "shop"), env, nil)
	got := summarize(rep)
	want := []found{
		{"Deployment/web", "/spec/template/spec/containers/app/env/MODE", parity.OnlyRight, parity.CategoryConfig},
		{"Deployment/web", "/spec/template/spec/containers/app/image", parity.Changed, parity.CategoryImage},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// A generated ConfigMap whose content changed is one object that changed
// (rule name-hash), references to it included.
func TestGeneratedNameChanged(t *testing.T) {
	cm := func(hash, level string) string {
		return "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-config-" + hash + "}\ndata: {LOG_LEVEL: " + level + "}\n---\n" +
			strings.Replace(deployment("web", "{}"), "image: app:1", "image: app:1\n          envFrom: [{configMapRef: {name: web-config-"+hash+"}}]", 1)
	}
	rep := diff(t, snap(t, "a", cm("8h2k9c5fmt", "info")), snap(t, "a", cm("t7c5mk9b2d", "debug")), nil)
	got := summarize(rep)
	want := []found{{"ConfigMap/web-config-8h2k9c5fmt", "/data/LOG_LEVEL", parity.Changed, parity.CategoryConfig}}
	if len(got) != 1 || got[0] != want[0] || rep.Differences[0].RightName != "web-config-t7c5mk9b2d" {
		t.Errorf("got %+v, want %+v", rep.Differences, want)
	}
}

// An old generated ConfigMap left beside the new one: one of them pairs
// with the other side's (the first by name, every run), the other is on
// its side only.
func TestGeneratedNameTwice(t *testing.T) {
	cm := func(hash string) string {
		return "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-config-" + hash + "}\ndata: {LOG_LEVEL: info}\n"
	}
	l := snap(t, "a", cm("8h2k9c5fmt"))
	r := snap(t, "a", cm("t7c5mk9b2d")+"---\n"+cm("b2d8h2k9c5"))
	first := jsonOf(t, diff(t, l, r, nil))
	for range 5 {
		if again := jsonOf(t, diff(t, l, r, nil)); !bytes.Equal(again, first) {
			t.Fatalf("two runs differ:\n%s\n%s", first, again)
		}
	}
	got := summarize(diff(t, l, r, nil))
	want := []found{{"ConfigMap/web-config-t7c5mk9b2d", "", parity.OnlyRight, parity.CategoryPresence}}
	if len(got) != 1 || got[0] != want[0] {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
