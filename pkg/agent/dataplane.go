package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
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

// portKey is one intercepted pod port.
type portKey struct {
	netns string
	addr  netip.Addr
	port  uint16
}

func (k portKey) String() string { return fmt.Sprintf("%s:%d (%s)", k.addr, k.port, k.netns) }

// port is the agent's listener and router for one intercepted pod port.
type port struct {
	ln    *net.TCPListener
	proxy *proxy.Proxy
	obs   *portObserver
}

// counters are one intercept's request counts on this node, and its
// Prometheus series.
type counters struct {
	matched   atomic.Uint64
	fallbacks atomic.Uint64
	metrics   *requestMetrics
}

func (c *counters) count(o proxy.Outcome, dur time.Duration) {
	c.metrics.observe(o, dur)
	switch o {
	case proxy.OutcomeMatched:
		c.matched.Add(1)
	case proxy.OutcomeFallback:
		c.fallbacks.Add(1)
	}
}

// portObserver counts the requests of one port's router. It is given the
// counters of the port's intercepts whenever its routes are set, so a
// request finds them with a pointer load and a short scan, without the
// dataplane's lock (which Reports holds while it reads BPF maps).
type portObserver struct {
	d      *dataplane
	routes atomic.Pointer[[]routeCounters]
}

type routeCounters struct {
	intercept string
	c         *counters
}

func (po *portObserver) Request(id string, o proxy.Outcome, dur time.Duration) {
	if id == "" {
		po.d.m.unmatched.observe(o, dur)
		return
	}
	if rs := po.routes.Load(); rs != nil {
		for i := range *rs {
			if r := &(*rs)[i]; r.intercept == id {
				r.c.count(o, dur)
				return
			}
		}
	}
	// Routed by routes replaced since: find the intercept the slow way.
	po.d.observe(id, o, dur)
}

// setRoutes gives po the counters of routes' intercepts; d.mu is held.
func (po *portObserver) setRoutes(routes []proxy.Route) {
	rs := make([]routeCounters, 0, len(routes))
	for _, r := range routes {
		if c := po.d.counters[r.Intercept]; c != nil {
			rs = append(rs, routeCounters{intercept: r.Intercept, c: c})
		}
	}
	po.routes.Store(&rs)
}

// dataplane turns assignments into steering and routers, and removes what is
// no longer assigned: a pod port with no intercept has nothing in its path.
type dataplane struct {
	steer Steerer
	log   *slog.Logger
	m     *metrics
	// drain is how long a removed port's router keeps serving connections
	// it already accepted (now all routed to the app) before closing them.
	drain time.Duration
	// relay moves L4 connections' bytes; nil copies in userspace.
	relay func(ctx context.Context, client, upstream *net.TCPConn) error

	mu       sync.Mutex
	ports    map[portKey]*port
	netnsRef map[string]int
	// per intercept id ("namespace/name")
	targets  map[string][]portKey
	errs     map[string]string
	counters map[string]*counters
}

func newDataplane(s Steerer, log *slog.Logger, m *metrics) *dataplane {
	return &dataplane{
		steer:    s,
		log:      log,
		m:        m,
		drain:    10 * time.Second,
		ports:    map[portKey]*port{},
		netnsRef: map[string]int{},
		targets:  map[string][]portKey{},
		errs:     map[string]string{},
		counters: map[string]*counters{},
	}
}

func interceptID(namespace, name string) string { return namespace + "/" + name }

// desiredPort is what one pod port should route.
type desiredPort struct {
	app    string
	routes []proxy.Route
}

