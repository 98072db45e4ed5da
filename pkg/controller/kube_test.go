package controller

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	typed "github.com/detourdev/detour/pkg/generated/clientset/versioned/typed/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/store/kube"
)

// The Kubernetes store is what the controller's interfaces are for; the
// controller itself imports only pkg/store.
var (
	_ WatchingStore = (*kube.Store)(nil)
	_ StatusSink    = (*kube.StatusWriter)(nil)
)

// startAPI runs an API server with the Intercept CRD and returns its
// admin's rest.Config and, through the typed clientset, the Intercepts of
// namespace default, to change them as kubectl would.
func startAPI(t *testing.T) (*rest.Config, typed.InterceptInterface) {
	t.Helper()
	env := envtest.Start(t)
	if _, err := env.InstallCRDs(ctx(t), "../../deploy/crds/detour.dev_intercepts.yaml"); err != nil {
		t.Fatalf("install CRDs: %v", err)
	}
	cfg := kubetest.AdminConfig(env)
	cs, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, cs.DetourV1alpha1().Intercepts("default")
}

// startKube runs a controller over a kube store on cfg's API server, behind
// a real gRPC server on an in-memory listener, as newHarness does over bolt,
// writing the Intercepts' status as cmd/controller does.
func startKube(t *testing.T, cfg *rest.Config, clock *fakeClock, inv *inventory.StaticSource) *harness {
	t.Helper()
	st, err := kube.New(cfg, "detour-controller")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, clock: clock, inv: inv, reg: prometheus.NewRegistry()}
	sw, err := st.NewStatusWriter(kube.StatusOptions{FieldManager: "detour-controller-status", Registerer: h.reg})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(ctx(t), Config{Store: st, Inventory: inv, Clock: clock, Registerer: h.reg, Version: "v-test", Status: sw})
	if err != nil {
		t.Fatal(err)
	}
	h.serve(srv, st.Close)
	t.Cleanup(h.stop)
	return h
}

// crd is an Intercept as a user would write it for kubectl.
func crd(name, session, dest string) *v1alpha1.Intercept {
	return &v1alpha1.Intercept{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.InterceptSpec{
			Service:     v1alpha1.ServiceRef{Name: "api", Port: 80},
			Match:       []v1alpha1.Condition{{Kind: v1alpha1.ConditionSession, Value: session}},
			Destination: dest,
		},
	}
}

// edit changes an Intercept as kubectl edit does: read, change, write, and
// again from the read when the write lost to another (the controller
// writes status every few seconds).
func edit(t *testing.T, api typed.InterceptInterface, name string, change func(*v1alpha1.Intercept)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		obj, err := api.Get(ctx(t), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(obj)
		_, err = api.Update(ctx(t), obj, metav1.UpdateOptions{FieldManager: "kubectl-edit"})
		return err
	})
	if err != nil {
		t.Fatalf("edit %s: %v", name, err)
	}
}

// wantUpsert checks an event is the UPSERT of one intercept to dest.
func wantUpsert(t *testing.T, ev *detourv1.WatchDesiredStateResponse, name, dest string) *detourv1.Assignment {
	t.Helper()
	if ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_UPSERT || len(ev.GetAssignments()) != 1 {
		t.Fatalf("event %v, want UPSERT of %s", ev, name)
	}
	a := ev.GetAssignments()[0]
	if a.GetNamespace() != "default" || a.GetName() != name || a.GetDestination() != dest {
		t.Fatalf("UPSERT %s/%s to %s, want default/%s to %s", a.GetNamespace(), a.GetName(), a.GetDestination(), name, dest)
	}
	return a
}

func wantDelete(t *testing.T, ev *detourv1.WatchDesiredStateResponse, name string) {
	t.Helper()
	if ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_DELETE || ev.GetNamespace() != "default" || ev.GetName() != name {
		t.Fatalf("event %v, want DELETE of default/%s", ev, name)
	}
}

func wantIntercept(t *testing.T, ev *detourv1.WatchInterceptsResponse, typ detourv1.WatchInterceptsResponse_Type, name string) {
	t.Helper()
	if ev.GetType() != typ || ev.GetIntercept().GetName() != name {
		t.Fatalf("intercept event %v %s, want %v %s", ev.GetType(), ev.GetIntercept().GetName(), typ, name)
	}
}

