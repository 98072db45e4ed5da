// Package agent is the node agent's runtime: it follows the controller's
// desired state for its node, applies it to the kernel steering and the
// per-port routers, keeps serving the last state while the controller is
// away, and reports what it does.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/podns"
	"github.com/detourdev/detour/pkg/redirect/fastpath"
	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// Config is what an agent needs besides its steering.
type Config struct {
	Node       string
	Controller string // gRPC address of the controller
	// StateFile keeps the last desired state, so an agent restarted while
	// the controller is away still serves it. Empty disables it.
	StateFile      string
	ReportInterval time.Duration
	Version        string
	Logger         *slog.Logger
	Registry       *prometheus.Registry
	// Relay moves the bytes of L4 connections (the kernel splice); nil
	// copies them in userspace.
	Relay func(ctx context.Context, client, upstream *net.TCPConn) error
	// ResolveNetNS finds the network namespace of a pod on this node by its
	// IP, for targets that carry no netns path (in Kubernetes the controller
	// does not know where a pod's namespace is on the node; pkg/podns finds
	// it). It returns a path the namespace can be opened by at once. nil:
	// targets must carry their netns path (the lab).
	ResolveNetNS func(podIP netip.Addr) (string, error)
	// Connector redirects at connect() the callers on this node of an L4
	// intercept (the source pods' only, for an intercept with a source
	// filter), so they bypass the agent (pkg/redirect/connect).
	// Destinations are checked to listen, and source pods' namespaces are
	// found, through ResolveNetNS. nil: every caller goes through the
	// steering and relay.
	// The agent closes it when it stops.
	Connector Connector
	// FastPath, when not nil, routes the HTTP/1.1 requests of callers on
	// this node in the kernel (pkg/redirect/fastpath; docs/architecture.md,
	// data path step 7). The caller closes it after Run returns.
	FastPath *fastpath.FastPath
	// FlowPorts is given, at every change, the ports whose TCP flows the
	// sockops metrics should track (flowmetrics.SockOps.SetPorts): the steered
	// pod ports and the destinations' ports. nil: not told.
	FlowPorts func(ports []uint16) error
	// RetryInterval is how often targets that could not be steered yet are
	// tried again (their pod's sandbox may just be starting); every ten
	// intervals all targets' namespaces are looked up again. Default 1 s.
	RetryInterval time.Duration
	// ConnectCheckInterval is how often the destinations of connect-time
	// redirects are checked to still listen: a redirect to a destination
	// that stopped (a fork's pod killed) is removed within it, and callers
	// go through the agent again, which falls back to the app. Each check
	// asks sock_diag once per destination on this node. Default 250 ms.
	ConnectCheckInterval time.Duration
	// ShutdownGrace bounds the graceful stop once Run's context ends: the
	// steering is removed at once, so new connections reach the apps
	// directly, and for at most this long the agent finishes what it
	// already has (connections in its listeners' accept queues, HTTP/1
	// requests and HTTP/2 streams in flight, L4 relays), then closes what
	// is left. Zero means DefaultShutdownGrace; negative, no grace.
	ShutdownGrace time.Duration
	// HeadTimeout bounds a request head from its first byte: a head that
	// has begun but is not complete within the first second is waited for
	// up to this long, then the rest of its connection goes to the app.
	// Zero means proxy.DefaultHeadTimeout.
	HeadTimeout time.Duration
	// MaxSlowHeads caps the connections, over all ports, waiting for a head
	// beyond the first second; a head with no place left goes to the app.
	// Zero means proxy.DefaultMaxSlowHeads; negative, none waits.
	MaxSlowHeads int
	// DialOptions for the controller connection, applied after the default
	// insecure transport credentials: a grpc.WithTransportCredentials here
	// replaces them (TLS in a cluster); grpc.WithPerRPCCredentials adds a
	// token.
	DialOptions []grpc.DialOption
}

// DefaultShutdownGrace is Config.ShutdownGrace's default: well inside the
// DaemonSet's terminationGracePeriodSeconds (30 s), after which the kubelet
// kills the agent.
const DefaultShutdownGrace = 10 * time.Second

