package controller

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
)

// destination is a parsed InterceptSpec.destination.
type destination struct {
	ip       netip.Addr // set when the host is an address
	podNS    string     // else the pod, by namespace and name
	podName  string
	port     uint16
	original string
}

// parseDestination parses HOST:PORT where HOST is an IP address, a pod name
// in serviceNS, or NAMESPACE/POD.
func parseDestination(s, serviceNS string) (destination, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return destination{}, fmt.Errorf("destination %q: want HOST:PORT (HOST a pod, NAMESPACE/POD or an IP): %w", s, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return destination{}, fmt.Errorf("destination %q: port %q is not a number from 1 to 65535", s, portStr)
	}
	d := destination{port: uint16(port), original: s}
	if ip, err := netip.ParseAddr(host); err == nil {
		d.ip = ip
		return d, nil
	}
	ns, name, ok := strings.Cut(host, "/")
	if !ok {
		ns, name = serviceNS, host
	}
	if !isDNSLabel(ns) {
		return destination{}, fmt.Errorf("destination %q: namespace %q is not a DNS-1123 label", s, ns)
	}
	if !isDNSSubdomain(name) {
		return destination{}, fmt.Errorf("destination %q: %q is neither an IP address nor a pod name", s, name)
	}
	d.podNS, d.podName = ns, name
	return d, nil
}

// resolve turns the destination into IP:PORT with the inventory's current
// address for a pod, so that an intercept follows its developer's pod when
// that pod is recreated with a new address.
func (d destination) resolve(inv *inventory.Inventory) (string, error) {
	if d.ip.IsValid() {
		return netip.AddrPortFrom(d.ip, d.port).String(), nil
	}
	p, err := inv.Pod(d.podNS, d.podName)
	if err != nil {
		return "", fmt.Errorf("destination pod %s/%s is not in the inventory", d.podNS, d.podName)
	}
	ip, err := netip.ParseAddr(p.IP)
	if err != nil {
		return "", fmt.Errorf("destination pod %s/%s has no usable IP (%q)", d.podNS, d.podName, p.IP)
	}
	return netip.AddrPortFrom(ip, d.port).String(), nil
}

// isPod reports whether the destination is the given pod.
func (d destination) isPod(p *inventory.Pod) bool {
	return d.podName != "" && p.Namespace == d.podNS && p.Name == d.podName
}

// plan is the desired state of every node, computed from the intercepts and
// the inventory as a pure function so that diffs are easy to reason about.
type plan struct {
	// nodes maps node → intercept key → the assignment that node applies.
	nodes map[string]map[string]*detourv1.Assignment
	// targeted maps intercept key → the nodes its service's pods are on,
	// whether or not the assignment could be built.
	targeted map[string][]string
	// problems maps intercept key → why it is not applied anywhere.
	problems map[string]string
	// waiting marks the problems that time may cure: destination pods by
	// label of which none is ready yet (a fork starting).
	waiting map[string]bool
}

// computePlan builds the desired state. An intercept whose destination
// cannot be resolved is left out everywhere: without it every request goes
// to the original app, the same fail-open answer as when the agent is gone
// (docs/architecture.md, "Data path on a node", step 1).
func computePlan(inv *inventory.Inventory, ics []*detourv1.Intercept) plan {
	p := plan{
		nodes:    map[string]map[string]*detourv1.Assignment{},
		targeted: map[string][]string{},
		problems: map[string]string{},
		waiting:  map[string]bool{},
	}
	for _, ic := range ics {
		k := keyOf(ic.GetNamespace(), ic.GetName())
		spec := ic.GetSpec()
		svc, err := inv.Service(spec.GetServiceNamespace(), spec.GetServiceName())
		if err != nil {
			p.problems[k] = fmt.Sprintf("service %s/%s is not in the inventory", spec.GetServiceNamespace(), spec.GetServiceName())
			continue
		}
		targetPort, err := svc.TargetPort(spec.GetPort())
		if err != nil {
			p.problems[k] = err.Error()
			continue
		}
		var dest destination
		destPods := spec.GetDestinationPods()
		if destPods == nil {
			if dest, err = parseDestination(spec.GetDestination(), spec.GetServiceNamespace()); err != nil {
				// validated at create; only a hand-edited store gets here
				p.problems[k] = err.Error()
				continue
			}
		}
		byNode := map[string][]*detourv1.Target{}
		var dialed []string // every target, on any node
		for _, pod := range inv.Endpoints(svc) {
			// Requests that already reached the developer's own pod need
			// no detour; steering it would only send them back to itself.
			if dest.isPod(&pod) || destPods != nil && selects(destPods.GetLabels(), spec.GetServiceNamespace(), &pod) {
				continue
			}
			// A pod with no address yet (its sandbox is starting) takes no
			// traffic; it is steered when the inventory shows its address.
			if pod.IP == "" {
				continue
			}
			node := pod.Node
			if node == "" {
				node = inv.Node
			}
			byNode[node] = append(byNode[node], &detourv1.Target{
				PodNamespace: pod.Namespace,
				PodName:      pod.Name,
				PodIp:        pod.IP,
				Netns:        pod.NetNS,
				Port:         targetPort,
			})
			if ip, err := netip.ParseAddr(pod.IP); err == nil {
				dialed = append(dialed, netip.AddrPortFrom(ip, uint16(targetPort)).String())
			}
		}
		nodes := make([]string, 0, len(byNode))
		for n := range byNode {
			nodes = append(nodes, n)
		}
		slices.Sort(nodes)
		p.targeted[k] = nodes
		if len(nodes) == 0 {
			p.problems[k] = fmt.Sprintf("service %s/%s selects no pods", svc.Namespace, svc.Name)
			continue
		}
		var addr string
		var addrs []string
		var nodeOf map[string]string // destination → its pod's node
		if destPods != nil {
			port := destPods.GetPort()
			if port == 0 {
				port = targetPort
			}
			if addrs, nodeOf = podAddrs(inv, destPods.GetLabels(), spec.GetServiceNamespace(), port); len(addrs) == 0 {
				p.problems[k] = fmt.Sprintf("no ready pod has the destination labels %s", describeLabels(destPods.GetLabels()))
				p.waiting[k] = true
				continue
			}
			addr = addrs[0]
		} else if addr, err = dest.resolve(inv); err != nil {
			p.problems[k] = err.Error()
			continue
		}
		restricted, sources, sourcesByNode := sourceAddrs(spec, inv)
		var svcAddrs []string
		if vip, err := netip.ParseAddr(svc.ClusterIP); err == nil && vip.Is4() {
			svcAddrs = []string{netip.AddrPortFrom(vip, uint16(spec.GetPort())).String()}
		}
		// An l4 intercept from some sources reaches their nodes too: there
		// the sources are redirected at connect() to the destination
		// whatever node the service's pods are on.
		assigned := slices.Clone(nodes)
		if spec.GetL4() && restricted {
			dialed = append(dialed, svcAddrs...)
			for n := range sourcesByNode {
				if !slices.Contains(assigned, n) {
					assigned = append(assigned, n)
				}
			}
			slices.Sort(assigned)
		} else {
			dialed = nil
		}
		for _, n := range assigned {
			if p.nodes[n] == nil {
				p.nodes[n] = map[string]*detourv1.Assignment{}
			}
			var remote []string
			for _, d := range addrs {
				if nodeOf[d] != n {
					remote = append(remote, d)
				}
			}
			dests := addrs
			if len(dests) == 1 {
				dests = nil // destination says it
			}
			p.nodes[n][k] = &detourv1.Assignment{
				Namespace:          ic.GetNamespace(),
				Name:               ic.GetName(),
				Match:              spec.GetMatch(),
				Targets:            byNode[n],
				Destination:        addr,
				L4:                 spec.GetL4(),
				RestrictSources:    restricted,
				Sources:            sources,
				ServiceAddresses:   svcAddrs,
				NodeSources:        sourcesByNode[n],
				Destinations:       dests,
				DialedAddresses:    dialed,
				RemoteDestinations: remote,
			}
		}
	}
	return p
}

