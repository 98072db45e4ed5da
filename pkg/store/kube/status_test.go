package kube

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/store"
)

// TestDesiredStatus checks the writer's own logic, without an API server:
// transition times move only when a condition's status does, node entries
// without a node are left out, and the comparison with the cache looks at
// the writer's fields alone.
func TestDesiredStatus(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Minute))
	obj := &v1alpha1.Intercept{
		ObjectMeta: metav1.ObjectMeta{Name: "alice", Namespace: "default", Generation: 3},
		Spec: v1alpha1.InterceptSpec{
			Service:     v1alpha1.ServiceRef{Name: "api", Port: 80},
			Match:       []v1alpha1.Condition{{Kind: v1alpha1.ConditionSession, Value: "alice"}},
			Destination: "api-alice:8080",
		},
	}
	obs := store.Observed{
		State: v1alpha1.InterceptPending,
		Conditions: []metav1.Condition{
			{Type: v1alpha1.InterceptConditionAccepted, Status: metav1.ConditionTrue, Reason: "Accepted", Message: "ok"},
			{Type: v1alpha1.InterceptConditionReady, Status: metav1.ConditionFalse, Reason: "NotAttached", Message: "lab: steering not attached yet"},
		},
		Nodes: []*detourv1.InterceptNodeStatus{{Node: "lab", Matched: 2}, {Error: "no node"}},
	}
	first := desiredStatus(obj, obs, t0)
	if first.ObservedGeneration != 3 || first.MatchSummary != "session=alice" || len(first.Nodes) != 1 || first.Nodes[0].Matched != 2 {
		t.Fatalf("first status %+v", first)
	}
	for _, c := range first.Conditions {
		if c.ObservedGeneration != 3 || !c.LastTransitionTime.Equal(&t0) {
			t.Fatalf("condition %+v", c)
		}
	}
	if ownedEqual(&obj.Status, &first) {
		t.Fatal("an empty status equals the first one")
	}

	// Written; later, Ready turns True and a counter moves.
	obj.Status = first
	obj.Status.ExpiresAt = &t1 // the Store's field: never compared
	if again := desiredStatus(obj, obs, t1); !ownedEqual(&obj.Status, &again) {
		t.Fatalf("the same observation differs: %+v", again)
	}
	obs.State = v1alpha1.InterceptActive
	obs.Conditions[1] = metav1.Condition{Type: v1alpha1.InterceptConditionReady, Status: metav1.ConditionTrue, Reason: "SteeringAttached", Message: "on 1 node(s)"}
	obs.Nodes[0].Matched = 5
	next := desiredStatus(obj, obs, t1)
	if ownedEqual(&obj.Status, &next) {
		t.Fatal("a new state compares equal")
	}
	acc, ready := next.Conditions[0], next.Conditions[1]
	if !acc.LastTransitionTime.Equal(&t0) || !ready.LastTransitionTime.Equal(&t1) {
		t.Fatalf("transition times: Accepted %v (want %v), Ready %v (want %v)", acc.LastTransitionTime, t0, ready.LastTransitionTime, t1)
	}

	// Only the counter moves: still a write.
	obj.Status = next
	obs.Nodes[0].Matched = 6
	if moved := desiredStatus(obj, obs, t1); ownedEqual(&obj.Status, &moved) {
		t.Fatal("a moved counter compares equal")
	}

	// A message beyond the limit is cut.
	obs.Conditions[1].Message = string(make([]byte, 10000))
	if m := desiredStatus(obj, obs, t1).Conditions[1].Message; len(m) != maxMessage {
		t.Fatalf("message of %d bytes, want %d", len(m), maxMessage)
	}
}

func TestNewStatusWriterFieldManager(t *testing.T) {
	s := &Store{fieldManager: "detour-controller", closed: make(chan struct{})}
	for _, fm := range []string{"", "detour-controller"} {
		if _, err := s.NewStatusWriter(StatusOptions{FieldManager: fm}); err == nil {
			t.Errorf("field manager %q accepted", fm)
		}
	}
	w, err := s.NewStatusWriter(StatusOptions{FieldManager: "detour-controller-status"})
	if err != nil {
		t.Fatal(err)
	}
	w.queue.ShutDown()
}
