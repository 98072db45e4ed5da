// Package controller is Detour's control plane: it holds the intercepts
// (in a store.Store, leased), answers the CLI over ControlService, and turns
// intercepts plus the inventory into each node's desired state, which it
// streams to the node agents over AgentSyncService and whose status it
// collects from them.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/store"
)

// Compile-time checks that Server serves both APIs.
var (
	_ detourv1.ControlServiceServer   = (*Server)(nil)
	_ detourv1.AgentSyncServiceServer = (*Server)(nil)
)

// watchBuffer is how many events a slow watcher may lag before it is cut
// off; it then reconnects and starts again from a snapshot, which is cheaper
// than letting one stuck client hold every change back.
const watchBuffer = 256

// Config is what a Server depends on.
type Config struct {
	Store     store.Store      // required
	Inventory inventory.Source // required
	// Clock drives leases; nil means the wall clock.
	Clock Clock
	// Logger; nil discards.
	Logger *slog.Logger
	// Registerer gets the controller's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Version is reported by GetStatus.
	Version string
	// Status, when set, is told of every change to an intercept's status
	// and run by Run (the Kubernetes store's StatusWriter); nil keeps
	// status in GetStatus alone.
	Status StatusSink
}

// Server implements ControlService and AgentSyncService. Every mutation
// takes mu for its whole length (store write included), so the store, the
// in-memory copy, the desired state and the events sent to watchers change
// in one order.
type Server struct {
	detourv1.UnimplementedControlServiceServer
	detourv1.UnimplementedAgentSyncServiceServer

	store   store.Store
	inv     inventory.Source
	clock   Clock
	log     *slog.Logger
	metrics *metrics
	version string
	started time.Time
	status  StatusSink // nil: none

	// leaseChanged wakes the lease loop when the earliest expiry may have
	// moved.
	leaseChanged chan struct{}

	mu         sync.Mutex
	closed     bool
	intercepts map[string]*detourv1.Intercept // key namespace/name; never mutated once stored
	desired    plan
	icWatchers map[*icWatcher]struct{}
	dsWatchers map[*dsWatcher]struct{}
	agents     map[string]*agent                               // by node
	reports    map[string]map[string]*detourv1.InterceptReport // node → intercept key → last report
	rejected   map[string]*rejection                           // intercept key → version refused (see external.go)
	ownedSubs  []func(namespace, kind, owner string)           // see SubscribeOwned
	envs       EnvironmentService                              // nil: environments not served
}

// agent is what the controller knows of one node's agent.
type agent struct {
	version  string
	lastSeen time.Time
	streams  int // open desired-state watches
}

// New returns a Server over the intercepts already in cfg.Store, so that a
// restarted controller carries on where the last one stopped.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Inventory == nil {
		return nil, errors.New("controller: Store and Inventory are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("controller metrics: %w", err)
	}
	s := &Server{
		store:        cfg.Store,
		inv:          cfg.Inventory,
		clock:        cfg.Clock,
		log:          cfg.Logger,
		metrics:      m,
		version:      cfg.Version,
		started:      cfg.Clock.Now(),
		status:       cfg.Status,
		leaseChanged: make(chan struct{}, 1),
		intercepts:   map[string]*detourv1.Intercept{},
		icWatchers:   map[*icWatcher]struct{}{},
		dsWatchers:   map[*dsWatcher]struct{}{},
		agents:       map[string]*agent{},
		reports:      map[string]map[string]*detourv1.InterceptReport{},
		rejected:     map[string]*rejection{},
	}
	all, err := cfg.Store.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("controller: load intercepts: %w", err)
	}
	s.mu.Lock()
	if _, ok := cfg.Store.(WatchingStore); ok {
		// Anyone may have written these (kubectl): check them as Run
		// checks later changes.
		s.admitLoadedLocked(all)
	} else {
		for _, ic := range all {
			s.intercepts[keyOf(ic.GetNamespace(), ic.GetName())] = ic
		}
	}
	s.metrics.activeIntercepts.Set(float64(len(s.intercepts)))
	s.reconcileLocked()
	s.mu.Unlock()
	s.log.Info("controller state loaded", "intercepts", len(all))
	return s, nil
}

// RegisterServices adds both services to a gRPC server.
func (s *Server) RegisterServices(g grpc.ServiceRegistrar) {
	detourv1.RegisterControlServiceServer(g, s)
	detourv1.RegisterAgentSyncServiceServer(g, s)
}

// Run expires leases and follows inventory changes until ctx ends. When the
// store is a WatchingStore, it also applies the changes others make to it;
// with a StatusSink, it runs the sink too.
func (s *Server) Run(ctx context.Context) error {
	var watchErr, statusErr chan error
	if w, ok := s.store.(WatchingStore); ok {
		watchErr = make(chan error, 1)
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		defer func() { cancel(); <-done }()
		go func() { defer close(done); watchErr <- s.runWatch(wctx, w) }()
	}
	if s.status != nil {
		statusErr = make(chan error, 1)
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		defer func() { cancel(); <-done }()
		go func() { defer close(done); statusErr <- s.status.Run(sctx, s) }()
	}
	for {
		next := s.expireDue(ctx)
		var wake <-chan time.Time
		if !next.IsZero() {
			wake = s.clock.At(next)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-watchErr:
			if err != nil {
				return err
			}
			watchErr = nil
		case err := <-statusErr:
			if err != nil {
				return fmt.Errorf("intercept status: %w", err)
			}
			statusErr = nil
		case <-wake:
		case <-s.leaseChanged:
		case <-s.inv.Changed():
			s.mu.Lock()
			s.reconcileLocked()
			s.retryRejectedLocked()
			s.mu.Unlock()
		}
	}
}

