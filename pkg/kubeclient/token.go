package kubeclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/rest"

	"github.com/detourdev/detour/pkg/kubeauth"
)

// ErrNoToken says that the kubeconfig's user cannot be presented to the
// controller: it has no bearer token.
var ErrNoToken = errors.New("a token identity is needed")

// whyToken is the reason given with ErrNoToken.
const whyToken = "the Detour controller identifies you by a bearer token, which it checks with a TokenReview " +
	"and authorizes with a SubjectAccessReview; the connection to it goes through a port-forward that ends " +
	"at the API server, so a client certificate cannot be passed on. Use a context whose user has a token " +
	"(a `token` or `tokenFile`, e.g. from `kubectl create token SERVICEACCOUNT`, or an exec or OIDC login that yields one)"

// Credentials returns the per-call gRPC credentials that present the
// context's user to the controller: the bearer token the kubeconfig gives
// for the API server. A token file is reread on every call, as client-go
// does, since it may be rotated. An exec plugin (or auth provider) is run
// the way client-go runs it, and must yield a token, not a certificate.
func (c *Config) Credentials(ctx context.Context) (credentials.PerRPCCredentials, error) {
	rc := c.REST
	who := fmt.Sprintf("kubeconfig user %q (context %q)", c.User, c.Context)
	if rc.Impersonate.UserName != "" {
		return nil, fmt.Errorf("%w: %s impersonates %q, but the controller identifies callers by their own token (TokenReview) and would see the impersonator, not %q",
			ErrNoToken, who, rc.Impersonate.UserName, rc.Impersonate.UserName)
	}
	switch {
	case rc.BearerTokenFile != "":
		b, err := os.ReadFile(rc.BearerTokenFile)
		if err != nil {
			return nil, fmt.Errorf("%s: read its token file: %w", who, err)
		}
		if strings.TrimSpace(string(b)) == "" {
			return nil, fmt.Errorf("%w: %s: its token file %s is empty; %s", ErrNoToken, who, rc.BearerTokenFile, whyToken)
		}
		return kubeauth.TokenFile(rc.BearerTokenFile), nil
	case rc.BearerToken != "":
		return kubeauth.Token(rc.BearerToken), nil
	case rc.ExecProvider != nil || rc.AuthProvider != nil:
		p, err := newPluginToken(rc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", who, err)
		}
		// Run the plugin now, so that a plugin giving a certificate (or
		// failing) is reported before anything is sent.
		if _, err := p.token(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", who, err)
		}
		return p, nil
	case rc.CertData != nil || rc.CertFile != "":
		return nil, fmt.Errorf("%w: %s authenticates with a client certificate only: %s", ErrNoToken, who, whyToken)
	case rc.Username != "":
		return nil, fmt.Errorf("%w: %s authenticates with a password: %s", ErrNoToken, who, whyToken)
	}
	return nil, fmt.Errorf("%w: %s has no credentials at all: %s", ErrNoToken, who, whyToken)
}

// pluginToken gets the token an exec plugin or auth provider gives,
// through client-go's own round trippers: they set the Authorization header
// on a request, and the innermost round tripper here takes it and sends
// nothing. client-go caches the plugin's token and runs it again when the
// token expires.
type pluginToken struct{ rt http.RoundTripper }

func newPluginToken(rc *rest.Config) (*pluginToken, error) {
	rc = rest.CopyConfig(rc)
	rc.WrapTransport = func(http.RoundTripper) http.RoundTripper { return captureAuth{} }
	rt, err := rest.TransportFor(rc)
	if err != nil {
		return nil, fmt.Errorf("credential plugin: %w", err)
	}
	return &pluginToken{rt: rt}, nil
}

// captureAuth answers every request with the Authorization header it got.
type captureAuth struct{}

func (captureAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: http.StatusNoContent,
		Header:     http.Header{"Authorization": req.Header.Values("Authorization")},
		Body:       http.NoBody,
		Request:    req,
	}, nil
}

func (p *pluginToken) token(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://credential.invalid/", nil)
	if err != nil {
		return "", err
	}
	resp, err := p.rt.RoundTrip(req)
	if err != nil {
		return "", fmt.Errorf("credential plugin: %w", err)
	}
	defer resp.Body.Close()
	tok, ok := strings.CutPrefix(resp.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return "", fmt.Errorf("%w: its credential plugin gives no bearer token (a client certificate, perhaps): %s", ErrNoToken, whyToken)
	}
	return tok, nil
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (p *pluginToken) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := p.token(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (*pluginToken) RequireTransportSecurity() bool { return true }
