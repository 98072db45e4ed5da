package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apiconv"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/match"
	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// Steerer is the kernel side of steering (pkg/redirect/steer.Steering): an
// sk_lookup program per pod namespace and a socket map from a pod address and
// port to the agent's listener there.
type Steerer interface {
	Attach(netnsPath string) error
	Detach(netnsPath string) error
	Steer(addr netip.Addr, port uint16, ln *net.TCPListener) error
	Unsteer(addr netip.Addr, port uint16) error
	Connections(addr netip.Addr, port uint16) (uint64, error)
	Close() error
}

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

// dataplane turns assignments into steering and routers, and removes what is
// no longer assigned: a pod port with no intercept has nothing in its path.
// A target that cannot be steered yet (its pod's namespace is not found, or
// attaching failed) is tried again by run until it is steered or no longer
// assigned.
type dataplane struct {
	steer Steerer
	log   *slog.Logger
	m     *metrics
	// drain is how long a removed port's router keeps serving connections
	// it already accepted (now all routed to the app) before closing them.
	drain time.Duration
	// drains are the ports draining: removed ones, and all of them once
	// Shutdown began. stopDrains ends the removed ones' drains early, when
	// Shutdown's grace ends.
	drains     sync.WaitGroup
	drainsCtx  context.Context
	stopDrains context.CancelFunc
	// relay moves L4 connections' bytes; nil copies in userspace.
	relay func(ctx context.Context, client, upstream *net.TCPConn) error
	// resolve finds the namespace of a target that carries no netns path;
	// nil: targets must carry one.
	resolve func(podIP netip.Addr) (string, error)
	// connects redirects the L4 intercepts' callers on this node at
	// connect(); nil: off.
	connects *connectPlane
	// flowPorts sets the ports whose flows the sockops metrics track; nil:
	// none are (or they track a whole cgroup).
	flowPorts func(ports []uint16) error
	// listen opens a listener inside the namespace at path (netns.Listen;
	// tests listen in their own namespace).
	listen func(path, network, addr string) (net.Listener, error)

	// syncMu makes syncs (Apply's and run's) one at a time. It is taken
	// before mu and held while namespaces are found, without mu.
	syncMu sync.Mutex

	mu      sync.Mutex
	desired []*detourv1.Assignment
	ports   map[portKey]*port
	// namespaces the steering is attached to, by inode
	namespaces map[uint64]*podNetNS
	// per intercept id ("namespace/name")
	targets  map[string][]portKey
	errs     map[string]string
	counters map[string]*counters
	// failing is each target's last failure, logged when it changes.
	failing map[string]string
	closed  bool
}

func newDataplane(s Steerer, log *slog.Logger, m *metrics) *dataplane {
	drainsCtx, stopDrains := context.WithCancel(context.Background())
	return &dataplane{
		steer:      s,
		log:        log,
		m:          m,
		drain:      10 * time.Second,
		drainsCtx:  drainsCtx,
		stopDrains: stopDrains,
		listen:     netns.Listen,
		ports:      map[portKey]*port{},
		namespaces: map[uint64]*podNetNS{},
		targets:    map[string][]portKey{},
		errs:       map[string]string{},
		counters:   map[string]*counters{},
		failing:    map[string]string{},
	}
}

func interceptID(namespace, name string) string { return namespace + "/" + name }

// desiredPort is what one pod port should route.
type desiredPort struct {
	app    string
	routes []proxy.Route
	at     *located
	target string // the first target routed here, for logs
}

// Apply makes the node match the assignments. It never fails as a whole:
// an assignment that cannot be applied is reported through its status, and
// its targets that may yet be steered are tried again by run.
func (d *dataplane) Apply(assignments []*detourv1.Assignment) {
	assignments = slices.Clone(assignments)
	sort.Slice(assignments, func(i, j int) bool {
		return interceptID(assignments[i].Namespace, assignments[i].Name) <
			interceptID(assignments[j].Namespace, assignments[j].Name)
	})
	d.mu.Lock()
	d.desired = assignments
	d.mu.Unlock()
	d.sync()
}

// run tries the targets that could not be steered again every interval, and
// every recheckEvery intervals finds all targets' namespaces again: a pod can
// be replaced by one with the same address, and a lab namespace be made anew
// under its path. It returns when ctx ends.
func (d *dataplane) run(ctx context.Context, interval time.Duration) {
	const recheckEvery = 10
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		retry := len(d.failing) > 0
		d.mu.Unlock()
		switch {
		case retry || n%recheckEvery == 0:
			d.sync()
		case d.connects != nil && d.connects.wanted():
			// A destination may have started or stopped listening.
			d.syncMu.Lock()
			d.connects.check()
			d.syncMu.Unlock()
		}
	}
}