// selects reports whether a pod of namespace ns has every label of sel.
func selects(sel map[string]string, ns string, p *inventory.Pod) bool {
	if len(sel) == 0 || p.Namespace != ns {
		return false
	}
	for k, v := range sel {
		if p.Labels[k] != v {
			return false
		}
	}
	return true
}

// podAddrs lists IP:port of the ready pods of namespace ns with every label
// of sel, sorted, and the node of each.
func podAddrs(inv *inventory.Inventory, sel map[string]string, ns string, port uint32) ([]string, map[string]string) {
	var out []string
	nodes := map[string]string{}
	for i := range inv.Pods {
		p := &inv.Pods[i]
		if p.NotReady || !selects(sel, ns, p) {
			continue
		}
		if ip, err := netip.ParseAddr(p.IP); err == nil && ip.Is4() {
			a := netip.AddrPortFrom(ip, uint16(port)).String()
			out = append(out, a)
			nodes[a] = p.Node
			if p.Node == "" {
				nodes[a] = inv.Node
			}
		}
	}
	slices.Sort(out)
	return out, nodes
}

// describeLabels renders a selector as k=v,k=v in key order.
func describeLabels(sel map[string]string) string {
	keys := slices.Sorted(maps.Keys(sel))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + sel[k]
	}
	return strings.Join(parts, ",")
}

// sortedAssignments lists one node's assignments by key.
func sortedAssignments(m map[string]*detourv1.Assignment) []*detourv1.Assignment {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]*detourv1.Assignment, 0, len(keys))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

// diffNode returns the events that take a node's agent from old to new:
// deletes first, then upserts, each in key order.
func diffNode(old, new map[string]*detourv1.Assignment) []*detourv1.WatchDesiredStateResponse {
	var out []*detourv1.WatchDesiredStateResponse
	for _, a := range sortedAssignments(old) {
		if _, ok := new[keyOf(a.GetNamespace(), a.GetName())]; !ok {
			out = append(out, &detourv1.WatchDesiredStateResponse{
				Type:      detourv1.WatchDesiredStateResponse_TYPE_DELETE,
				Namespace: a.GetNamespace(),
				Name:      a.GetName(),
			})
		}
	}
	for _, a := range sortedAssignments(new) {
		if prev, ok := old[keyOf(a.GetNamespace(), a.GetName())]; ok && proto.Equal(prev, a) {
			continue
		}
		out = append(out, &detourv1.WatchDesiredStateResponse{
			Type:        detourv1.WatchDesiredStateResponse_TYPE_UPSERT,
			Assignments: []*detourv1.Assignment{a},
		})
	}
	return out
}

func keyOf(namespace, name string) string { return namespace + "/" + name }

// isDNSLabel reports whether s is an RFC 1123 label as Kubernetes uses it
// for names and namespaces: lower-case alphanumerics and '-', 63 at most,
// starting and ending with an alphanumeric.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// isDNSSubdomain reports whether s is an RFC 1123 subdomain, the syntax of
// pod names: dot-separated labels, 253 at most.
func isDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}
