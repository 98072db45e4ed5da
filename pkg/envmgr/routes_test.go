package envmgr

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/inventory"
)

func baseline(name string, labels map[string]string) *Baseline {
	return &Baseline{
		Namespace: "shop",
		Ref:       v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: name},
		Template:  corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}},
	}
}

func TestPlanRoutes(t *testing.T) {
	env := testEnv("pr-7", "")
	web := baseline("web", map[string]string{"app": "web"})
	api := baseline("api", map[string]string{"app": "api", "tier": "backend"})
	services := []inventory.Service{
		{Name: "api", Namespace: "shop", Selector: map[string]string{"app": "api"}, Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 9090}}},
		{Name: "web", Namespace: "shop", Selector: map[string]string{"app": "web"}, Ports: []inventory.ServicePort{{Port: 80}}},
		{Name: "db", Namespace: "shop", Selector: map[string]string{"app": "db"}, Ports: []inventory.ServicePort{{Port: 5432}}},
		{Name: "all", Namespace: "shop", Selector: map[string]string{}, Ports: []inventory.ServicePort{{Port: 1}}},
	}
	routes, warnings := PlanRoutes(env, []*Baseline{web, api}, services)
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}
	var got []string
	for _, r := range routes {
		got = append(got, fmt.Sprintf("%s %s %s:%d -> %s", r.Intercept, r.Kind, r.Service, r.Port, r.Fork))
		switch r.Kind {
		case v1alpha1.RouteSession:
			if r.Key != "pr-7" || r.Sources != nil {
				t.Errorf("%s: key %q sources %v", r.Intercept, r.Key, r.Sources)
			}
		case v1alpha1.RouteForks:
			if r.Key != "" || !reflect.DeepEqual(r.Sources, map[string]string{v1alpha1.LabelEnvironment: "pr-7"}) {
				t.Errorf("%s: key %q sources %v", r.Intercept, r.Key, r.Sources)
			}
		}
		if r.Namespace != "shop" || r.ForkSelector[v1alpha1.LabelEnvironment] != "pr-7" {
			t.Errorf("%s: namespace %s fork selector %v", r.Intercept, r.Namespace, r.ForkSelector)
		}
	}
	want := []string{
		"pr-7-api-80 session api:80 -> api-pr-7",
		"pr-7-api-80-forks forks api:80 -> api-pr-7",
		"pr-7-api-9090 session api:9090 -> api-pr-7",
		"pr-7-api-9090-forks forks api:9090 -> api-pr-7",
		"pr-7-web-80 session web:80 -> web-pr-7",
		"pr-7-web-80-forks forks web:80 -> web-pr-7",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("routes:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// A Service over both forked workloads cannot be routed.
	both := append(services, inventory.Service{Name: "backends", Namespace: "shop", Selector: map[string]string{"tier": "backend"}, Ports: []inventory.ServicePort{{Port: 7}}})
	web.Template.Labels["tier"] = "backend"
	routes2, warnings := PlanRoutes(env, []*Baseline{web, api}, both)
	if len(routes2) != len(routes) || len(warnings) != 1 || !strings.Contains(warnings[0], "service backends selects the pods of web and api") {
		t.Errorf("%d routes, warnings %v", len(routes2), warnings)
	}
}

func forkObs(name string, replicas, ready int32, exists bool) ForkObservation {
	return ForkObservation{Plan: &ForkPlan{Name: name, Replicas: replicas, Baseline: v1alpha1.WorkloadRef{Kind: "Deployment", Name: strings.TrimSuffix(name, "-pr-7")}}, Exists: exists, Ready: ready}
}

func routeObs(name string, state v1alpha1.InterceptState) RouteObservation {
	return RouteObservation{Route: Route{Intercept: name, Kind: v1alpha1.RouteSession, Service: "api", Port: 80, Fork: "api-pr-7"}, State: state}
}

func TestStatusPhases(t *testing.T) {
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	later := now.Add(time.Hour)
	env := testEnv("pr-7", "")
	env.Spec.Forks = []v1alpha1.Fork{{Workload: v1alpha1.WorkloadRef{Kind: "Deployment", Name: "web"}}, {Workload: v1alpha1.WorkloadRef{Kind: "Deployment", Name: "api"}}}
	ready := []ForkObservation{forkObs("web-pr-7", 1, 1, true), forkObs("api-pr-7", 2, 2, true)}
	active := []RouteObservation{routeObs("pr-7-api-80", v1alpha1.InterceptActive)}
	for _, tc := range []struct {
		name       string
		o          Observation
		phase      v1alpha1.EnvironmentPhase
		reason     string
		msgContain string
	}{
		{"nothing made yet", Observation{Forks: []ForkObservation{forkObs("web-pr-7", 1, 0, false)}},
			v1alpha1.EnvironmentPending, ReasonProvisioning, "fork web-pr-7 not created yet"},
		{"pods starting", Observation{Forks: []ForkObservation{forkObs("web-pr-7", 1, 1, true), forkObs("api-pr-7", 2, 1, true)}, Routes: active},
			v1alpha1.EnvironmentProvisioning, ReasonProvisioning, "fork api-pr-7: 1/2 pods ready"},
		{"route pending", Observation{Forks: ready, Routes: []RouteObservation{routeObs("pr-7-api-80", v1alpha1.InterceptPending)}},
			v1alpha1.EnvironmentProvisioning, ReasonProvisioning, "intercept pr-7-api-80 pending"},
		{"data loading", Observation{Forks: ready, Routes: active, Data: []DataObservation{{Name: "db", Message: "restoring"}}},
			v1alpha1.EnvironmentProvisioning, ReasonProvisioning, "data db: restoring"},
		{"ready", Observation{Forks: ready, Routes: active, ExpiresAt: later},
			v1alpha1.EnvironmentReady, ReasonReady, "forks ready"},
		{"ready with a warning", Observation{Forks: ready, Routes: active, Warnings: []string{"service x not routed"}},
			v1alpha1.EnvironmentReady, ReasonReady, "service x not routed"},
		{"fork failed", Observation{Forks: []ForkObservation{{Plan: ready[0].Plan, Exists: true, Failed: true, Message: "ImagePullBackOff: reg/web:pr-7"}}, Routes: active},
			v1alpha1.EnvironmentFailed, ReasonForkFailed, "fork web-pr-7: ImagePullBackOff"},
		{"route refused", Observation{Forks: ready, Routes: []RouteObservation{{Route: active[0].Route, State: v1alpha1.InterceptFailed, Message: "overlaps intercept shop/alice"}}},
			v1alpha1.EnvironmentFailed, ReasonRouteRefused, "overlaps intercept shop/alice"},
		{"invalid", Observation{Failure: &Failure{Reason: ReasonWorkloadAbsent, Message: "Deployment nope not found"}},
			v1alpha1.EnvironmentFailed, ReasonWorkloadAbsent, "Deployment nope not found"},
		{"data failed", Observation{Forks: ready, Routes: active, Data: []DataObservation{{Name: "seed", Failed: true, Message: "job failed"}}},
			v1alpha1.EnvironmentFailed, ReasonDataFailed, "data seed: job failed"},
		{"expired", Observation{Forks: ready, Routes: active, ExpiresAt: now},
			v1alpha1.EnvironmentExpiring, ReasonExpired, "TTL ran out at 2026-12-04T10:00:00Z"},
		{"deleted wins over everything", Observation{Deleting: true, ExpiresAt: now, Failure: &Failure{Reason: "X", Message: "x"}},
			v1alpha1.EnvironmentDeleting, ReasonDeleted, "deleted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Now = now
			st := Status(env, tc.o)
			c := meta.FindStatusCondition(st.Conditions, v1alpha1.EnvironmentConditionReady)
			if st.Phase != tc.phase || c == nil || c.Reason != tc.reason || !strings.Contains(c.Message, tc.msgContain) {
				t.Errorf("phase %s, Ready %+v; want %s, reason %s, message containing %q", st.Phase, c, tc.phase, tc.reason, tc.msgContain)
			}
			if st.Key != "pr-7" || st.ForkSummary != "web, api" || st.ObservedGeneration != 3 {
				t.Errorf("key %q forks %q generation %d", st.Key, st.ForkSummary, st.ObservedGeneration)
			}
			if len(st.Conditions) != 4 {
				t.Errorf("conditions: %+v", st.Conditions)
			}
		})
	}
}

func TestStatusKeepsTransitionTimes(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	env := testEnv("pr-7", "")
	o := Observation{Now: t0, Forks: []ForkObservation{forkObs("web-pr-7", 1, 0, true)}}
	env.Status = Status(env, o)
	o.Now = t0.Add(time.Minute)
	st := Status(env, o)
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.EnvironmentConditionReady); !c.LastTransitionTime.Time.Equal(t0) {
		t.Errorf("unchanged Ready moved to %v", c.LastTransitionTime)
	}
	env.Status = st
	o.Forks[0].Ready = 1
	st = Status(env, o)
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.EnvironmentConditionReady); c.Status != metav1.ConditionTrue || !c.LastTransitionTime.Time.Equal(o.Now) {
		t.Errorf("Ready after the pod came up: %+v", c)
	}
	if st.Forks[0].ReadyReplicas != 1 || st.Forks[0].Name != "web-pr-7" {
		t.Errorf("forks: %+v", st.Forks)
	}
}
