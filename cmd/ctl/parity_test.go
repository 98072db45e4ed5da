package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/manifest"
)

const (
	staging    = "../../examples/parity/staging"
	production = "../../examples/parity/production"
	examplePol = "../../examples/parity/policy.yaml"
	driftLeft  = "../../pkg/parity/testdata/drift/left"
	driftRight = "../../pkg/parity/testdata/drift/right"
)

// runParity runs the CLI with stdin.
func runParity(t *testing.T, stdin string, args ...string) (stdout, errMsg string, code int) {
	t.Helper()
	root := newRootCmd()
	root.SetIn(strings.NewReader(stdin))
	return runCLIWith(t, root, args...)
}

// Exit codes: 0 no unexpected difference at or above --fail-on, 5 drift,
// 2 bad usage, 3 not found, 1 failure.
func TestParityExitCodes(t *testing.T) {
	badPolicy := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(badPolicy, []byte("failOn: low\nignroe: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	shortKey := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(shortKey, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	diff := func(extra ...string) []string {
		return append([]string{"parity", "diff", staging, production, "--policy", examplePol}, extra...)
	}
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"drift", diff(), exitDrift, "drift: 5 unexpected differences at or above low"},
		{"same side", []string{"parity", "diff", staging, staging}, exitOK, ""},
		{"fail-on high still drifts", diff("--fail-on", "high"), exitDrift, "3 unexpected differences at or above high"},
		{"fail-on none", diff("--fail-on", "none"), exitOK, ""},
		{"bad fail-on", diff("--fail-on", "severe"), exitUsage, "--fail-on"},
		{"bad -o", diff("-o", "yaml"), exitUsage, "unknown output format"},
		{"one side", []string{"parity", "diff", staging}, exitUsage, "two sides"},
		{"both stdin", []string{"parity", "diff", "-", "-"}, exitUsage, "only one side"},
		{"missing path", []string{"parity", "diff", "./nowhere", staging}, exitNotFound, "left side"},
		{"missing file", []string{"parity", "diff", staging, "prod.yaml"}, exitNotFound, "right side"},
		{"not a namespace", []string{"parity", "diff", staging, "Not_A_Namespace"}, exitUsage, "not a namespace name"},
		{"policy error", diff("--policy", badPolicy), exitUsage, "p.yaml:2: unknown key \"ignroe\""},
		{"missing policy", diff("--policy", filepath.Join(t.TempDir(), "none.yaml")), exitNotFound, "policy"},
		{"short key", diff("--fingerprint-key", shortKey), exitUsage, "at least 16"},
		{"environment in the lab", []string{"parity", "diff", "env/alice", staging, "--controller=127.0.0.1:1"}, exitError, "in the lab an environment's forks are lab pods"},
		{"unknown noise rule", diff("--keep-noise", "status,nope"), exitUsage, `unknown rule "nope"`},
		{"noise kept", diff("--keep-noise", "quantities,namespace-name"), exitDrift, "drift: 7 unexpected differences"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, msg, code := runParity(t, "", tt.args...)
			if code != tt.code || !strings.Contains(msg, tt.msg) {
				t.Errorf("exit %d %q, want %d %q", code, msg, tt.code, tt.msg)
			}
		})
	}
}