func (h *harness) listNames(t *testing.T) []string {
	t.Helper()
	resp, err := h.ctl.ListIntercepts(ctx(t), &detourv1.ListInterceptsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ic := range resp.GetIntercepts() {
		out = append(out, ic.GetNamespace()+"/"+ic.GetName())
	}
	return out
}

// TestKubeStore runs the controller over Intercept resources of a real API
// server and changes them both through the gRPC API and as kubectl would.
// Each step waits on the next event of a stream, so the events in between
// are checked too: an echo of the controller's own write would show up as
// an unexpected event.
func TestKubeStore(t *testing.T) {
	cfg, api := startAPI(t)
	clock, inv := newFakeClock(), inventory.NewStaticSource(labInventory())

	h := startKube(t, cfg, clock, inv)
	node := h.watchNode(t, "lab")
	if ev := node.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT || len(ev.GetAssignments()) != 0 {
		t.Fatalf("first event %v, want an empty snapshot", ev)
	}
	ics := h.watchIntercepts(t, "")

	// (a) Through the gRPC API: the resource exists and the node is told.
	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	obj, err := api.Get(ctx(t), "alice", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("resource of a gRPC create: %v", err)
	}
	if obj.Spec.Destination != "api-alice:8080" {
		t.Fatalf("resource destination %q", obj.Spec.Destination)
	}
	wantUpsert(t, node.recv(t), "alice", "10.0.0.20:8080")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_CREATED, "alice")

	// (b) Created as kubectl would: applied like a gRPC create.
	if _, err := api.Create(ctx(t), crd("bob", "bob", "api-bob:8080"), metav1.CreateOptions{FieldManager: "kubectl-client-side-apply"}); err != nil {
		t.Fatal(err)
	}
	a := wantUpsert(t, node.recv(t), "bob", "10.0.0.21:8080")
	if tg := a.GetTargets(); len(tg) != 1 || tg[0].GetPodName() != "api-0" || tg[0].GetPort() != 8080 {
		t.Fatalf("bob's targets on lab: %v", tg)
	}
	if m := a.GetMatch(); len(m) != 1 || m[0].GetKind() != detourv1.Condition_KIND_SESSION || m[0].GetValue() != "bob" {
		t.Fatalf("bob's match: %v", m)
	}
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_CREATED, "bob")
	if got := h.listNames(t); !slices.Equal(got, []string{"default/alice", "default/bob"}) {
		t.Fatalf("ListIntercepts = %v", got)
	}

	// (c) Edited as kubectl would.
	edit(t, api, "bob", func(o *v1alpha1.Intercept) { o.Spec.Destination = "10.9.9.9:7000" })
	wantUpsert(t, node.recv(t), "bob", "10.9.9.9:7000")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_UPDATED, "bob")

	// (d) Deleted as kubectl would.
	if err := api.Delete(ctx(t), "bob", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wantDelete(t, node.recv(t), "bob")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_DELETED, "bob")

	// (f) An overlapping resource and one on a service the inventory lacks
	// are refused. Events are handled in order, so once dave (valid, made
	// after them) reaches the node, they were handled, and left out.
	if _, err := api.Create(ctx(t), crd("carol", "alice", "api-bob:8080"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bad := crd("nosvc", "nosvc", "api-bob:8080")
	bad.Spec.Service.Name = "nope"
	if _, err := api.Create(ctx(t), bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Create(ctx(t), crd("dave", "dave", "api-bob:8080"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantUpsert(t, node.recv(t), "dave", "10.0.0.21:8080")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_CREATED, "dave")
	if got := h.listNames(t); !slices.Equal(got, []string{"default/alice", "default/dave"}) {
		t.Fatalf("ListIntercepts = %v, want the overlapping and invalid ones left out", got)
	}
	if c, i := h.metric(t, "detour_controller_external_intercept_refusals_total", "result", "conflict"),
		h.metric(t, "detour_controller_external_intercept_refusals_total", "result", "invalid"); c != 1 || i != 1 {
		t.Fatalf("refusals: conflict %v invalid %v, want 1 and 1", c, i)
	}
	if n := h.metric(t, "detour_controller_intercepts_refused"); n != 2 {
		t.Fatalf("intercepts_refused %v, want 2", n)
	}
	// Once alice goes, carol no longer overlaps anything and is applied.
	if _, err := h.ctl.DeleteIntercept(ctx(t), &detourv1.DeleteInterceptRequest{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	wantDelete(t, node.recv(t), "alice")
	wantUpsert(t, node.recv(t), "carol", "10.0.0.21:8080")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_DELETED, "alice")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_CREATED, "carol")
	if _, err := api.Get(ctx(t), "alice", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("resource after a gRPC delete: %v", err)
	}
	// erin overlaps dave, made first: refused now and after the restart.
	if _, err := api.Create(ctx(t), crd("erin", "dave", "api-alice:8080"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if v := h.metric(t, "detour_controller_external_intercept_refusals_total", "result", "conflict"); v != 2 {
			return fmt.Errorf("erin not refused: %v conflict refusals, want 2", v)
		}
		return nil
	})

	// (e) A new controller over a new store serves the same intercepts.
	h.stop()
	h = startKube(t, cfg, clock, inv)
	if got := h.listNames(t); !slices.Equal(got, []string{"default/carol", "default/dave"}) {
		t.Fatalf("after restart ListIntercepts = %v", got)
	}
	node = h.watchNode(t, "lab")
	snap := node.recv(t)
	var got []string
	for _, a := range snap.GetAssignments() {
		got = append(got, a.GetName()+"→"+a.GetDestination())
	}
	if snap.GetType() != detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT || !slices.Equal(got, []string{"carol→10.0.0.21:8080", "dave→10.0.0.21:8080"}) {
		t.Fatalf("after restart: %v %v", snap.GetType(), got)
	}
	if n := h.metric(t, "detour_controller_intercepts_refused"); n != 2 {
		t.Fatalf("after restart intercepts_refused %v, want 2 (nosvc, erin)", n)
	}

	// Leases: expires_at is kept in the resource's status, and the
	// controller deletes the resource when the lease ends.
	ics = h.watchIntercepts(t, "")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_EXISTING, "carol")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_EXISTING, "dave")
	h.create(req("fay", "api-alice:8080", time.Minute, session("fay")))
	wantUpsert(t, node.recv(t), "fay", "10.0.0.20:8080")
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_CREATED, "fay")
	obj, err = api.Get(ctx(t), "fay", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := clock.Now().Add(time.Minute); obj.Status.ExpiresAt == nil || obj.Status.ExpiresAt.Unix() != want.Unix() {
		t.Fatalf("status.expiresAt %v, want %v", obj.Status.ExpiresAt, want)
	}
	clock.Advance(2 * time.Minute)
	wantDelete(t, node.recv(t), "fay")
	// Nothing in between: neither half of the create (resource, then its
	// status) came back as an UPDATED.
	wantIntercept(t, ics.recv(t), detourv1.WatchInterceptsResponse_TYPE_EXPIRED, "fay")
	if _, err := api.Get(ctx(t), "fay", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("resource after its lease ended: %v", err)
	}
}
