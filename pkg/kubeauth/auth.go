package kubeauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/kubernetes"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
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
	// Client is the controller's own client; it needs create on
	// tokenreviews and subjectaccessreviews.
	Client kubernetes.Interface
	// AgentAudience is the audience the agents' projected tokens carry,
	// e.g. "detour".
	AgentAudience string
	// AgentServiceAccount is "namespace:name" of the agents' service
	// account, e.g. "detour-system:detour-agent".
	AgentServiceAccount string
	// Logger receives denials and review failures (never tokens);
	// slog.Default() when nil.
	Logger *slog.Logger
	// CacheTTL is how long a successful TokenReview is reused;
	// DefaultCacheTTL when zero, no caching when negative. Failures are
	// never cached.
	CacheTTL time.Duration
}

// Authenticator checks the bearer token of every call to the controller's
// gRPC services and decides whether its holder may make the call: agents
// by their service account and node, users by Kubernetes RBAC on
// intercepts.detour.dev.
type Authenticator struct {
	client    kubernetes.Interface
	audience  string
	agentUser string // system:serviceaccount:<ns>:<name>
	log       *slog.Logger
	cache     *reviewCache
}

// New checks cfg and returns an Authenticator.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Client == nil {
		return nil, errors.New("kubeauth: no Kubernetes client")
	}
	if cfg.AgentAudience == "" {
		return nil, errors.New("kubeauth: no agent audience")
	}
	ns, name, ok := strings.Cut(cfg.AgentServiceAccount, ":")
	if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
		return nil, fmt.Errorf("kubeauth: agent service account %q is not namespace:name", cfg.AgentServiceAccount)
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
		client:    cfg.Client,
		audience:  cfg.AgentAudience,
		agentUser: "system:serviceaccount:" + ns + ":" + name,
		log:       log,
		cache:     newReviewCache(ttl, maxCacheEntries, time.Now),
	}, nil
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
		id, err := a.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if err := a.authorize(ctx, id, info.FullMethod, req); err != nil {
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
		id, err := a.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &authStream{
			ServerStream: ss,
			ctx:          context.WithValue(ss.Context(), identityKey{}, id),
			a:            a,
			id:           id,
			method:       info.FullMethod,
		})
	}
}

type authStream struct {
	grpc.ServerStream
	ctx        context.Context
	a          *Authenticator
	id         *identity
	method     string
	authorized atomic.Bool
}

func (s *authStream) Context() context.Context { return s.ctx }

func (s *authStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.a.authorize(s.ctx, s.id, s.method, m); err != nil {
		return err
	}
	s.authorized.Store(true)
	return nil
}

// SendMsg refuses to send before a request was received and authorized:
// every stream of these services starts with its request, so a handler
// that sends first would bypass authorization.
func (s *authStream) SendMsg(m any) error {
	if !s.authorized.Load() {
		return status.Errorf(codes.PermissionDenied, "%s: nothing may be sent before the request is authorized", s.method)
	}
	return s.ServerStream.SendMsg(m)
}

// agentPrefix starts the full names of the AgentSyncService's methods.
var agentPrefix = "/" + detourv1.AgentSyncService_ServiceDesc.ServiceName + "/"

// authenticate reviews the call's token with the audience its service
// wants and, for agents, checks the service account and that the token
// names a node.
func (a *Authenticator) authenticate(ctx context.Context, method string) (*identity, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case isAgentMethod(method):
		user, err := a.review(ctx, token, []string{a.audience})
		if err != nil {
			return nil, err
		}
		if user.Username != a.agentUser {
			a.log.Info("agent call refused: wrong service account", "user", user.Username, "method", method)
			return nil, status.Errorf(codes.PermissionDenied,
				"user %q may not call %s: only the agents' service account %s may", user.Username, method, a.agentUser)
		}
		nodes := user.Extra[NodeNameExtra]
		if len(nodes) != 1 || nodes[0] == "" {
			a.log.Info("agent call refused: token names no node", "user", user.Username, "method", method)
			return nil, status.Errorf(codes.PermissionDenied,
				"the token of %q names no node (no %s extra): an agent must present a projected service-account token of its pod "+
					"(audience %q), issued by Kubernetes 1.30 or newer for a pod scheduled to a node", user.Username, NodeNameExtra, a.audience)
		}
		return &identity{user: user, node: nodes[0]}, nil
	case isControlMethod(method):
		// No audiences: the API server's own, those of a user's
		// kubeconfig token.
		user, err := a.review(ctx, token, nil)
		if err != nil {
			return nil, err
		}
		return &identity{user: user}, nil
	default:
		a.log.Info("call to an unknown method refused", "method", method)
		return nil, status.Errorf(codes.PermissionDenied, "method %s is not open to anyone", method)
	}
}

// authorize decides whether id may make the call with request msg.
func (a *Authenticator) authorize(ctx context.Context, id *identity, method string, msg any) error {
	if strings.HasPrefix(method, agentPrefix) {
		return a.authorizeAgent(id, method, msg)
	}
	return a.authorizeUser(ctx, id, method, msg)
}

// authorizeAgent lets an agent speak only for the node its token is bound to.
func (a *Authenticator) authorizeAgent(id *identity, method string, msg any) error {
	r, ok := msg.(interface{ GetNode() string })
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%s: request %T names no node", method, msg)
	}
	if node := r.GetNode(); node != id.node {
		a.log.Info("agent call refused: other node", "user", id.user.Username, "tokenNode", id.node, "requestNode", node, "method", method)
		return status.Errorf(codes.PermissionDenied,
			"the agent on node %q may not speak for node %q", id.node, node)
	}
	return nil
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

func isAgentMethod(m string) bool {
	switch m {
	case detourv1.AgentSyncService_Register_FullMethodName,
		detourv1.AgentSyncService_WatchDesiredState_FullMethodName,
		detourv1.AgentSyncService_ReportStatus_FullMethodName:
		return true
	}
	return false
}

func isControlMethod(m string) bool {
	_, ok := controlVerb(m)
	return ok
}