// Agent follows the controller and drives the data path of one node.
type Agent struct {
	cfg Config
	log *slog.Logger
	m   *metrics
	dp  *dataplane

	// reportNow asks the report loop for a report at once: after a
	// desired state is applied, so that a CLI waiting for the steering
	// (intercept create --wait) learns it within milliseconds, not at the
	// next tick of ReportInterval.
	reportNow chan struct{}

	mu          sync.Mutex
	assignments map[string]*detourv1.Assignment
	connected   bool
	applied     bool // a desired state was applied, from the controller or the state file
	stopping    bool
}

// New builds an agent around an already loaded steering.
func New(cfg Config, s Steerer) (*Agent, error) {
	if cfg.Node == "" {
		return nil, errors.New("agent: node name is required")
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.ConnectCheckInterval <= 0 {
		cfg.ConnectCheckInterval = 250 * time.Millisecond
	}
	switch {
	case cfg.ShutdownGrace == 0:
		cfg.ShutdownGrace = DefaultShutdownGrace
	case cfg.ShutdownGrace < 0:
		cfg.ShutdownGrace = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	m := newMetrics(cfg.Registry)
	dp := newDataplane(s, cfg.Logger, m)
	dp.headTimeout = cfg.HeadTimeout
	switch {
	case cfg.MaxSlowHeads > 0:
		dp.slowHeads = proxy.NewSlowHeads(cfg.MaxSlowHeads)
	case cfg.MaxSlowHeads < 0:
		dp.slowHeads = proxy.NewSlowHeads(0)
	}
	if err := cfg.Registry.Register(slowHeadsGauge(dp.slowHeads)); err != nil {
		return nil, fmt.Errorf("agent: register slow head metrics: %w", err)
	}
	dp.relay = cfg.Relay
	dp.resolve = cfg.ResolveNetNS
	dp.flowPorts = cfg.FlowPorts
	if cfg.FastPath != nil {
		dp.fast = cfg.FastPath
		if err := cfg.Registry.Register(kernelRequests{dp}); err != nil {
			return nil, fmt.Errorf("agent: register fast path metrics: %w", err)
		}
	}
	if cfg.Connector != nil {
		// Destinations and sources on other nodes are looked for at
		// most every 10 s, not at every check.
		dp.misses = podns.NewMissCache(10 * time.Second)
		resolve := dp.misses.Wrap(cfg.ResolveNetNS)
		dp.connects = newConnectPlane(cfg.Connector, cfg.Logger, listeningIn(resolve), netnsCookieOf(resolve))
		if err := cfg.Registry.Register(dp.connects); err != nil {
			return nil, fmt.Errorf("agent: register connect metrics: %w", err)
		}
	}
	return &Agent{
		cfg:         cfg,
		log:         cfg.Logger,
		m:           m,
		dp:          dp,
		reportNow:   make(chan struct{}, 1),
		assignments: map[string]*detourv1.Assignment{},
	}, nil
}

// Run serves until ctx ends, then stops gracefully: it removes all
// steering, finishes what the routers already have for at most
// Config.ShutdownGrace, closes what is left and returns.
func (a *Agent) Run(ctx context.Context) error {
	defer a.stop()
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, a.cfg.DialOptions...)
	conn, err := grpc.NewClient(a.cfg.Controller, opts...)
	if err != nil {
		_ = a.dp.Close()
		return fmt.Errorf("controller client: %w", err)
	}
	defer conn.Close()
	client := detourv1.NewAgentSyncServiceClient(conn)
	if err := a.loadState(); err != nil {
		a.log.Warn("ignoring saved state", "err", err)
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.reportLoop(ctx, client) }()
	go func() { defer wg.Done(); a.dp.run(ctx, a.cfg.RetryInterval, a.cfg.ConnectCheckInterval) }()
	a.syncLoop(ctx, client)
	a.stop()
	grace, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace)
	defer cancel()
	err = a.dp.Shutdown(grace)
	wg.Wait()
	return err
}

// stop marks the agent as going away, for /readyz.
func (a *Agent) stop() {
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
}