// Close ends every open watch stream so that a graceful gRPC stop does not
// wait for them forever; agents and CLIs reconnect to the next controller.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	err := status.Error(codes.Unavailable, "controller shutting down")
	for w := range s.icWatchers {
		w.stop(err)
	}
	for w := range s.dsWatchers {
		w.stop(err)
	}
	s.icWatchers = map[*icWatcher]struct{}{}
	s.dsWatchers = map[*dsWatcher]struct{}{}
}

// expireDue deletes every intercept whose lease has ended and returns the
// next expiry (zero if none).
func (s *Server) expireDue(ctx context.Context) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	var next time.Time
	changed := false
	for k, ic := range s.intercepts {
		if ic.GetExpiresAt() == nil {
			continue
		}
		exp := ic.GetExpiresAt().AsTime()
		if exp.After(now) {
			if next.IsZero() || exp.Before(next) {
				next = exp
			}
			continue
		}
		if err := s.store.Delete(ctx, ic.GetNamespace(), ic.GetName()); err != nil && !errors.Is(err, store.ErrNotFound) {
			// Retry soon rather than leave a dead lease steering traffic.
			s.log.Error("expire intercept", "namespace", ic.GetNamespace(), "intercept", ic.GetName(), "err", err)
			s.metrics.expirations.WithLabelValues("error").Inc()
			if retry := now.Add(time.Second); next.IsZero() || retry.Before(next) {
				next = retry
			}
			continue
		}
		delete(s.intercepts, k)
		s.dropReportsLocked(k)
		s.metrics.expirations.WithLabelValues("ok").Inc()
		s.log.Info("intercept expired", "namespace", ic.GetNamespace(), "intercept", ic.GetName())
		s.publishLocked(detourv1.WatchInterceptsResponse_TYPE_EXPIRED, ic)
		changed = true
	}
	if changed {
		s.metrics.activeIntercepts.Set(float64(len(s.intercepts)))
		s.reconcileLocked()
		s.retryRejectedLocked()
	}
	return next
}

// reconcileLocked recomputes the desired state and sends each node's
// watchers what changed for them.
func (s *Server) reconcileLocked() {
	inv, err := s.inv.Get()
	if err != nil {
		// Keep what the agents have: a broken inventory read must not
		// tear down everyone's steering.
		s.log.Warn("inventory unavailable; desired state unchanged", "err", err)
		return
	}
	ics := make([]*detourv1.Intercept, 0, len(s.intercepts))
	for _, ic := range s.intercepts {
		ics = append(ics, ic)
	}
	next := computePlan(inv, ics)
	old := s.desired
	s.desired = next
	s.allStatusChangedLocked()
	events := map[string][]*detourv1.WatchDesiredStateResponse{}
	for w := range s.dsWatchers {
		evs, ok := events[w.node]
		if !ok {
			evs = diffNode(old.nodes[w.node], next.nodes[w.node])
			events[w.node] = evs
		}
		for _, ev := range evs {
			if !w.send(ev) {
				s.dropDSWatcherLocked(w)
				break
			}
		}
	}
}

// leaseMoved tells the lease loop to look at the expiries again.
func (s *Server) leaseMoved() { notify(s.leaseChanged) }

// notify signals ch without blocking; one pending signal is enough because
// the reader looks at the whole state again.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// icWatcher is one WatchIntercepts stream.
type icWatcher struct {
	namespace string
	ch        chan *detourv1.WatchInterceptsResponse
	err       error // why ch was closed, read after it is
}

func (w *icWatcher) send(ev *detourv1.WatchInterceptsResponse) bool {
	select {
	case w.ch <- ev:
		return true
	default:
		return false
	}
}

func (w *icWatcher) stop(err error) { w.err = err; close(w.ch) }

// publishLocked sends an intercept event to the watchers of its namespace.
func (s *Server) publishLocked(t detourv1.WatchInterceptsResponse_Type, ic *detourv1.Intercept) {
	s.notifyOwnerLocked(ic)
	ev := &detourv1.WatchInterceptsResponse{Type: t, Intercept: ic}
	for w := range s.icWatchers {
		if w.namespace != "" && w.namespace != ic.GetNamespace() {
			continue
		}
		if !w.send(ev) {
			delete(s.icWatchers, w)
			w.stop(status.Error(codes.ResourceExhausted, "intercept watch fell behind; watch again"))
		}
	}
}

// dsWatcher is one WatchDesiredState stream.
type dsWatcher struct {
	node string
	ch   chan *detourv1.WatchDesiredStateResponse
	err  error
}

func (w *dsWatcher) send(ev *detourv1.WatchDesiredStateResponse) bool {
	select {
	case w.ch <- ev:
		return true
	default:
		return false
	}
}

func (w *dsWatcher) stop(err error) { w.err = err; close(w.ch) }

func (s *Server) dropDSWatcherLocked(w *dsWatcher) {
	if _, ok := s.dsWatchers[w]; !ok {
		return
	}
	delete(s.dsWatchers, w)
	w.stop(status.Error(codes.ResourceExhausted, "desired-state watch fell behind; reconnect for a fresh snapshot"))
}

func (s *Server) dropReportsLocked(key string) {
	for _, r := range s.reports {
		delete(r, key)
	}
}
