package kubeauth

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Rules says, for each full gRPC method name of a service
// ("/detour.v1.ControlService/CreateIntercept"), who may call it. A service
// keeps its Rules beside its implementation and registers them
// (Authenticator.Register); a method in no registered Rules is refused to
// everyone.
type Rules map[string]Rule

// A Rule is who may call one method: a UserRule or an AgentRule. The kinds
// are kubeauth's, since each needs the Authenticator's reviews; the rows
// that use them are the services'.
type Rule interface {
	// check refuses a rule that cannot work, when it is registered.
	check() error
	// authenticate reviews the call's bearer token and says who holds it.
	authenticate(ctx context.Context, a *Authenticator, method, token string) (*identity, error)
	// authorize decides whether id may make the call with request req.
	authorize(ctx context.Context, a *Authenticator, id *identity, method string, req any) error
}

// Resource is a Kubernetes resource as RBAC rules name it, and as messages
// name one of its objects.
type Resource struct {
	Group    string // API group, e.g. "detour.dev"
	Resource string // plural, as RBAC rules name it, e.g. "intercepts"
	Singular string // e.g. "intercept"; Resource when empty
}

// String is the resource as kubectl names it: intercepts.detour.dev.
func (r Resource) String() string {
	if r.Group == "" {
		return r.Resource
	}
	return r.Resource + "." + r.Group
}

// UserRule lets a user call when Kubernetes RBAC allows them Verb on
// Resource in the namespace, and on the object, the request is about: a
// SubjectAccessReview asks, so the same rights govern the gRPC service and
// kubectl. Users present the bearer token of their kubeconfig, reviewed for
// the API server's own audiences.
type UserRule struct {
	Verb     string
	Resource Resource
	// Scope returns what req is about: its namespace (empty: all
	// namespaces) and the name of its object (empty: none in particular).
	// A namespace the request leaves out should be defaulted as the
	// service defaults it, so that RBAC judges the namespace the service
	// will act in.
	Scope func(req any) (namespace, name string, err error)
	// Also lists further rights the call needs, all of them, each asked
	// with its own SubjectAccessReview; nil needs none. A call that makes
	// objects of other kinds on the user's behalf (an environment's forks)
	// needs the user's right to make them, so that calling the service never
	// grants more than the user has.
	Also func(req any) []Access
}

// Access is one right: Verb on Resource in Namespace, on the object Name
// if one is given.
type Access struct {
	Verb      string
	Resource  Resource
	Namespace string
	Name      string
}

func (r UserRule) check() error {
	if r.Verb == "" || r.Resource.Resource == "" || r.Scope == nil {
		return errors.New("a user rule needs a verb, a resource and a scope")
	}
	return nil
}

func (UserRule) authenticate(ctx context.Context, a *Authenticator, _, token string) (*identity, error) {
	// No audiences: the API server's own, those of a user's kubeconfig
	// token.
	user, err := a.review(ctx, token, nil)
	if err != nil {
		return nil, err
	}
	return &identity{user: user}, nil
}

