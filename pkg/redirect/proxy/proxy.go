// Package proxy routes each HTTP/1.x request, and each HTTP/2 stream, on an
// intercepted connection to a developer's pod or to the original app
// (docs/architecture.md, "Data path on a node", steps 2 and 6).
//
// For HTTP/1 it reads only request and response heads, decides from the
// head, and forwards every byte unchanged, with buffers that are pooled and
// reused, so a hop costs close to a blind copy (docs/performance.md, "What
// any proxy hop costs here").
// Because the decision is per request, one keep-alive connection from a
// shared client can carry requests for several developers. HTTP/2 (prior
// knowledge, as gRPC uses, or h2c Upgrade) multiplexes developers on one
// connection, so its streams are routed one by one: header blocks are
// decoded for the decision and the frames forwarded to each stream's
// backend (h2.go, h2route.go). Anything else is
// passed to the app untouched: the proxy must never be the reason a service
// stops working.
package proxy

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detourdev/detour/pkg/redirect/http1"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// Outcome is what happened to one request, for metrics.
type Outcome string

const (
	OutcomeMatched     Outcome = "matched"     // went to the intercept's destination
	OutcomeUnmatched   Outcome = "unmatched"   // no intercept selected it; went to the app
	OutcomePassthrough Outcome = "passthrough" // neither HTTP/1 nor HTTP/2: the connection went to the app untouched
	OutcomeFallback    Outcome = "fallback"    // selected, but the destination was unreachable; went to the app
)

// Route sends the requests its Matcher selects to Destination, or spreads
// them over Destinations.
type Route struct {
	Intercept   string
	Matcher     *match.Matcher
	Destination string // host:port
	// Destinations, when it holds more than one address, spreads the
	// route's requests (an L4 route's connections) over them in turn,
	// skipping any that failed a dial lately; Destination is ignored. An
	// environment's intercepts send to every ready pod of a fork.
	Destinations []string
	// next turns Destinations; shared by copies of the route.
	next *atomic.Uint64
	// L4 routes take whole connections: no request is read and Matcher is
	// unused. The bytes are relayed by Config.Relay.
	L4 bool
	// Sources, when not nil, admits only connections from these addresses
	// (an empty non-nil set admits none).
	Sources map[netip.Addr]struct{}
}

// admits reports whether a connection from src may take the route.
func (r *Route) admits(src netip.Addr) bool {
	if r.Sources == nil {
		return true
	}
	_, ok := r.Sources[src.Unmap()]
	return ok
}

// Observer learns the outcome and duration of each request; intercept is ""
// for unmatched and passthrough. It also learns why each passthrough
// happened, as it begins (its Request comes when it ends). It is called
// from many goroutines.
type Observer interface {
	Request(intercept string, o Outcome, d time.Duration)
	Passthrough(r Reason)
}

// Config configures a Proxy. Zero durations and sizes take the defaults.
type Config struct {
	App              string // host:port of the original app
	Dial             func(ctx context.Context, network, addr string) (net.Conn, error)
	DialTimeout      time.Duration // default 500ms; slower destinations fall back
	FirstByteTimeout time.Duration // default 1s; see heads.go
	// HeadTimeout bounds a request head from its first byte (default
	// DefaultHeadTimeout, at least FirstByteTimeout); see heads.go.
	HeadTimeout time.Duration
	// SlowHeads caps the connections waiting for a head beyond
	// FirstByteTimeout; nil: a cap of DefaultMaxSlowHeads for this proxy
	// alone.
	SlowHeads      *SlowHeads
	IdleTimeout    time.Duration // pooled upstream idle timeout, default 90s
	MaxIdlePerHost int           // default 64
	Observer       Observer      // may be nil
	Logger         *slog.Logger  // may be nil
	// FastPath, when not nil, lets the kernel route the port's HTTP/1.1
	// requests from callers it can reach (fast.go).
	FastPath FastPath
	// Relay moves the bytes of an L4 connection until both directions end.
	// Nil copies in userspace (io.Copy, which uses splice(2) between TCP
	// sockets); the agent may pass the kernel sockmap splice instead.
	Relay func(ctx context.Context, client, upstream *net.TCPConn) error
}

// downFor is how long a destination that failed to answer a dial is skipped:
// long enough that a burst of requests does not each wait DialTimeout, short
// enough that a restarted pod is used again almost at once.
const downFor = time.Second

