package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apiconv"
	"github.com/detourdev/detour/pkg/redirect/match"
	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// portKey is one intercepted pod port. Its namespace is named by inode: the
// path a pod's namespace is found by can change while the namespace stays
// (/proc/<pid>/ns/net of another of its processes).
type portKey struct {
	ns   uint64
	addr netip.Addr
	port uint16
}

func (k portKey) String() string {
	return fmt.Sprintf("%s (netns inode %d)", netip.AddrPortFrom(k.addr, k.port), k.ns)
}

func (k portKey) compare(o portKey) int {
	return cmp.Or(cmp.Compare(k.ns, o.ns), k.addr.Compare(o.addr), cmp.Compare(k.port, o.port))
}

// location is where a target's pod namespace was found: its inode and the
// path it was found by, or why it was not.
type location struct {
	ino  uint64
	from string
	err  error
	// final: trying again will not help.
	final bool
}

// desiredPort is what one pod port should route.
type desiredPort struct {
	app    string
	routes []proxy.Route
	// services are the Service addresses (ClusterIP:port) of its
	// intercepts, whose callers the fast path takes as the port's.
	services []netip.AddrPort
	from     string // the path its namespace was found by, for logs
	target   string // the first target routed here, for logs
}

// attachment is a namespace to attach the steering to.
type attachment struct {
	ino  uint64
	from string // the path it was found by, for logs
}

// plan is what one sync changes, in the order the sync does it (see
// dataplane.apply), and what it reports.
type plan struct {
	// ports are all the pod ports that should be steered, with their
	// routes.
	ports map[portKey]*desiredPort
	// remove are the steered ports no longer wanted, and detach the
	// namespaces no wanted port is in. Both go before anything is added:
	// the socket map is keyed by address and port alone, so a pod replaced
	// by one with the same address in a new namespace has its old port
	// unsteered before the new one is steered.
	remove []portKey
	detach []uint64
	// attach are the namespaces of new ports that have no steering yet;
	// add the new ports; update the ports steered already, whose routes
	// are set anew.
	attach []attachment
	add    []portKey
	update []portKey

	// targets are the ports of each assigned intercept (by id; an
	// intercept with none on this node is there, with none), errs the
	// first error of each, and failing the targets that could not be
	// steered but may be yet (by target, with why), to retry.
	targets map[string][]portKey
	errs    map[string]string
	failing map[string]string
}

// planSync is what makes the node match the assignments, given where each
// target's namespace was found (by locateKey) and what the node has: the
// ports steered and the namespaces attached. It does no I/O; the sync
// carries it out and records in it what fails (portFailed).
func planSync(assignments []*detourv1.Assignment, where map[string]location, steered []portKey, attached []uint64) *plan {
	p := &plan{
		ports:   map[portKey]*desiredPort{},
		targets: map[string][]portKey{},
		errs:    map[string]string{},
		failing: map[string]string{},
	}
	for _, a := range assignments {
		p.route(a, where)
	}

	isSteered := map[portKey]bool{}
	for _, k := range steered {
		isSteered[k] = true
		if p.ports[k] == nil {
			p.remove = append(p.remove, k)
		}
	}
	wantNS := map[uint64]bool{}
	for k := range p.ports {
		wantNS[k.ns] = true
		if isSteered[k] {
			p.update = append(p.update, k)
		} else {
			p.add = append(p.add, k)
		}
	}
	hasNS := map[uint64]bool{}
	for _, ino := range attached {
		hasNS[ino] = true
		if !wantNS[ino] {
			p.detach = append(p.detach, ino)
		}
	}
	slices.SortFunc(p.remove, portKey.compare)
	slices.SortFunc(p.add, portKey.compare)
	slices.SortFunc(p.update, portKey.compare)
	slices.Sort(p.detach)
	for _, k := range p.add {
		if !hasNS[k.ns] {
			hasNS[k.ns] = true
			p.attach = append(p.attach, attachment{ino: k.ns, from: p.ports[k].from})
		}
	}
	return p
}

// route adds the ports of one assignment's targets, with its route, or
// records why it cannot be applied.
func (p *plan) route(a *detourv1.Assignment, where map[string]location) {
	id := interceptID(a.Namespace, a.Name)
	p.targets[id] = nil
	var m *match.Matcher
	if !a.L4 {
		var err error
		if m, err = compile(a.Match); err != nil {
			p.fail(id, err.Error())
			return
		}
	}
	sources, err := sourceSet(a)
	if err != nil {
		p.fail(id, err.Error())
		return
	}
	for _, t := range a.Targets {
		addr, err := netip.ParseAddr(t.PodIp)
		if err != nil || !addr.Is4() || t.Port == 0 || t.Port > 65535 {
			p.fail(id, fmt.Sprintf("bad target %s/%s %q:%d", t.PodNamespace, t.PodName, t.PodIp, t.Port))
			continue
		}
		target := fmt.Sprintf("%s/%s %s", t.PodNamespace, t.PodName, netip.AddrPortFrom(addr, uint16(t.Port)))
		l := where[locateKey(t)]
		if l.err != nil {
			msg := fmt.Sprintf("pod %s: %v", target, l.err)
			p.fail(id, msg)
			if !l.final {
				p.failing[target] = msg
			}
			continue
		}
		k := portKey{ns: l.ino, addr: addr, port: uint16(t.Port)}
		p.targets[id] = append(p.targets[id], k)
		dp := p.ports[k]
		if dp == nil {
			dp = &desiredPort{app: netip.AddrPortFrom(addr, k.port).String(), from: l.from, target: target}
			p.ports[k] = dp
		}
		dp.routes = append(dp.routes, proxy.Route{Intercept: id, Matcher: m, Destination: a.Destination, Destinations: a.Destinations, L4: a.L4, Sources: sources})
		for _, s := range a.ServiceAddresses {
			if sa, err := netip.ParseAddrPort(s); err == nil && sa.Addr().Is4() && !slices.Contains(dp.services, sa) {
				dp.services = append(dp.services, sa)
			}
		}
	}
}

