// Package kubeauth authenticates the callers of the controller's gRPC
// services with Kubernetes identities: agents present a service-account
// token bound to their pod (audience "detour"), users the bearer token of
// their kubeconfig. The controller checks tokens with TokenReview and users'
// rights with SubjectAccessReview, so Kubernetes RBAC decides who may do
// what. It also holds the client side: per-RPC bearer-token credentials.
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