// Proxy routes HTTP/1 requests and HTTP/2 streams; it is safe for
// concurrent use.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	routes atomic.Pointer[routeTable]

	mu     sync.Mutex
	closed bool
	// every client conn (with its client) and upstream conn (nil), to
	// close on Close
	conns    map[net.Conn]*client
	serving  int                        // client conns being served
	lns      map[net.Listener]deadliner // listeners Serve accepts from, for Shutdown
	draining atomic.Bool                // Shutdown has begun (set under mu)
	idle     map[string][]*upConn       // per address, mostly oldest first (pool.go)
	down     map[string]time.Time       // destination -> skip until
	downN    atomic.Int32               // len(down), read without mu: mostly nothing is down
	wg       sync.WaitGroup             // ServeConn calls and the janitor
	stop     chan struct{}              // closed by Close; stops the janitor
	janny    bool                       // janitor started
	bufs     sync.Pool                  // *connBufs
	upBufs   sync.Pool                  // *connBufs for upstream conns
	h2       *h2Side                    // HTTP/2 sessions (h2.go)
	slow     *SlowHeads                 // connections waiting for a head (heads.go)
}

// connBufs are the buffers one connection needs; pooled because a proxy
// with many short connections would otherwise allocate 80 KiB per accept.
type connBufs struct {
	r *bufio.Reader
	w *bufio.Writer
}

// writeBufSize coalesces a head and a small body into one write.
const writeBufSize = 16 << 10

// New returns a Proxy with no routes: every request goes to cfg.App.
func New(cfg Config) *Proxy {
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 500 * time.Millisecond
	}
	if cfg.FirstByteTimeout <= 0 {
		cfg.FirstByteTimeout = time.Second
	}
	if cfg.HeadTimeout <= 0 {
		cfg.HeadTimeout = DefaultHeadTimeout
	}
	cfg.HeadTimeout = max(cfg.HeadTimeout, cfg.FirstByteTimeout)
	if cfg.SlowHeads == nil {
		cfg.SlowHeads = NewSlowHeads(DefaultMaxSlowHeads)
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.MaxIdlePerHost <= 0 {
		cfg.MaxIdlePerHost = 64
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		cfg:   cfg,
		log:   log,
		conns: map[net.Conn]*client{},
		lns:   map[net.Listener]deadliner{},
		idle:  map[string][]*upConn{},
		down:  map[string]time.Time{},
		stop:  make(chan struct{}),
		slow:  cfg.SlowHeads,
	}
	newBufs := func() any {
		return &connBufs{
			r: bufio.NewReaderSize(nil, http1.MaxHeadBytes),
			w: bufio.NewWriterSize(nil, writeBufSize),
		}
	}
	p.bufs.New, p.upBufs.New = newBufs, newBufs
	p.h2 = newH2()
	p.SetRoutes(nil)
	return p
}

// routeTable is one generation of routes and the index of their matchers.
type routeTable struct {
	routes []Route
	index  *match.Index // positions are routes'; L4 routes have none
	l4     bool         // some route is L4
}

// SetRoutes replaces the routes atomically; requests already routed keep
// their destination. The first route whose matcher selects a request wins.
func (p *Proxy) SetRoutes(rs []Route) {
	t := &routeTable{routes: append([]Route(nil), rs...)}
	ms := make([]*match.Matcher, len(t.routes))
	for i := range t.routes {
		r := &t.routes[i]
		if len(r.Destinations) > 1 && r.next == nil {
			r.next = new(atomic.Uint64)
		}
		if r.L4 {
			t.l4 = true
		} else {
			ms[i] = r.Matcher
		}
	}
	t.index = match.NewIndex(ms)
	p.routes.Store(t)
}

