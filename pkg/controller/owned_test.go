package controller

import (
	"context"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/store"
)

// envInventory is labInventory plus two environments' fork pods of api:
// pr-7's on both nodes (one not ready), pr-8's on node-b.
func envInventory() *inventory.Inventory {
	inv := labInventory()
	fork := func(name, env, ip, node string, notReady bool) inventory.Pod {
		return inventory.Pod{Name: name, Namespace: "default", IP: ip, Node: node, NotReady: notReady,
			Labels: map[string]string{v1alpha1.LabelEnvironment: env, v1alpha1.LabelForkOf: "api", "app": "api-" + env}}
	}
	inv.Pods = append(inv.Pods,
		fork("api-pr-7-a", "pr-7", "10.0.0.70", "", false),
		fork("api-pr-7-b", "pr-7", "10.0.1.71", "node-b", false),
		fork("api-pr-7-c", "pr-7", "10.0.0.72", "", true),
		fork("api-pr-8-a", "pr-8", "10.0.1.80", "node-b", false),
	)
	return inv
}

func owner(env string) *detourv1.Owner {
	return &detourv1.Owner{Kind: "Environment", Name: env, Uid: "uid-" + env}
}

// envRoutes are an environment's two routes on api:80, as envmgr makes them.
func envRoutes(env string) (sessionRoute, forksRoute *detourv1.Intercept) {
	dest := &detourv1.PodSelector{Labels: map[string]string{v1alpha1.LabelEnvironment: env, v1alpha1.LabelForkOf: "api"}}
	sessionRoute = &detourv1.Intercept{Namespace: "default", Name: env + "-api-80", Owner: owner(env), Spec: &detourv1.InterceptSpec{
		ServiceNamespace: "default", ServiceName: "api", Port: 80, Match: []*detourv1.Condition{session(env)}, DestinationPods: dest,
	}}
	forksRoute = &detourv1.Intercept{Namespace: "default", Name: env + "-api-80-forks", Owner: owner(env), Spec: &detourv1.InterceptSpec{
		ServiceNamespace: "default", ServiceName: "api", Port: 80, L4: true, DestinationPods: dest,
		SourceSelector: map[string]string{v1alpha1.LabelEnvironment: env},
	}}
	return
}

