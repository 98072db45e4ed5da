package kubeauth

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
)

// The resource RBAC rules name to grant users the ControlService.
const (
	interceptsGroup    = "detour.dev"
	interceptsResource = "intercepts"
)

// controlVerb is the RBAC verb on intercepts.detour.dev each ControlService
// method needs.
func controlVerb(method string) (string, bool) {
	switch method {
	case detourv1.ControlService_CreateIntercept_FullMethodName:
		return "create", true
	case detourv1.ControlService_GetIntercept_FullMethodName:
		return "get", true
	case detourv1.ControlService_ListIntercepts_FullMethodName,
		detourv1.ControlService_GetStatus_FullMethodName:
		return "list", true
	case detourv1.ControlService_DeleteIntercept_FullMethodName:
		return "delete", true
	case detourv1.ControlService_RenewIntercept_FullMethodName:
		return "update", true
	case detourv1.ControlService_WatchIntercepts_FullMethodName:
		return "watch", true
	}
	return "", false
}

// scope is the namespace (empty: all) and name a request is about. The
// namespace defaults as the controller defaults it, so that RBAC judges
// the namespace the controller will act in.
func scope(msg any) (namespace, name string, err error) {
	orDefault := func(ns string) string {
		if ns == "" {
			return inventory.DefaultNamespace
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
	}
	return "", "", fmt.Errorf("unexpected request %T", msg)
}

// authorizeUser asks the API server, with a SubjectAccessReview, whether
// the user may do what the ControlService call does to intercepts.
func (a *Authenticator) authorizeUser(ctx context.Context, id *identity, method string, msg any) error {
	verb, ok := controlVerb(method)
	if !ok {
		return status.Errorf(codes.PermissionDenied, "method %s is not open to anyone", method)
	}
	ns, name, err := scope(msg)
	if err != nil {
		return status.Errorf(codes.PermissionDenied, "%s: %v", method, err)
	}
	u := id.user
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
			Verb:      verb,
			Group:     interceptsGroup,
			Resource:  interceptsResource,
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
	msgText := fmt.Sprintf("user %q may not %s %s.%s %s", u.Username, verb, interceptsResource, interceptsGroup, where)
	if name != "" && verb != "create" {
		msgText = fmt.Sprintf("user %q may not %s intercept %q (%s.%s) %s", u.Username, verb, name, interceptsResource, interceptsGroup, where)
	}
	if res.Status.Reason != "" {
		msgText += " (RBAC: " + res.Status.Reason + ")"
	}
	a.log.Info("call refused", "user", u.Username, "method", method, "verb", verb, "namespace", ns, "name", name,
		"reason", res.Status.Reason, "evaluationError", res.Status.EvaluationError)
	return status.Error(codes.PermissionDenied, msgText)
}
