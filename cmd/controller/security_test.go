package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/kubeauth"
)

// TestRunTLSAuth runs the controller with --tls-secret and --auth=kube: it
// makes its serving certificate, publishes the CA, serves TLS only, and
// lets a call through only with a token the API server vouches for and
// RBAC allows.
func TestRunTLSAuth(t *testing.T) {
	// Refused before anything is opened: tokens never travel in clear.
	err := run(context.Background(), &options{auth: "kube", agentServiceAccount: "a:b", agentTokenAudience: "detour"}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "--tls-secret") {
		t.Fatalf("--auth kube without TLS: %v", err)
	}

	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := env.InstallCRDs(ctx, "../../deploy/crds/detour.dev_intercepts.yaml"); err != nil {
		t.Fatal(err)
	}
	o := &options{
		listen: freeAddr(t), metricsListen: freeAddr(t),
		storeBackend: "kube", kubeconfig: env.Kubeconfig,
		inventoryPath:        filepath.Join(t.TempDir(), "missing.json"),
		leaderElectNamespace: "default",
		auth:                 "kube", agentServiceAccount: "default:detour-agent", agentTokenAudience: "detour",
		tlsSecret: "detour-controller-tls", caConfigMap: "detour-ca", serviceName: "detour-controller",
	}
	defer runController(t, ctx, o)()
	testutil.Eventually(t, 30*time.Second, func() error {
		if code, body, err := get(o.metricsListen, "/readyz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("the controller is not ready: /readyz %d %q %v", code, body, err)
		}
		return nil
	})

	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(cfg)
	cm, err := kc.CoreV1().ConfigMaps("default").Get(ctx, "detour-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the published CA: %v", err)
	}
	if _, err := kc.CoreV1().Secrets("default").Get(ctx, "detour-controller-tls", metav1.GetOptions{}); err != nil {
		t.Fatalf("the serving Secret: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data[kubeauth.CACertKey])) {
		t.Fatalf("ConfigMap detour-ca has no CA: %v", cm.Data)
	}
	list := func(creds credentials.TransportCredentials, token string) error {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
		if token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(kubeauth.Token(token)))
		}
		conn, err := grpc.NewClient(o.listen, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		_, err = detourv1.NewControlServiceClient(conn).ListIntercepts(cctx, &detourv1.ListInterceptsRequest{})
		return err
	}
	// The certificate is for the Service's names, signed by the published CA.
	tlsCreds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "detour-controller.default.svc", MinVersion: tls.VersionTLS12})
	if err := list(tlsCreds, env.AdminToken); err != nil {
		t.Fatalf("an admin over TLS: %v", err)
	}
	if err := list(tlsCreds, ""); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v, want Unauthenticated", err)
	}
	if err := list(tlsCreds, env.UserToken); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a user without RBAC: %v, want PermissionDenied", err)
	}
	if err := list(insecure.NewCredentials(), ""); status.Code(err) != codes.Unavailable {
		t.Fatalf("plain text: %v, want Unavailable", err)
	}
}