// fail records an error of intercept id; the first one is kept.
func (p *plan) fail(id, msg string) {
	if p.errs[id] == "" {
		p.errs[id] = msg
	}
}

// portFailed records that port k could not be steered: every intercept
// routed there reports it, and its target is tried again.
func (p *plan) portFailed(k portKey, err error) {
	dp := p.ports[k]
	msg := fmt.Sprintf("pod %s: %v", dp.target, err)
	for _, r := range dp.routes {
		p.fail(r.Intercept, msg)
	}
	p.failing[dp.target] = msg
}

// connectWants are the connect-time redirects the assignments call for: the
// steered ports (and service addresses) of L4 intercepts, to their
// destination, for every caller or, with a source filter, for the source
// pods on this node. targets are each intercept's ports, and isSteered tells
// the ones steered.
func connectWants(assignments []*detourv1.Assignment, targets map[string][]portKey, isSteered func(portKey) bool) []connectWant {
	var out []connectWant
	for _, a := range assignments {
		if !a.L4 {
			continue
		}
		w := connectWant{intercept: interceptID(a.Namespace, a.Name), restricted: a.RestrictSources}
		for _, d := range a.RemoteDestinations {
			if ap, err := netip.ParseAddrPort(d); err == nil {
				if w.remote == nil {
					w.remote = map[netip.AddrPort]bool{}
				}
				w.remote[ap] = true
			}
		}
		dests := a.Destinations
		if len(dests) == 0 {
			dests = []string{a.Destination}
		}
		for _, d := range dests {
			to, err := netip.ParseAddrPort(d)
			if err != nil || !to.Addr().Unmap().Is4() {
				continue // the relay reports a bad destination per connection
			}
			w.to = append(w.to, to)
		}
		if len(w.to) == 0 {
			continue
		}
		for _, s := range a.NodeSources {
			if src, err := netip.ParseAddr(s); err == nil {
				w.sources = append(w.sources, src.Unmap())
			}
		}
		add := func(addr netip.AddrPort) {
			c := w
			c.addr = addr
			out = append(out, c)
		}
		if w.restricted && len(a.DialedAddresses) > 0 {
			// The source pods on this node are redirected whatever node
			// the service's pods run on: every address they may dial.
			for _, d := range a.DialedAddresses {
				if addr, err := netip.ParseAddrPort(d); err == nil {
					add(addr)
				}
			}
			continue
		}
		steered := false
		for _, k := range targets[w.intercept] {
			if isSteered(k) {
				steered = true
				add(netip.AddrPortFrom(k.addr, k.port))
			}
		}
		// The service's virtual address too, on a node where the
		// intercept is in force: callers dial the ClusterIP, which
		// kube-proxy would only turn into a pod address after connect().
		for _, s := range a.ServiceAddresses {
			if addr, err := netip.ParseAddrPort(s); err == nil && steered {
				add(addr)
			}
		}
	}
	return out
}

// flowPortsOf are the ports whose flows the sockops metrics track: the
// steered pod ports (the agent's accepted sockets have them as local port,
// its sockets to the app as remote port) and the destinations' ports.
func flowPortsOf(want map[portKey]*desiredPort, assignments []*detourv1.Assignment) []uint16 {
	set := map[uint16]bool{}
	for k := range want {
		set[k.port] = true
	}
	for _, a := range assignments {
		if ap, err := netip.ParseAddrPort(a.Destination); err == nil {
			set[ap.Port()] = true
		}
	}
	out := make([]uint16, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// sourceSet is the assignment's source filter; nil admits every source.
func sourceSet(a *detourv1.Assignment) (map[netip.Addr]struct{}, error) {
	if !a.RestrictSources {
		return nil, nil
	}
	set := make(map[netip.Addr]struct{}, len(a.Sources))
	for _, s := range a.Sources {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("bad source address %q", s)
		}
		set[addr.Unmap()] = struct{}{}
	}
	return set, nil
}

func compile(conds []*detourv1.Condition) (*match.Matcher, error) {
	mc, err := apiconv.ConditionsFromProto(conds)
	if err != nil {
		return nil, err
	}
	return match.Compile(mc)
}
