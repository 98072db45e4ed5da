package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/deploy"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
)

// fakeControl stands in for the controller behind the port-forward: it
// knows users by token and allows what allowed says, as the real one does
// with TokenReview and SubjectAccessReview, and records what it was asked.
type fakeControl struct {
	detourv1.UnimplementedControlServiceServer
	users map[string]string // token → user

	mu      sync.Mutex
	allowed map[string]bool // "user namespace"
	calls   []string        // "user verb namespace[/name]"
}

func (f *fakeControl) check(ctx context.Context, verb, ns, detail string) error {
	var user string
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md["authorization"]) == 1 {
		tok, _ := strings.CutPrefix(md["authorization"][0], "Bearer ")
		user = f.users[tok]
	}
	if user == "" {
		return status.Error(codes.Unauthenticated, "no valid bearer token")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, strings.TrimSpace(user+" "+verb+" "+ns+" "+detail))
	if ns != "" && !f.allowed[user+" "+ns] {
		return status.Errorf(codes.PermissionDenied, "%s may not %s intercepts.detour.dev in namespace %q", user, verb, ns)
	}
	return nil
}

func (f *fakeControl) allow(user, ns string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.allowed[user+" "+ns] = true
}

func (f *fakeControl) lastCall() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return ""
	}
	return f.calls[len(f.calls)-1]
}

func (f *fakeControl) ListIntercepts(ctx context.Context, req *detourv1.ListInterceptsRequest) (*detourv1.ListInterceptsResponse, error) {
	if err := f.check(ctx, "list", req.GetNamespace(), ""); err != nil {
		return nil, err
	}
	return &detourv1.ListInterceptsResponse{Intercepts: []*detourv1.Intercept{{
		Namespace: req.GetNamespace(), Name: "mine",
		Spec: &detourv1.InterceptSpec{ServiceNamespace: req.GetNamespace(), ServiceName: "api", Port: 80, Destination: "api-mine:8080", L4: true},
	}}}, nil
}

func (f *fakeControl) CreateIntercept(ctx context.Context, req *detourv1.CreateInterceptRequest) (*detourv1.CreateInterceptResponse, error) {
	ic := req.GetIntercept()
	if err := f.check(ctx, "create", ic.GetNamespace(), ic.GetName()+" service "+ic.GetSpec().GetServiceNamespace()+"/"+ic.GetSpec().GetServiceName()); err != nil {
		return nil, err
	}
	return &detourv1.CreateInterceptResponse{Intercept: ic}, nil
}

func (f *fakeControl) GetStatus(ctx context.Context, _ *detourv1.GetStatusRequest) (*detourv1.GetStatusResponse, error) {
	if err := f.check(ctx, "status", "", ""); err != nil {
		return nil, err
	}
	return &detourv1.GetStatusResponse{ControllerVersion: "fake-1", ControllerStarted: timestamppb.Now()}, nil
}

// serveFake runs f over TLS with cert on a loopback port.
func serveFake(t *testing.T, f *fakeControl, cert tls.Certificate) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	detourv1.RegisterControlServiceServer(gs, f)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// fakeForwarder stands in for the port-forward (envtest has no kubelet): it
// "forwards" to addr and records what it was asked to reach.
type fakeForwarder struct {
	addr string

	mu            sync.Mutex
	opened        []string // "ns/pod:port"
	open, stopped int
}

func (ff *fakeForwarder) forward(_ context.Context, ns, pod string, port int32) (string, func(), error) {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	ff.opened = append(ff.opened, fmt.Sprintf("%s/%s:%d", ns, pod, port))
	ff.open++
	return ff.addr, func() {
		ff.mu.Lock()
		defer ff.mu.Unlock()
		ff.stopped++
	}, nil
}

func (ff *fakeForwarder) state() (last string, open, stopped int) {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if len(ff.opened) > 0 {
		last = ff.opened[len(ff.opened)-1]
	}
	return last, ff.open, ff.stopped
}