// The README's command prints the table the docs show.
func TestParityTable(t *testing.T) {
	out, _, code := runParity(t, "", "parity", "diff", staging, production, "--policy", examplePol)
	if code != exitDrift {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{
		"Deployment/orders\n",
		"/spec/template/spec/containers/orders/image ",
		"ghcr.io/example/orders:1.8.2",
		"/spec/replicas ",
		"expected: production runs more replicas for its traffic",
		"Secret/orders-api\n",
		"/data/webhook-secret ",
		"8 differences: 5 unexpected (3 high, 2 medium), 2 expected, 1 ignored; DRIFT: 5 at or above low",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// "-" reads a YAML stream: the same report as the directory it came from.
func TestParityStdin(t *testing.T) {
	var stream bytes.Buffer
	for _, f := range []string{"orders.yaml", "secrets.yaml"} {
		b, err := os.ReadFile(filepath.Join(staging, f))
		if err != nil {
			t.Fatal(err)
		}
		stream.Write(b)
		stream.WriteString("\n---\n")
	}
	fromDir, _, _ := runParity(t, "", "parity", "diff", staging, production, "-o", "json", "--fingerprint-key", examplePol)
	fromStdin, _, code := runParity(t, stream.String(), "parity", "diff", "-", production, "-o", "json", "--fingerprint-key", examplePol)
	if code != exitDrift {
		t.Fatalf("exit %d", code)
	}
	var a, b parity.Report
	if err := json.Unmarshal([]byte(fromDir), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(fromStdin), &b); err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a.Differences)
	jb, _ := json.Marshal(b.Differences)
	if !bytes.Equal(ja, jb) || b.Left.Source != "(stdin)" {
		t.Errorf("stdin report differs:\n%s\n%s", ja, jb)
	}
}

// Without --policy, .detour/parity.yaml of the working directory is read.
func TestParityDefaultPolicy(t *testing.T) {
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	st, pr, pol := abs(staging), abs(production), abs(examplePol)
	dir := t.TempDir()
	t.Chdir(dir)
	out, _, _ := runParity(t, "", "parity", "diff", st, pr, "-o", "json")
	if strings.Contains(out, "production runs more replicas") {
		t.Fatal("a policy was read before there was one")
	}
	if err := os.MkdirAll(".detour", 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(".detour/parity.yaml", b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, _ = runParity(t, "", "parity", "diff", st, pr, "-o", "json")
	if !strings.Contains(out, "production runs more replicas") {
		t.Errorf(".detour/parity.yaml was not read:\n%s", out)
	}
}

// No Secret value, planted in the fixtures (and fed to env vars), reaches
// any output of the CLI: the three formats, snapshots with and without a
// key, errors.
func TestParityNoSecretInAnyOutput(t *testing.T) {
	planted := []string{"planted-LEFT-db-password", "planted-RIGHT-db-password", "planted-RIGHT-api-token",
		"planted-LEFT-tls-cert", "planted-LEFT-tls-key"}
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("a-key-of-more-than-16-bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	var outputs []string
	for _, o := range []string{"table", "json", "markdown"} {
		out, msg, _ := runParity(t, "", "parity", "diff", driftLeft, driftRight, "-o", o)
		outputs = append(outputs, out, msg)
	}
	for _, extra := range [][]string{nil, {"--fingerprint-key", key}} {
		file := filepath.Join(t.TempDir(), "snap.yaml")
		_, msg, code := runParity(t, "", append([]string{"parity", "snapshot", driftLeft, "-o", file}, extra...)...)
		if code != exitOK {
			t.Fatalf("snapshot: %d %s", code, msg)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		outputs = append(outputs, string(b), msg)
	}
	// A broken Secret: the error names the key, not the value.
	bad := "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: planted-LEFT-db-password}\n"
	_, msg, code := runParity(t, bad, "parity", "diff", "-", driftRight)
	if code != exitError || !strings.Contains(msg, `data key "k" is not base64`) {
		t.Errorf("broken Secret: %d %q", code, msg)
	}
	outputs = append(outputs, msg)
	for i, out := range outputs {
		for _, p := range planted {
			if strings.Contains(out, p) || strings.Contains(out, base64.StdEncoding.EncodeToString([]byte(p))) {
				t.Errorf("output %d holds %q", i, p)
			}
		}
	}
}

// A snapshot taken with a key compares values with a live side read with
// the same key; one taken without keeps keys only, and says so.
func TestParitySnapshotFile(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyed, keyless := filepath.Join(dir, "keyed.yaml"), filepath.Join(dir, "keyless.yaml")
	for _, s := range []struct {
		file  string
		extra []string
	}{{keyed, []string{"--fingerprint-key", key}}, {keyless, nil}} {
		_, msg, code := runParity(t, "", append([]string{"parity", "snapshot", staging, "-o", s.file}, s.extra...)...)
		if code != exitOK {
			t.Fatalf("snapshot: %d %s", code, msg)
		}
	}
	want, _, _ := runParity(t, "", "parity", "diff", staging, production, "-o", "json", "--fingerprint-key", key)
	got, _, code := runParity(t, "", "parity", "diff", keyed, production, "-o", "json", "--fingerprint-key", key)
	if code != exitDrift || differencesOf(t, got) != differencesOf(t, want) {
		t.Errorf("keyed snapshot: exit %d\n%s\nwant\n%s", code, differencesOf(t, got), differencesOf(t, want))
	}
	got, _, _ = runParity(t, "", "parity", "diff", keyless, production, "-o", "json")
	var r parity.Report
	if err := json.Unmarshal([]byte(got), &r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(r.Notes, " "), "left side kept keys only") {
		t.Errorf("keyless snapshot: notes %q", r.Notes)
	}
	if _, msg, code := runParity(t, "", "parity", "snapshot", keyed); code != exitUsage || !strings.Contains(msg, "is a snapshot already") {
		t.Errorf("snapshot of a snapshot: %d %s", code, msg)
	}
	// Standard output when -o is not given.
	out, _, code := runParity(t, "", "parity", "snapshot", staging)
	if code != exitOK || !parity.IsSnapshot([]byte(out)) {
		t.Errorf("snapshot to stdout: %d\n%s", code, out)
	}
}

func differencesOf(t *testing.T, js string) string {
	t.Helper()
	var r parity.Report
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		t.Fatalf("%v in %s", err, js)
	}
	b, err := json.Marshal(r.Differences)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Live sides through a kubeconfig: NAMESPACE and CONTEXT/NAMESPACE, a
// snapshot of one compared with the other as the live one is.
func TestParityLive(t *testing.T) {
	env := envtest.Start(t)
	kube := kubetest.Clientset(t, env.Kubeconfig)
	dyn, err := dynamic.NewForConfig(kubetest.Config(t, env.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	kc := kubetest.WriteKubeconfig(t, env.URL, env.CAPEM, "admin",
		map[string]*clientcmdapi.AuthInfo{"admin": {Token: env.AdminToken}}, map[string][2]string{"admin": {"admin", ""}, "other": {"admin", ""}})
	for _, side := range []struct{ dir, ns string }{{staging, "staging"}, {production, "production"}} {
		kubetest.Namespace(t, kube, side.ns)
		objs, err := manifest.ReadDir(side.dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			u := &unstructured.Unstructured{Object: jsonTypes(t, o)}
			gvr := map[string]schema.GroupVersionResource{
				"Deployment": {Group: "apps", Version: "v1", Resource: "deployments"},
				"Service":    {Version: "v1", Resource: "services"},
				"Secret":     {Version: "v1", Resource: "secrets"},
			}[u.GetKind()]
			if _, err := dyn.Resource(gvr).Namespace(side.ns).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFiles, _, _ := runParity(t, "", "parity", "diff", staging, production, "-o", "json", "--policy", examplePol)
	live, msg, code := runParity(t, "", "--kubeconfig", kc, "parity", "diff", "staging", "other/production", "-o", "json", "--policy", examplePol)
	if code != exitDrift {
		t.Fatalf("live: exit %d %s", code, msg)
	}
	if differencesOf(t, live) != differencesOf(t, fromFiles) {
		t.Errorf("live namespaces differ from their manifests:\n%s\nwant\n%s", differencesOf(t, live), differencesOf(t, fromFiles))
	}
	snap := filepath.Join(t.TempDir(), "staging.yaml")
	if _, msg, code := runParity(t, "", "--kubeconfig", kc, "parity", "snapshot", "staging", "-o", snap, "--fingerprint-key", key); code != exitOK {
		t.Fatalf("snapshot: %d %s", code, msg)
	}
	a, _, _ := runParity(t, "", "--kubeconfig", kc, "parity", "diff", snap, "production", "-o", "json", "--fingerprint-key", key)
	b, _, _ := runParity(t, "", "--kubeconfig", kc, "parity", "diff", "staging", "production", "-o", "json", "--fingerprint-key", key)
	if differencesOf(t, a) != differencesOf(t, b) {
		t.Errorf("snapshot vs live:\n%s\nlive vs live:\n%s", differencesOf(t, a), differencesOf(t, b))
	}
	if _, msg, code := runParity(t, "", "--kubeconfig", kc, "parity", "diff", "staging", "missing"); code != exitNotFound || !strings.Contains(msg, "namespace missing") {
		t.Errorf("missing namespace: %d %s", code, msg)
	}
	if _, msg, code := runParity(t, "", "--kubeconfig", kc, "parity", "diff", "staging", "nocontext/production"); code != exitUsage || !strings.Contains(msg, "nocontext") {
		t.Errorf("missing context: %d %s", code, msg)
	}
}

func jsonTypes(t *testing.T, o map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}
