package envmgr

import (
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// Reasons of an Environment's conditions, for `kubectl describe` and for
// scripts that wait on them.
const (
	ReasonReady          = "Ready"
	ReasonProvisioning   = "Provisioning"
	ReasonForksPending   = "ForksPending"
	ReasonForksReady     = "ForksReady"
	ReasonForkFailed     = "ForkFailed"
	ReasonRoutesPending  = "RoutesPending"
	ReasonRoutesActive   = "RoutesActive"
	ReasonRouteRefused   = "RouteRefused"
	ReasonNoRoutes       = "NoRoutes"
	ReasonNoData         = "NoData"
	ReasonDataPending    = "DataPending"
	ReasonDataReady      = "DataReady"
	ReasonDataFailed     = "DataFailed"
	ReasonExpired        = "Expired"
	ReasonDeleted        = "Deleted"
	ReasonInvalid        = "Invalid"
	ReasonWorkloadAbsent = "WorkloadNotFound"
)

// Failure is a problem that stays until the spec or the baseline changes (an
// unknown workload, an override naming no container): the environment is
// Failed with it.
type Failure struct {
	Reason  string
	Message string
}

func (f *Failure) Error() string { return f.Message }

// ForkObservation is what a runtime saw of one fork.
type ForkObservation struct {
	Plan *ForkPlan
	// Exists is false until the runtime has made the fork.
	Exists bool
	Ready  int32
	// Failed marks a fork that will not become ready by waiting (an image
	// that cannot be pulled, a container that keeps crashing, a command
	// that is not there); Message says why.
	Failed  bool
	Message string
}

// RouteObservation is one owned intercept's state as the controller sees it.
type RouteObservation struct {
	Route   Route
	State   v1alpha1.InterceptState // "" until it exists
	Message string
}

// DataObservation is one data source's state; Environment data fills it.
type DataObservation struct {
	Name    string
	Ready   bool
	Failed  bool
	Message string
	// Status is what the environment's status shows of it (phase, rows,
	// bytes, duration); its name is Name.
	Status v1alpha1.DataStatus
}

// Observation is everything Status needs.
type Observation struct {
	Now       time.Time
	ExpiresAt time.Time // zero: no deadline known yet
	Deleting  bool
	Failure   *Failure
	Forks     []ForkObservation
	Routes    []RouteObservation
	Data      []DataObservation
	// Warnings are shown in the Ready condition's message while the
	// environment is otherwise fine (a Service that could not be routed).
	Warnings []string
}

// Status computes an environment's status from what was observed. It keeps
// the last transition times of conditions that did not change (from
// env.Status), so it can be called on every reconcile.
func Status(env *v1alpha1.Environment, o Observation) v1alpha1.EnvironmentStatus {
	st := v1alpha1.EnvironmentStatus{
		ObservedGeneration: env.Generation,
		Key:                Key(env),
		ForkSummary:        forkSummary(env),
		Conditions:         append([]metav1.Condition(nil), env.Status.Conditions...),
	}
	if !o.ExpiresAt.IsZero() {
		t := metav1.NewTime(o.ExpiresAt.UTC().Truncate(time.Second))
		st.ExpiresAt = &t
	}
	set := func(typ string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: typ, Status: s, Reason: reason, Message: msg,
			ObservedGeneration: env.Generation, LastTransitionTime: metav1.NewTime(o.Now),
		})
	}

	forksOK, forksReason, forksMsg := forksState(&st, o.Forks)
	set(v1alpha1.EnvironmentConditionForksReady, forksOK, forksReason, forksMsg)
	routesOK, routesReason, routesMsg := routesState(&st, o.Routes)
	set(v1alpha1.EnvironmentConditionRoutesReady, routesOK, routesReason, routesMsg)
	dataOK, dataReason, dataMsg := dataState(&st, o.Data)
	set(v1alpha1.EnvironmentConditionDataReady, dataOK, dataReason, dataMsg)

	switch {
	case o.Deleting:
		st.Phase = v1alpha1.EnvironmentDeleting
		set(v1alpha1.EnvironmentConditionReady, false, ReasonDeleted, "the environment was deleted; its forks and routes are being removed")
	case !o.ExpiresAt.IsZero() && !o.Now.Before(o.ExpiresAt):
		st.Phase = v1alpha1.EnvironmentExpiring
		set(v1alpha1.EnvironmentConditionReady, false, ReasonExpired, "the TTL ran out at "+o.ExpiresAt.UTC().Format(time.RFC3339)+"; the environment is being removed")
	case o.Failure != nil:
		st.Phase = v1alpha1.EnvironmentFailed
		set(v1alpha1.EnvironmentConditionReady, false, o.Failure.Reason, o.Failure.Message)
	case forksReason == ReasonForkFailed:
		st.Phase = v1alpha1.EnvironmentFailed
		set(v1alpha1.EnvironmentConditionReady, false, forksReason, forksMsg)
	case routesReason == ReasonRouteRefused:
		st.Phase = v1alpha1.EnvironmentFailed
		set(v1alpha1.EnvironmentConditionReady, false, routesReason, routesMsg)
	case dataReason == ReasonDataFailed:
		st.Phase = v1alpha1.EnvironmentFailed
		set(v1alpha1.EnvironmentConditionReady, false, dataReason, dataMsg)
	case forksOK && routesOK && dataOK:
		st.Phase = v1alpha1.EnvironmentReady
		msg := "forks ready, routes active, data loaded"
		if len(o.Warnings) > 0 {
			msg += "; " + strings.Join(o.Warnings, "; ")
		}
		set(v1alpha1.EnvironmentConditionReady, true, ReasonReady, msg)
	default:
		st.Phase = v1alpha1.EnvironmentProvisioning
		if !anyExists(o.Forks) && !dataStarted(o.Data) {
			st.Phase = v1alpha1.EnvironmentPending
		}
		var waiting []string
		for _, m := range []struct {
			ok  bool
			msg string
		}{{forksOK, forksMsg}, {routesOK, routesMsg}, {dataOK, dataMsg}} {
			if !m.ok {
				waiting = append(waiting, m.msg)
			}
		}
		set(v1alpha1.EnvironmentConditionReady, false, ReasonProvisioning, "waiting: "+strings.Join(waiting, "; "))
	}
	return st
}

