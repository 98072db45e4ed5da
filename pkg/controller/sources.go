package controller

import (
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	return s
}

func (s sourceSet) restricted() bool { return len(s.pods)+len(s.namespaces) > 0 }

// admits reports whether a pod passes the filter.
func (s sourceSet) admits(p *inventory.Pod) bool {
	return slices.Contains(s.pods, p.Namespace+"/"+p.Name) || slices.Contains(s.namespaces, p.Namespace)
}

// disjoint reports whether no pod can pass both filters. An unrestricted
// filter admits every pod.
func (s sourceSet) disjoint(o sourceSet) bool {
	if !s.restricted() || !o.restricted() {
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
	return nil
}

// overlaps decides whether two intercepts on one service port could both
// select a connection or request.
func overlaps(a *detourv1.InterceptSpec, ac []match.Condition, b *detourv1.InterceptSpec, bc []match.Condition) (bool, string) {
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
