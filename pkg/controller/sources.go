package controller

import (
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// Source filters restrict an intercept to connections from some pods. The
// agent applies them on the receiving node, where the connection's source
// address is known whatever node the caller runs on; the controller turns
// pod and namespace names into those addresses.

// sourceSet is a spec's source filter with pod names made namespace/name.
type sourceSet struct {
	pods       []string // "ns/pod"
	namespaces []string
	// selector admits the pods of selectorNS with all these labels.
	selector   map[string]string
	selectorNS string
}

func sourcesOf(spec *detourv1.InterceptSpec) sourceSet {
	var s sourceSet
	for _, p := range spec.GetSourcePods() {
		if !strings.Contains(p, "/") {
			p = spec.GetServiceNamespace() + "/" + p
		}
		s.pods = append(s.pods, p)
	}
	s.namespaces = append(s.namespaces, spec.GetSourceNamespaces()...)
	if sel := spec.GetSourceSelector(); len(sel) > 0 {
		s.selector, s.selectorNS = sel, spec.GetServiceNamespace()
	}
	return s
}

func (s sourceSet) restricted() bool { return len(s.pods)+len(s.namespaces)+len(s.selector) > 0 }

// admits reports whether a pod passes the filter.
func (s sourceSet) admits(p *inventory.Pod) bool {
	if slices.Contains(s.pods, p.Namespace+"/"+p.Name) || slices.Contains(s.namespaces, p.Namespace) {
		return true
	}
	if len(s.selector) == 0 || p.Namespace != s.selectorNS {
		return false
	}
	for k, v := range s.selector {
		if p.Labels[k] != v {
			return false
		}
	}
	return true
}

// disjoint reports whether no pod can pass both filters. An unrestricted
// filter admits every pod.
func (s sourceSet) disjoint(o sourceSet) bool {
	if !s.restricted() || !o.restricted() {
		return false
	}
	if len(s.selector) > 0 || len(o.selector) > 0 {
		// Label selectors are proven apart only by one label both name
		// with different values (two environments' pods); against names
		// or another selector, a pod could carry any labels.
		if len(s.pods)+len(s.namespaces)+len(o.pods)+len(o.namespaces) > 0 || len(s.selector) == 0 || len(o.selector) == 0 {
			return false
		}
		for k, v := range s.selector {
			if w, ok := o.selector[k]; ok && w != v {
				return true
			}
		}
		return false
	}
	for _, ns := range s.namespaces {
		if slices.Contains(o.namespaces, ns) {
			return false
		}
	}
	inNS := func(pod string, namespaces []string) bool {
		return slices.Contains(namespaces, pod[:strings.IndexByte(pod, '/')])
	}
	for _, p := range s.pods {
		if slices.Contains(o.pods, p) || inNS(p, o.namespaces) {
			return false
		}
	}
	for _, p := range o.pods {
		if inNS(p, s.namespaces) {
			return false
		}
	}
	return true
}

func validateSources(spec *detourv1.InterceptSpec, inv *inventory.Inventory) error {
	for _, p := range sourcesOf(spec).pods {
		ns, name, _ := strings.Cut(p, "/")
		if !isDNSLabel(ns) || !isDNSSubdomain(name) || strings.Contains(name, "/") {
			return status.Errorf(codes.InvalidArgument, "source pod %q: want POD or NS/POD", p)
		}
		if _, err := inv.Pod(ns, name); err != nil {
			return status.Errorf(codes.NotFound, "source pod %s not found", p)
		}
	}
	for _, ns := range spec.GetSourceNamespaces() {
		if !isDNSLabel(ns) {
			return status.Errorf(codes.InvalidArgument, "source namespace %q is not a DNS-1123 label", ns)
		}
	}
	if err := validateLabels("source selector", spec.GetSourceSelector()); err != nil {
		return err
	}
	return nil
}

// validateLabels checks a label selector's keys and values as Kubernetes
// does.
func validateLabels(what string, sel map[string]string) error {
	for k, v := range sel {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return status.Errorf(codes.InvalidArgument, "%s: label key %q: %s", what, k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return status.Errorf(codes.InvalidArgument, "%s: label %s value %q: %s", what, k, v, strings.Join(errs, "; "))
		}
	}
	return nil
}

// overlaps decides whether two intercepts on one service port could both
// select a connection or request.
//
// Two intercepts of one owner (an environment's session and forks routes)
// never compete: both send to the same fork. An environment's forks route
// (l4, from the environment's own pods) takes precedence over request
// intercepts: it is decided when the connection is made, by who makes it,
// before any request is read; a request that carries someone's key from a
// fork still reaches the fork (docs/architecture.md, "Environments").
func overlaps(a *detourv1.Intercept, ac []match.Condition, b *detourv1.Intercept, bc []match.Condition) (bool, string) {
	if sameOwner(a.GetOwner(), b.GetOwner()) {
		return false, ""
	}
	if isForksRoute(a) && !b.GetSpec().GetL4() || isForksRoute(b) && !a.GetSpec().GetL4() {
		return false, ""
	}
	return overlapSpecs(a.GetSpec(), ac, b.GetSpec(), bc)
}

// sameOwner reports whether two owners are the same object (neither nil).
func sameOwner(a, b *detourv1.Owner) bool {
	return a != nil && b != nil && a.GetKind() == b.GetKind() && a.GetName() == b.GetName()
}

// isForksRoute reports whether ic is an environment's route between its
// forks: l4, from the pods of a label selector, owned by an environment.
func isForksRoute(ic *detourv1.Intercept) bool {
	return ic.GetOwner().GetKind() == "Environment" && ic.GetSpec().GetL4() && len(ic.GetSpec().GetSourceSelector()) > 0
}

func overlapSpecs(a *detourv1.InterceptSpec, ac []match.Condition, b *detourv1.InterceptSpec, bc []match.Condition) (bool, string) {
	if sourcesOf(a).disjoint(sourcesOf(b)) {
		return false, ""
	}
	if a.GetL4() || b.GetL4() {
		return true, "an l4 intercept takes every connection to the port from its sources"
	}
	return match.Overlap(ac, bc)
}

// sourceAddrs resolves a spec's source filter to the admitted pods' IPv4
// addresses, all of them and by node, sorted so an unchanged inventory gives
// an unchanged assignment.
func sourceAddrs(spec *detourv1.InterceptSpec, inv *inventory.Inventory) (bool, []string, map[string][]string) {
	s := sourcesOf(spec)
	if !s.restricted() {
		return false, nil, nil
	}
	var addrs []string
	byNode := map[string][]string{}
	for i := range inv.Pods {
		if p := &inv.Pods[i]; s.admits(p) && p.IP != "" {
			addrs = append(addrs, p.IP)
			node := p.Node
			if node == "" {
				node = inv.Node
			}
			byNode[node] = append(byNode[node], p.IP)
		}
	}
	slices.Sort(addrs)
	for n, a := range byNode {
		slices.Sort(a)
		byNode[n] = slices.Compact(a)
	}
	return true, slices.Compact(addrs), byNode
}
