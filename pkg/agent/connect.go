package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/connect"
)

// Connector is the kernel side of connect-time redirects
// (pkg/redirect/connect.Redirects): a connect() to an intercepted pod port
// from a pod namespace on this node goes straight to another address.
type Connector interface {
	Set(from connect.From, to netip.AddrPort) error
	Delete(from connect.From) (uint64, error)
	Connections(from connect.From) (uint64, error)
	Close() error
}

// connectWant is one redirect the assignments ask for: the connections to
// a pod port or service address go to to, from every pod namespace on the
// node, or (restricted) only from the namespaces of the pods at sources.
type connectWant struct {
	addr netip.AddrPort // the pod port or service address dialled
	// to are the destinations: each caller is sent to one, chosen by its
	// address so that callers spread and each keeps its choice, skipping
	// those that do not listen.
	to         []netip.AddrPort
	intercept  string
	restricted bool
	sources    []netip.Addr
	// remote are destinations the controller saw ready on other nodes:
	// not checkable here, taken as listening.
	remote map[netip.AddrPort]bool
}

// errNotHere marks a destination that is no pod on this node.
var errNotHere = errors.New("the destination is not a pod on this node")

// installedRedirect is one redirect in the kernel.
type installedRedirect struct {
	to        netip.AddrPort
	intercept string
}

// connectPlane keeps the connect-time redirects of L4 intercepts: their
// callers in pod namespaces on this node (all of them, or only the source
// pods' when the intercept has a source filter) connect straight to the
// developer's pod, and nothing of Detour is left in their path. The
// steering and the relay stay in place for everyone else (callers on other
// nodes and in the host's namespace, and source pods whose namespace the
// agent cannot find).
//
// A redirect is in the kernel only while the destination is known to
// accept connections: a socket listening on its port in its namespace, as
// sock_diag shows it there (nothing is sent to the developer's app to find
// out). Otherwise the callers' connections go through the steering to the
// relay, which falls back to the app when the developer's pod does not
// answer, as for everyone else. check looks again every retry interval.
type connectPlane struct {
	c   Connector
	log *slog.Logger
	// listening reports whether something accepts connections at to.
	listening func(to netip.AddrPort) error
	// netnsOf finds the cookie of the namespace of the pod at an address
	// on this node.
	netnsOf func(pod netip.Addr) (uint64, error)

	mu        sync.Mutex
	desired   []connectWant
	installed map[connect.From]installedRedirect
	// down is, per intercept and destination, why its redirects are not
	// installed, logged when it changes.
	down map[string]string
	// retired counts, per intercept, the connections of redirects since
	// removed, so the counters never go down.
	retired map[string]uint64
	// live are the intercepts on the node (nil: not told yet): an
	// intercept that leaves takes its count, and its series, with it.
	live   map[string][]portKey
	closed bool

	totalDesc, activeDesc *prometheus.Desc
}

func newConnectPlane(c Connector, log *slog.Logger, listening func(netip.AddrPort) error, netnsOf func(netip.Addr) (uint64, error)) *connectPlane {
	return &connectPlane{
		c: c, log: log, listening: listening, netnsOf: netnsOf,
		installed: map[connect.From]installedRedirect{},
		down:      map[string]string{},
		retired:   map[string]uint64{},
		totalDesc: prometheus.NewDesc("detour_agent_connect_redirects_total",
			"Connections of L4 intercepts sent straight to the developer's pod at connect() on this node (no relay).",
			[]string{"intercept"}, nil),
		activeDesc: prometheus.NewDesc("detour_agent_connect_redirected_ports",
			"Pod ports whose callers on this node are redirected at connect() now.", nil, nil),
	}
}

// want replaces the redirects wanted; check puts them in the kernel.
func (cp *connectPlane) want(w []connectWant) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.desired = w
}

// keep tells which intercepts are on the node, and forgets the counts of
// the others.
func (cp *connectPlane) keep(live map[string][]portKey) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.live = live
	for id := range cp.retired {
		if _, ok := live[id]; !ok {
			delete(cp.retired, id)
		}
	}
}

// wanted reports whether any redirect is wanted.
func (cp *connectPlane) wanted() bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return len(cp.desired) > 0
}

