package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	authnv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/kubeauth"
)

// Every method of both services has a row, and the rows register.
func TestAccessCoversEveryMethod(t *testing.T) {
	rules := ControlRules()
	maps.Copy(rules, AgentSyncRules("detour-system:detour-agent", "detour"))
	n := 0
	for _, sd := range []grpc.ServiceDesc{detourv1.ControlService_ServiceDesc, detourv1.AgentSyncService_ServiceDesc} {
		var names []string
		for _, m := range sd.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range sd.Streams {
			names = append(names, s.StreamName)
		}
		for _, name := range names {
			n++
			if full := "/" + sd.ServiceName + "/" + name; rules[full] == nil {
				t.Errorf("%s has no rule: everyone would be refused", full)
			}
		}
	}
	if len(rules) != n {
		t.Errorf("%d rules for %d methods", len(rules), n)
	}
	a, err := kubeauth.New(kubeauth.Config{Client: fake.NewClientset()})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Register(ControlRules()); err != nil {
		t.Fatal(err)
	}
	if err := a.Register(AgentSyncRules("detour-system:detour-agent", "detour")); err != nil {
		t.Fatal(err)
	}
}

// The rules through kubeauth against a real API server: RBAC on
// intercepts.detour.dev decides for users, the node the token is bound to
// for agents. One API server for all, and a gRPC server with stub services
// behind the authenticator.

const (
	agentNS    = "detour-system"
	agentSA    = "detour-agent"
	intruderSA = "intruder"
	nodeA      = "node-a"
	audience   = "detour"
	serverName = "detour-controller.detour-system.svc"
)

type accessEnv struct {
	env  *envtest.Env
	conn *grpc.ClientConn

	// Agents' tokens, from the TokenRequest API.
	agentToken    string // detour-agent, audience detour, bound to a pod on node-a
	wrongAudToken string // detour-agent, audience "other", same pod
	intruderToken string // another service account, audience detour, pod on node-a
	unboundToken  string // detour-agent, audience detour, bound to nothing
}

func TestAccess(t *testing.T) {
	f := startAccess(t)
	t.Run("ControlService", func(t *testing.T) { testControlService(t, f) })
	t.Run("ControlServiceWatch", func(t *testing.T) { testControlServiceWatch(t, f) })
	t.Run("AgentService", func(t *testing.T) { testAgentService(t, f) })
	t.Run("AgentWatchDesiredState", func(t *testing.T) { testAgentWatchDesiredState(t, f) })
}