// sync makes the node match the desired state. Finding namespaces may scan
// /proc, so it runs without mu, which status reports and the routers' slow
// path take.
func (d *dataplane) sync() {
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	d.mu.Lock()
	desired, closed := d.desired, d.closed
	d.mu.Unlock()
	if closed {
		return
	}
	found := d.locate(desired)
	defer func() {
		for _, l := range found {
			if l.f != nil {
				_ = l.f.Close()
			}
		}
	}()
	d.mu.Lock()
	applied := !d.closed
	if applied {
		d.apply(desired, found)
	}
	d.mu.Unlock()
	if applied && d.connects != nil {
		d.connects.check()
	}
}

// apply does Apply's work with the targets' namespaces found; mu is held.
func (d *dataplane) apply(assignments []*detourv1.Assignment, found map[string]*located) {
	want := map[portKey]*desiredPort{}
	targets := map[string][]portKey{}
	errs := map[string]string{}
	fail := func(id, msg string) {
		if errs[id] == "" {
			errs[id] = msg
		}
	}
	failing := map[string]string{} // by target, for targets to retry
	for _, a := range assignments {
		id := interceptID(a.Namespace, a.Name)
		targets[id] = nil
		var m *match.Matcher
		if !a.L4 {
			var err error
			if m, err = compile(a.Match); err != nil {
				fail(id, err.Error())
				continue
			}
		}
		sources, err := sourceSet(a)
		if err != nil {
			fail(id, err.Error())
			continue
		}
		for _, t := range a.Targets {
			addr, err := netip.ParseAddr(t.PodIp)
			if err != nil || !addr.Is4() || t.Port == 0 || t.Port > 65535 {
				fail(id, fmt.Sprintf("bad target %s/%s %q:%d", t.PodNamespace, t.PodName, t.PodIp, t.Port))
				continue
			}
			target := fmt.Sprintf("%s/%s %s", t.PodNamespace, t.PodName, netip.AddrPortFrom(addr, uint16(t.Port)))
			l := found[locateKey(t)]
			if l.err != nil {
				msg := fmt.Sprintf("pod %s: %v", target, l.err)
				fail(id, msg)
				if !l.final {
					failing[target] = msg
				}
				continue
			}
			k := portKey{ns: l.ino, addr: addr, port: uint16(t.Port)}
			targets[id] = append(targets[id], k)
			dp := want[k]
			if dp == nil {
				dp = &desiredPort{app: netip.AddrPortFrom(addr, k.port).String(), at: l, target: target}
				want[k] = dp
			}
			dp.routes = append(dp.routes, proxy.Route{Intercept: id, Matcher: m, Destination: a.Destination, L4: a.L4, Sources: sources})
		}
	}

	// Counters first: the routes set below reach them without the lock.
	for id := range d.counters {
		if _, ok := targets[id]; !ok {
			delete(d.counters, id)
		}
	}
	for id := range targets {
		if d.counters[id] == nil {
			d.counters[id] = &counters{metrics: d.m.forIntercept(id)}
		}
	}

	if d.flowPorts != nil {
		// Before steering, so the flows of new ports are tracked from
		// their first connection.
		if err := d.flowPorts(flowPortsOf(want, assignments)); err != nil {
			d.m.bpfErrors.WithLabelValues("flow_ports").Inc()
			d.log.Warn("setting the flow metrics' ports failed", "err", err)
		}
	}

	// Removed first, so a pod replaced by one in a new namespace is
	// detached from the old before it is attached to the new.
	for k, p := range d.ports {
		if _, ok := want[k]; !ok {
			d.removePort(k, p)
		}
	}
	for k, dp := range want {
		p := d.ports[k]
		if p == nil {
			var err error
			if p, err = d.addPort(k, dp.app, dp.at); err != nil {
				msg := fmt.Sprintf("pod %s: %v", dp.target, err)
				for _, r := range dp.routes {
					fail(r.Intercept, msg)
				}
				failing[dp.target] = msg
				continue
			}
		}
		p.obs.setRoutes(dp.routes)
		p.proxy.SetRoutes(dp.routes)
	}

	d.logFailures(failing)
	d.targets, d.errs = targets, errs
	if d.connects != nil {
		d.connects.want(d.connectWants(assignments))
	}
	d.m.intercepts.Set(float64(len(targets)))
	d.m.steeredPorts.Set(float64(len(d.ports)))
	d.m.attachments.Set(float64(len(d.namespaces)))
}

// logFailures logs a target's failure when it starts or changes, not at
// every retry, and when it ends.
func (d *dataplane) logFailures(now map[string]string) {
	for target, msg := range now {
		if d.failing[target] != msg {
			d.log.Warn("cannot steer a target yet; retrying every interval", "target", target, "err", msg)
		}
	}
	for target := range d.failing {
		if _, ok := now[target]; !ok {
			d.log.Info("target no longer failing (steered, or no longer assigned)", "target", target)
		}
	}
	d.failing = now
}

