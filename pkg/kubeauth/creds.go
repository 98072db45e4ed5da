// Package kubeauth authenticates the callers of gRPC services with
// Kubernetes identities and asks Kubernetes whether they may make each
// call. It knows no service: each registers its Rules, a table from method
// to who may call it (the controller's are in pkg/controller), so a new
// service adds rows without changing this package. Two kinds of caller:
// users, by the bearer token of their kubeconfig, checked with TokenReview,
// and their rights on a resource with SubjectAccessReview (UserRule), so
// that Kubernetes RBAC decides who may do what; and node agents, by a
// projected service-account token bound to their pod, each for its own
// node only (AgentRule). It also holds the client side, per-RPC
// bearer-token credentials, and the serving certificate the tokens travel
// under (EnsureServingCert). See docs/architecture.md, "Kubernetes mode".
package kubeauth

import (
	"context"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"
)

// TokenFile sends the token read from a file on every call: a projected
// service-account token is rotated by the kubelet, so it is reread each time.
type TokenFile string

var _ credentials.PerRPCCredentials = TokenFile("")

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (f TokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("token file %s is empty", string(f))
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a token
// is never sent in clear text.
func (TokenFile) RequireTransportSecurity() bool { return true }

// Token sends a fixed bearer token (a user's, from the kubeconfig).
type Token string

var _ credentials.PerRPCCredentials = Token("")

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t Token) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (Token) RequireTransportSecurity() bool { return true }
