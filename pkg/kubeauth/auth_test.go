package kubeauth

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
)

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
	return []grpc.CallOption{grpc.PerRPCCredentials(Token(token))}
}

func intercept(ns string) *detourv1.CreateInterceptRequest {
	return &detourv1.CreateInterceptRequest{Intercept: &detourv1.Intercept{Namespace: ns, Name: "x", Spec: &detourv1.InterceptSpec{ServiceName: "api"}}}
}

// The API server of envtest.Version puts the node of the pod a token is
// bound to in the token's user extra: the agent check relies on it.
func TestAgentTokenCarriesNodeName(t *testing.T) {
	f := cluster(t)
	res, err := f.admin.AuthenticationV1().TokenReviews().Create(callCtx(t), &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: f.agentToken, Audiences: []string{audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Status.Authenticated {
		t.Fatalf("agent token not authenticated: %s", res.Status.Error)
	}
	t.Logf("Kubernetes %s: user %q extra %v", envtest.Version, res.Status.User.Username, res.Status.User.Extra)
	if got := res.Status.User.Extra[NodeNameExtra]; len(got) != 1 || got[0] != nodeA {
		t.Fatalf("extra %s = %v, want [%s]", NodeNameExtra, got, nodeA)
	}
}

func TestControlService(t *testing.T) {
	f := cluster(t)
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
func TestControlServiceWatch(t *testing.T) {
	f := cluster(t)
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

func TestAgentService(t *testing.T) {
	f := cluster(t)
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
		{"token bound to no pod", register(f.unboundToken, nodeA), codes.PermissionDenied, []string{"names no node", NodeNameExtra}},
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

func TestAgentWatchDesiredState(t *testing.T) {
	f := cluster(t)
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

func TestUnknownMethodRefused(t *testing.T) {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "alice"}}
		return true, tr, nil
	})
	a, err := New(Config{Client: c, AgentAudience: "detour", AgentServiceAccount: "ns:sa", Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer tok"))
	handler := func(context.Context, any) (any, error) { t.Fatal("handler called"); return nil, nil }
	for _, m := range []string{"/grpc.health.v1.Health/Check", "/detour.v1.AgentSyncService/Bogus", "/detour.v1.ControlService/Bogus"} {
		_, err := a.UnaryInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: m}, handler)
		wantStatus(t, err, codes.PermissionDenied, m)
	}
	// A stream that sends before it received (and authorized) anything.
	ss := &fakeStream{ctx: ctx}
	err = a.StreamInterceptor()(nil, ss, &grpc.StreamServerInfo{FullMethod: detourv1.ControlService_WatchIntercepts_FullMethodName},
		func(_ any, s grpc.ServerStream) error { return s.SendMsg(&detourv1.WatchInterceptsResponse{}) })
	wantStatus(t, err, codes.PermissionDenied, "before the request is authorized")
}

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *fakeStream) Context() context.Context { return s.ctx }
func (s *fakeStream) SendMsg(any) error        { return nil }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestNewChecksConfig(t *testing.T) {
	c := fake.NewClientset()
	for _, cfg := range []Config{
		{AgentAudience: "detour", AgentServiceAccount: "ns:sa"},
		{Client: c, AgentServiceAccount: "ns:sa"},
		{Client: c, AgentAudience: "detour", AgentServiceAccount: "sa"},
		{Client: c, AgentAudience: "detour", AgentServiceAccount: ":sa"},
		{Client: c, AgentAudience: "detour", AgentServiceAccount: "ns:"},
		{Client: c, AgentAudience: "detour", AgentServiceAccount: "ns:sa:x"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	if _, err := New(Config{Client: c, AgentAudience: "detour", AgentServiceAccount: "ns:sa"}); err != nil {
		t.Fatal(err)
	}
}

// Successful reviews are reused for the TTL, failures never: a fake
// clientset counts the reviews (pure logic, no API server needed).
func TestReviewCache(t *testing.T) {
	c := fake.NewClientset()
	reviews := map[string]int{}
	c.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		reviews[tr.Spec.Token]++
		if tr.Spec.Token == "good" {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "alice"}, Audiences: tr.Spec.Audiences}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "no such token"}
		}
		return true, tr, nil
	})
	a, err := New(Config{Client: c, AgentAudience: "detour", AgentServiceAccount: "ns:sa", Logger: discard(), CacheTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	a.cache.now = func() time.Time { return now }
	ctx := context.Background()
	for range 3 {
		if u, err := a.review(ctx, "good", nil); err != nil || u.Username != "alice" {
			t.Fatalf("review: %v %v", u, err)
		}
		_, err := a.review(ctx, "bad", nil)
		wantStatus(t, err, codes.Unauthenticated, "no such token")
	}
	if reviews["good"] != 1 || reviews["bad"] != 3 {
		t.Fatalf("reviews %v, want good once (cached), bad 3 times (never cached)", reviews)
	}
	// Another audience is another question.
	if _, err := a.review(ctx, "good", []string{"detour"}); err != nil {
		t.Fatal(err)
	}
	if reviews["good"] != 2 {
		t.Fatalf("reviews %v: the answer for no audience was reused for audience detour", reviews)
	}
	now = now.Add(time.Minute)
	if _, err := a.review(ctx, "good", nil); err != nil {
		t.Fatal(err)
	}
	if reviews["good"] != 3 {
		t.Fatalf("reviews %v: expired entry reused", reviews)
	}
}

// An API server that ignores audiences must not let a token through for
// the agents' audience.
func TestReviewRequiresAudienceInAnswer(t *testing.T) {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "x"}}
		return true, tr, nil
	})
	a, err := New(Config{Client: c, AgentAudience: "detour", AgentServiceAccount: "ns:sa", Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.review(context.Background(), "tok", []string{"detour"})
	wantStatus(t, err, codes.Unauthenticated, `audience "detour"`)
}

func TestReviewCacheBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	c := newReviewCache(time.Minute, 3, func() time.Time { return now })
	for i := range 10 {
		c.put(newCacheKey(string(rune('a'+i)), nil), authnv1.UserInfo{Username: "u"})
		if c.len() > 3 {
			t.Fatalf("cache holds %d entries, max 3", c.len())
		}
	}
	if _, ok := c.get(newCacheKey("j", nil)); !ok {
		t.Fatal("the newest entry was dropped")
	}
}

func TestParseBearer(t *testing.T) {
	for _, tt := range []struct {
		in, want string
	}{
		{"Bearer abc", "abc"},
		{"bearer abc", "abc"},
		{"Bearer  abc ", "abc"},
		{"Bearer", ""},
		{"Bearer ", ""},
		{"Basic abc", ""},
		{"abc", ""},
		{"Bearer a b", ""},
		{"", ""},
	} {
		got, err := parseBearer(tt.in)
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("parseBearer(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "abc") {
			t.Errorf("error %q quotes the header", err)
		}
	}
}

func FuzzParseBearer(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer  x ", "Basic y", "", "Bearer \x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := parseBearer(s)
		if err != nil {
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("code %v", status.Code(err))
			}
			return
		}
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") || !strings.HasSuffix(strings.TrimSpace(s), tok) {
			t.Fatalf("parseBearer(%q) = %q", s, tok)
		}
	})
}