var controllerLabels = map[string]string{"app.kubernetes.io/name": "detour-controller"}

// grantClientRole gives user the Role detour-client of the real manifests
// in detour-system: what the CLI needs there, by the manifests' own account.
func grantClientRole(t *testing.T, kube kubernetes.Interface, user string) {
	t.Helper()
	var role rbacv1.Role
	for _, u := range theManifests(t) {
		if u.GetKind() == "Role" && u.GetName() == "detour-client" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &role); err != nil {
				t.Fatal(err)
			}
		}
	}
	if role.Name == "" {
		t.Fatal("the manifests have no Role detour-client, which --help names as what the CLI needs")
	}
	ctx := context.Background()
	if _, err := kube.RbacV1().Roles(role.Namespace).Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "detour-client-" + user, Namespace: role.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: user}},
	}
	if _, err := kube.RbacV1().RoleBindings(role.Namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// What the CLI does first: list the controller's pods.
	kubetest.Allowed(t, kube, user, authorizationv1.ResourceAttributes{Namespace: role.Namespace, Verb: "list", Resource: "pods"})
}

// Commands through a cluster: the Ready controller pod is reached, its
// certificate checked against the published CA, the kubeconfig user's token
// presented, the namespace taken from -n or the context; refusals by the
// API server and by the controller exit 4 with their reasons.
func TestClusterMode(t *testing.T) {
	env := envtest.Start(t)
	admin := kubetest.Clientset(t, env.Kubeconfig)
	ctx := context.Background()
	const ns = "detour-system"
	kubetest.Namespace(t, admin, ns)
	running := func(ready bool) kubetest.PodState { return kubetest.PodState{Phase: corev1.PodRunning, Ready: ready} }
	kubetest.Pod(t, admin, ns, "detour-controller-5d8-a", controllerLabels, running(false)) // the standby
	kubetest.Pod(t, admin, ns, "detour-controller-5d8-b", controllerLabels, running(true))  // the leader
	pki := testutil.NewCA(t)
	ca := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "detour-ca", Namespace: ns}, Data: map[string]string{"ca.crt": string(pki.PEM)}}
	if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, ca, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fake := &fakeControl{users: map[string]string{}, allowed: map[string]bool{}}
	for name, tok := range env.Tokens {
		fake.users[tok] = name
	}
	fake.allow(envtest.AdminName, "team-a")
	fake.allow(envtest.AdminName, "team-b")
	fwd := &fakeForwarder{addr: serveFake(t, fake, pki.Issue(t, "detour-controller.detour-system.svc"))}

	kubeconfig := kubetest.WriteKubeconfig(t, env.URL, env.CAPEM, "team", map[string]*clientcmdapi.AuthInfo{
		"admin": {Token: env.AdminToken},
		"dev":   {Token: env.UserToken},
		"cert":  {ClientCertificate: env.ClientCertFile, ClientKey: env.ClientKeyFile},
	}, map[string][2]string{"team": {"admin", "team-a"}, "dev": {"dev", ""}, "cert": {"cert", "team-a"}})
	t.Setenv("KUBECONFIG", kubeconfig)
	t.Setenv("DETOUR_CONTROLLER", "")

	run := func(want int, args ...string) (string, string) {
		t.Helper()
		out, msg, code := runCLIWith(t, newRootCmdWith(deps{manifests: deploy.FS, forwarder: fwd.forward}), args...)
		if code != want {
			t.Fatalf("detour %s: exit %d (%s), want %d\n%s", strings.Join(args, " "), code, msg, want, out)
		}
		if _, open, stopped := fwd.state(); open != stopped {
			t.Fatalf("detour %s: %d port-forwards opened, %d stopped", strings.Join(args, " "), open, stopped)
		}
		return out, msg
	}

	// No flag: the kubeconfig exists, so through the cluster, as the current
	// context's user, in its namespace, to the Ready pod's grpc port.
	out, _ := run(exitOK, "intercept", "list")
	if last, _, _ := fwd.state(); last != "detour-system/detour-controller-5d8-b:7070" {
		t.Errorf("forwarded to %q, want the Ready pod's grpc port", last)
	}
	if call := fake.lastCall(); call != "envtest-admin list team-a" {
		t.Errorf("the controller got %q", call)
	}
	if !strings.Contains(out, "team-a") || !strings.Contains(out, "api-mine:8080") {
		t.Errorf("list printed\n%s", out)
	}
	run(exitOK, "intercept", "list", "-n", "team-b")
	if call := fake.lastCall(); call != "envtest-admin list team-b" {
		t.Errorf("-n team-b: the controller got %q", call)
	}
	out, _ = run(exitOK, "intercept", "create", "x", "--service", "api", "--port", "80", "--session", "s", "--to", "api-x:8080")
	if call := fake.lastCall(); call != "envtest-admin create team-a x service team-a/api" {
		t.Errorf("create: the controller got %q", call)
	}
	if !strings.Contains(out, "intercept team-a/x created") {
		t.Errorf("create printed %q", out)
	}
	_, msg := run(exitUsage, "intercept", "create", "x", "-n", "team-b", "--service", "team-a/api", "--port", "80", "--session", "s", "--to", "api-x:8080")
	if !strings.Contains(msg, "-n says team-b") {
		t.Errorf("-n against --service NS/: %q", msg)
	}
	out, _ = run(exitOK, "status")
	if !strings.Contains(out, "detour-system/detour-controller-5d8-b") || !strings.Contains(out, "fake-1") {
		t.Errorf("status printed\n%s", out)
	}

	// The user without the detour-client Role: the API server refuses.
	_, opened, _ := fwd.state()
	_, msg = run(exitRefused, "--context", "dev", "intercept", "list")
	if !strings.Contains(msg, "forbidden") || !strings.Contains(msg, "detour-client") {
		t.Errorf("user without the Role: %q", msg)
	}
	if _, o, _ := fwd.state(); o != opened {
		t.Error("a port-forward was opened though the pods could not be listed")
	}
	// With it, the controller decides, in the context's namespace (none
	// set: default), and its message is shown.
	grantClientRole(t, admin, envtest.UserName)
	_, msg = run(exitRefused, "--context", "dev", "intercept", "list")
	if msg != `list intercepts: envtest-user may not list intercepts.detour.dev in namespace "default"` {
		t.Errorf("controller refusal: %q", msg)
	}
	fake.allow(envtest.UserName, "default")
	run(exitOK, "--context", "dev", "intercept", "list")
	if call := fake.lastCall(); call != "envtest-user list default" {
		t.Errorf("the controller got %q", call)
	}

	// Identities and flags that cannot work.
	_, msg = run(exitError, "--context", "cert", "intercept", "list")
	if !strings.Contains(msg, "a token identity is needed") || !strings.Contains(msg, "client certificate") {
		t.Errorf("certificate user: %q", msg)
	}
	_, msg = run(exitUsage, "--context", "prod", "intercept", "list")
	if !strings.Contains(msg, `"prod" not found`) || !strings.Contains(msg, "contexts cert, dev, team") {
		t.Errorf("unknown context: %q", msg)
	}
	run(exitUsage, "--controller", "127.0.0.1:1", "--context", "dev", "intercept", "list")

	// A certificate the published CA did not sign, or for another name.
	other := testutil.NewCA(t)
	ca.Data["ca.crt"] = string(other.PEM)
	if _, err := admin.CoreV1().ConfigMaps(ns).Update(ctx, ca, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, msg = run(exitError, "intercept", "list")
	if !strings.Contains(msg, "cannot reach the controller at pod detour-system/detour-controller-5d8-b") || !strings.Contains(msg, "TLS handshake") ||
		!strings.Contains(msg, "unknown authority") {
		t.Errorf("unknown CA: %q", msg)
	}
	ca.Data["ca.crt"] = string(pki.PEM)
	if _, err := admin.CoreV1().ConfigMaps(ns).Update(ctx, ca, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	const otherNS = "detour-elsewhere"
	kubetest.Namespace(t, admin, otherNS)
	kubetest.Pod(t, admin, otherNS, "detour-controller-0", controllerLabels, running(true))
	ca2 := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "detour-ca", Namespace: otherNS}, Data: ca.Data}
	if _, err := admin.CoreV1().ConfigMaps(otherNS).Create(ctx, ca2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, msg = run(exitError, "--detour-namespace", otherNS, "intercept", "list")
	if !strings.Contains(msg, "detour-controller.detour-elsewhere.svc") {
		t.Errorf("certificate for another name: %q", msg)
	}

	// No Ready controller.
	kubetest.SetPodState(t, admin, ns, "detour-controller-5d8-b", running(false))
	_, msg = run(exitError, "intercept", "list")
	if !strings.Contains(msg, "no Ready Detour controller pod in namespace detour-system") || !strings.Contains(msg, "run `detour install`") {
		t.Errorf("no Ready pod: %q", msg)
	}
	_, msg = run(exitError, "--detour-namespace", "nowhere", "status")
	if !strings.Contains(msg, "no Detour controller pod") || !strings.Contains(msg, "is Detour installed? run `detour install`") {
		t.Errorf("not installed: %q", msg)
	}
}

