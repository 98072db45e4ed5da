package store

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// Observed is what the controller knows of one intercept: the meaning of its
// status. A status writer (the Kubernetes store's) adds what only the
// resource has (generations, transition times, the match summary of its
// spec) and writes it.
type Observed struct {
	// Spec is the version of the intercept the rest describes (for a
	// refused edit, the refused version). Status is written only while the
	// resource still has this spec, so observedGeneration never claims a
	// version the controller has not looked at.
	Spec *detourv1.InterceptSpec
	// State sums the conditions up.
	State v1alpha1.InterceptState
	// Conditions are Accepted and Ready: type, status, reason and message.
	// ObservedGeneration and LastTransitionTime are the writer's to set.
	Conditions []metav1.Condition
	// Nodes are the per-node reports of the version in force, by node.
	Nodes []*detourv1.InterceptNodeStatus
}

// StatusSource gives the controller's view of an intercept.
type StatusSource interface {
	// ObservedStatus returns what is known of namespace/name, or false when
	// the source has nothing to say (it has not looked at the intercept
	// yet, or it is gone). It is called from the writer's worker, never
	// with a lock of the writer held.
	ObservedStatus(namespace, name string) (Observed, bool)
}
