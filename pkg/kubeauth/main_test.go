package kubeauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/test/bufconn"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
)

// One API server and one gRPC server for the package's tests (TestMain):
// the fixture is read-only to the tests, except the EnsureServingCert
// tests, which each work in a namespace of their own.

const (
	agentNS     = "detour-system"
	agentSA     = "detour-agent"
	intruderSA  = "intruder"
	nodeA       = "node-a"
	audience    = "detour"
	serverName  = "detour-controller.detour-system.svc"
	servingTLS  = "detour-controller-tls"
	caConfigMap = "detour-ca"
)

type fixture struct {
	env   *envtest.Env
	admin kubernetes.Interface
	conn  *grpc.ClientConn

	// Agents' tokens, from the TokenRequest API.
	agentToken     string // detour-agent, audience detour, bound to a pod on node-a
	wrongAudToken  string // detour-agent, audience "other", same pod
	intruderToken  string // another service account, audience detour, pod on node-a
	unboundToken   string // detour-agent, audience detour, bound to nothing
	allTokens      []string
	logs           *testutil.SyncBuffer
	stopGRPCServer func()
}

var (
	fx        *fixture
	noCluster string // why there is no fixture
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// Cold, envtest builds Kubernetes first (minutes, once per machine).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	env, err := envtest.Run(ctx, envtest.Options{Users: []envtest.User{{Name: "alice"}, {Name: "mallory"}}})
	if errors.Is(err, envtest.ErrNoBinaries) && !testutil.InCI() {
		noCluster = err.Error()
		return m.Run()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: %v\n", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	setupCtx, setupCancel := context.WithTimeout(ctx, time.Minute)
	defer setupCancel()
	fx, err = setup(setupCtx, env)
	if err != nil {
		fmt.Fprintf(os.Stderr, "setup: %v\n", err)
		return 1
	}
	defer fx.stopGRPCServer()
	code := m.Run()
	// Nothing the authenticator logged may hold a token.
	logs := fx.logs.String()
	for name, tok := range env.Tokens {
		if strings.Contains(logs, tok) {
			fmt.Fprintf(os.Stderr, "FAIL: the log holds the token of %s\n", name)
			code = 1
		}
	}
	for _, tok := range fx.allTokens {
		if strings.Contains(logs, tok) {
			fmt.Fprintln(os.Stderr, "FAIL: the log holds an agent token")
			code = 1
		}
	}
	return code
}

// cluster returns the shared fixture, or skips the test when there is no
// API server to run (never under CI=true: TestMain fails then).
func cluster(t *testing.T) *fixture {
	t.Helper()
	if fx == nil {
		t.Skipf("envtest: %s", noCluster)
	}
	return fx
}

func setup(ctx context.Context, env *envtest.Env) (*fixture, error) {
	cfg := kubetest.AdminConfig(env)
	cfg.QPS = -1 // no client-side throttling: the tests make many quick requests
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	f := &fixture{env: env, admin: admin, logs: &testutil.SyncBuffer{}}
	create := metav1.CreateOptions{}
	for _, ns := range []string{"shop", "other", agentNS} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, create); err != nil {
			return nil, err
		}
	}
	// alice may create and delete intercepts in shop, nothing else.
	if _, err := admin.RbacV1().Roles("shop").Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "intercept-editor"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"detour.dev"}, Resources: []string{"intercepts"}, Verbs: []string{"create", "delete"}}},
	}, create); err != nil {
		return nil, err
	}
	if _, err := admin.RbacV1().RoleBindings("shop").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-intercept-editor"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "intercept-editor"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "alice"}},
	}, create); err != nil {
		return nil, err
	}

	// Agents: a node, and pods on it whose tokens the agents would mount.
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeA}}, create); err != nil {
		return nil, err
	}
	pods := map[string]*corev1.Pod{}
	for _, sa := range []string{agentSA, intruderSA} {
		if _, err := admin.CoreV1().ServiceAccounts(agentNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, create); err != nil {
			return nil, err
		}
		pod, err := admin.CoreV1().Pods(agentNS).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: sa + "-" + nodeA},
			Spec: corev1.PodSpec{
				ServiceAccountName: sa,
				NodeName:           nodeA,
				Containers:         []corev1.Container{{Name: "agent", Image: "detour-agent:test"}},
			},
		}, create)
		if err != nil {
			return nil, err
		}
		pods[sa] = pod
	}
	token := func(sa string, aud string, pod *corev1.Pod) (string, error) {
		tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{aud}}}
		if pod != nil {
			tr.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		res, err := admin.CoreV1().ServiceAccounts(agentNS).CreateToken(ctx, sa, tr, create)
		if err != nil {
			return "", fmt.Errorf("token for %s: %w", sa, err)
		}
		return res.Status.Token, nil
	}
	if f.agentToken, err = token(agentSA, audience, pods[agentSA]); err != nil {
		return nil, err
	}
	if f.wrongAudToken, err = token(agentSA, "other", pods[agentSA]); err != nil {
		return nil, err
	}
	if f.intruderToken, err = token(intruderSA, audience, pods[intruderSA]); err != nil {
		return nil, err
	}
	if f.unboundToken, err = token(agentSA, audience, nil); err != nil {
		return nil, err
	}
	f.allTokens = []string{f.agentToken, f.wrongAudToken, f.intruderToken, f.unboundToken}

	// The controller's side: serving certificate and the authenticator.
	cert, err := EnsureServingCert(ctx, admin, agentNS, servingTLS, caConfigMap, []string{serverName, "localhost"})
	if err != nil {
		return nil, err
	}
	cm, err := admin.CoreV1().ConfigMaps(agentNS).Get(ctx, caConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cm.Data[CACertKey])) {
		return nil, errors.New("no CA in the ConfigMap")
	}
	auth, err := New(Config{
		Client:              admin,
		AgentAudience:       audience,
		AgentServiceAccount: agentNS + ":" + agentSA,
		Logger:              slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13})),
		grpc.UnaryInterceptor(auth.UnaryInterceptor()),
		grpc.StreamInterceptor(auth.StreamInterceptor()),
	)
	detourv1.RegisterControlServiceServer(srv, controlStub{})
	detourv1.RegisterAgentSyncServiceServer(srv, agentStub{})
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	f.stopGRPCServer = srv.Stop
	f.conn, err = grpc.NewClient("passthrough:///detour-controller",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS13})),
	)
	if err != nil {
		srv.Stop()
		return nil, err
	}
	return f, nil
}