// syncLoop keeps a desired-state watch open, reconnecting with a short
// backoff: a restarted agent or controller is back in sync within a second
// or two, and meanwhile the last applied state keeps serving.
func (a *Agent) syncLoop(ctx context.Context, c detourv1.AgentSyncServiceClient) {
	backoff := 100 * time.Millisecond
	for first := true; ctx.Err() == nil; first = false {
		if !first {
			a.m.syncReconnects.Inc()
		}
		err := a.watch(ctx, c)
		a.setConnected(false)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("controller watch ended; serving the last state", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

func (a *Agent) watch(ctx context.Context, c detourv1.AgentSyncServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := c.Register(ctx, &detourv1.RegisterRequest{Node: a.cfg.Node, Version: a.cfg.Version}); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	stream, err := c.WatchDesiredState(ctx, &detourv1.WatchDesiredStateRequest{Node: a.cfg.Node})
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		a.setConnected(true)
		a.m.syncEvents.WithLabelValues(ev.Type.String()).Inc()
		a.handle(ev)
	}
}

func (a *Agent) setConnected(v bool) {
	a.mu.Lock()
	a.connected = v
	a.mu.Unlock()
	if v {
		a.m.syncConnected.Set(1)
	} else {
		a.m.syncConnected.Set(0)
	}
}

// handle applies one desired-state event.
func (a *Agent) handle(ev *detourv1.WatchDesiredStateResponse) {
	a.mu.Lock()
	switch ev.Type {
	case detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT:
		a.assignments = map[string]*detourv1.Assignment{}
		for _, as := range ev.Assignments {
			a.assignments[interceptID(as.Namespace, as.Name)] = as
		}
	case detourv1.WatchDesiredStateResponse_TYPE_UPSERT:
		for _, as := range ev.Assignments {
			a.assignments[interceptID(as.Namespace, as.Name)] = as
		}
	case detourv1.WatchDesiredStateResponse_TYPE_DELETE:
		delete(a.assignments, interceptID(ev.Namespace, ev.Name))
	default:
		a.mu.Unlock()
		a.log.Warn("ignoring unknown desired-state event", "type", ev.Type)
		return
	}
	list := a.list()
	a.mu.Unlock()
	a.dp.Apply(list)
	a.mu.Lock()
	a.applied = true
	a.mu.Unlock()
	select {
	case a.reportNow <- struct{}{}:
	default: // a report is due already
	}
	if err := a.saveState(list); err != nil {
		a.log.Warn("could not save state", "err", err)
	}
}

func (a *Agent) list() []*detourv1.Assignment {
	out := make([]*detourv1.Assignment, 0, len(a.assignments))
	for _, as := range a.assignments {
		out = append(out, as)
	}
	return out
}

func (a *Agent) reportLoop(ctx context.Context, c detourv1.AgentSyncServiceClient) {
	t := time.NewTicker(a.cfg.ReportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.reportNow:
		}
		rctx, cancel := context.WithTimeout(ctx, a.cfg.ReportInterval)
		_, err := c.ReportStatus(rctx, &detourv1.ReportStatusRequest{Node: a.cfg.Node, Intercepts: a.dp.Reports()})
		cancel()
		if err != nil {
			a.log.Debug("status report failed", "err", err)
		}
	}
}

// saveState writes the applied assignments as a snapshot event.
func (a *Agent) saveState(list []*detourv1.Assignment) error {
	if a.cfg.StateFile == "" {
		return nil
	}
	b, err := protojson.Marshal(&detourv1.WatchDesiredStateResponse{
		Type: detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT, Assignments: list,
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(a.cfg.StateFile), 0o755); err != nil {
		return err
	}
	tmp := a.cfg.StateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, a.cfg.StateFile)
}

func (a *Agent) loadState() error {
	if a.cfg.StateFile == "" {
		return nil
	}
	b, err := os.ReadFile(a.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var ev detourv1.WatchDesiredStateResponse
	if err := protojson.Unmarshal(b, &ev); err != nil {
		return fmt.Errorf("parse %s: %w", a.cfg.StateFile, err)
	}
	a.log.Info("applying the last saved state until the controller answers", "intercepts", len(ev.Assignments))
	a.handle(&ev)
	return nil
}

// Handler serves /metrics, /healthz and /readyz. The agent is healthy once
// its BPF objects are loaded (New is given them loaded), whether or not the
// controller is reachable: a controller outage must not restart agents that
// are serving. It is ready once it has also applied a desired state, from the
// controller or its state file, until it stops.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		connected := a.connected
		a.mu.Unlock()
		fmt.Fprintf(w, "ok\ncontroller_connected=%v\n", connected)
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if reason := a.notReady(); reason != "" {
			http.Error(w, reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// notReady says why the agent is not ready, or "" when it is.
func (a *Agent) notReady() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.stopping:
		return "stopping: steering removed, draining the connections already accepted"
	case !a.applied:
		return "no desired state applied yet: waiting for the controller (no saved state)"
	}
	return ""
}