// Serve accepts connections from ln and serves each on its own goroutine.
// It returns nil once ln is closed, or once Shutdown has drained ln (see
// Shutdown), or the accept error that stopped it.
func (p *Proxy) Serve(ln net.Listener) error {
	dl, ok := p.addListener(ln)
	if ok {
		defer p.removeListener(ln)
	}
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if handled, stop := p.drainAccept(dl, err); stop {
				return nil
			} else if handled {
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of file descriptors and the like: wait, do not spin.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.log.Warn("accept", "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-p.stop:
					return nil
				}
			}
			return err
		}
		backoff = 0
		// Tracked before Serve accepts again, so that a drain never
		// sees an accepted connection as none.
		cl := &client{p: p, ctx: context.Background(), c: c}
		if !p.track(c, cl) {
			c.Close()
			continue
		}
		go cl.serveConn()
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Close closes every client and upstream connection and waits for the
// connections being served to finish; HTTP/2 clients are sent GOAWAY first.
// For a graceful stop, Shutdown first (drain.go).
// Closing listeners given to Serve is the caller's job. Close is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	close(p.stop)
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.idle = map[string][]*upConn{}
	sessions := p.h2.takeSessions()
	p.mu.Unlock()
	p.h2.goAway(sessions)
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
	return nil
}

// track registers c so Close can reach it: a client connection to be
// served with cl, or an upstream one (cl nil). It fails once the proxy
// closed.
func (p *Proxy) track(c net.Conn, cl *client) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = cl
	if cl != nil {
		p.serving++
		p.wg.Add(1)
	}
	return true
}

func (p *Proxy) forget(c net.Conn) {
	p.mu.Lock()
	if cl, ok := p.conns[c]; ok {
		if cl != nil {
			p.serving--
		}
		delete(p.conns, c)
	}
	p.mu.Unlock()
}

func (p *Proxy) observe(intercept string, o Outcome, start time.Time) {
	if p.cfg.Observer != nil {
		p.cfg.Observer.Request(intercept, o, time.Since(start))
	}
}

func (p *Proxy) observeDuration(intercept string, o Outcome, d time.Duration) {
	if p.cfg.Observer != nil {
		p.cfg.Observer.Request(intercept, o, d)
	}
}

// route picks the first request route that admits the connection's source
// and whose matcher selects r. The index looks only at the routes that can
// select r, so a port with a thousand session intercepts routes as fast as
// one with a single one (docs/performance.md, "Cost flat in intercept
// count").
func (p *Proxy) route(r match.Request, src netip.Addr) *Route {
	t := p.routes.Load()
	i := t.index.First(r, func(i int) bool { return t.routes[i].admits(src) })
	if i < 0 {
		return nil
	}
	return &t.routes[i]
}

// l4Route picks the L4 route that takes connections from src, if any.
func (p *Proxy) l4Route(src netip.Addr) *Route {
	t := p.routes.Load()
	if !t.l4 {
		return nil
	}
	for i := range t.routes {
		if t.routes[i].L4 && t.routes[i].admits(src) {
			return &t.routes[i]
		}
	}
	return nil
}

// sourceOf is the address a connection comes from (invalid if unknown).
func sourceOf(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap.Addr().Unmap()
}

// tries is how many destinations a request may try before the app: each
// one once.
func (r *Route) tries() int { return max(1, len(r.Destinations)) }

// pick chooses where a request or connection of rt goes: the next of its
// destinations not down, or false when every one is down.
func (p *Proxy) pick(rt *Route) (string, bool) {
	if len(rt.Destinations) <= 1 {
		addr := rt.Destination
		if len(rt.Destinations) == 1 {
			addr = rt.Destinations[0]
		}
		return addr, !p.isDown(addr)
	}
	n := uint64(len(rt.Destinations))
	start := uint64(0)
	if rt.next != nil {
		start = rt.next.Add(1)
	}
	for i := range n {
		if addr := rt.Destinations[(start+i)%n]; !p.isDown(addr) {
			return addr, true
		}
	}
	return "", false
}

// isDown tells whether addr failed a dial less than downFor ago. Every
// matched request asks, so when nothing is down it answers without the lock.
func (p *Proxy) isDown(addr string) bool {
	if p.downN.Load() == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	until, ok := p.down[addr]
	if ok && time.Now().After(until) {
		p.deleteDown(addr)
		return false
	}
	return ok
}

func (p *Proxy) markDown(addr string) {
	p.mu.Lock()
	if _, ok := p.down[addr]; !ok {
		p.downN.Add(1)
	}
	p.down[addr] = time.Now().Add(downFor)
	p.mu.Unlock()
}

// deleteDown forgets addr was down; p.mu is held.
func (p *Proxy) deleteDown(addr string) {
	if _, ok := p.down[addr]; ok {
		delete(p.down, addr)
		p.downN.Add(-1)
	}
}
