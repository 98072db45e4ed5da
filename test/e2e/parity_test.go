//go:build e2e

package e2e

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
)

// The planted Secret values of testdata/parity.yaml.
var paritySecrets = []string{"e2e-staging-pw-5b8e21", "e2e-production-pw-c07d4f", "e2e-production-key-93aa10"}

// testParity: `detour parity diff` between two namespaces of the cluster
// finds exactly what testdata/parity.yaml plants (a Deployment's image, a
// ConfigMap value, a Secret's password and key, a NetworkPolicy's port),
// exits 5, and shows no Secret value in any format; the ParityCheck between
// the same two namespaces shows it in its status and in the controller's
// metrics, and both move when the ConfigMap value is made the same.
func testParity(t *testing.T, e env) {
	e.k(t, "apply", "-f", "testdata/parity.yaml")

	diff := func(format string) string {
		t.Helper()
		out, err := runErr(filepath.Join(e.bin, "detour"), "--kubeconfig", e.kubeconfig("admin"),
			"parity", "diff", "parity-staging", "parity-production", "-o", format)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 {
			t.Fatalf("detour parity diff -o %s: %v, want exit 5 (drift)\n%s", format, err, out)
		}
		noSecretValues(t, "parity diff -o "+format, out)
		return out
	}
	table := diff("table")
	t.Log("\n" + table)
	diff("markdown")
	var rep struct {
		Differences []struct {
			Kind, Name, Path, Change string
			Category                 string
		}
	}
	out := diff("json")
	if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "}")+1]), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	var got []string
	for _, d := range rep.Differences {
		p := d.Path
		if d.Kind == "NetworkPolicy" { // set members are named by a hash
			p = p[:strings.LastIndex(p, "/")+1] + "*"
		}
		got = append(got, fmt.Sprintf("%s/%s %s %s %s", d.Kind, d.Name, p, d.Change, d.Category))
	}
	slices.Sort(got)
	want := []string{
		"ConfigMap/shop-config /data/LOG_LEVEL changed config",
		"Deployment/shop /spec/template/spec/containers/shop/image changed image",
		"NetworkPolicy/shop /spec/ingress/* only-left network",
		"NetworkPolicy/shop /spec/ingress/* only-right network",
		"Secret/shop-secrets /data/api-key only-right secret",
		"Secret/shop-secrets /data/password changed secret",
	}
	if !slices.Equal(got, want) {
		t.Errorf("parity diff found\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// The ParityCheck: its status and the controller's metric.
	configSeries := `detour_parity_differences{category="config",check="parity-staging/shop",severity="medium"}`
	testutil.Eventually(t, 90*time.Second, func() error {
		st := e.k(t, "-n", "parity-staging", "get", "paritycheck", "shop", "-o",
			`jsonpath={.status.summary.result} {.status.summary.unexpected} {.status.conditions[?(@.type=="Ready")].status}`)
		if st != "drift 6 True" {
			return fmt.Errorf("ParityCheck status %q, want drift 6 True", st)
		}
		if v, err := controllerMetric(t, e, configSeries); err != nil || v != 1 {
			return fmt.Errorf("%s = %v (%v), want 1", configSeries, v, err)
		}
		return nil
	})
	t.Log(e.k(t, "-n", "parity-staging", "get", "paritychecks"))
	noSecretValues(t, "the ParityCheck", e.k(t, "-n", "parity-staging", "get", "paritycheck", "shop", "-o", "json"))

	// The ConfigMap value made the same: the next run (asked for now)
	// drops the difference from the status and the metric.
	e.k(t, "-n", "parity-production", "patch", "configmap", "shop-config", "--type=merge", "-p", `{"data":{"LOG_LEVEL":"debug"}}`)
	e.k(t, "-n", "parity-staging", "annotate", "paritycheck", "shop", "--overwrite", "detour.dev/parity-run="+time.Now().Format(time.RFC3339Nano))
	testutil.Eventually(t, 60*time.Second, func() error {
		st := e.k(t, "-n", "parity-staging", "get", "paritycheck", "shop", "-o", `jsonpath={.status.summary.unexpected}`)
		if st != "5" {
			return fmt.Errorf("ParityCheck unexpected differences %q, want 5", st)
		}
		if v, err := controllerMetric(t, e, configSeries); err != nil || v != 0 {
			return fmt.Errorf("%s = %v (%v), want 0", configSeries, v, err)
		}
		return nil
	})
	e.k(t, "delete", "-f", "testdata/parity.yaml", "--wait=false")
}

// noSecretValues fails the test when out holds a planted Secret value, in
// clear or in base64.
func noSecretValues(t *testing.T, what, out string) {
	t.Helper()
	for _, v := range paritySecrets {
		for _, form := range []string{v, base64.StdEncoding.EncodeToString([]byte(v))} {
			if strings.Contains(out, form) {
				t.Errorf("%s shows a Secret value (%q)", what, form)
			}
		}
	}
}

// controllerMetric reads one series from the leading controller's
// /metrics, at its pod's address (the test runs in the cluster's network
// namespace); an error when it is absent.
func controllerMetric(t *testing.T, e env, series string) (float64, error) {
	t.Helper()
	leader := strings.TrimSpace(e.k(t, "-n", "detour-system", "get", "lease", "detour-controller", "-o", "jsonpath={.spec.holderIdentity}"))
	ip := strings.TrimSpace(e.k(t, "-n", "detour-system", "get", "pod", leader, "-o", "jsonpath={.status.podIP}"))
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + ip + ":9470/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f, err
		}
	}
	return 0, fmt.Errorf("%s not in the controller's metrics", series)
}