// controlStub answers what the tests call; it reports the caller
// (UserFrom) as the intercept's name.
type controlStub struct {
	detourv1.UnimplementedControlServiceServer
}

var _ detourv1.ControlServiceServer = controlStub{}

func (controlStub) CreateIntercept(ctx context.Context, req *detourv1.CreateInterceptRequest) (*detourv1.CreateInterceptResponse, error) {
	user, _ := UserFrom(ctx)
	return &detourv1.CreateInterceptResponse{Intercept: &detourv1.Intercept{Namespace: req.GetIntercept().GetNamespace(), Name: user}}, nil
}

func (controlStub) DeleteIntercept(context.Context, *detourv1.DeleteInterceptRequest) (*detourv1.DeleteInterceptResponse, error) {
	return &detourv1.DeleteInterceptResponse{}, nil
}

func (controlStub) GetIntercept(context.Context, *detourv1.GetInterceptRequest) (*detourv1.GetInterceptResponse, error) {
	return &detourv1.GetInterceptResponse{}, nil
}

func (controlStub) ListIntercepts(context.Context, *detourv1.ListInterceptsRequest) (*detourv1.ListInterceptsResponse, error) {
	return &detourv1.ListInterceptsResponse{}, nil
}

func (controlStub) GetStatus(context.Context, *detourv1.GetStatusRequest) (*detourv1.GetStatusResponse, error) {
	return &detourv1.GetStatusResponse{}, nil
}

func (controlStub) WatchIntercepts(_ *detourv1.WatchInterceptsRequest, s grpc.ServerStreamingServer[detourv1.WatchInterceptsResponse]) error {
	user, _ := UserFrom(s.Context())
	return s.Send(&detourv1.WatchInterceptsResponse{Intercept: &detourv1.Intercept{Name: user}})
}

type agentStub struct {
	detourv1.UnimplementedAgentSyncServiceServer
}

var _ detourv1.AgentSyncServiceServer = agentStub{}

func (agentStub) Register(context.Context, *detourv1.RegisterRequest) (*detourv1.RegisterResponse, error) {
	return &detourv1.RegisterResponse{}, nil
}

func (agentStub) ReportStatus(context.Context, *detourv1.ReportStatusRequest) (*detourv1.ReportStatusResponse, error) {
	return &detourv1.ReportStatusResponse{}, nil
}

func (agentStub) WatchDesiredState(req *detourv1.WatchDesiredStateRequest, s grpc.ServerStreamingServer[detourv1.WatchDesiredStateResponse]) error {
	user, _ := UserFrom(s.Context())
	return s.Send(&detourv1.WatchDesiredStateResponse{Namespace: req.GetNode(), Name: user})
}