// authorize asks the API server, with a SubjectAccessReview, whether the
// user may do what the call does, and whatever Also adds.
func (r UserRule) authorize(ctx context.Context, a *Authenticator, id *identity, method string, req any) error {
	ns, name, err := r.Scope(req)
	if err != nil {
		return status.Errorf(codes.PermissionDenied, "%s: %v", method, err)
	}
	if err := a.allowed(ctx, id, method, Access{Verb: r.Verb, Resource: r.Resource, Namespace: ns}, name); err != nil {
		return err
	}
	if r.Also != nil {
		for _, acc := range r.Also(req) {
			if err := a.allowed(ctx, id, method, acc, acc.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// allowed asks whether the user may do acc (on the object name, if any).
func (a *Authenticator) allowed(ctx context.Context, id *identity, method string, acc Access, name string) error {
	u := id.user
	ns := acc.Namespace
	var extra map[string]authzv1.ExtraValue
	if len(u.Extra) > 0 {
		extra = make(map[string]authzv1.ExtraValue, len(u.Extra))
		for k, v := range u.Extra {
			extra[k] = authzv1.ExtraValue(v)
		}
	}
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User:   u.Username,
		Groups: u.Groups,
		UID:    u.UID,
		Extra:  extra,
		ResourceAttributes: &authzv1.ResourceAttributes{
			Namespace: ns,
			Verb:      acc.Verb,
			Group:     acc.Resource.Group,
			Resource:  acc.Resource.Resource,
			Name:      name,
		},
	}}
	res, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		a.log.Warn("SubjectAccessReview failed", "user", u.Username, "err", err)
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
			return status.Error(codes.Internal,
				"the controller cannot check permissions: it may not create subjectaccessreviews.authorization.k8s.io")
		}
		return status.Errorf(codes.Unavailable, "cannot check permissions: SubjectAccessReview: %v", err)
	}
	if res.Status.Allowed && !res.Status.Denied {
		return nil
	}
	where := fmt.Sprintf("in namespace %q", ns)
	if ns == "" {
		where = "in all namespaces"
	}
	msg := fmt.Sprintf("user %q may not %s %s %s", u.Username, acc.Verb, acc.Resource, where)
	if name != "" && acc.Verb != "create" {
		singular := acc.Resource.Singular
		if singular == "" {
			singular = acc.Resource.Resource
		}
		msg = fmt.Sprintf("user %q may not %s %s %q (%s) %s", u.Username, acc.Verb, singular, name, acc.Resource, where)
	}
	if res.Status.Reason != "" {
		msg += " (RBAC: " + res.Status.Reason + ")"
	}
	a.log.Info("call refused", "user", u.Username, "method", method, "verb", acc.Verb, "resource", acc.Resource.String(), "namespace", ns, "name", name,
		"reason", res.Status.Reason, "evaluationError", res.Status.EvaluationError)
	return status.Error(codes.PermissionDenied, msg)
}

// AgentRule lets a node agent (one pod per node, as a DaemonSet runs them)
// call for its own node only. It presents a projected token of
// ServiceAccount for Audience, bound to its pod, so that the API server
// names the pod's node in the token (NodeNameExtra); the request names a
// node (a GetNode method, as protobuf messages with a node field have),
// which must be that one.
type AgentRule struct {
	// ServiceAccount is "namespace:name" of the agents' service account,
	// e.g. "detour-system:detour-agent".
	ServiceAccount string
	// Audience is what the agents' tokens are issued for, e.g. "detour".
	Audience string
}

func (r AgentRule) check() error {
	if r.Audience == "" {
		return errors.New("an agent rule needs an audience")
	}
	ns, name, ok := strings.Cut(r.ServiceAccount, ":")
	if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
		return fmt.Errorf("agent service account %q is not namespace:name", r.ServiceAccount)
	}
	return nil
}

// user is the service account's user name: system:serviceaccount:<ns>:<name>.
func (r AgentRule) user() string { return "system:serviceaccount:" + r.ServiceAccount }

// authenticate reviews the token for the agents' audience and checks that
// it is the agents' service account's, bound to a pod on a node.
func (r AgentRule) authenticate(ctx context.Context, a *Authenticator, method, token string) (*identity, error) {
	user, err := a.review(ctx, token, []string{r.Audience})
	if err != nil {
		return nil, err
	}
	if want := r.user(); user.Username != want {
		a.log.Info("agent call refused: wrong service account", "user", user.Username, "method", method)
		return nil, status.Errorf(codes.PermissionDenied,
			"user %q may not call %s: only the agents' service account %s may", user.Username, method, want)
	}
	nodes := user.Extra[NodeNameExtra]
	if len(nodes) != 1 || nodes[0] == "" {
		a.log.Info("agent call refused: token names no node", "user", user.Username, "method", method)
		return nil, status.Errorf(codes.PermissionDenied,
			"the token of %q names no node (no %s extra): an agent must present a projected service-account token of its pod "+
				"(audience %q), issued by Kubernetes 1.30 or newer for a pod scheduled to a node", user.Username, NodeNameExtra, r.Audience)
	}
	return &identity{user: user, node: nodes[0]}, nil
}

// authorize lets an agent speak only for the node its token is bound to.
func (AgentRule) authorize(_ context.Context, a *Authenticator, id *identity, method string, req any) error {
	n, ok := req.(interface{ GetNode() string })
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%s: request %T names no node", method, req)
	}
	if node := n.GetNode(); node != id.node {
		a.log.Info("agent call refused: other node", "user", id.user.Username, "tokenNode", id.node, "requestNode", node, "method", method)
		return status.Errorf(codes.PermissionDenied,
			"the agent on node %q may not speak for node %q", id.node, node)
	}
	return nil
}
