package kubeauth

import (
	"context"
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
	authzv1 "k8s.io/api/authorization/v1"
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

func TestUnknownMethodRefused(t *testing.T) {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "alice"}}
		return true, tr, nil
	})
	a, err := New(Config{Client: c, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	// Rows for one method of each service; the others have none.
	if err := a.Register(Rules{
		detourv1.ControlService_WatchIntercepts_FullMethodName: UserRule{Verb: "watch", Resource: intercepts, Scope: allNamespaces},
		detourv1.AgentSyncService_Register_FullMethodName:      AgentRule{ServiceAccount: "ns:sa", Audience: "detour"},
	}); err != nil {
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

var intercepts = Resource{Group: "detour.dev", Resource: "intercepts", Singular: "intercept"}

func allNamespaces(any) (string, string, error) { return "", "", nil }

func TestNewChecksConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without a client accepted")
	}
	if _, err := New(Config{Client: fake.NewClientset()}); err != nil {
		t.Fatal(err)
	}
}

// Register refuses rules that cannot work, and a method twice, and then
// registers none of the batch.
func TestRegisterChecksRules(t *testing.T) {
	a, err := New(Config{Client: fake.NewClientset(), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	const m = "/test.Service/Call"
	for _, r := range []Rule{
		nil,
		AgentRule{ServiceAccount: "ns:sa"},
		AgentRule{Audience: "detour", ServiceAccount: "sa"},
		AgentRule{Audience: "detour", ServiceAccount: ":sa"},
		AgentRule{Audience: "detour", ServiceAccount: "ns:"},
		AgentRule{Audience: "detour", ServiceAccount: "ns:sa:x"},
		UserRule{Resource: intercepts, Scope: allNamespaces},
		UserRule{Verb: "get", Scope: allNamespaces},
		UserRule{Verb: "get", Resource: intercepts},
	} {
		if err := a.Register(Rules{"/test.Service/Other": UserRule{Verb: "get", Resource: intercepts, Scope: allNamespaces}, m: r}); err == nil {
			t.Errorf("Register(%+v) accepted", r)
		}
	}
	if err := a.Register(Rules{"/test.Service/Other": AgentRule{Audience: "detour", ServiceAccount: "ns:sa"}}); err != nil {
		t.Fatalf("a refused batch left a method registered: %v", err)
	}
	if err := a.Register(Rules{m: UserRule{Verb: "get", Resource: intercepts, Scope: allNamespaces}}); err != nil {
		t.Fatal(err)
	}
	if err := a.Register(Rules{m: UserRule{Verb: "list", Resource: intercepts, Scope: allNamespaces}}); err == nil {
		t.Error("a method registered twice")
	}
}

// A UserRule asks the API server about the caller and the rule's verb and
// resource in the request's scope, and a refusal says what was refused.
func TestUserRuleReview(t *testing.T) {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: "alice", UID: "u1", Groups: []string{"devs"}, Extra: map[string]authnv1.ExtraValue{"k": {"v"}}}}
		return true, tr, nil
	})
	var asked []authzv1.SubjectAccessReviewSpec
	c.PrependReactor("create", "subjectaccessreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		sar := action.(k8stesting.CreateAction).GetObject().(*authzv1.SubjectAccessReview)
		asked = append(asked, sar.Spec)
		sar.Status = authzv1.SubjectAccessReviewStatus{Allowed: sar.Spec.ResourceAttributes.Namespace == "shop", Reason: "no binding"}
		return true, sar, nil
	})
	a, err := New(Config{Client: c, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	const m = "/test.Service/Get"
	if err := a.Register(Rules{m: UserRule{Verb: "get", Resource: intercepts, Scope: func(req any) (string, string, error) {
		r := req.(*detourv1.GetInterceptRequest)
		return r.GetNamespace(), r.GetName(), nil
	}}}); err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer tok"))
	call := func(ns string) (string, error) {
		res, err := a.UnaryInterceptor()(ctx, &detourv1.GetInterceptRequest{Namespace: ns, Name: "x"}, &grpc.UnaryServerInfo{FullMethod: m},
			func(ctx context.Context, _ any) (any, error) { u, _ := UserFrom(ctx); return u, nil })
		u, _ := res.(string)
		return u, err
	}
	if u, err := call("shop"); err != nil || u != "alice" {
		t.Fatalf("allowed call: %q %v, want the handler to see alice", u, err)
	}
	want := authzv1.ResourceAttributes{Namespace: "shop", Verb: "get", Group: "detour.dev", Resource: "intercepts", Name: "x"}
	if got := asked[0]; *got.ResourceAttributes != want || got.User != "alice" || got.UID != "u1" ||
		len(got.Groups) != 1 || got.Groups[0] != "devs" || len(got.Extra["k"]) != 1 {
		t.Fatalf("SubjectAccessReview %+v, want alice's identity and %+v", got, want)
	}
	_, err = call("other")
	wantStatus(t, err, codes.PermissionDenied, `user "alice" may not get intercept "x" (intercepts.detour.dev) in namespace "other" (RBAC: no binding)`)
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
	a, err := New(Config{Client: c, Logger: discard(), CacheTTL: time.Minute})
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
	a, err := New(Config{Client: c, Logger: discard()})
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
