package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/store"
)

// One API server for the package's tests: each test works in namespaces
// of its own, so they do not see each other's intercepts.

func ic(ns, name string) *detourv1.Intercept {
	return &detourv1.Intercept{
		Namespace: ns,
		Name:      name,
		Spec: &detourv1.InterceptSpec{
			ServiceNamespace: ns,
			ServiceName:      "api",
			Port:             80,
			Match:            []*detourv1.Condition{{Kind: detourv1.Condition_KIND_SESSION, Value: name}},
			Destination:      "api-" + name + ":8080",
			Ttl:              durationpb.New(time.Minute),
		},
	}
}

type cluster struct {
	env *envtest.Env
	cfg *rest.Config
}

func startCluster(t *testing.T, namespaces ...string) *cluster {
	t.Helper()
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := env.InstallCRDs(ctx, "../../../deploy/crds/detour.dev_intercepts.yaml"); err != nil {
		t.Fatalf("install CRDs: %v", err)
	}
	for _, ns := range namespaces {
		body := []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"` + ns + `"}}`)
		code, b, err := env.Do(ctx, env.AdminToken, http.MethodPost, "/api/v1/namespaces", body, "application/json")
		if err != nil || code != http.StatusCreated {
			t.Fatalf("create namespace %s: %d %v %s", ns, code, err, b)
		}
	}
	cfg := &rest.Config{
		Host:            env.URL,
		BearerToken:     env.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: env.CAPEM},
	}
	return &cluster{env: env, cfg: cfg}
}

func (c *cluster) open(t *testing.T) *Store {
	t.Helper()
	s, err := New(c.cfg, "detour-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func names(ics []*detourv1.Intercept) []string {
	var out []string
	for _, i := range ics {
		out = append(out, i.GetNamespace()+"/"+i.GetName())
	}
	return out
}

// only keeps the intercepts of some namespaces: List("") sees every test's.
func only(ics []*detourv1.Intercept, namespaces ...string) []*detourv1.Intercept {
	var out []*detourv1.Intercept
	for _, i := range ics {
		if slices.Contains(namespaces, i.GetNamespace()) {
			out = append(out, i)
		}
	}
	return out
}

// sameIntercept compares what the Store keeps: created_at is the server's.
func sameIntercept(t *testing.T, got, want *detourv1.Intercept) {
	t.Helper()
	if got.GetCreatedAt() == nil {
		t.Errorf("%s/%s: no created_at", got.GetNamespace(), got.GetName())
	}
	g := proto.Clone(got).(*detourv1.Intercept)
	g.CreatedAt = nil
	w := proto.Clone(want).(*detourv1.Intercept)
	w.CreatedAt = nil
	if !proto.Equal(g, w) {
		t.Errorf("got  %v\nwant %v", g, w)
	}
}

func TestStore(t *testing.T) {
	start := time.Now()
	c := startCluster(t, "default-x", "team-a", "restart", "kubectl", "invalid", "conflict", "expiry", "status")
	t.Logf("API server with CRD in %v", time.Since(start).Round(time.Millisecond))

	t.Run("CRUD", func(t *testing.T) { testCRUD(t, c) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, c) })
	t.Run("Restart", func(t *testing.T) { testRestart(t, c) })
	t.Run("Conflict", func(t *testing.T) { testConflict(t, c) })
	t.Run("StatusWrites", func(t *testing.T) { testStatusWrites(t, c) })
	t.Run("Invalid", func(t *testing.T) { testInvalid(t, c) })
	t.Run("Kubectl", func(t *testing.T) { testKubectl(t, c) })
}

func testCRUD(t *testing.T, c *cluster) {
	ctx := context.Background()
	s := c.open(t)

	for _, x := range []*detourv1.Intercept{ic("default", "bob"), ic("default", "alice"), ic("team-a", "carol"), ic("default-x", "dave")} {
		if err := s.Create(ctx, x); err != nil {
			t.Fatalf("create %s: %v", x.GetName(), err)
		}
	}
	if err := s.Create(ctx, ic("default", "alice")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}

	tests := []struct {
		ns   string
		want []string
	}{
		{"", []string{"default/alice", "default/bob", "default-x/dave", "team-a/carol"}},
		{"default", []string{"default/alice", "default/bob"}},
		{"team-a", []string{"team-a/carol"}},
		{"nope", nil},
	}
	for _, tt := range tests {
		got, err := s.List(ctx, tt.ns)
		if err != nil {
			t.Fatal(err)
		}
		if tt.ns == "" {
			got = only(got, "default", "default-x", "team-a")
		}
		if g := names(got); !slices.Equal(g, tt.want) {
			t.Errorf("List(%q) = %v, want %v", tt.ns, g, tt.want)
		}
	}

	got, err := s.Get(ctx, "default", "alice")
	if err != nil {
		t.Fatal(err)
	}
	sameIntercept(t, got, ic("default", "alice"))
	if _, err := s.Get(ctx, "default", "zed"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get missing: %v", err)
	}

	// Returned objects are copies.
	got.Spec.Destination = "changed:1"
	if again, _ := s.Get(ctx, "default", "alice"); again.GetSpec().GetDestination() != "api-alice:8080" {
		t.Fatalf("store changed through a returned object: %v", again)
	}

	upd := ic("default", "alice")
	upd.Spec.Destination = "api-alice-2:9090"
	upd.ExpiresAt = timestamppb.New(time.Unix(1700000600, 0))
	if err := s.Update(ctx, upd); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Get(ctx, "default", "alice")
	sameIntercept(t, got, upd)
	if err := s.Update(ctx, ic("default", "zed")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Update missing: %v", err)
	}

	if err := s.Delete(ctx, "default", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "default", "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	if err := s.Create(ctx, &detourv1.Intercept{Name: "x", Spec: ic("", "x").Spec}); err == nil {
		t.Fatal("Create without namespace succeeded")
	}
	for _, k := range [][2]string{{"default", "bob"}, {"team-a", "carol"}, {"default-x", "dave"}} {
		if err := s.Delete(ctx, k[0], k[1]); err != nil {
			t.Fatal(err)
		}
	}
}

// expires_at lives in status: Create and Update write it through the
// status subresource, and Update can clear it.
func testExpiry(t *testing.T, c *cluster) {
	ctx := context.Background()
	s := c.open(t)
	x := ic("expiry", "eve")
	x.ExpiresAt = timestamppb.New(time.Unix(1700000000, 0))
	if err := s.Create(ctx, x); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "expiry", "eve")
	if err != nil {
		t.Fatal(err)
	}
	sameIntercept(t, got, x)

	x.ExpiresAt = nil
	if err := s.Update(ctx, x); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Get(ctx, "expiry", "eve")
	sameIntercept(t, got, x)
}

// testRestart is the controller restart: a new Store on the same API
// server finds what the first one wrote.
func testRestart(t *testing.T, c *cluster) {
	ctx := context.Background()
	s, err := New(c.cfg, "detour-test")
	if err != nil {
		t.Fatal(err)
	}
	want := ic("restart", "alice")
	if err := s.Create(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, ic("restart", "bob")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "restart", "bob"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	s2 := c.open(t)
	all, err := s2.List(ctx, "restart")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 {
		t.Fatalf("after restart: %v", names(all))
	}
	sameIntercept(t, all[0], want)
}

// testConflict makes another writer change the object between Update's
// read and its write: the Store writes nothing and says why.
func testConflict(t *testing.T, c *cluster) {
	ctx := context.Background()
	s := c.open(t)
	other := c.open(t)
	if err := s.Create(ctx, ic("conflict", "alice")); err != nil {
		t.Fatal(err)
	}
	theirs := ic("conflict", "alice")
	theirs.Spec.Destination = "theirs:1"
	s.beforeUpdate = func() {
		if err := other.Update(ctx, theirs); err != nil {
			t.Errorf("other writer: %v", err)
		}
	}
	mine := ic("conflict", "alice")
	mine.Spec.Destination = "mine:1"
	err := s.Update(ctx, mine)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("Update during another write: %v, want ErrConflict", err)
	}
	t.Logf("conflict: %v", err)
	s.beforeUpdate = nil
	got, _ := s.Get(ctx, "conflict", "alice")
	if d := got.GetSpec().GetDestination(); d != "theirs:1" {
		t.Fatalf("destination %q after the conflict, want the other writer's", d)
	}
	// Read again and retry: it goes through.
	if err := s.Update(ctx, mine); err != nil {
		t.Fatal(err)
	}
}

// testStatusWrites writes the status between Update's read and its write,
// as the StatusWriter does every few seconds: that is no conflict, the
// spec goes through, and neither Update nor the expiry patch undoes the
// other writer's fields.
func testStatusWrites(t *testing.T, c *cluster) {
	ctx := context.Background()
	s := c.open(t)
	cs, err := versioned.NewForConfig(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	api := cs.DetourV1alpha1().Intercepts("status")
	if err := s.Create(ctx, ic("status", "alice")); err != nil {
		t.Fatal(err)
	}
	writes := 0
	s.beforeUpdate = func() {
		writes++
		if writes > 1 {
			return // one status write, before the first attempt
		}
		cur, err := api.Get(ctx, "alice", metav1.GetOptions{})
		if err != nil {
			t.Errorf("status writer: %v", err)
			return
		}
		cur.Status.State = v1alpha1.InterceptActive
		cur.Status.MatchSummary = fmt.Sprintf("write %d", writes)
		if _, err := api.UpdateStatus(ctx, cur, metav1.UpdateOptions{FieldManager: "detour-test-status"}); err != nil {
			t.Errorf("status writer: %v", err)
		}
	}
	want := ic("status", "alice")
	want.Spec.Destination = "elsewhere:1"
	want.ExpiresAt = timestamppb.New(time.Unix(1800000000, 0))
	if err := s.Update(ctx, want); err != nil {
		t.Fatalf("Update with a status write in between: %v", err)
	}
	if writes != 2 {
		t.Fatalf("%d attempts, want 2 (one lost to the status write, one through)", writes)
	}
	s.beforeUpdate = nil
	got, err := s.Get(ctx, "status", "alice")
	if err != nil {
		t.Fatal(err)
	}
	sameIntercept(t, got, want)
	obj, err := api.Get(ctx, "alice", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if obj.Status.State != v1alpha1.InterceptActive || obj.Status.MatchSummary != "write 1" || obj.Generation != 2 {
		t.Fatalf("after Update: generation %d, status %+v", obj.Generation, obj.Status)
	}

	// A renewal (the spec as it is) writes no spec at all: the generation
	// and the rest of the status stay.
	want.ExpiresAt = timestamppb.New(time.Unix(1800000060, 0))
	if err := s.Update(ctx, want); err != nil {
		t.Fatal(err)
	}
	obj, err = api.Get(ctx, "alice", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if obj.Generation != 2 || obj.Status.ExpiresAt == nil || obj.Status.ExpiresAt.Unix() != 1800000060 || obj.Status.MatchSummary != "write 1" {
		t.Fatalf("after a renewal: generation %d, status %+v", obj.Generation, obj.Status)
	}
}

// The API server's schema and CEL rules are the validation: its refusal
// reaches the caller with the field it is about.
func testInvalid(t *testing.T, c *cluster) {
	ctx := context.Background()
	s := c.open(t)
	tests := []struct {
		name   string
		change func(*detourv1.InterceptSpec)
		want   string // in the error
	}{
		{"l4 with match", func(sp *detourv1.InterceptSpec) { sp.L4 = true }, "an l4 intercept takes whole connections"},
		{"port 0", func(sp *detourv1.InterceptSpec) { sp.Port = 0 }, "spec.service.port"},
		{"no match", func(sp *detourv1.InterceptSpec) { sp.Match = nil }, "match needs at least one condition"},
		{"bad destination", func(sp *detourv1.InterceptSpec) { sp.Destination = "Not A Host" }, "spec.destination"},
		{"header without name", func(sp *detourv1.InterceptSpec) {
			sp.Match = []*detourv1.Condition{{Kind: detourv1.Condition_KIND_HEADER_EXACT, Value: "v"}}
		}, "header and baggage conditions need a name"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := ic("invalid", "x"+string(rune('a'+i)))
			tt.change(x.Spec)
			err := s.Create(ctx, x)
			if err == nil {
				t.Fatal("created")
			}
			t.Logf("%v", err)
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
			if errors.Is(err, store.ErrExists) {
				t.Fatalf("invalid spec reported as ErrExists: %v", err)
			}
		})
	}
	// An invalid Update is refused the same way and leaves the object.
	if err := s.Create(ctx, ic("invalid", "ok")); err != nil {
		t.Fatal(err)
	}
	bad := ic("invalid", "ok")
	bad.Spec.Port = 0
	if err := s.Update(ctx, bad); err == nil || !strings.Contains(err.Error(), "spec.service.port") {
		t.Fatalf("invalid Update: %v", err)
	}
	if got, _ := s.Get(ctx, "invalid", "ok"); got.GetSpec().GetPort() != 80 {
		t.Fatalf("port %d after a refused Update", got.GetSpec().GetPort())
	}
}

// testKubectl makes, changes and deletes an Intercept with the typed
// clientset, as kubectl would: List sees it and Watch reports each step.
func testKubectl(t *testing.T, c *cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := c.open(t)
	cs, err := versioned.NewForConfig(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	api := cs.DetourV1alpha1().Intercepts("kubectl")

	// One that exists before the watch starts arrives as Added.
	if err := s.Create(ctx, ic("kubectl", "early")); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	events, err := s.Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	next := func(want EventType, name string) *detourv1.Intercept {
		t.Helper()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("events closed waiting for %v %s", want, name)
				}
				if ev.Intercept.GetNamespace() != "kubectl" {
					continue // another test's
				}
				if ev.Type != want || ev.Intercept.GetName() != name {
					t.Fatalf("event %v %s, want %v %s", ev.Type, ev.Intercept.GetName(), want, name)
				}
				return ev.Intercept
			case <-ctx.Done():
				t.Fatalf("no %v %s: %v", want, name, ctx.Err())
			}
		}
	}
	next(Added, "early")

	obj := &v1alpha1.Intercept{
		ObjectMeta: metav1.ObjectMeta{Name: "by-hand"},
		Spec: v1alpha1.InterceptSpec{
			Service:     v1alpha1.ServiceRef{Name: "web", Port: 8080},
			Destination: "dev-pod:8080",
			L4:          true,
		},
	}
	created, err := api.Create(ctx, obj, metav1.CreateOptions{FieldManager: "kubectl-client-side-apply"})
	if err != nil {
		t.Fatal(err)
	}
	got := next(Added, "by-hand")
	if sp := got.GetSpec(); !sp.GetL4() || sp.GetPort() != 8080 || sp.GetServiceNamespace() != "kubectl" {
		t.Fatalf("watched spec %v", sp)
	}
	all, err := s.List(ctx, "kubectl")
	if err != nil {
		t.Fatal(err)
	}
	if g := names(all); !slices.Equal(g, []string{"kubectl/by-hand", "kubectl/early"}) {
		t.Fatalf("List = %v", g)
	}

	// A status-only write (the controller's node reports) sends nothing; a
	// spec change sends Updated.
	st := created.DeepCopy()
	st.Status.MatchSummary = "l4"
	st, err = api.UpdateStatus(ctx, st, metav1.UpdateOptions{FieldManager: "detour-test"})
	if err != nil {
		t.Fatal(err)
	}
	st.Spec.Destination = "dev-pod:9090"
	if _, err := api.Update(ctx, st, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	if got := next(Updated, "by-hand"); got.GetSpec().GetDestination() != "dev-pod:9090" {
		t.Fatalf("Updated with destination %q", got.GetSpec().GetDestination())
	}

	if err := api.Delete(ctx, "by-hand", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := next(Deleted, "by-hand"); got.GetSpec().GetDestination() != "dev-pod:9090" {
		t.Fatalf("Deleted with destination %q", got.GetSpec().GetDestination())
	}
	if _, err := s.Get(ctx, "kubectl", "by-hand"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after kubectl delete: %v", err)
	}

	// Cancelling the watch closes the channel.
	wcancel()
	for range events {
	}

	// So does closing the Store.
	events, err = s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next(Added, "early")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range events {
	}
	if _, err := s.Watch(ctx); err == nil {
		t.Fatal("Watch on a closed Store succeeded")
	}
}