func forkSummary(env *v1alpha1.Environment) string {
	names := make([]string, len(env.Spec.Forks))
	for i, f := range env.Spec.Forks {
		names[i] = f.Workload.Name
	}
	return strings.Join(names, ", ")
}

func anyExists(fs []ForkObservation) bool {
	for _, f := range fs {
		if f.Exists {
			return true
		}
	}
	return false
}

// forksState fills st.Forks and sums them up.
func forksState(st *v1alpha1.EnvironmentStatus, fs []ForkObservation) (bool, string, string) {
	var pending, failed []string
	for _, f := range fs {
		fst := v1alpha1.ForkStatus{
			Name:          f.Plan.Name,
			Workload:      f.Plan.Baseline,
			Replicas:      f.Plan.Replicas,
			ReadyReplicas: f.Ready,
			Images:        f.Plan.Images(),
			Message:       f.Message,
		}
		switch {
		case f.Failed:
			failed = append(failed, fmt.Sprintf("fork %s: %s", f.Plan.Name, f.Message))
		case !f.Exists:
			pending = append(pending, fmt.Sprintf("fork %s not created yet", f.Plan.Name))
		case f.Ready < f.Plan.Replicas:
			m := fmt.Sprintf("fork %s: %d/%d pods ready", f.Plan.Name, f.Ready, f.Plan.Replicas)
			if f.Message != "" {
				m += " (" + f.Message + ")"
			}
			pending = append(pending, m)
		}
		st.Forks = append(st.Forks, fst)
	}
	switch {
	case len(failed) > 0:
		return false, ReasonForkFailed, strings.Join(failed, "; ")
	case len(pending) > 0:
		return false, ReasonForksPending, strings.Join(pending, "; ")
	}
	return true, ReasonForksReady, fmt.Sprintf("%d forks ready", len(fs))
}

// routesState fills st.Routes and sums them up.
func routesState(st *v1alpha1.EnvironmentStatus, rs []RouteObservation) (bool, string, string) {
	var pending, refused []string
	for _, r := range rs {
		st.Routes = append(st.Routes, v1alpha1.RouteStatus{
			Intercept: r.Route.Intercept,
			Kind:      r.Route.Kind,
			Service:   r.Route.Service,
			Port:      r.Route.Port,
			Fork:      r.Route.Fork,
			State:     r.State,
		})
		switch r.State {
		case v1alpha1.InterceptActive:
		case v1alpha1.InterceptFailed:
			refused = append(refused, fmt.Sprintf("intercept %s: %s", r.Route.Intercept, r.Message))
		default:
			m := fmt.Sprintf("intercept %s %s", r.Route.Intercept, orWord(string(r.State), "not created yet"))
			if r.Message != "" {
				m += " (" + r.Message + ")"
			}
			pending = append(pending, m)
		}
	}
	switch {
	case len(refused) > 0:
		return false, ReasonRouteRefused, strings.Join(refused, "; ")
	case len(pending) > 0:
		return false, ReasonRoutesPending, strings.Join(pending, "; ")
	case len(rs) == 0:
		return true, ReasonNoRoutes, "no Service selects a forked workload: nothing to route"
	}
	return true, ReasonRoutesActive, fmt.Sprintf("%d intercepts active", len(rs))
}

// dataStarted reports whether a data source is being made (a branch
// restoring before any fork exists is provisioning, not pending).
func dataStarted(ds []DataObservation) bool {
	for _, d := range ds {
		if d.Ready || d.Status.Phase != "" && d.Status.Phase != v1alpha1.DataPending {
			return true
		}
	}
	return false
}

// dataState fills st.Data and sums the data sources up.
func dataState(st *v1alpha1.EnvironmentStatus, ds []DataObservation) (bool, string, string) {
	var pending, failed []string
	for _, d := range ds {
		s := d.Status
		s.Name = d.Name
		st.Data = append(st.Data, s)
		switch {
		case d.Failed:
			failed = append(failed, fmt.Sprintf("data %s: %s", d.Name, d.Message))
		case !d.Ready:
			pending = append(pending, fmt.Sprintf("data %s: %s", d.Name, orWord(d.Message, "loading")))
		}
	}
	switch {
	case len(failed) > 0:
		return false, ReasonDataFailed, strings.Join(failed, "; ")
	case len(pending) > 0:
		return false, ReasonDataPending, strings.Join(pending, "; ")
	case len(ds) == 0:
		return true, ReasonNoData, "no data sources"
	}
	return true, ReasonDataReady, fmt.Sprintf("%d data sources ready", len(ds))
}

func orWord(s, otherwise string) string {
	if s == "" {
		return otherwise
	}
	return strings.ToLower(s)
}
