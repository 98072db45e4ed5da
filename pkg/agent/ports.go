package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"

	"github.com/detourdev/detour/pkg/redirect/fastpath"
	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// port is the agent's listener and router for one intercepted pod port.
type port struct {
	ln    *net.TCPListener
	proxy *proxy.Proxy
	obs   *portObserver
	// nsf is the port's own handle on the pod's namespace, which its router
	// dials the app from, also while it drains after the port is removed:
	// it is closed with the router.
	nsf *os.File
	// With the fast path: the port's address and app, and its part in
	// the kernel (nil: off).
	addr netip.AddrPort
	app  string
	fast *fastpath.Port
	log  *slog.Logger
}

// podNetNS is a pod namespace the steering is attached to, held open: a
// /proc/<pid>/ns/net path dies with its process (an app container
// restarting in a living pod) and a named path can come to name a new
// namespace, while the descriptor names this one for as long as it is open.
type podNetNS struct {
	f    *os.File
	from string // the path it was found by, for logs
}

// fdPath names an open namespace by its descriptor, for pkg/netns and the
// Steerer, which take paths.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// attach attaches the steering to a namespace, found open at f, on a handle
// of the namespace's own: f is closed when the sync ends.
func (d *dataplane) attach(a attachment, f *os.File) error {
	own, err := os.Open(fdPath(f))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", a.from, err)
	}
	if err := d.steer.Attach(fdPath(own)); err != nil {
		_ = own.Close()
		d.m.bpfErrors.WithLabelValues("attach").Inc()
		return fmt.Errorf("attach steering to netns %s: %w", a.from, err)
	}
	d.namespaces[a.ino] = &podNetNS{f: own, from: a.from}
	d.log.Info("steering attached to a pod network namespace", "netns", a.from, "inode", a.ino)
	return nil
}

// detach detaches the steering from a namespace and lets go of it.
func (d *dataplane) detach(ino uint64) {
	ns := d.namespaces[ino]
	delete(d.namespaces, ino)
	if err := d.steer.Detach(fdPath(ns.f)); err != nil {
		d.m.bpfErrors.WithLabelValues("detach").Inc()
		d.log.Error("detach steering failed", "netns", ns.from, "inode", ino, "err", err)
	} else {
		d.log.Info("steering detached from a pod network namespace", "netns", ns.from, "inode", ino)
	}
	_ = ns.f.Close()
}

// detachUnused detaches the namespaces no steered port is in.
func (d *dataplane) detachUnused() {
	used := map[uint64]bool{}
	for k := range d.ports {
		used[k.ns] = true
	}
	for ino := range d.namespaces {
		if !used[ino] {
			d.detach(ino)
		}
	}
}

// addPort opens the agent's listener inside the pod's namespace, which the
// steering is attached to, starts its router with the port's routes and
// only then steers the port to it, so no connection is handed to a
// listener nobody serves. On error everything it made is undone.
func (d *dataplane) addPort(k portKey, dp *desiredPort) error {
	ns := d.namespaces[k.ns]
	nsf, err := os.Open(fdPath(ns.f))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns.from, err)
	}
	path := fdPath(nsf)
	ln, err := d.listen(path, "tcp4", netip.AddrPortFrom(k.addr, 0).String())
	if err != nil {
		_ = nsf.Close()
		return fmt.Errorf("listen in pod namespace: %w", err)
	}
	tl := ln.(*net.TCPListener)
	obs := &portObserver{d: d}
	log := d.log.With("port", k.String())
	addr := netip.AddrPortFrom(k.addr, k.port)
	cfg := proxy.Config{
		App:         dp.app,
		Dial:        d.dialFrom(path),
		HeadTimeout: d.headTimeout,
		SlowHeads:   d.slowHeads,
		Observer:    obs,
		Logger:      log,
		Relay:       d.relay,
	}
	var fp *fastpath.Port
	if d.fast != nil {
		// Routes are compiled by setRoutes below; a port whose routes
		// the kernel cannot decide is served by the proxy alone.
		if fp, err = d.fast.SetPort(addr, dp.app, nil); err == nil {
			cfg.FastPath = fastpath.ForProxy(fp)
		} else {
			log.Warn("fast path off for the port", "err", err)
			fp = nil
		}
	}
	px := proxy.New(cfg)
	p := &port{ln: tl, proxy: px, obs: obs, nsf: nsf, addr: addr, app: dp.app, fast: fp, log: log}
	p.setRoutes(dp)
	go func() { _ = px.Serve(tl) }()
	if err := d.steer.Steer(k.addr, k.port, tl); err != nil {
		d.m.bpfErrors.WithLabelValues("steer").Inc()
		_ = tl.Close()
		_ = px.Close()
		_ = nsf.Close()
		return fmt.Errorf("steer port: %w", err)
	}
	d.ports[k] = p
	d.log.Info("steering pod port to the agent", "port", k.String(), "netns", ns.from)
	return nil
}

// setRoutes gives the port's router and observer its routes, and the fast
// path the port's routes and Service addresses; d.mu is held.
func (p *port) setRoutes(dp *desiredPort) {
	p.obs.setRoutes(dp.routes)
	p.proxy.SetRoutes(dp.routes)
	if p.fast != nil {
		if _, err := p.fast.FastPath().SetPort(p.addr, p.app, fastpath.RoutesOf(dp.routes)); err != nil {
			p.log.Info("the port's requests are routed by the agent, not the kernel", "why", err)
		}
		if err := p.fast.SetAliases(dp.services); err != nil {
			p.log.Warn("callers of the Service's address are routed by the agent, not the kernel", "err", err)
		}
	}
}

// removePort stops steering first, so new connections reach the app at
// once; the connections the router already has, or has yet to take from
// its listener's queue, are routed to the app and drained (see drainPort)
// for at most the drain time.
func (d *dataplane) removePort(k portKey, p *port) {
	if err := d.steer.Unsteer(k.addr, k.port); err != nil {
		d.m.bpfErrors.WithLabelValues("unsteer").Inc()
		d.log.Error("unsteer failed", "port", k.String(), "err", err)
	}
	if p.fast != nil {
		d.fast.RemovePort(p.addr)
	}
	p.proxy.SetRoutes(nil)
	delete(d.ports, k)
	d.log.Info("pod port no longer steered", "port", k.String())
	ctx, cancel := context.WithTimeout(d.drainsCtx, d.drain)
	d.drains.Add(1)
	go func() {
		defer d.drains.Done()
		defer cancel()
		d.drainPort(ctx, k, p)
	}()
}

// drainPort lets the router of a port no longer steered finish what it has
// (proxy.Shutdown: the listener's accept queue, requests and streams in
// flight; keep-alive connections end at their next request) until ctx
// ends, then closes it and returns what was left.
func (d *dataplane) drainPort(ctx context.Context, k portKey, p *port) proxy.Activity {
	err := p.proxy.Shutdown(ctx)
	_ = p.ln.Close()
	var left proxy.Activity
	if err != nil {
		if left = p.proxy.Active(); left.Conns() > 0 {
			d.log.Warn("drain time over; closing the connections left", "port", k.String(), "left", left)
		}
	}
	_ = p.proxy.Close()
	_ = p.nsf.Close()
	return left
}
