package agent

import (
	"sync/atomic"
	"time"

	"github.com/detourdev/detour/pkg/redirect/proxy"
)

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
// request finds them with a pointer load and a map lookup (a port can have
// hundreds of intercepts), without the dataplane's lock (which Reports
// holds while it reads BPF maps).
type portObserver struct {
	d      *dataplane
	routes atomic.Pointer[map[string]*counters] // by intercept
}

func (po *portObserver) Request(id string, o proxy.Outcome, dur time.Duration) {
	if id == "" {
		po.d.m.unmatched.observe(o, dur)
		return
	}
	if rs := po.routes.Load(); rs != nil {
		if c := (*rs)[id]; c != nil {
			c.count(o, dur)
			return
		}
	}
	// Routed by routes replaced since: find the intercept the slow way.
	po.d.observe(id, o, dur)
}

func (po *portObserver) Passthrough(r proxy.Reason) {
	po.d.m.passthroughs.WithLabelValues(string(r)).Inc()
}

// setRoutes gives po the counters of routes' intercepts; d.mu is held.
func (po *portObserver) setRoutes(routes []proxy.Route) {
	rs := make(map[string]*counters, len(routes))
	for _, r := range routes {
		if c := po.d.counters[r.Intercept]; c != nil {
			rs[r.Intercept] = c
		}
	}
	po.routes.Store(&rs)
}

// observe counts a request of intercept id that its port's observer does
// not know (any more): the intercept's counters are looked up under the lock.
func (d *dataplane) observe(id string, o proxy.Outcome, dur time.Duration) {
	d.mu.Lock()
	c := d.counters[id]
	d.mu.Unlock()
	if c == nil {
		d.m.observeGone(o, dur) // the intercept left the node meanwhile
		return
	}
	c.count(o, dur)
}

// keepCounters keeps the counters of the intercepts in ids, makes those of
// new ones and drops the others', with their series; d.mu is held.
func (d *dataplane) keepCounters(ids map[string][]portKey) {
	for id, c := range d.counters {
		if _, ok := ids[id]; !ok {
			c.metrics.forget()
			delete(d.counters, id)
		}
	}
	for id := range ids {
		if d.counters[id] == nil {
			d.counters[id] = &counters{metrics: d.m.forIntercept(id)}
		}
	}
}
