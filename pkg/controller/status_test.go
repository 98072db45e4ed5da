package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	typed "github.com/detourdev/detour/pkg/generated/clientset/versioned/typed/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/inventory"
)

// waitStatus polls the resource until cond holds, failing with its last
// status after a deadline long enough for a write held back by the
// per-intercept interval.
func waitStatus(t *testing.T, api typed.InterceptInterface, name, what string, cond func(*v1alpha1.Intercept) bool) *v1alpha1.Intercept {
	t.Helper()
	var obj *v1alpha1.Intercept
	testutil.Eventually(t, 20*time.Second, func() error {
		var err error
		if obj, err = api.Get(context.Background(), name, metav1.GetOptions{}); err != nil {
			return fmt.Errorf("%s: %s: %w", name, what, err)
		}
		if !cond(obj) {
			return fmt.Errorf("%s: waiting for %s; status is %s", name, what, describeStatus(&obj.Status))
		}
		return nil
	})
	return obj
}

func describeStatus(st *v1alpha1.InterceptStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "gen %d state %q match %q expires %v", st.ObservedGeneration, st.State, st.MatchSummary, st.ExpiresAt)
	for _, c := range st.Conditions {
		fmt.Fprintf(&b, "; %s=%s %s %q", c.Type, c.Status, c.Reason, c.Message)
	}
	for _, n := range st.Nodes {
		fmt.Fprintf(&b, "; node %+v", n)
	}
	return b.String()
}

// cond says whether the status has a condition of that type, status and
// reason whose message contains msg.
func cond(obj *v1alpha1.Intercept, typ string, status metav1.ConditionStatus, reason, msg string) bool {
	c := meta.FindStatusCondition(obj.Status.Conditions, typ)
	return c != nil && c.Status == status && c.Reason == reason && strings.Contains(c.Message, msg) &&
		c.ObservedGeneration == obj.Generation && !c.LastTransitionTime.IsZero()
}

func nodeNames(st *v1alpha1.InterceptStatus) []string {
	var out []string
	for _, n := range st.Nodes {
		out = append(out, n.Node)
	}
	return out
}

func node(st *v1alpha1.InterceptStatus, name string) v1alpha1.InterceptNodeStatus {
	for _, n := range st.Nodes {
		if n.Node == name {
			return n
		}
	}
	return v1alpha1.InterceptNodeStatus{}
}