// startAccess runs the API server and the gRPC server, and checks at the
// end that nothing the authenticator logged holds a token.
func startAccess(t *testing.T) *accessEnv {
	t.Helper()
	env := envtest.StartWith(t, envtest.Options{Users: []envtest.User{{Name: "alice"}, {Name: "mallory"}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := kubetest.AdminConfig(env)
	cfg.QPS = -1 // no client-side throttling: the tests make many quick requests
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &accessEnv{env: env}
	create := metav1.CreateOptions{}
	for _, ns := range []string{"shop", "other", agentNS} {
		kubetest.Namespace(t, admin, ns)
	}
	// alice may create and delete intercepts in shop, and create
	// environments and deployments there (not statefulsets), nothing else.
	if _, err := admin.RbacV1().Roles("shop").Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "intercept-editor"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"detour.dev"}, Resources: []string{"intercepts"}, Verbs: []string{"create", "delete"}},
			{APIGroups: []string{"detour.dev"}, Resources: []string{"environments"}, Verbs: []string{"create"}},
			{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"create"}},
			{APIGroups: []string{"batch"}, Resources: []string{"jobs"}, Verbs: []string{"create"}},
			{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"pg-creds"}, Verbs: []string{"get"}},
		},
	}, create); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().RoleBindings("shop").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-intercept-editor"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "intercept-editor"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "alice"}},
	}, create); err != nil {
		t.Fatal(err)
	}
	kubetest.Allowed(t, admin, "alice", authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "create", Group: "detour.dev", Resource: "intercepts"})

	// Agents: a node, and pods on it whose tokens the agents would mount.
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeA}}, create); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*corev1.Pod{}
	for _, sa := range []string{agentSA, intruderSA} {
		if _, err := admin.CoreV1().ServiceAccounts(agentNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, create); err != nil {
			t.Fatal(err)
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
			t.Fatal(err)
		}
		pods[sa] = pod
	}
	token := func(sa string, aud string, pod *corev1.Pod) string {
		tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{aud}}}
		if pod != nil {
			tr.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		res, err := admin.CoreV1().ServiceAccounts(agentNS).CreateToken(ctx, sa, tr, create)
		if err != nil {
			t.Fatalf("token for %s: %v", sa, err)
		}
		return res.Status.Token
	}
	f.agentToken = token(agentSA, audience, pods[agentSA])
	f.wrongAudToken = token(agentSA, "other", pods[agentSA])
	f.intruderToken = token(intruderSA, audience, pods[intruderSA])
	f.unboundToken = token(agentSA, audience, nil)

	// The controller's side: serving certificate and the authenticator
	// with the controller's rules.
	cert, err := kubeauth.EnsureServingCert(ctx, admin, agentNS, "detour-controller-tls", "detour-ca", []string{serverName, "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	cm, err := admin.CoreV1().ConfigMaps(agentNS).Get(ctx, "detour-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cm.Data[kubeauth.CACertKey])) {
		t.Fatal("no CA in the ConfigMap")
	}
	logs := &testutil.SyncBuffer{}
	auth, err := kubeauth.New(kubeauth.Config{
		Client: admin,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, rules := range []kubeauth.Rules{ControlRules(), AgentSyncRules(agentNS+":"+agentSA, audience)} {
		if err := auth.Register(rules); err != nil {
			t.Fatal(err)
		}
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
	t.Cleanup(srv.Stop)
	f.conn, err = grpc.NewClient("passthrough:///detour-controller",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS13})),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.conn.Close() })

	// Nothing the authenticator logged may hold a token.
	t.Cleanup(func() {
		got := logs.String()
		for name, tok := range env.Tokens {
			if strings.Contains(got, tok) {
				t.Errorf("the log holds the token of %s", name)
			}
		}
		for _, tok := range []string{f.agentToken, f.wrongAudToken, f.intruderToken, f.unboundToken} {
			if strings.Contains(got, tok) {
				t.Error("the log holds an agent token")
			}
		}
	})
	return f
}

// wantStatus fails the test unless err has code want and a message
// holding every part of msg.
func wantStatus(t *testing.T, err error, want codes.Code, msg ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("got %v %q, want %v", st.Code(), st.Message(), want)
	}
	for _, m := range msg {
		if !strings.Contains(st.Message(), m) {
			t.Fatalf("message %q lacks %q", st.Message(), m)
		}
	}
	if want != codes.OK {
		t.Logf("%v: %s", st.Code(), st.Message())
	}
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// as is the call option that sends token; none when it is empty.
func as(token string) []grpc.CallOption {
	if token == "" {
		return nil
	}
	return []grpc.CallOption{grpc.PerRPCCredentials(kubeauth.Token(token))}
}

func intercept(ns string) *detourv1.CreateInterceptRequest {
	return &detourv1.CreateInterceptRequest{Intercept: &detourv1.Intercept{Namespace: ns, Name: "x", Spec: &detourv1.InterceptSpec{ServiceName: "api"}}}
}