// Apply makes the node match the assignments. It never fails as a whole:
// an assignment that cannot be applied is reported through its status.
func (d *dataplane) Apply(assignments []*detourv1.Assignment) {
	d.mu.Lock()
	defer d.mu.Unlock()

	sort.Slice(assignments, func(i, j int) bool {
		return interceptID(assignments[i].Namespace, assignments[i].Name) <
			interceptID(assignments[j].Namespace, assignments[j].Name)
	})
	want := map[portKey]*desiredPort{}
	targets := map[string][]portKey{}
	errs := map[string]string{}
	for _, a := range assignments {
		id := interceptID(a.Namespace, a.Name)
		targets[id] = nil
		var m *match.Matcher
		if !a.L4 {
			var err error
			if m, err = compile(a.Match); err != nil {
				errs[id] = err.Error()
				continue
			}
		}
		sources, err := sourceSet(a)
		if err != nil {
			errs[id] = err.Error()
			continue
		}
		for _, t := range a.Targets {
			addr, err := netip.ParseAddr(t.PodIp)
			if err != nil || !addr.Is4() || t.Port == 0 || t.Port > 65535 || t.Netns == "" {
				errs[id] = fmt.Sprintf("bad target %s/%s %q:%d", t.PodNamespace, t.PodName, t.PodIp, t.Port)
				continue
			}
			k := portKey{netns: t.Netns, addr: addr, port: uint16(t.Port)}
			targets[id] = append(targets[id], k)
			dp := want[k]
			if dp == nil {
				dp = &desiredPort{app: netip.AddrPortFrom(addr, k.port).String()}
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

	for k, p := range d.ports {
		if _, ok := want[k]; !ok {
			d.removePort(k, p)
		}
	}
	for k, dp := range want {
		p := d.ports[k]
		if p == nil {
			var err error
			if p, err = d.addPort(k, dp.app); err != nil {
				d.log.Error("steering a pod port failed", "port", k.String(), "err", err)
				for _, r := range dp.routes {
					errs[r.Intercept] = err.Error()
				}
				continue
			}
		}
		p.obs.setRoutes(dp.routes)
		p.proxy.SetRoutes(dp.routes)
	}

	d.targets, d.errs = targets, errs
	d.m.intercepts.Set(float64(len(targets)))
	d.m.steeredPorts.Set(float64(len(d.ports)))
	d.m.attachments.Set(float64(len(d.netnsRef)))
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

// addPort opens the agent's listener inside the pod's namespace, starts its
// router and only then steers the port to it, so no connection is handed to
// a listener nobody serves. On error everything it made is undone.
func (d *dataplane) addPort(k portKey, app string) (_ *port, err error) {
	if d.netnsRef[k.netns] == 0 {
		if err := d.steer.Attach(k.netns); err != nil {
			d.m.bpfErrors.WithLabelValues("attach").Inc()
			return nil, fmt.Errorf("attach steering: %w", err)
		}
	}
	d.netnsRef[k.netns]++
	defer func() {
		if err != nil {
			d.unref(k.netns)
		}
	}()

	ln, err := netns.Listen(k.netns, "tcp4", netip.AddrPortFrom(k.addr, 0).String())
	if err != nil {
		return nil, fmt.Errorf("listen in pod namespace: %w", err)
	}
	tl := ln.(*net.TCPListener)
	dialer := &netns.Dialer{Path: k.netns}
	obs := &portObserver{d: d}
	px := proxy.New(proxy.Config{
		App:      app,
		Dial:     dialer.DialContext,
		Observer: obs,
		Logger:   d.log.With("port", k.String()),
		Relay:    d.relay,
	})
	go func() { _ = px.Serve(tl) }()
	if err := d.steer.Steer(k.addr, k.port, tl); err != nil {
		d.m.bpfErrors.WithLabelValues("steer").Inc()
		_ = tl.Close()
		_ = px.Close()
		return nil, fmt.Errorf("steer port: %w", err)
	}
	p := &port{ln: tl, proxy: px, obs: obs}
	d.ports[k] = p
	d.log.Info("steering pod port to the agent", "port", k.String())
	return p, nil
}

// removePort stops steering first, so new connections reach the app at once;
// connections already accepted are routed to the app until they end or the
// drain time passes.
func (d *dataplane) removePort(k portKey, p *port) {
	if err := d.steer.Unsteer(k.addr, k.port); err != nil {
		d.m.bpfErrors.WithLabelValues("unsteer").Inc()
		d.log.Error("unsteer failed", "port", k.String(), "err", err)
	}
	_ = p.ln.Close()
	p.proxy.SetRoutes(nil)
	time.AfterFunc(d.drain, func() { _ = p.proxy.Close() })
	delete(d.ports, k)
	d.unref(k.netns)
	d.log.Info("pod port no longer steered", "port", k.String())
}

func (d *dataplane) unref(ns string) {
	d.netnsRef[ns]--
	if d.netnsRef[ns] > 0 {
		return
	}
	delete(d.netnsRef, ns)
	if err := d.steer.Detach(ns); err != nil {
		d.m.bpfErrors.WithLabelValues("detach").Inc()
		d.log.Error("detach steering failed", "netns", ns, "err", err)
	}
}

// observe counts a request of intercept id that its port's observer does
// not know (any more): the intercept's counters are looked up under the lock.
func (d *dataplane) observe(id string, o proxy.Outcome, dur time.Duration) {
	d.mu.Lock()
	c := d.counters[id]
	d.mu.Unlock()
	if c == nil {
		d.m.observe(id, o, dur)
		return
	}
	c.count(o, dur)
}

// Reports returns what each applied intercept looks like on this node.
func (d *dataplane) Reports() []*detourv1.InterceptReport {
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

// Close removes all steering and routers, then the BPF objects.
func (d *dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, p := range d.ports {
		if err := d.steer.Unsteer(k.addr, k.port); err != nil {
			d.log.Warn("unsteer on close", "port", k.String(), "err", err)
		}
		_ = p.ln.Close()
		_ = p.proxy.Close()
		delete(d.ports, k)
	}
	d.netnsRef = map[string]int{}
	return d.steer.Close()
}
