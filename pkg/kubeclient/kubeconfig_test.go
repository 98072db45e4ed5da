package kubeclient

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
)

// whoAmI asks the API server who the config authenticates as.
func whoAmI(t *testing.T, kc *Config) string {
	t.Helper()
	cs, err := kubernetes.NewForConfig(kc.REST)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(context.Background(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status.UserInfo.Username
}

// A kubeconfig with two contexts, as kubectl reads it: the current context
// or --context, its namespace or "default", and $KUBECONFIG as a list of
// files merged.
func TestLoadContexts(t *testing.T) {
	env := envtest.Start(t)
	path := kubetest.WriteKubeconfig(t, env.URL, env.CAPEM, "team",
		map[string]*clientcmdapi.AuthInfo{
			"admin": {Token: env.AdminToken},
			"dev":   {Token: env.UserToken},
		},
		map[string][2]string{"team": {"admin", "team-a"}, "dev": {"dev", ""}})

	t.Setenv("KUBECONFIG", path)
	if !KubeconfigExists() {
		t.Fatal("KubeconfigExists is false with $KUBECONFIG naming a file")
	}
	tests := []struct {
		name                string
		opts                LoadOptions
		context, user, ns   string
		identity            string
		kubeconfigEnvAbsent bool
	}{
		{"current context", LoadOptions{}, "team", "admin", "team-a", envtest.AdminName, false},
		{"--context", LoadOptions{Context: "dev"}, "dev", "dev", "default", envtest.UserName, false},
		{"--kubeconfig beats $KUBECONFIG", LoadOptions{Kubeconfig: path, Context: "dev"}, "dev", "dev", "default", envtest.UserName, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.kubeconfigEnvAbsent {
				t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "absent"))
			}
			kc, err := Load(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if kc.Context != tt.context || kc.User != tt.user || kc.Namespace != tt.ns {
				t.Errorf("context %q user %q namespace %q, want %q %q %q", kc.Context, kc.User, kc.Namespace, tt.context, tt.user, tt.ns)
			}
			if who := whoAmI(t, kc); who != tt.identity {
				t.Errorf("the API server sees %q, want %q", who, tt.identity)
			}
		})
	}

	t.Run("unknown context", func(t *testing.T) {
		_, err := Load(LoadOptions{Context: "prod"})
		if !errors.Is(err, ErrContext) || !strings.Contains(err.Error(), `"prod" not found`) || !strings.Contains(err.Error(), "contexts dev, team") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("merged files", func(t *testing.T) {
		other := kubetest.WriteKubeconfig(t, env.URL, env.CAPEM, "", map[string]*clientcmdapi.AuthInfo{"x": {Token: env.UserToken}},
			map[string][2]string{"other": {"x", "ns-x"}})
		t.Setenv("KUBECONFIG", other+string(os.PathListSeparator)+path)
		kc, err := Load(LoadOptions{})
		if err != nil || kc.Context != "team" {
			t.Fatalf("current context from the second file: %v %+v", err, kc)
		}
		kc, err = Load(LoadOptions{Context: "other"})
		if err != nil || kc.Namespace != "ns-x" {
			t.Fatalf("context of the first file: %v %+v", err, kc)
		}
	})
	t.Run("no kubeconfig", func(t *testing.T) {
		t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "absent"))
		if KubeconfigExists() {
			t.Error("KubeconfigExists with $KUBECONFIG naming no file")
		}
		if _, err := Load(LoadOptions{}); err == nil || !strings.Contains(err.Error(), "no kubeconfig") {
			t.Errorf("got %v", err)
		}
	})
}

// execPlugin writes a credential plugin that prints status as its
// ExecCredential.
func execPlugin(t *testing.T, status string) *clientcmdapi.ExecConfig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "plugin")
	script := "#!/bin/sh\ncat <<'EOF'\n{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":" + status + "}\nEOF\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return &clientcmdapi.ExecConfig{APIVersion: "client.authentication.k8s.io/v1", Command: path, InteractiveMode: clientcmdapi.NeverExecInteractiveMode}
}

// What the controller is sent for each kind of kubeconfig user, and the
// refusal, with its reason, for those without a token.
func TestCredentials(t *testing.T) {
	cert, key := testutil.PEMPair(t, testutil.NewCA(t).IssueClient(t, "someone"))
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	certStatus := `{"clientCertificateData":` + jsonString(string(cert)) + `,"clientKeyData":` + jsonString(string(key)) + `}`
	tests := []struct {
		name string
		user *clientcmdapi.AuthInfo
		want string // the authorization metadata, or a part of the error
		ok   bool
	}{
		{"token", &clientcmdapi.AuthInfo{Token: "tok-1"}, "Bearer tok-1", true},
		{"token file", &clientcmdapi.AuthInfo{TokenFile: tokenFile}, "Bearer file-token", true},
		{"token beside a certificate", &clientcmdapi.AuthInfo{Token: "tok-2", ClientCertificateData: cert, ClientKeyData: key}, "Bearer tok-2", true},
		{"exec plugin with a token", &clientcmdapi.AuthInfo{Exec: execPlugin(t, `{"token":"exec-token"}`)}, "Bearer exec-token", true},
		{"client certificate", &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}, "authenticates with a client certificate only", false},
		{"exec plugin with a certificate", &clientcmdapi.AuthInfo{Exec: execPlugin(t, certStatus)}, "gives no bearer token", false},
		{"empty token file", &clientcmdapi.AuthInfo{TokenFile: emptyFile}, "is empty", false},
		{"password", &clientcmdapi.AuthInfo{Username: "u", Password: "p"}, "password", false},
		{"nothing", &clientcmdapi.AuthInfo{}, "no credentials", false},
		{"impersonation", &clientcmdapi.AuthInfo{Token: "tok-3", Impersonate: "bob"}, `impersonates "bob"`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := kubetest.WriteKubeconfig(t, "https://127.0.0.1:1", nil, "c", map[string]*clientcmdapi.AuthInfo{"u": tt.user}, map[string][2]string{"c": {"u", ""}})
			kc, err := Load(LoadOptions{Kubeconfig: path})
			if err != nil {
				t.Fatal(err)
			}
			creds, err := kc.Credentials(context.Background())
			if !tt.ok {
				if !errors.Is(err, ErrNoToken) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "TokenReview") {
					t.Fatalf("got %v, want ErrNoToken saying %q and why", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !creds.RequireTransportSecurity() {
				t.Error("a token would be sent without TLS")
			}
			md, err := creds.GetRequestMetadata(context.Background())
			if err != nil || md["authorization"] != tt.want {
				t.Fatalf("metadata %v (%v), want authorization %q", md, err, tt.want)
			}
		})
	}
}

func jsonString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}