// TestKubeStatus runs the controller over a real API server and checks the
// status it writes back to the Intercept resources as simulated agents
// report over AgentSyncService: state, match summary, conditions and node
// reports; refusals of kubectl-made intercepts; few writes however often
// agents report; and the lease's expiresAt, which the store writes, left
// alone.
func TestKubeStatus(t *testing.T) {
	cfg, api := startAPI(t)
	h := startKube(t, cfg, newFakeClock(), inventory.NewStaticSource(labInventory()))
	report := func(node string, reports ...*detourv1.InterceptReport) {
		t.Helper()
		if _, err := h.agents.ReportStatus(ctx(t), &detourv1.ReportStatusRequest{Node: node, Intercepts: reports}); err != nil {
			t.Fatal(err)
		}
	}

	// Accepted, but no agent has confirmed steering: Pending, and Ready
	// says which nodes are missing.
	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	obj := waitStatus(t, api, "alice", "Pending with both nodes unconfirmed", func(o *v1alpha1.Intercept) bool {
		return o.Status.State == v1alpha1.InterceptPending &&
			cond(o, v1alpha1.InterceptConditionAccepted, metav1.ConditionTrue, "Accepted", "") &&
			cond(o, v1alpha1.InterceptConditionReady, metav1.ConditionFalse, "NotAttached", "lab: steering not attached yet; node-b: steering not attached yet")
	})
	if obj.Status.MatchSummary != "session=alice" || obj.Status.ObservedGeneration != obj.Generation ||
		!slices.Equal(nodeNames(&obj.Status), []string{"lab", "node-b"}) || obj.Status.ExpiresAt != nil {
		t.Fatalf("status %s", describeStatus(&obj.Status))
	}

	// One node attached, the other failing: still Pending, with the
	// failing node's error in Ready.
	report("lab", &detourv1.InterceptReport{Namespace: "default", Name: "alice", SteeringAttached: true, Matched: 7, Fallbacks: 1, SteeredConnections: 3})
	report("node-b", &detourv1.InterceptReport{Namespace: "default", Name: "alice", Error: "attach sk_lookup: operation not permitted"})
	obj = waitStatus(t, api, "alice", "node-b's error in Ready", func(o *v1alpha1.Intercept) bool {
		return o.Status.State == v1alpha1.InterceptPending &&
			cond(o, v1alpha1.InterceptConditionReady, metav1.ConditionFalse, "NotAttached", "node-b: attach sk_lookup: operation not permitted") &&
			node(&o.Status, "lab").Matched == 7
	})
	if got, want := node(&obj.Status, "lab"), (v1alpha1.InterceptNodeStatus{Node: "lab", SteeringAttached: true, Matched: 7, Fallbacks: 1, SteeredConnections: 3}); got != want {
		t.Fatalf("lab's report %+v, want %+v", got, want)
	}
	if got := node(&obj.Status, "node-b"); got.SteeringAttached || got.Error != "attach sk_lookup: operation not permitted" {
		t.Fatalf("node-b's report %+v", got)
	}

	// Both attached: Active and Ready.
	report("node-b", &detourv1.InterceptReport{Namespace: "default", Name: "alice", SteeringAttached: true})
	obj = waitStatus(t, api, "alice", "Active", func(o *v1alpha1.Intercept) bool {
		return o.Status.State == v1alpha1.InterceptActive &&
			cond(o, v1alpha1.InterceptConditionReady, metav1.ConditionTrue, "SteeringAttached", "2 node(s)")
	})
	if got := node(&obj.Status, "node-b"); !got.SteeringAttached || got.Error != "" {
		t.Fatalf("node-b's report %+v after it attached", got)
	}

	// Made with kubectl and refused: Accepted=False says why, and nothing
	// is steered for it.
	if _, err := api.Create(ctx(t), crd("carol", "alice", "api-bob:8080"), metav1.CreateOptions{FieldManager: "kubectl-client-side-apply"}); err != nil {
		t.Fatal(err)
	}
	bad := crd("nosvc", "nosvc", "api-bob:8080")
	bad.Spec.Service.Name = "nope"
	if _, err := api.Create(ctx(t), bad, metav1.CreateOptions{FieldManager: "kubectl-client-side-apply"}); err != nil {
		t.Fatal(err)
	}
	obj = waitStatus(t, api, "carol", "refused as overlapping alice", func(o *v1alpha1.Intercept) bool {
		return o.Status.State == v1alpha1.InterceptFailed &&
			cond(o, v1alpha1.InterceptConditionAccepted, metav1.ConditionFalse, "Conflict", "overlaps intercept default/alice") &&
			cond(o, v1alpha1.InterceptConditionReady, metav1.ConditionFalse, "NotAccepted", "")
	})
	if obj.Status.MatchSummary != "session=alice" || len(obj.Status.Nodes) != 0 {
		t.Fatalf("refused carol: %s", describeStatus(&obj.Status))
	}
	waitStatus(t, api, "nosvc", "refused as invalid", func(o *v1alpha1.Intercept) bool {
		return o.Status.State == v1alpha1.InterceptFailed &&
			cond(o, v1alpha1.InterceptConditionAccepted, metav1.ConditionFalse, "Invalid", "service default/nope not found")
	})

	// A refused edit: Accepted=False for the new generation, while the
	// version in force keeps steering.
	edit(t, api, "alice", func(o *v1alpha1.Intercept) { o.Spec.Service.Port = 81 })
	obj = waitStatus(t, api, "alice", "the edit refused", func(o *v1alpha1.Intercept) bool {
		return o.Generation == 2 && o.Status.ObservedGeneration == 2 && o.Status.State == v1alpha1.InterceptFailed &&
			cond(o, v1alpha1.InterceptConditionAccepted, metav1.ConditionFalse, "Invalid", "the last accepted version stays in force")
	})
	if !cond(obj, v1alpha1.InterceptConditionReady, metav1.ConditionTrue, "SteeringAttached", "") {
		t.Fatalf("Ready of the version in force: %s", describeStatus(&obj.Status))
	}
	edit(t, api, "alice", func(o *v1alpha1.Intercept) { o.Spec.Service.Port = 80 })
	waitStatus(t, api, "alice", "the edit undone", func(o *v1alpha1.Intercept) bool {
		return o.Generation == 3 && o.Status.ObservedGeneration == 3 && o.Status.State == v1alpha1.InterceptActive &&
			cond(o, v1alpha1.InterceptConditionAccepted, metav1.ConditionTrue, "Accepted", "")
	})

	// Agents report every second and counters move with traffic: however
	// many reports come, one intercept's status is written at most once
	// per interval (2 s). 60 reports in well under the few seconds the
	// writes take to settle leave room for two or three writes, not 60.
	writes := func() float64 { return h.metric(t, "detour_controller_status_writes_total", "result", "ok") }
	before := writes()
	const reports = 60
	start := time.Now()
	for i := 1; i <= reports; i++ {
		report("lab", &detourv1.InterceptReport{Namespace: "default", Name: "alice", SteeringAttached: true, Matched: uint64(100 + i)})
	}
	sent := time.Since(start)
	waitStatus(t, api, "alice", "the last report's counter", func(o *v1alpha1.Intercept) bool {
		return node(&o.Status, "lab").Matched == 100+reports
	})
	n := writes() - before
	t.Logf("%d reports sent in %v; %v status writes until the last one showed, after %v", reports, sent.Round(time.Millisecond), n, time.Since(start).Round(time.Millisecond))
	if limit := float64(time.Since(start)/(2*time.Second) + 2); n < 1 || n > limit {
		t.Fatalf("%v status writes for %d reports over %v, want 1 to %v", n, reports, time.Since(start), limit)
	}
	if e := h.metric(t, "detour_controller_status_writes_total", "result", "error"); e != 0 {
		t.Fatalf("%v failed status writes", e)
	}

	// The lease: the store writes status.expiresAt, the status writer the
	// rest; neither undoes the other, and a renewal does not fail on the
	// writer's updates.
	r := req("dave", "api-bob:8080", time.Minute, session("dave"))
	dave := h.create(r)
	obj = waitStatus(t, api, "dave", "a lease and a state", func(o *v1alpha1.Intercept) bool {
		return o.Status.ExpiresAt != nil && o.Status.State == v1alpha1.InterceptPending
	})
	if obj.Status.ExpiresAt.Unix() != dave.GetExpiresAt().AsTime().Unix() {
		t.Fatalf("expiresAt %v, want %v", obj.Status.ExpiresAt, dave.GetExpiresAt().AsTime())
	}
	for i := range 5 {
		h.clock.Advance(10 * time.Second)
		report("lab", &detourv1.InterceptReport{Namespace: "default", Name: "dave", SteeringAttached: true, Matched: uint64(i)})
		if _, err := h.ctl.RenewIntercept(ctx(t), &detourv1.RenewInterceptRequest{Name: "dave", Ttl: durationpb.New(time.Minute)}); err != nil {
			t.Fatalf("renew while status is written: %v", err)
		}
	}
	want := h.clock.Now().Add(time.Minute).Unix()
	obj = waitStatus(t, api, "dave", "the renewed lease beside the agent's report", func(o *v1alpha1.Intercept) bool {
		return o.Status.ExpiresAt != nil && o.Status.ExpiresAt.Unix() == want && node(&o.Status, "lab").Matched == 4
	})
	var managers []string
	for _, mf := range obj.ManagedFields {
		if mf.Subresource == "status" {
			managers = append(managers, fmt.Sprintf("%s/%s", mf.Manager, mf.Operation))
		}
	}
	slices.Sort(managers)
	if !slices.Equal(managers, []string{"detour-controller-status/Apply", "detour-controller/Update"}) {
		t.Fatalf("status field managers %v", managers)
	}
}