func testControlService(t *testing.T, f *accessEnv) {
	alice, mallory := f.env.Tokens["alice"], f.env.Tokens["mallory"]
	c := detourv1.NewControlServiceClient(f.conn)
	tests := []struct {
		name  string
		call  func(ctx context.Context) error
		code  codes.Code
		parts []string
	}{
		{"alice creates in shop", func(ctx context.Context) error {
			res, err := c.CreateIntercept(ctx, intercept("shop"), as(alice)...)
			if err == nil && res.GetIntercept().GetName() != "alice" {
				return errors.New("UserFrom in the handler said " + res.GetIntercept().GetName())
			}
			return err
		}, codes.OK, nil},
		{"alice deletes in shop", func(ctx context.Context) error {
			_, err := c.DeleteIntercept(ctx, &detourv1.DeleteInterceptRequest{Namespace: "shop", Name: "x"}, as(alice)...)
			return err
		}, codes.OK, nil},
		{"alice creates an environment forking a Deployment in shop", func(ctx context.Context) error {
			_, err := c.CreateEnvironment(ctx, environment("shop", "Deployment"), as(alice)...)
			return err
		}, codes.OK, nil},
		{"alice may not fork a StatefulSet", func(ctx context.Context) error {
			_, err := c.CreateEnvironment(ctx, environment("shop", "Deployment", "StatefulSet"), as(alice)...)
			return err
		}, codes.PermissionDenied, []string{`user "alice" may not create statefulsets.apps in namespace "shop"`}},
		{"alice creates an environment with a seed job", func(ctx context.Context) error {
			req := environment("shop", "Deployment")
			req.Environment.Spec.Data = []*detourv1.DataSource{{Name: "seed", Kind: "job", Job: &detourv1.DataJob{Image: "reg/seed:1"}}}
			_, err := c.CreateEnvironment(ctx, req, as(alice)...)
			return err
		}, codes.OK, nil},
		{"alice may not branch with a Secret she may not read", func(ctx context.Context) error {
			req := environment("shop", "Deployment")
			req.Environment.Spec.Data = []*detourv1.DataSource{{Name: "db", Kind: "postgres-branch", PostgresBranch: &detourv1.PostgresBranch{
				Credentials: &detourv1.PostgresCredentials{Secret: "other-creds"}}}}
			_, err := c.CreateEnvironment(ctx, req, as(alice)...)
			return err
		}, codes.PermissionDenied, []string{`user "alice" may not get secret "other-creds" (secrets) in namespace "shop"`}},
		{"alice may read the Secret, not make the branch's StatefulSet", func(ctx context.Context) error {
			req := environment("shop", "Deployment")
			req.Environment.Spec.Data = []*detourv1.DataSource{{Name: "db", Kind: "postgres-branch", PostgresBranch: &detourv1.PostgresBranch{
				Credentials: &detourv1.PostgresCredentials{Secret: "pg-creds"}}}}
			_, err := c.CreateEnvironment(ctx, req, as(alice)...)
			return err
		}, codes.PermissionDenied, []string{`user "alice" may not create statefulsets.apps in namespace "shop"`}},
		{"mallory may not create environments", func(ctx context.Context) error {
			_, err := c.CreateEnvironment(ctx, environment("shop", "Deployment"), as(mallory)...)
			return err
		}, codes.PermissionDenied, []string{`user "mallory" may not create environments.detour.dev in namespace "shop"`}},
		{"alice creates in other", func(ctx context.Context) error {
			_, err := c.CreateIntercept(ctx, intercept("other"), as(alice)...)
			return err
		}, codes.PermissionDenied, []string{`user "alice" may not create intercepts.detour.dev in namespace "other"`}},
		{"alice creates in the default namespace", func(ctx context.Context) error {
			_, err := c.CreateIntercept(ctx, intercept(""), as(alice)...)
			return err
		}, codes.PermissionDenied, []string{`in namespace "default"`}},
		{"alice may not get", func(ctx context.Context) error {
			_, err := c.GetIntercept(ctx, &detourv1.GetInterceptRequest{Namespace: "shop", Name: "x"}, as(alice)...)
			return err
		}, codes.PermissionDenied, []string{`user "alice" may not get intercept "x"`, `in namespace "shop"`}},
		{"alice lists all namespaces", func(ctx context.Context) error {
			_, err := c.ListIntercepts(ctx, &detourv1.ListInterceptsRequest{}, as(alice)...)
			return err
		}, codes.PermissionDenied, []string{`user "alice" may not list intercepts.detour.dev in all namespaces`}},
		{"alice status", func(ctx context.Context) error {
			_, err := c.GetStatus(ctx, &detourv1.GetStatusRequest{}, as(alice)...)
			return err
		}, codes.PermissionDenied, []string{"list", "in all namespaces"}},
		{"alice status of shop is judged in shop", func(ctx context.Context) error {
			_, err := c.GetStatus(ctx, &detourv1.GetStatusRequest{Namespace: "shop"}, as(alice)...)
			return err
		}, codes.PermissionDenied, []string{`user "alice" may not list`, `in namespace "shop"`}},
		{"mallory creates in shop", func(ctx context.Context) error {
			_, err := c.CreateIntercept(ctx, intercept("shop"), as(mallory)...)
			return err
		}, codes.PermissionDenied, []string{`user "mallory" may not create`}},
		{"admin lists all namespaces", func(ctx context.Context) error {
			_, err := c.ListIntercepts(ctx, &detourv1.ListInterceptsRequest{}, as(f.env.AdminToken)...)
			return err
		}, codes.OK, nil},
		{"no token", func(ctx context.Context) error {
			_, err := c.CreateIntercept(ctx, intercept("shop"))
			return err
		}, codes.Unauthenticated, []string{"no credentials"}},
		{"garbage token", func(ctx context.Context) error {
			_, err := c.CreateIntercept(ctx, intercept("shop"), as("garbage")...)
			return err
		}, codes.Unauthenticated, []string{"invalid bearer token"}},
		{"basic auth", func(ctx context.Context) error {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Basic YWxpY2U6cHc=")
			_, err := c.CreateIntercept(ctx, intercept("shop"))
			return err
		}, codes.Unauthenticated, []string{"malformed authorization header"}},
		{"agent token", func(ctx context.Context) error {
			_, err := c.CreateIntercept(ctx, intercept("shop"), as(f.agentToken)...)
			return err
		}, codes.Unauthenticated, []string{"invalid bearer token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantStatus(t, tt.call(callCtx(t)), tt.code, tt.parts...)
		})
	}
}

