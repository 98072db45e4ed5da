package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/store"
)

// StatusSink publishes each intercept's status where users look for it.
// The controller knows what the status means (refusals, the plan, the
// agents' reports); the sink knows where it goes and how often it may be
// written. The Kubernetes store's StatusWriter (pkg/store/kube) is one: it
// writes the status subresource of Intercept resources.
type StatusSink interface {
	// Changed says the status of namespace/name may have changed. It is
	// called with the Server's lock held, so it must not block or call
	// back; the sink reads the status later with src.ObservedStatus.
	Changed(namespace, name string)
	// Run writes until ctx ends, reading each status from src.
	Run(ctx context.Context, src store.StatusSource) error
}

var _ store.StatusSource = (*Server)(nil)

// The reasons of the conditions, CamelCase as the API conventions want.
const (
	reasonAccepted    = "Accepted"
	reasonInvalid     = "Invalid"  // refused: the spec or what it names is wrong
	reasonConflict    = "Conflict" // refused: overlaps an intercept made earlier
	reasonAttached    = "SteeringAttached"
	reasonNotAttached = "NotAttached" // some node has not confirmed steering
	reasonNotApplied  = "NotApplied"  // applied on no node (see the message)
	reasonNotAccepted = "NotAccepted" // no version was ever accepted
)

// statusChangedLocked tells the sink, if any, that the status of the
// intercepts under these keys may have changed.
func (s *Server) statusChangedLocked(keys ...string) {
	for _, k := range keys {
		s.ownedChangedLocked(k)
	}
	if s.status == nil {
		return
	}
	for _, k := range keys {
		ns, name, _ := strings.Cut(k, "/")
		s.status.Changed(ns, name)
	}
}

// allStatusChangedLocked is statusChangedLocked for every intercept held,
// after the plan changed.
func (s *Server) allStatusChangedLocked() {
	for k := range s.intercepts {
		s.statusChangedLocked(k)
	}
}

// ObservedStatus implements store.StatusSource: the intercept's state and
// conditions, and the nodes' reports of the version in force.
//
//   - Accepted is False while the latest version is refused (invalid or
//     overlapping), with the refusal as message; an earlier accepted version
//     stays in force meanwhile.
//   - Ready is True when every node that runs a pod of the Service has
//     reported steering attached; otherwise False with, per node, what is
//     missing.
//   - State is Failed when refused, or when the intercept cannot be applied
//     (its Service, port or destination pod is missing); Active when Ready;
//     Pending otherwise (not yet confirmed by every node, or the Service
//     selects no pods for now).
//
// Expired is never written: the controller deletes an intercept whose lease
// ends, status and all.
func (s *Server) ObservedStatus(namespace, name string) (store.Observed, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.observedLocked(keyOf(namespace, name))
}

func (s *Server) observedLocked(k string) (store.Observed, bool) {
	ic, inForce := s.intercepts[k]
	rej, refused := s.rejected[k]
	if !inForce && !refused {
		return store.Observed{}, false
	}
	var obs store.Observed
	accepted := metav1.Condition{Type: v1alpha1.InterceptConditionAccepted, Status: metav1.ConditionTrue,
		Reason: reasonAccepted, Message: "valid, and overlaps no other intercept"}
	if refused {
		obs.Spec = rej.ic.GetSpec()
		accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, reasonInvalid, rej.why
		if rej.reason == "conflict" {
			accepted.Reason = reasonConflict
		}
		if inForce {
			accepted.Message += "; the last accepted version stays in force"
		}
	} else {
		obs.Spec = ic.GetSpec()
	}
	ready := metav1.Condition{Type: v1alpha1.InterceptConditionReady, Status: metav1.ConditionFalse}
	state := v1alpha1.InterceptPending
	if !inForce {
		ready.Reason, ready.Message = reasonNotAccepted, "refused: see the Accepted condition"
	} else {
		obs.Nodes = s.nodeStatusLocked(k)
		targeted, computed := s.desired.targeted[k]
		switch problem := s.desired.problems[k]; {
		case problem != "":
			ready.Reason, ready.Message = reasonNotApplied, problem
			if (!computed || len(targeted) > 0) && !s.desired.waiting[k] {
				// The Service, its port or the destination is missing;
				// an empty Service may fill up by itself (a rollout), and
				// destination pods by label may become ready.
				state = v1alpha1.InterceptFailed
			}
		default:
			var missing []string
			for _, n := range obs.Nodes {
				switch {
				case n.GetSteeringAttached() || !slices.Contains(targeted, n.GetNode()):
					// Attached, or a node that no longer runs a pod of
					// the Service and is tearing down.
				case n.GetError() != "":
					missing = append(missing, fmt.Sprintf("%s: %s", n.GetNode(), n.GetError()))
				default:
					missing = append(missing, n.GetNode()+": steering not attached yet")
				}
			}
			if len(missing) == 0 {
				ready.Status, ready.Reason = metav1.ConditionTrue, reasonAttached
				ready.Message = fmt.Sprintf("steering attached on %d node(s)", len(targeted))
				state = v1alpha1.InterceptActive
			} else {
				ready.Reason, ready.Message = reasonNotAttached, strings.Join(missing, "; ")
			}
		}
	}
	if refused {
		state = v1alpha1.InterceptFailed
	}
	obs.State = state
	obs.Conditions = []metav1.Condition{accepted, ready}
	return obs, true
}

// nodeStatusLocked is the intercept's status on each node it targets or
// that reported on it, by node. A targeted node without a report shows
// steering_attached=false: nothing has confirmed it. An intercept that
// targets no node has one entry with an empty node and the reason.
func (s *Server) nodeStatusLocked(k string) []*detourv1.InterceptNodeStatus {
	seen := map[string]bool{}
	var ns []string
	for _, n := range s.desired.targeted[k] {
		seen[n] = true
		ns = append(ns, n)
	}
	for n, r := range s.reports {
		if _, ok := r[k]; ok && !seen[n] {
			seen[n] = true
			ns = append(ns, n)
		}
	}
	slices.Sort(ns)
	problem := s.desired.problems[k]
	var out []*detourv1.InterceptNodeStatus
	for _, n := range ns {
		nst := &detourv1.InterceptNodeStatus{Node: n}
		if r, ok := s.reports[n][k]; ok {
			nst.SteeringAttached = r.GetSteeringAttached()
			nst.Matched = r.GetMatched()
			nst.Fallbacks = r.GetFallbacks()
			nst.SteeredConnections = r.GetSteeredConnections()
			nst.Error = r.GetError()
		}
		if nst.Error == "" && problem != "" {
			nst.Error = problem
		}
		out = append(out, nst)
	}
	if len(ns) == 0 && problem != "" {
		out = append(out, &detourv1.InterceptNodeStatus{Error: problem})
	}
	return out
}