// Which way commands go when no flag says: a flag beats the environment,
// the environment beats an existing kubeconfig, and without any, the lab's
// default address. The cluster here is unreachable, so each way shows in
// its error.
func TestModeSelection(t *testing.T) {
	kubeconfig := kubetest.WriteKubeconfig(t, "https://127.0.0.1:1", nil, "gone",
		map[string]*clientcmdapi.AuthInfo{"u": {Token: "t"}}, map[string][2]string{"gone": {"u", ""}})
	absent := filepath.Join(t.TempDir(), "absent")
	const cluster = "find the Detour controller: list pods app.kubernetes.io/name=detour-controller in namespace detour-system"
	tests := []struct {
		name, kubeconfigEnv, controllerEnv string
		args                               []string
		code                               int
		msg                                string
	}{
		{"kubeconfig exists", kubeconfig, "", nil, exitError, cluster},
		{"$DETOUR_CONTROLLER beats the kubeconfig", kubeconfig, "127.0.0.1:2", nil, exitError, "cannot reach the controller at 127.0.0.1:2"},
		{"--context beats $DETOUR_CONTROLLER", kubeconfig, "127.0.0.1:2", []string{"--context", "gone"}, exitError, cluster},
		{"--kubeconfig", absent, "", []string{"--kubeconfig", kubeconfig}, exitError, cluster},
		{"--controller beats the kubeconfig", kubeconfig, "", []string{"--controller", "127.0.0.1:3"}, exitError, "cannot reach the controller at 127.0.0.1:3"},
		{"--controller with --kubeconfig", absent, "", []string{"--controller", "127.0.0.1:3", "--kubeconfig", kubeconfig}, exitUsage, "one or the other"},
		{"no kubeconfig", absent, "", nil, exitError, "cannot reach the controller at 127.0.0.1:7070"},
		{"missing --kubeconfig", absent, "", []string{"--kubeconfig", absent}, exitError, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.msg == "cannot reach the controller at 127.0.0.1:7070" {
				if l, err := net.Listen("tcp", "127.0.0.1:7070"); err != nil {
					t.Skip("something listens on 127.0.0.1:7070")
				} else {
					l.Close()
				}
			}
			t.Setenv("KUBECONFIG", tt.kubeconfigEnv)
			t.Setenv("DETOUR_CONTROLLER", tt.controllerEnv)
			_, msg, code := runCLI(t, append([]string{"intercept", "list"}, tt.args...)...)
			if code != tt.code || !strings.Contains(msg, tt.msg) {
				t.Fatalf("exit %d %q, want %d and a message containing %q", code, msg, tt.code, tt.msg)
			}
		})
	}
}
