package envtest

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestEnvtest runs the real control plane: the admin creates a namespace,
// the low-privilege user is forbidden to list namespaces, the project's
// CRDs install and serve, and kubectl reads the kubeconfig.
func TestEnvtest(t *testing.T) {
	start := time.Now()
	env := Start(t)
	t.Logf("control plane ready in %v at %s", time.Since(start).Round(time.Millisecond), env.URL)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	code, body, err := env.Do(ctx, env.AdminToken, http.MethodGet, "/version", nil, "")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /version: %d %v %s", code, err, body)
	}
	var version struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(body, &version); err != nil || version.GitVersion != Version {
		t.Fatalf("server version %q (%v), want %s: build.sh's ldflags", version.GitVersion, err, Version)
	}

	ns := []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"envtest-demo"}}`)
	code, body, err = env.Do(ctx, env.AdminToken, http.MethodPost, "/api/v1/namespaces", ns, "")
	if err != nil || code != http.StatusCreated {
		t.Fatalf("admin create namespace: %d %v %s", code, err, body)
	}

	code, body, err = env.Do(ctx, env.UserToken, http.MethodGet, "/api/v1/namespaces", nil, "")
	if err != nil || code != http.StatusForbidden {
		t.Fatalf("user list namespaces: got %d %v %s, want 403", code, err, body)
	}
	var status struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &status); err != nil || !strings.Contains(status.Message, `"`+UserName+`"`) {
		t.Errorf("403 does not name the user %q: %s", UserName, body)
	}

	code, body, err = env.Do(ctx, "", http.MethodGet, "/api/v1/namespaces", nil, "")
	if err != nil || code != http.StatusForbidden {
		t.Errorf("anonymous list namespaces: got %d %v %s, want 403", code, err, body)
	}

	// The generated CRDs (kustomization.yaml beside them is not one).
	crds, _ := filepath.Glob("../../deploy/crds/detour.dev_*.yaml")
	if len(crds) == 0 {
		t.Fatal("no deploy/crds/detour.dev_*.yaml: run make generate")
	}
	names, err := env.InstallCRDs(ctx, crds...)
	if err != nil {
		t.Fatalf("install CRDs: %v", err)
	}
	t.Logf("CRDs established: %v", names)

	kubectl := filepath.Join(env.BinDir, "kubectl")
	if _, err := os.Stat(kubectl); err == nil {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", env.Kubeconfig,
			"get", "namespace", "envtest-demo", "-o", "name").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "namespace/envtest-demo" {
			t.Errorf("kubectl with the admin kubeconfig: %v: %s", err, out)
		}
		out, err = exec.CommandContext(ctx, kubectl, "--kubeconfig", env.UserKubeconfig,
			"get", "namespaces").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "forbidden") {
			t.Errorf("kubectl with the user kubeconfig: want forbidden, got %v: %s", err, out)
		}
	}
	t.Logf("test body done %v after start", time.Since(start).Round(time.Millisecond))
}

func TestPKI(t *testing.T) {
	adv := net.IPv4(192, 0, 2, 10)
	p, err := newPKI([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1), adv})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(p.caCert) {
		t.Fatal("CA PEM does not parse")
	}
	parse := func(b []byte) *x509.Certificate {
		t.Helper()
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	serving, client := parse(p.servingCert), parse(p.clientCert)
	for _, name := range []string{"127.0.0.1", "10.0.0.1", "192.0.2.10", "localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} {
		if _, err := serving.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("serving cert for %s: %v", name, err)
		}
	}
	if _, err := serving.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: roots}); err == nil {
		t.Error("serving cert verifies for example.com")
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert: %v", err)
	}
	if got := client.Subject.Organization; len(got) != 1 || got[0] != "system:masters" {
		t.Errorf("client cert groups %v, want [system:masters]", got)
	}
	for name, b := range map[string][]byte{"ca.key": p.caKey, "apiserver.key": p.servKey, "sa.key": p.saKey, "sa.pub": p.saPub} {
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Errorf("%s is not PEM", name)
		}
	}
}

func TestSplitYAML(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want int
	}{
		{"one document", "a: 1\n", 1},
		{"leading separator", "---\na: 1\n", 1},
		{"two documents", "a: 1\n---\nb: 2\n", 2},
		{"separator with a comment", "a: 1\n--- # next\nb: 2\n", 2},
		{"empty documents dropped", "---\n---\na: 1\n---\n", 1},
		{"nothing", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := splitYAML([]byte(tc.in)); len(got) != tc.want {
				t.Errorf("got %d documents %q, want %d", len(got), got, tc.want)
			}
		})
	}
}