// TestOwnedIntercepts: an environment's routes next to developers'
// intercepts and another environment's; users may not touch them; the
// owner replaces and deletes them; subscribers hear of every change.
func TestOwnedIntercepts(t *testing.T) {
	h := newHarness(t)
	h.inv.Set(envInventory())
	var mu sync.Mutex
	heard := map[string]int{}
	h.srv.SubscribeOwned(func(ns, kind, name string) {
		mu.Lock()
		heard[ns+"/"+kind+"/"+name]++
		mu.Unlock()
	})
	alice := h.create(req("alice", "api-alice:8080", 0, session("alice")))
	c := context.Background()
	s7, f7 := envRoutes("pr-7")
	s8, f8 := envRoutes("pr-8")
	for _, ic := range []*detourv1.Intercept{s7, f7, s8, f8} {
		// An environment's forks route (l4, from its pods) goes before
		// request intercepts: no overlap with alice's session; the two
		// environments' routes have other keys and disjoint sources.
		if err := h.srv.ApplyOwned(c, ic); err != nil {
			t.Fatalf("apply %s: %v", ic.GetName(), err)
		}
	}
	// Applying the same again changes nothing.
	if err := h.srv.ApplyOwned(c, s7); err != nil {
		t.Fatal(err)
	}
	// A session route with a developer's key overlaps, naming her.
	clash := proto.Clone(s8).(*detourv1.Intercept)
	clash.Name, clash.Spec.Match = "pr-8-alice", []*detourv1.Condition{session("alice")}
	err := h.srv.ApplyOwned(c, clash)
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "overlaps intercept default/alice") {
		t.Errorf("overlap message: %v", err)
	}
	// A user may not create an owned intercept, nor delete or renew one.
	_, err = h.ctl.CreateIntercept(ctx(t), &detourv1.CreateInterceptRequest{Intercept: s7})
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.ctl.DeleteIntercept(ctx(t), &detourv1.DeleteInterceptRequest{Namespace: "default", Name: s7.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "belongs to environment pr-7") {
		t.Errorf("delete message: %v", err)
	}
	_, err = h.ctl.RenewIntercept(ctx(t), &detourv1.RenewInterceptRequest{Namespace: "default", Name: f7.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	// Another owner's intercept of that name is not taken over.
	stolen := proto.Clone(s7).(*detourv1.Intercept)
	stolen.Owner = owner("pr-8")
	wantCode(t, h.srv.ApplyOwned(c, stolen), codes.FailedPrecondition)
	if err := h.srv.DeleteOwned(c, "default", s7.GetName(), owner("pr-8")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.Get(c, "default", s7.GetName()); err != nil {
		t.Errorf("pr-8 deleted pr-7's intercept: %v", err)
	}

	// What the agents get: the ready fork pods to take turns, the forks
	// route on the nodes of the environment's pods with every address of
	// api, and which destinations are on other nodes.
	h.srv.mu.Lock()
	plan := h.srv.desired // replaced whole on each change, never mutated
	h.srv.mu.Unlock()
	a := plan.nodes["lab"][keyOf("default", s7.GetName())]
	if a.GetDestination() != "10.0.0.70:8080" || strings.Join(a.GetDestinations(), ",") != "10.0.0.70:8080,10.0.1.71:8080" {
		t.Errorf("pr-7 session route on lab: destination %s, destinations %v (the not-ready pod must not be there)", a.GetDestination(), a.GetDestinations())
	}
	if strings.Join(a.GetRemoteDestinations(), ",") != "10.0.1.71:8080" {
		t.Errorf("pr-7 session route on lab: remote destinations %v", a.GetRemoteDestinations())
	}
	fb := plan.nodes["node-b"][keyOf("default", f8.GetName())]
	if fb == nil || !fb.GetL4() || !fb.GetRestrictSources() || strings.Join(fb.GetNodeSources(), ",") != "10.0.1.80" ||
		strings.Join(fb.GetDialedAddresses(), ",") != "10.0.0.10:8080,10.0.1.11:8080" {
		t.Errorf("pr-8 forks route on node-b: %v", fb)
	}
	if fl := plan.nodes["lab"][keyOf("default", f8.GetName())]; fl == nil || len(fl.GetNodeSources()) != 0 {
		t.Errorf("pr-8 forks route on lab (api-0 is there, pr-8's pod is not): %v", fl)
	}
	if st := h.srv.Owned("default", owner("pr-7")); len(st) != 2 || st[0].Name != "pr-7-api-80" || st[1].Name != "pr-7-api-80-forks" {
		t.Errorf("Owned(pr-7): %+v", st)
	}

	// The owner changes its route and deletes it; subscribers heard.
	changed := proto.Clone(s7).(*detourv1.Intercept)
	changed.Spec.Match = []*detourv1.Condition{session("pr-7b")}
	if err := h.srv.ApplyOwned(c, changed); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.st.Get(c, "default", s7.GetName()); got.GetSpec().GetMatch()[0].GetValue() != "pr-7b" {
		t.Errorf("stored after the owner's change: %v", got)
	}
	for _, ic := range []*detourv1.Intercept{s7, f7} {
		if err := h.srv.DeleteOwned(c, "default", ic.GetName(), owner("pr-7")); err != nil {
			t.Fatal(err)
		}
	}
	if st := h.srv.Owned("default", owner("pr-7")); len(st) != 0 {
		t.Errorf("Owned(pr-7) after delete: %+v", st)
	}
	if _, err := h.st.Get(c, "default", s7.GetName()); err == nil || !strings.Contains(err.Error(), store.ErrNotFound.Error()) {
		t.Errorf("stored after delete: %v", err)
	}
	mu.Lock()
	n7, n8 := heard["default/Environment/pr-7"], heard["default/Environment/pr-8"]
	mu.Unlock()
	if n7 < 4 || n8 < 2 {
		t.Errorf("subscribers heard pr-7 %d times, pr-8 %d times", n7, n8)
	}
	if alice.GetName() != "alice" {
		t.Fatal(alice)
	}
}