// A server stream is authorized when its request arrives.
func testControlServiceWatch(t *testing.T, f *accessEnv) {
	c := detourv1.NewControlServiceClient(f.conn)
	recv := func(token, ns string) (*detourv1.WatchInterceptsResponse, error) {
		s, err := c.WatchIntercepts(callCtx(t), &detourv1.WatchInterceptsRequest{Namespace: ns}, as(token)...)
		if err != nil {
			return nil, err
		}
		return s.Recv()
	}
	_, err := recv(f.env.Tokens["alice"], "shop")
	wantStatus(t, err, codes.PermissionDenied, `user "alice" may not watch intercepts.detour.dev in namespace "shop"`)
	res, err := recv(f.env.AdminToken, "")
	wantStatus(t, err, codes.OK)
	if got := res.GetIntercept().GetName(); got != envtest.AdminName {
		t.Fatalf("UserFrom in the stream handler: %q, want %q", got, envtest.AdminName)
	}
	_, err = recv("", "shop")
	wantStatus(t, err, codes.Unauthenticated)
}

func testAgentService(t *testing.T, f *accessEnv) {
	c := detourv1.NewAgentSyncServiceClient(f.conn)
	register := func(token, node string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.Register(ctx, &detourv1.RegisterRequest{Node: node, Version: "test"}, as(token)...)
			return err
		}
	}
	report := func(token, node string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.ReportStatus(ctx, &detourv1.ReportStatusRequest{Node: node}, as(token)...)
			return err
		}
	}
	tests := []struct {
		name  string
		call  func(ctx context.Context) error
		code  codes.Code
		parts []string
	}{
		{"register own node", register(f.agentToken, nodeA), codes.OK, nil},
		{"report own node", report(f.agentToken, nodeA), codes.OK, nil},
		{"register other node", register(f.agentToken, "node-b"), codes.PermissionDenied,
			[]string{`the agent on node "node-a" may not speak for node "node-b"`}},
		{"report other node", report(f.agentToken, "node-b"), codes.PermissionDenied, []string{`"node-b"`}},
		{"wrong audience", register(f.wrongAudToken, nodeA), codes.Unauthenticated, []string{"invalid bearer token", `audience "detour"`}},
		{"other service account", register(f.intruderToken, nodeA), codes.PermissionDenied,
			[]string{`user "system:serviceaccount:detour-system:intruder"`, "system:serviceaccount:detour-system:detour-agent"}},
		{"token bound to no pod", register(f.unboundToken, nodeA), codes.PermissionDenied, []string{"names no node", kubeauth.NodeNameExtra}},
		{"user token", register(f.env.Tokens["alice"], nodeA), codes.Unauthenticated, nil},
		{"no token", register("", nodeA), codes.Unauthenticated, nil},
		{"garbage token", register("garbage", nodeA), codes.Unauthenticated, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantStatus(t, tt.call(callCtx(t)), tt.code, tt.parts...)
		})
	}
}

