package parity_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/manifest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// testKey fingerprints Secret values the same way in every test run, so
// golden files hold stable reports.
var testKey = []byte("parity-test-fingerprint-key-0123")

func fingerprinter(t testing.TB) *parity.Fingerprinter {
	t.Helper()
	fp, err := parity.NewFingerprinter(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// load reads a fixture (a file or a directory) into a snapshot.
func load(t testing.TB, path string, keep ...string) *parity.Snapshot {
	t.Helper()
	var objs []map[string]any
	var err error
	if st, serr := os.Stat(path); serr == nil && st.IsDir() {
		objs, err = manifest.ReadDir(path)
	} else {
		objs, err = manifest.ReadFile(path)
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err := parity.Normalize(objs, parity.Options{Source: path, Fingerprint: fingerprinter(t), KeepNoise: keep})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func diff(t testing.TB, left, right *parity.Snapshot, pol *parity.Policy, keep ...string) *parity.Report {
	t.Helper()
	r, err := parity.Diff(left, right, parity.DiffOptions{Policy: pol, KeepNoise: keep})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what was produced (go test -update rewrites it); got:\n%s", file, got)
	}
}

func jsonOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

type found struct {
	object, path string
	change       parity.Change
	category     parity.Category
}

func summarize(r *parity.Report) []found {
	var out []found
	for _, d := range r.Differences {
		out = append(out, found{d.Object(), d.Path, d.Change, d.Category})
	}
	return out
}

// The drift fixture plants one or more differences of every category (and
// equal things written differently: quantities, reordered env, namespace
// names in values and hosts). Exactly the planted ones are reported.
func TestDriftFixture(t *testing.T) {
	r := diff(t, load(t, "testdata/drift/left"), load(t, "testdata/drift/right"), nil)
	const (
		pod = "/spec/template/spec"
		web = pod + "/containers/web"
	)
	var tolerationL, tolerationR, ingressL, ingressR string
	for _, d := range r.Differences {
		switch {
		case d.Object() == "Deployment/web" && strings.HasPrefix(d.Path, pod+"/tolerations/"):
			if d.Change == parity.OnlyLeft {
				tolerationL = d.Path
			} else {
				tolerationR = d.Path
			}
		case d.Object() == "NetworkPolicy/web" && strings.HasPrefix(d.Path, "/spec/ingress/"):
			if d.Change == parity.OnlyLeft {
				ingressL = d.Path
			} else {
				ingressR = d.Path
			}
		}
	}
	want := []found{
		{"ConfigMap/legacy-flags", "", parity.OnlyLeft, parity.CategoryPresence},
		{"ConfigMap/web-config", "/data/feature", parity.Changed, parity.CategoryConfig},
		{"ConfigMap/web-config", "/data/retries", parity.OnlyLeft, parity.CategoryConfig},
		{"CronJob/report", "/spec/jobTemplate/spec/template/spec/containers/report/image", parity.Changed, parity.CategoryImage},
		{"CronJob/report", "/spec/schedule", parity.Changed, parity.CategoryConfig},
		{"DaemonSet/agent", pod + "/containers/agent/image", parity.Changed, parity.CategoryImage},
		{"Deployment/canary", "", parity.OnlyRight, parity.CategoryPresence},
		{"Deployment/web", "/spec/replicas", parity.Changed, parity.CategoryReplicas},
		{"Deployment/web", pod + "/containers/istio-proxy", parity.OnlyRight, parity.CategoryPresence},
		{"Deployment/web", web + "/args", parity.Changed, parity.CategoryConfig},
		{"Deployment/web", web + "/env/DB_PASSWORD/valueFrom/secretKeyRef/key", parity.Changed, parity.CategorySecret},
		{"Deployment/web", web + "/env/LOG_LEVEL/value", parity.Changed, parity.CategoryConfig},
		{"Deployment/web", web + "/envFrom/configMapRef:web-env", parity.OnlyLeft, parity.CategoryConfig},
		{"Deployment/web", web + "/envFrom/secretRef:web-env", parity.OnlyRight, parity.CategorySecret},
		{"Deployment/web", web + "/image", parity.Changed, parity.CategoryImage},
		{"Deployment/web", web + "/ports/9090-TCP", parity.OnlyRight, parity.CategoryNetwork},
		{"Deployment/web", web + "/readinessProbe/periodSeconds", parity.Changed, parity.CategoryProbes},
		{"Deployment/web", web + "/resources/limits/memory", parity.Changed, parity.CategoryResources},
		{"Deployment/web", pod + "/initContainers/migrate", parity.OnlyLeft, parity.CategoryPresence},
		{"Deployment/web", pod + "/nodeSelector/pool", parity.Changed, parity.CategoryConfig},
		{"Deployment/web", pod + "/serviceAccountName", parity.Changed, parity.CategoryConfig},
		{"Deployment/web", tolerationL, parity.OnlyLeft, parity.CategoryConfig},
		{"Deployment/web", tolerationR, parity.OnlyRight, parity.CategoryConfig},
		{"Deployment/web", pod + "/volumes/config/configMap/name", parity.Changed, parity.CategoryConfig},
		{"Deployment/worker", "/spec/replicas", parity.Changed, parity.CategoryReplicas},
		{"HorizontalPodAutoscaler/worker", "/spec/maxReplicas", parity.Changed, parity.CategoryReplicas},
		{"Ingress/web", "/spec/rules/web.production.example.com/http/paths/~1api", parity.OnlyRight, parity.CategoryNetwork},
		{"Job/seed", pod + "/containers/seed/args", parity.Changed, parity.CategoryConfig},
		{"NetworkPolicy/web", ingressL, parity.OnlyLeft, parity.CategoryNetwork},
		{"NetworkPolicy/web", ingressR, parity.OnlyRight, parity.CategoryNetwork},
		{"PodDisruptionBudget/web", "/spec/minAvailable", parity.Changed, parity.CategoryReplicas},
		{"Secret/web-db", "/data/api-token", parity.OnlyRight, parity.CategorySecret},
		{"Secret/web-db", "/data/password", parity.Changed, parity.CategorySecret},
		{"Secret/web-tls", "/type", parity.Changed, parity.CategorySecret},
		{"Service/web", "/spec/ports/80-TCP/targetPort", parity.Changed, parity.CategoryNetwork},
		{"StatefulSet/db", "/spec/replicas", parity.Changed, parity.CategoryReplicas},
	}
	sortFound(want)
	got := summarize(r)
	sortFound(got)
	if len(got) != len(want) {
		t.Errorf("%d differences, want %d", len(got), len(want))
	}
	for i := 0; i < max(len(got), len(want)); i++ {
		var g, w found
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("difference %d:\n got  %+v\n want %+v", i, g, w)
		}
	}
	seen := map[parity.Category]bool{}
	for _, d := range r.Differences {
		seen[d.Category] = true
	}
	for _, c := range parity.Categories {
		if !seen[c] && c != parity.CategoryRuntime { // runtime: live sides only (pkg/parity/live)
			t.Errorf("no difference of category %s found", c)
		}
	}
	golden(t, "drift/report.json", jsonOf(t, r))
}

func sortFound(f []found) {
	sort.Slice(f, func(i, j int) bool {
		if f[i].object != f[j].object {
			return f[i].object < f[j].object
		}
		return f[i].path < f[j].path
	})
}