// check makes the kernel hold the wanted redirects whose destination
// listens, and no other.
func (cp *connectPlane) check() {
	cp.mu.Lock()
	desired, closed := cp.desired, cp.closed
	cp.mu.Unlock()
	if closed {
		return
	}
	// Looking at the destinations and finding the sources' namespaces
	// enter namespaces: without the lock.
	why := map[netip.AddrPort]error{} // by destination
	want := map[connect.From]installedRedirect{}
	cookies := map[netip.Addr]uint64{}
	up := func(w *connectWant, to netip.AddrPort) bool {
		err, seen := why[to]
		if !seen {
			err = cp.listening(to)
			why[to] = err
		}
		return err == nil || w.remote[to] && errors.Is(err, errNotHere)
	}
	// pick is the destination of the callers keyed by seed: the first
	// that is up, from a place that seed chooses.
	pick := func(w *connectWant, seed uint64) (netip.AddrPort, bool) {
		n := uint64(len(w.to))
		for i := range n {
			if to := w.to[(seed+i)%n]; up(w, to) {
				return to, true
			}
		}
		return netip.AddrPort{}, false
	}
	for i := range desired {
		for _, to := range desired[i].to {
			up(&desired[i], to) // every destination looked at here, not under the lock
		}
	}
	for i := range desired {
		w := &desired[i]
		if !w.restricted {
			if to, ok := pick(w, 0); ok {
				want[connect.From{Addr: w.addr}] = installedRedirect{to: to, intercept: w.intercept}
			}
			continue
		}
		// A source whose namespace is not found here stays with the
		// relay, which checks its address.
		for _, src := range w.sources {
			c, ok := cookies[src]
			if !ok {
				var err error
				if c, err = cp.netnsOf(src); err != nil {
					cp.log.Debug("source pod's namespace not found; its connections go through the agent", "intercept", w.intercept, "source", src, "err", err)
				}
				cookies[src] = c
			}
			if c == 0 {
				continue
			}
			if to, ok := pick(w, c); ok {
				want[connect.From{NetNS: c, Addr: w.addr}] = installedRedirect{to: to, intercept: w.intercept}
			}
		}
	}

	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.closed {
		return
	}
	for from, r := range cp.installed {
		if w, ok := want[from]; !ok || w != r {
			cp.remove(from, r)
		}
	}
	down := map[string]string{}
	for i := range desired {
		w := &desired[i]
		for _, to := range w.to {
			if up(w, to) {
				continue
			}
			msg := why[to].Error()
			k := w.intercept + " " + to.String()
			if cp.down[k] != msg {
				cp.log.Info("not redirecting at connect: the destination does not listen; callers go through the agent",
					"intercept", w.intercept, "to", to, "why", msg)
			}
			down[k] = msg
		}
	}
	cp.down = down
	for from, r := range want {
		if _, ok := cp.installed[from]; ok {
			continue
		}
		if err := cp.c.Set(from, r.to); err != nil {
			cp.log.Error("connect-time redirect failed; callers go through the agent", "intercept", r.intercept, "redirect", from.String(), "err", err)
			continue
		}
		cp.installed[from] = r
		cp.log.Info("callers on this node connect straight to the destination", "intercept", r.intercept, "redirect", from.String(), "to", r.to)
	}
}

// remove takes one redirect out of the kernel; mu is held.
func (cp *connectPlane) remove(from connect.From, r installedRedirect) {
	n, err := cp.c.Delete(from)
	if err != nil {
		cp.log.Error("removing a connect-time redirect failed", "intercept", r.intercept, "redirect", from.String(), "err", err)
		return
	}
	if _, ok := cp.live[r.intercept]; ok || cp.live == nil {
		cp.retired[r.intercept] += n
	}
	delete(cp.installed, from)
	cp.log.Info("connect-time redirect removed", "intercept", r.intercept, "redirect", from.String())
}

// connections is how many connections of each intercept were redirected.
func (cp *connectPlane) connections() map[string]uint64 {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	out := make(map[string]uint64, len(cp.retired)+len(cp.installed))
	for id, n := range cp.retired {
		out[id] = n
	}
	if cp.closed {
		return out
	}
	for from, r := range cp.installed {
		if n, err := cp.c.Connections(from); err == nil {
			out[r.intercept] += n
		}
	}
	return out
}

// close removes every redirect and the programs: new connections go through
// the steering (if still there) or straight to the app.
func (cp *connectPlane) close() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.closed {
		return nil
	}
	for from, r := range cp.installed {
		cp.remove(from, r)
	}
	cp.closed = true
	return cp.c.Close()
}

func (cp *connectPlane) Describe(ch chan<- *prometheus.Desc) {
	ch <- cp.totalDesc
	ch <- cp.activeDesc
}

func (cp *connectPlane) Collect(ch chan<- prometheus.Metric) {
	byID := cp.connections()
	ids := make([]string, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ch <- prometheus.MustNewConstMetric(cp.totalDesc, prometheus.CounterValue, float64(byID[id]), id)
	}
	cp.mu.Lock()
	n := len(cp.installed)
	cp.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(cp.activeDesc, prometheus.GaugeValue, float64(n))
}

// netnsCookieOf returns a lookup of the namespace cookie of the pod at an
// address on this node, finding the namespace with resolve.
func netnsCookieOf(resolve func(netip.Addr) (string, error)) func(netip.Addr) (uint64, error) {
	return func(pod netip.Addr) (uint64, error) {
		if resolve == nil {
			return 0, errors.New("this agent does not look namespaces up")
		}
		path, err := resolve(pod)
		if err != nil {
			return 0, err
		}
		return connect.NetNSCookieOf(path)
	}
}

// listeningIn returns a check that a destination listens, by finding its
// pod's namespace with resolve and a listening TCP socket for its address
// and port there.
func listeningIn(resolve func(netip.Addr) (string, error)) func(netip.AddrPort) error {
	return func(to netip.AddrPort) error {
		if resolve == nil {
			return errors.New("this agent does not look namespaces up")
		}
		path, err := resolve(to.Addr())
		if err != nil {
			return fmt.Errorf("%w: %w", errNotHere, err)
		}
		listening, err := netns.Listening(path, to)
		if err != nil {
			return err
		}
		if !listening {
			return fmt.Errorf("nothing listens on %s", to)
		}
		return nil
	}
}
