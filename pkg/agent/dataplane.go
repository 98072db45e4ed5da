package agent

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/podns"
	"github.com/detourdev/detour/pkg/redirect/fastpath"
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

// dataplane turns assignments into steering and routers, and removes what is
// no longer assigned: a pod port with no intercept has nothing in its path.
// A target that cannot be steered yet (its pod's namespace is not found, or
// attaching failed) is tried again by run until it is steered or no longer
// assigned. A sync finds the targets' namespaces (locate), works out what
// to change without touching anything (planSync, so it can be tested on
// its own) and changes it (the port and namespace steps in ports.go).
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
	// headTimeout bounds a request head from its first byte (zero: the
	// proxy's default), and slowHeads caps, over all ports, the
	// connections waiting for one beyond the first second.
	headTimeout time.Duration
	slowHeads   *proxy.SlowHeads
	// relay moves L4 connections' bytes; nil copies in userspace.
	relay func(ctx context.Context, client, upstream *net.TCPConn) error
	// resolve finds the namespace of a target that carries no netns path;
	// nil: targets must carry one.
	resolve func(podIP netip.Addr) (string, error)
	// connects redirects the L4 intercepts' callers on this node at
	// connect(); nil: off.
	connects *connectPlane
	// misses is the connect plane's memory of addresses not on this node;
	// a new desired state clears it (see Apply). nil without a connect
	// plane.
	misses *podns.MissCache
	// fast routes HTTP/1.1 requests of callers on the node in the
	// kernel; nil: off.
	fast *fastpath.FastPath
	// flowPorts sets the ports whose flows the sockops metrics track; nil:
	// none are (or they track a whole cgroup).
	flowPorts func(ports []uint16) error
	// listen opens a listener inside the namespace at path (netns.Listen;
	// tests listen in their own namespace).
	listen func(path, network, addr string) (net.Listener, error)
	// dialFrom dials from inside the namespace at path (a netns.Dialer;
	// tests dial from their own namespace).
	dialFrom func(path string) func(ctx context.Context, network, addr string) (net.Conn, error)

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
		slowHeads:  proxy.NewSlowHeads(proxy.DefaultMaxSlowHeads),
		listen:     netns.Listen,
		dialFrom: func(path string) func(context.Context, string, string) (net.Conn, error) {
			return (&netns.Dialer{Path: path}).DialContext
		},
		ports:      map[portKey]*port{},
		namespaces: map[uint64]*podNetNS{},
		targets:    map[string][]portKey{},
		errs:       map[string]string{},
		counters:   map[string]*counters{},
		failing:    map[string]string{},
	}
}

func interceptID(namespace, name string) string { return namespace + "/" + name }

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
	if d.misses != nil {
		// An address missed a moment ago may be a pod made since (a
		// fork at a removed fork's address): look again.
		d.misses.Forget()
	}
	d.sync()
}

// run tries the targets that could not be steered again every interval, and
// every recheckEvery intervals finds all targets' namespaces again: a pod can
// be replaced by one with the same address, and a lab namespace be made anew
// under its path. It returns when ctx ends.
func (d *dataplane) run(ctx context.Context, interval, connectEvery time.Duration) {
	const recheckEvery = 10
	t := time.NewTicker(interval)
	defer t.Stop()
	ct := time.NewTicker(connectEvery)
	defer ct.Stop()
	for n := 0; ; {
		select {
		case <-ctx.Done():
			return
		case <-ct.C:
			if d.connects != nil && d.connects.wanted() {
				// A destination may have started or stopped listening.
				d.syncMu.Lock()
				d.connects.check()
				d.syncMu.Unlock()
			}
			continue
		case <-t.C:
			n++
		}
		d.mu.Lock()
		retry := len(d.failing) > 0
		d.mu.Unlock()
		if retry || n%recheckEvery == 0 {
			d.sync()
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
	defer found.close()
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

// apply carries out, in its order (what goes, then what comes), the plan
// that makes the node match the assignments with the targets' namespaces
// found, and records in it what failed; mu is held.
func (d *dataplane) apply(assignments []*detourv1.Assignment, found *found) {
	p := planSync(assignments, found.where, slices.Collect(maps.Keys(d.ports)), slices.Collect(maps.Keys(d.namespaces)))

	// Counters first: the routes set below reach them without the lock.
	d.keepCounters(p.targets)
	if d.connects != nil {
		d.connects.keep(p.targets)
	}

	if d.flowPorts != nil {
		// Before steering, so the flows of new ports are tracked from
		// their first connection.
		if err := d.flowPorts(flowPortsOf(p.ports, assignments)); err != nil {
			d.m.bpfErrors.WithLabelValues("flow_ports").Inc()
			d.log.Warn("setting the flow metrics' ports failed", "err", err)
		}
	}

	for _, k := range p.remove {
		d.removePort(k, d.ports[k])
	}
	for _, ino := range p.detach {
		d.detach(ino)
	}
	attachErrs := map[uint64]error{}
	for _, a := range p.attach {
		if err := d.attach(a, found.files[a.ino]); err != nil {
			attachErrs[a.ino] = err
		}
	}
	for _, k := range p.add {
		err := attachErrs[k.ns]
		if err == nil {
			err = d.addPort(k, p.ports[k])
		}
		if err != nil {
			p.portFailed(k, err)
		}
	}
	// A namespace attached for ports that all failed is detached again, as
	// addPort undoes what it made.
	d.detachUnused()
	for _, k := range p.update {
		d.ports[k].setRoutes(p.ports[k])
	}

	d.logFailures(p.failing)
	d.targets, d.errs = p.targets, p.errs
	if d.connects != nil {
		d.connects.want(connectWants(assignments, d.targets, func(k portKey) bool { return d.ports[k] != nil }))
	}
	d.m.intercepts.Set(float64(len(d.targets)))
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

// Reports returns what each applied intercept looks like on this node.
func (d *dataplane) Reports() []*detourv1.InterceptReport {
	var direct map[string]uint64
	if d.connects != nil {
		direct = d.connects.connections()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*detourv1.InterceptReport, 0, len(d.targets))
	kernel := map[portKey]map[string]uint64{} // each fast port's, read once
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
			if p := d.ports[k]; p.fast != nil {
				if kernel[k] == nil {
					kernel[k] = p.fast.Routed()
				}
				// Requests the kernel routed to the developer's
				// pod are matched too (fallbacks are the agent's).
				r.Matched += kernel[k][id]
			}
		}
		if c := d.counters[id]; c != nil {
			r.Matched += c.matched.Load()
			r.Fallbacks = c.fallbacks.Load()
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
		ports[k] = p
	}
	d.detachUnused() // all of them, with no port left
	// Closing the steering closes whatever link is left (a detach that
	// failed), by the namespaces' inodes.
	err := d.steer.Close()
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
