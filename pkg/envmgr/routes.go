package envmgr

import (
	"fmt"
	"slices"
	"strings"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/inventory"
)

// Route is one intercept an environment owns.
type Route struct {
	// Intercept is the intercept's name, in the environment's namespace.
	Intercept string
	Kind      v1alpha1.RouteKind
	Namespace string
	Service   string
	Port      int32 // the service port
	// Fork is the fork workload the route sends to; ForkSelector selects
	// its pods.
	Fork         string
	ForkSelector map[string]string
	// Key is the session key a session route matches.
	Key string
	// Sources selects the pods whose connections a forks route takes: every
	// fork pod of the environment.
	Sources map[string]string
}

// PlanRoutes lists the intercepts env owns: for every port of every Service
// that selects a forked workload's baseline pods, a session route (requests
// with the key reach the fork) and a forks route (connections from the
// environment's fork pods reach the fork; redirected at connect() where the
// caller's node can). A Service that selects the pods of two forked
// workloads cannot send a request to both forks: it is left out, with a
// warning. Routes come sorted by intercept name.
func PlanRoutes(env *v1alpha1.Environment, baselines []*Baseline, services []inventory.Service) (routes []Route, warnings []string) {
	key := Key(env)
	for i := range services {
		svc := &services[i]
		var forked []*Baseline
		for _, b := range baselines {
			probe := inventory.Pod{Namespace: b.Namespace, Labels: b.Template.Labels}
			if svc.Selects(&probe) {
				forked = append(forked, b)
			}
		}
		switch {
		case len(forked) == 0:
			continue
		case len(forked) > 1:
			names := make([]string, len(forked))
			for j, b := range forked {
				names[j] = b.Ref.Name
			}
			warnings = append(warnings, fmt.Sprintf("service %s selects the pods of %s: not routed, a request cannot go to two forks",
				svc.Name, strings.Join(names, " and ")))
			continue
		}
		b := forked[0]
		for _, p := range svc.Ports {
			for _, kind := range []v1alpha1.RouteKind{v1alpha1.RouteSession, v1alpha1.RouteForks} {
				r := Route{
					Intercept:    InterceptName(env.Name, svc.Name, int32(p.Port), kind),
					Kind:         kind,
					Namespace:    env.Namespace,
					Service:      svc.Name,
					Port:         int32(p.Port),
					Fork:         ForkName(b.Ref.Name, env.Name),
					ForkSelector: ForkSelector(env.Name, b.Ref.Name),
				}
				if kind == v1alpha1.RouteSession {
					r.Key = key
				} else {
					r.Sources = EnvironmentSelector(env.Name)
				}
				routes = append(routes, r)
			}
		}
	}
	slices.SortFunc(routes, func(a, b Route) int { return strings.Compare(a.Intercept, b.Intercept) })
	// Two routes with one name: a service and port whose names join into
	// another's (api-8 port 80 against api port 880): keep the first,
	// say so.
	out := routes[:0]
	for i, r := range routes {
		if i > 0 && r.Intercept == routes[i-1].Intercept {
			warnings = append(warnings, fmt.Sprintf("service %s port %d: its intercept name %s is taken by service %s; not routed",
				r.Service, r.Port, r.Intercept, routes[i-1].Service))
			continue
		}
		out = append(out, r)
	}
	return out, warnings
}
