package kubeauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/kubernetes"
)

// NodeNameExtra is the user extra the API server adds to a service-account
// token bound to a pod that runs on a node (Kubernetes 1.30 and newer): the
// node's name. An agent may only speak for that node.
const NodeNameExtra = "authentication.kubernetes.io/node-name"

// DefaultCacheTTL is how long a successful TokenReview is reused when
// Config.CacheTTL is zero.
const DefaultCacheTTL = 30 * time.Second

// Config configures an Authenticator.
type Config struct {
	// Client is the server's own client; it needs create on tokenreviews
	// and subjectaccessreviews.
	Client kubernetes.Interface
	// Logger receives denials and review failures (never tokens);
	// slog.Default() when nil.
	Logger *slog.Logger
	// CacheTTL is how long a successful TokenReview is reused;
	// DefaultCacheTTL when zero, no caching when negative. Failures are
	// never cached.
	CacheTTL time.Duration
}

// Authenticator checks the bearer token of every call to the gRPC services
// whose Rules are registered, and decides by the method's Rule whether its
// holder may make the call.
type Authenticator struct {
	client kubernetes.Interface
	log    *slog.Logger
	cache  *reviewCache

	mu    sync.RWMutex
	rules Rules // by full method name
}

// New checks cfg and returns an Authenticator that lets no call through
// until Rules are registered.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Client == nil {
		return nil, errors.New("kubeauth: no Kubernetes client")
	}
	ttl := cfg.CacheTTL
	if ttl == 0 {
		ttl = DefaultCacheTTL
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Authenticator{
		client: cfg.Client,
		log:    log,
		cache:  newReviewCache(ttl, maxCacheEntries, time.Now),
		rules:  Rules{},
	}, nil
}

// Register adds a service's rules. It refuses, registering none of them, a
// rule that cannot work or a method that already has one. It may be called
// while calls are served; until then the methods are refused.
func (a *Authenticator) Register(rules Rules) error {
	for m, r := range rules {
		if r == nil {
			return fmt.Errorf("kubeauth: method %s: no rule", m)
		}
		if err := r.check(); err != nil {
			return fmt.Errorf("kubeauth: method %s: %w", m, err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for m := range rules {
		if _, ok := a.rules[m]; ok {
			return fmt.Errorf("kubeauth: method %s registered twice", m)
		}
	}
	maps.Copy(a.rules, rules)
	return nil
}

// identity is who made a call, as the API server told us.
type identity struct {
	user authnv1.UserInfo
	// node is the node an agent's token is bound to; empty for users.
	node string
}

type identityKey struct{}

// UserFrom returns the name of the authenticated caller of the call whose
// context this is (a user, or system:serviceaccount:... for an agent).
func UserFrom(ctx context.Context) (username string, ok bool) {
	id, ok := ctx.Value(identityKey{}).(*identity)
	if !ok {
		return "", false
	}
	return id.user.Username, true
}

// UnaryInterceptor authenticates and authorizes unary calls.
func (a *Authenticator) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		rule, id, err := a.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if err := rule.authorize(ctx, a, id, info.FullMethod, req); err != nil {
			return nil, err
		}
		return handler(context.WithValue(ctx, identityKey{}, id), req)
	}
}

// StreamInterceptor authenticates a stream when it opens and authorizes
// each message the handler receives: what a streaming call may do depends
// on its request, which only arrives with RecvMsg.
func (a *Authenticator) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		rule, id, err := a.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &authStream{
			ServerStream: ss,
			ctx:          context.WithValue(ss.Context(), identityKey{}, id),
			a:            a,
			rule:         rule,
			id:           id,
			method:       info.FullMethod,
		})
	}
}

type authStream struct {
	grpc.ServerStream
	ctx        context.Context
	a          *Authenticator
	rule       Rule
	id         *identity
	method     string
	authorized atomic.Bool
}

func (s *authStream) Context() context.Context { return s.ctx }

func (s *authStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.rule.authorize(s.ctx, s.a, s.id, s.method, m); err != nil {
		return err
	}
	s.authorized.Store(true)
	return nil
}

// SendMsg refuses to send before a request was received and authorized: a
// guarded stream must start with its request (as every stream of Detour's
// services does), or a handler that sends first would bypass
// authorization.
func (s *authStream) SendMsg(m any) error {
	if !s.authorized.Load() {
		return status.Errorf(codes.PermissionDenied, "%s: nothing may be sent before the request is authorized", s.method)
	}
	return s.ServerStream.SendMsg(m)
}

// authenticate reviews the call's token as the method's rule wants it, and
// returns the rule and who holds the token.
func (a *Authenticator) authenticate(ctx context.Context, method string) (Rule, *identity, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		return nil, nil, err
	}
	a.mu.RLock()
	rule, ok := a.rules[method]
	a.mu.RUnlock()
	if !ok {
		a.log.Info("call to an unknown method refused", "method", method)
		return nil, nil, status.Errorf(codes.PermissionDenied, "method %s is not open to anyone", method)
	}
	id, err := rule.authenticate(ctx, a, method, token)
	if err != nil {
		return nil, nil, err
	}
	return rule, id, nil
}

// bearerToken returns the token of the call's "authorization: Bearer"
// metadata.
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch len(vals) {
	case 0:
		return "", status.Error(codes.Unauthenticated,
			`no credentials: send "authorization: Bearer <token>" (a kubeconfig token, or an agent's service-account token)`)
	case 1:
	default:
		return "", status.Error(codes.Unauthenticated, "more than one authorization header")
	}
	return parseBearer(vals[0])
}

// parseBearer parses an authorization header value. Its errors never
// quote the value: it may be a token.
func parseBearer(v string) (string, error) {
	scheme, token, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", status.Error(codes.Unauthenticated, `malformed authorization header: want "Bearer <token>"`)
	}
	token = strings.TrimSpace(token)
	if token == "" || strings.ContainsAny(token, " \t\r\n") {
		return "", status.Error(codes.Unauthenticated, `malformed authorization header: want "Bearer <token>"`)
	}
	return token, nil
}
