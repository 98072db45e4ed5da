package controller

import (
	"fmt"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/kubeauth"
)

// Who may call the controller's services in a cluster (--auth=kube): the
// rows kubeauth enforces, one per method. A method without a row is refused
// to everyone, so a new RPC must be given one here (TestAccessCoversEveryMethod).
// See docs/architecture.md, "Kubernetes mode", "Who may call".

// interceptsResource is the resource on which RBAC grants users the
// ControlService.
var interceptsResource = kubeauth.Resource{Group: "detour.dev", Resource: "intercepts", Singular: "intercept"}

// environmentsResource is the resource on which RBAC grants users the
// environment RPCs.
var environmentsResource = kubeauth.Resource{Group: "detour.dev", Resource: "environments", Singular: "environment"}

// forkedKinds are the resources a user must be allowed to create to fork a
// workload of that kind: an environment never runs what its creator could
// not run.
var forkedKinds = map[string]kubeauth.Resource{
	"":            {Group: "apps", Resource: "deployments"},
	"Deployment":  {Group: "apps", Resource: "deployments"},
	"StatefulSet": {Group: "apps", Resource: "statefulsets"},
}

// ControlRules is who may call ControlService: users, each call needing a
// verb on intercepts.detour.dev (environments.detour.dev for the
// environment calls) in the namespace it is about, so that the same RBAC
// rules govern detour and kubectl. Renewing is an update; the
// status of a namespace is a list of its intercepts.
func ControlRules() kubeauth.Rules {
	user := func(verb string) kubeauth.Rule {
		return kubeauth.UserRule{Verb: verb, Resource: interceptsResource, Scope: controlScope}
	}
	env := func(verb string) kubeauth.Rule {
		return kubeauth.UserRule{Verb: verb, Resource: environmentsResource, Scope: controlScope}
	}
	return kubeauth.Rules{
		detourv1.ControlService_CreateIntercept_FullMethodName: user("create"),
		detourv1.ControlService_GetIntercept_FullMethodName:    user("get"),
		detourv1.ControlService_ListIntercepts_FullMethodName:  user("list"),
		detourv1.ControlService_GetStatus_FullMethodName:       user("list"),
		detourv1.ControlService_DeleteIntercept_FullMethodName: user("delete"),
		detourv1.ControlService_RenewIntercept_FullMethodName:  user("update"),
		detourv1.ControlService_WatchIntercepts_FullMethodName: user("watch"),

		detourv1.ControlService_CreateEnvironment_FullMethodName: kubeauth.UserRule{
			Verb: "create", Resource: environmentsResource, Scope: controlScope, Also: forkRights,
		},
		detourv1.ControlService_GetEnvironment_FullMethodName:    env("get"),
		detourv1.ControlService_ListEnvironments_FullMethodName:  env("list"),
		detourv1.ControlService_DeleteEnvironment_FullMethodName: env("delete"),
		detourv1.ControlService_RenewEnvironment_FullMethodName:  env("update"),
		detourv1.ControlService_WatchEnvironments_FullMethodName: env("watch"),
	}
}

// forkRights is what creating an environment needs besides create on
// environments: create on each forked workload's kind in the namespace; for
// a database branch, get on the Secret it snapshots with and create on
// statefulsets (the branch is one); for a seed job, create on jobs (the
// same checks the ValidatingAdmissionPolicy in deploy/admission makes for
// kubectl). A kind no one can fork needs no right: the controller refuses
// it anyway.
func forkRights(msg any) []kubeauth.Access {
	r, ok := msg.(*detourv1.CreateEnvironmentRequest)
	if !ok {
		return nil
	}
	ns, _, _ := controlScope(msg)
	seen := map[kubeauth.Access]bool{}
	var out []kubeauth.Access
	add := func(a kubeauth.Access) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	spec := r.GetEnvironment().GetSpec()
	for _, f := range spec.GetForks() {
		if res, ok := forkedKinds[f.GetWorkload().GetKind()]; ok {
			add(kubeauth.Access{Verb: "create", Resource: res, Namespace: ns})
		}
	}
	for _, d := range spec.GetData() {
		switch {
		case d.GetPostgresBranch() != nil:
			if s := d.GetPostgresBranch().GetCredentials().GetSecret(); s != "" {
				add(kubeauth.Access{Verb: "get", Resource: secretsResource, Namespace: ns, Name: s})
			}
			add(kubeauth.Access{Verb: "create", Resource: forkedKinds["StatefulSet"], Namespace: ns})
		case d.GetJob() != nil:
			add(kubeauth.Access{Verb: "create", Resource: jobsResource, Namespace: ns})
		}
	}
	return out
}

var (
	secretsResource = kubeauth.Resource{Resource: "secrets", Singular: "secret"}
	jobsResource    = kubeauth.Resource{Group: "batch", Resource: "jobs"}
)

// AgentSyncRules is who may call AgentSyncService: the agents, by a
// projected token of serviceAccount ("namespace:name") for audience, each
// for the node its pod runs on.
func AgentSyncRules(serviceAccount, audience string) kubeauth.Rules {
	agent := kubeauth.AgentRule{ServiceAccount: serviceAccount, Audience: audience}
	return kubeauth.Rules{
		detourv1.AgentSyncService_Register_FullMethodName:          agent,
		detourv1.AgentSyncService_WatchDesiredState_FullMethodName: agent,
		detourv1.AgentSyncService_ReportStatus_FullMethodName:      agent,
	}
}

// controlScope is the namespace (empty: all) and name a ControlService
// request is about. The namespace defaults as the Server defaults it, so
// that RBAC judges the namespace the controller will act in.
func controlScope(msg any) (namespace, name string, err error) {
	orDefault := func(ns string) string {
		if ns == "" {
			return inventory.NamespaceDefault
		}
		return ns
	}
	switch r := msg.(type) {
	case *detourv1.CreateInterceptRequest:
		ic := r.GetIntercept()
		ns := ic.GetNamespace()
		if ns == "" {
			ns = ic.GetSpec().GetServiceNamespace()
		}
		return orDefault(ns), ic.GetName(), nil
	case *detourv1.GetInterceptRequest:
		return orDefault(r.GetNamespace()), r.GetName(), nil
	case *detourv1.DeleteInterceptRequest:
		return orDefault(r.GetNamespace()), r.GetName(), nil
	case *detourv1.RenewInterceptRequest:
		return orDefault(r.GetNamespace()), r.GetName(), nil
	case *detourv1.ListInterceptsRequest:
		return r.GetNamespace(), "", nil
	case *detourv1.WatchInterceptsRequest:
		return r.GetNamespace(), "", nil
	case *detourv1.GetStatusRequest:
		return r.GetNamespace(), "", nil
	case *detourv1.CreateEnvironmentRequest:
		return orDefault(r.GetEnvironment().GetNamespace()), r.GetEnvironment().GetName(), nil
	case *detourv1.GetEnvironmentRequest:
		return orDefault(r.GetNamespace()), r.GetName(), nil
	case *detourv1.DeleteEnvironmentRequest:
		return orDefault(r.GetNamespace()), r.GetName(), nil
	case *detourv1.RenewEnvironmentRequest:
		return orDefault(r.GetNamespace()), r.GetName(), nil
	case *detourv1.ListEnvironmentsRequest:
		return r.GetNamespace(), "", nil
	case *detourv1.WatchEnvironmentsRequest:
		return r.GetNamespace(), r.GetName(), nil
	}
	return "", "", fmt.Errorf("unexpected request %T", msg)
}