// connectWants are the connect-time redirects the assignments call for: the
// steered ports (and service addresses) of L4 intercepts, to their
// destination, for every caller or, with a source filter, for the source
// pods on this node; mu is held.
func (d *dataplane) connectWants(assignments []*detourv1.Assignment) []connectWant {
	var out []connectWant
	for _, a := range assignments {
		if !a.L4 {
			continue
		}
		to, err := netip.ParseAddrPort(a.Destination)
		if err != nil || !to.Addr().Unmap().Is4() {
			continue // the relay reports a bad destination per connection
		}
		w := connectWant{to: to, intercept: interceptID(a.Namespace, a.Name), restricted: a.RestrictSources}
		for _, s := range a.NodeSources {
			if src, err := netip.ParseAddr(s); err == nil {
				w.sources = append(w.sources, src.Unmap())
			}
		}
		steered := false
		for _, k := range d.targets[w.intercept] {
			if d.ports[k] != nil {
				steered = true
				w.addr = netip.AddrPortFrom(k.addr, k.port)
				out = append(out, w)
			}
		}
		// The service's virtual address too, on a node where the
		// intercept is in force: callers dial the ClusterIP, which
		// kube-proxy would only turn into a pod address after connect().
		for _, s := range a.ServiceAddresses {
			if addr, err := netip.ParseAddrPort(s); err == nil && steered {
				w.addr = addr
				out = append(out, w)
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

// Reports returns what each applied intercept looks like on this node.
func (d *dataplane) Reports() []*detourv1.InterceptReport {
	var direct map[string]uint64
	if d.connects != nil {
		direct = d.connects.connections()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*detourv1.InterceptReport, 0, len(d.targets))
	for id, keys := range d.targets {
		ns, name := splitID(id)
		r := &detourv1.InterceptReport{Namespace: ns, Name: name, Error: d.errs[id]}
		r.SteeringAttached = len(keys) > 0 && r.Error == ""
		for _, k := range keys {
			if d.ports[k] == nil {
				r.SteeringAttached = false
				continue
			}
			n, err := d.steer.Connections(k.addr, k.port)
			if err == nil {
				r.SteeredConnections += n
			}
		}
		if c := d.counters[id]; c != nil {
			r.Matched, r.Fallbacks = c.matched.Load(), c.fallbacks.Load()
		}
		// Connections redirected at connect() are matched too: they went
		// to the developer's pod without passing through the agent.
		r.Matched += direct[id]
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		return interceptID(out[i].Namespace, out[i].Name) < interceptID(out[j].Namespace, out[j].Name)
	})
	return out
}

func splitID(id string) (string, string) {
	for i := 0; i < len(id); i++ {
		if id[i] == '/' {
			return id[:i], id[i+1:]
		}
	}
	return "", id
}

// Shutdown stops the data path gracefully. It first removes the steering
// of every port and closes the steering, so that new connections reach the
// apps directly; then each port's router finishes what it already has
// (drainPort) until everything is done or ctx ends, when what is left is
// logged and closed. Ports removed earlier and still draining end by ctx
// too. Nothing is applied after it; it is idempotent.
func (d *dataplane) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	if d.connects != nil {
		// First, so callers on this node reach the steering, then the app.
		if err := d.connects.close(); err != nil {
			d.log.Warn("closing the connect-time redirects", "err", err)
		}
	}
	ports := make(map[portKey]*port, len(d.ports))
	for k, p := range d.ports {
		if err := d.steer.Unsteer(k.addr, k.port); err != nil {
			d.m.bpfErrors.WithLabelValues("unsteer").Inc()
			d.log.Warn("unsteer on stop", "port", k.String(), "err", err)
		}
		delete(d.ports, k)
		d.unref(k.ns) // detaches the namespace with its last port
		ports[k] = p
	}
	// Closing the steering closes whatever link is left, by the
	// namespaces' inodes.
	err := d.steer.Close()
	for ino, ns := range d.namespaces {
		_ = ns.f.Close()
		delete(d.namespaces, ino)
	}
	d.m.steeredPorts.Set(0)
	d.m.attachments.Set(0)
	d.mu.Unlock()

	start, graceful := time.Now(), ctx.Err() == nil && len(ports) > 0
	if graceful {
		attrs := []any{"ports", len(ports)}
		if dl, ok := ctx.Deadline(); ok {
			attrs = append(attrs, "grace", dl.Sub(start).Round(time.Millisecond))
		}
		d.log.Info("steering removed; draining the connections already accepted", attrs...)
	}
	stop := context.AfterFunc(ctx, d.stopDrains)
	defer stop()
	var mu sync.Mutex
	var left proxy.Activity
	for k, p := range ports {
		d.drains.Add(1)
		go func() {
			defer d.drains.Done()
			l := d.drainPort(ctx, k, p)
			mu.Lock()
			left = left.Add(l)
			mu.Unlock()
		}()
	}
	d.drains.Wait()
	d.stopDrains()
	switch {
	case left.Conns() > 0:
		d.log.Warn("grace period over; closed the connections left", "took", time.Since(start).Round(time.Millisecond), "left", left)
	case graceful:
		d.log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
	}
	return err
}

// Close removes all steering and closes the routers at once, cutting the
// connections they serve (Shutdown with no grace).
func (d *dataplane) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return d.Shutdown(ctx)
}