func testAgentWatchDesiredState(t *testing.T, f *accessEnv) {
	c := detourv1.NewAgentSyncServiceClient(f.conn)
	recv := func(token, node string) (*detourv1.WatchDesiredStateResponse, error) {
		s, err := c.WatchDesiredState(callCtx(t), &detourv1.WatchDesiredStateRequest{Node: node}, as(token)...)
		if err != nil {
			return nil, err
		}
		return s.Recv()
	}
	res, err := recv(f.agentToken, nodeA)
	wantStatus(t, err, codes.OK)
	if want := "system:serviceaccount:" + agentNS + ":" + agentSA; res.GetName() != want {
		t.Fatalf("UserFrom in the stream handler: %q, want %q", res.GetName(), want)
	}
	_, err = recv(f.agentToken, "node-b")
	wantStatus(t, err, codes.PermissionDenied, `may not speak for node "node-b"`)
	_, err = recv(f.wrongAudToken, nodeA)
	wantStatus(t, err, codes.Unauthenticated)
}

// controlStub answers what the tests call; it reports the caller
// (UserFrom) as the intercept's name.
type controlStub struct {
	detourv1.UnimplementedControlServiceServer
}

var _ detourv1.ControlServiceServer = controlStub{}

func (controlStub) CreateIntercept(ctx context.Context, req *detourv1.CreateInterceptRequest) (*detourv1.CreateInterceptResponse, error) {
	user, _ := kubeauth.UserFrom(ctx)
	return &detourv1.CreateInterceptResponse{Intercept: &detourv1.Intercept{Namespace: req.GetIntercept().GetNamespace(), Name: user}}, nil
}

func (controlStub) CreateEnvironment(_ context.Context, req *detourv1.CreateEnvironmentRequest) (*detourv1.CreateEnvironmentResponse, error) {
	return &detourv1.CreateEnvironmentResponse{Environment: req.GetEnvironment()}, nil
}

// environment is an environment in ns forking one workload of each kind.
func environment(ns string, kinds ...string) *detourv1.CreateEnvironmentRequest {
	e := &detourv1.Environment{Namespace: ns, Name: "pr-1", Spec: &detourv1.EnvironmentSpec{}}
	for i, k := range kinds {
		e.Spec.Forks = append(e.Spec.Forks, &detourv1.Fork{Workload: &detourv1.WorkloadRef{Kind: k, Name: "w" + strconv.Itoa(i)}})
	}
	return &detourv1.CreateEnvironmentRequest{Environment: e}
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
	user, _ := kubeauth.UserFrom(s.Context())
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
	user, _ := kubeauth.UserFrom(s.Context())
	return s.Send(&detourv1.WatchDesiredStateResponse{Namespace: req.GetNode(), Name: user})
}
