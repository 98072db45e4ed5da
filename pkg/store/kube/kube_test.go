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

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/store"
	"github.com/detourdev/detour/pkg/store/storetest"
)

// One API server for the package's tests: each test works in namespaces
// of its own, so they do not see each other's intercepts.

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
	return &cluster{env: env, cfg: kubetest.AdminConfig(env)}
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

func TestStore(t *testing.T) {
	start := time.Now()
	c := startCluster(t, append(storetest.Namespaces(), "kubectl", "invalid", "conflict", "status")...)
	t.Logf("API server with CRD in %v", time.Since(start).Round(time.Millisecond))

	storetest.Run(t, func(t *testing.T) func() store.Store {
		return func() store.Store { return c.open(t) }
	}, storetest.Options{Shared: true, ServerCreatedAt: true})
	t.Run("Conflict", func(t *testing.T) { testConflict(t, c) })
	t.Run("StatusWrites", func(t *testing.T) { testStatusWrites(t, c) })
	t.Run("Invalid", func(t *testing.T) { testInvalid(t, c) })
	t.Run("Kubectl", func(t *testing.T) { testKubectl(t, c) })
}

// testConflict makes another writer change the object between Update's
// read and its write: the Store writes nothing and says why.
func testConflict(t *testing.T, c *cluster) {
	ctx := context.Background()
	s := c.open(t)
	other := c.open(t)
	if err := s.Create(ctx, storetest.Intercept("conflict", "alice")); err != nil {
		t.Fatal(err)
	}
	theirs := storetest.Intercept("conflict", "alice")
	theirs.Spec.Destination = "theirs:1"
	s.beforeUpdate = func() {
		if err := other.Update(ctx, theirs); err != nil {
			t.Errorf("other writer: %v", err)
		}
	}
	mine := storetest.Intercept("conflict", "alice")
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
	if err := s.Create(ctx, storetest.Intercept("status", "alice")); err != nil {
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
	want := storetest.Intercept("status", "alice")
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
	storetest.Options{ServerCreatedAt: true}.Check(t, got, want) // created_at is the server's
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
			x := storetest.Intercept("invalid", "x"+string(rune('a'+i)))
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
	if err := s.Create(ctx, storetest.Intercept("invalid", "ok")); err != nil {
		t.Fatal(err)
	}
	bad := storetest.Intercept("invalid", "ok")
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
	if err := s.Create(ctx, storetest.Intercept("kubectl", "early")); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	events, err := s.Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	next := func(want store.EventType, name string) *detourv1.Intercept {
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
	next(store.Added, "early")

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
	got := next(store.Added, "by-hand")
	if sp := got.GetSpec(); !sp.GetL4() || sp.GetPort() != 8080 || sp.GetServiceNamespace() != "kubectl" {
		t.Fatalf("watched spec %v", sp)
	}
	all, err := s.List(ctx, "kubectl")
	if err != nil {
		t.Fatal(err)
	}
	if g := storetest.Names(all); !slices.Equal(g, []string{"kubectl/by-hand", "kubectl/early"}) {
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
	if got := next(store.Updated, "by-hand"); got.GetSpec().GetDestination() != "dev-pod:9090" {
		t.Fatalf("Updated with destination %q", got.GetSpec().GetDestination())
	}

	if err := api.Delete(ctx, "by-hand", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := next(store.Deleted, "by-hand"); got.GetSpec().GetDestination() != "dev-pod:9090" {
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
	next(store.Added, "early")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range events {
	}
	if _, err := s.Watch(ctx); err == nil {
		t.Fatal("Watch on a closed Store succeeded")
	}
}
