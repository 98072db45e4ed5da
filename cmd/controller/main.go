// Command controller is Detour's control plane: it holds the intercepts in
// a one-file store or as Intercept custom resources in Kubernetes (writing
// their status), serves the CLI and the node agents over gRPC, and turns
// intercepts plus the node inventory into each node's desired state. In a
// cluster, replicas elect a leader, and gRPC is served over TLS with
// Kubernetes tokens checked on every call.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/detourdev/detour/pkg/controller"
	"github.com/detourdev/detour/pkg/store/kube"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type options struct {
	listen        string
	metricsListen string
	storePath     string
	storeBackend  string
	kubeconfig    string
	inventoryPath string
	inventoryFrom string
	logLevel      string
	logFormat     string

	leaderElect          bool
	leaderElectNamespace string // empty: $POD_NAMESPACE
	leaderElectID        string // empty: $POD_NAME, else the host name

	environments  string
	envDefaultTTL time.Duration
	envMaxTTL     time.Duration
	labState      string
	labPostgres   string

	parityChecks string // on or off

	auth                string
	agentServiceAccount string
	agentTokenAudience  string
	tlsSecret           string
	caConfigMap         string
	serviceName         string

	// Lease timings, zero meaning the defaults; not flags: tests shorten
	// them so that a failover takes a second or two.
	leaseDuration, renewDeadline, retryPeriod time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7070", "gRPC address for the CLI and the agents (opened by the leader only, with --leader-elect)")
	fs.StringVar(&o.metricsListen, "metrics-listen", "127.0.0.1:9470", "HTTP address serving /metrics, /healthz and /readyz (200 once serving gRPC; 503 while starting or not the leader)")
	fs.StringVar(&o.storeBackend, "store-backend", "bolt", "where intercepts are kept: bolt (the --store file) or kube (Intercept custom resources, which kubectl may also create, edit and delete; the controller writes their status)")
	fs.StringVar(&o.storePath, "store", "/var/lib/detour/controller.db", "intercept store file for --store-backend=bolt (bbolt; created with its directory)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for everything that talks to the API server (--store-backend=kube, --inventory-source=kube, --leader-elect, --auth=kube, --tls-secret); empty means the in-cluster config when running in a pod, else $KUBECONFIG or ~/.kube/config")
	fs.StringVar(&o.inventoryPath, "inventory", "/run/detour/lab/inventory.json", "lab inventory file for --inventory-source=file, reread when it changes; while missing, the inventory is empty")
	fs.StringVar(&o.inventoryFrom, "inventory-source", "file", "where pods and services come from: file (the lab's --inventory) or kube (the API server of --kubeconfig, through informers)")
	fs.StringVar(&o.environments, "environments", "auto", "run ephemeral environments: on, off, or auto (on when --store-backend and --inventory-source are both kube, a cluster, or neither, the lab). Forks are Deployments and StatefulSets in a cluster, lab pods (in --lab-state) in the lab")
	fs.DurationVar(&o.envDefaultTTL, "env-default-ttl", 24*time.Hour, "an environment's life when its spec gives no ttl")
	fs.DurationVar(&o.envMaxTTL, "env-max-ttl", 7*24*time.Hour, "the longest ttl an environment may have or be renewed for")
	addParityFlags(fs, o)
	fs.StringVar(&o.labState, "lab-state", "", "the lab's state directory, where environments add their forks as lab pods; empty: the directory of --inventory")
	fs.StringVar(&o.labPostgres, "lab-postgres", "/usr/lib/postgresql/15/bin", "in the lab, the directory of PostgreSQL's programs (Debian's package) that environments' database branches run")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format on stderr: text or json")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "run as one of several replicas, of which only the leader (holder of the Lease "+leaseName+") serves; the others wait, and the controller exits with an error when it loses the lease")
	fs.StringVar(&o.leaderElectNamespace, "leader-elect-namespace", "", "namespace of the leader-election Lease, and of --tls-secret and --ca-configmap; empty means $POD_NAMESPACE")
	fs.StringVar(&o.leaderElectID, "leader-elect-id", "", "this replica's identity in the Lease; empty means $POD_NAME, else the host name")
	fs.StringVar(&o.auth, "auth", "none", "who may call the gRPC services: none (anyone who can reach --listen: the lab) or kube (agents by their service-account token, checked with TokenReview; users by their kubeconfig token and RBAC on intercepts, with SubjectAccessReview); kube needs --tls-secret")
	fs.StringVar(&o.agentServiceAccount, "agent-service-account", "detour-system:detour-agent", "NAMESPACE:NAME of the agents' service account, for --auth=kube")
	fs.StringVar(&o.agentTokenAudience, "agent-token-audience", "detour", "audience of the agents' projected service-account tokens, for --auth=kube")
	fs.StringVar(&o.tlsSecret, "tls-secret", "", "serve gRPC over TLS with the certificate kept in this Secret of the controller's namespace, made (with its CA) when missing or near its end; empty serves plain text")
	fs.StringVar(&o.caConfigMap, "ca-configmap", "detour-ca", "ConfigMap of the controller's namespace where --tls-secret's CA is published (key ca.crt) for agents and the CLI")
	fs.StringVar(&o.serviceName, "service-name", "detour-controller", "name of the controller's Service: the serving certificate is for NAME, NAME.NAMESPACE, NAME.NAMESPACE.svc and NAME.NAMESPACE.svc.cluster.local")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: controller [flags]

Detour's controller: holds intercepts (leased; persisted in the --store file,
or with --store-backend=kube as Intercept resources of the API server, whose
status it keeps up to date from the agents' reports), serves the CLI
(ControlService) and the node agents (AgentSyncService) over gRPC on
--listen, and streams each node's desired state to its agent. Stops cleanly
on SIGINT or SIGTERM.

With --leader-elect, replicas share a Lease: only the leader opens the store
and --listen, and answers /readyz with 200, so a Service sends agents and
users to it alone. The others serve /metrics, /healthz, and /readyz with 503
until they lead.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// validate refuses what cannot work, before anything is opened.
func (o *options) validate() error {
	switch o.storeBackend {
	case "", "bolt", "kube":
	default:
		return fmt.Errorf("--store-backend %q: want bolt or kube", o.storeBackend)
	}
	switch o.inventoryFrom {
	case "", "file", "kube":
	default:
		return fmt.Errorf("--inventory-source %q: want file or kube", o.inventoryFrom)
	}
	if o.environments == "" {
		o.environments = "auto"
	}
	if o.envDefaultTTL == 0 {
		o.envDefaultTTL = 24 * time.Hour
	}
	if o.envMaxTTL == 0 {
		o.envMaxTTL = 7 * 24 * time.Hour
	}
	switch o.environments {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("--environments %q: want auto, on or off", o.environments)
	}
	if err := o.validateParity(); err != nil {
		return err
	}
	if o.envDefaultTTL <= 0 || o.envMaxTTL <= 0 || o.envDefaultTTL > o.envMaxTTL {
		return fmt.Errorf("--env-default-ttl %s and --env-max-ttl %s: want positive durations, the default no longer than the maximum", o.envDefaultTTL, o.envMaxTTL)
	}
	if o.environments == "on" && !o.envsFit() {
		return errors.New("--environments on needs --store-backend and --inventory-source both kube (a cluster) or neither (the lab)")
	}
	switch o.auth {
	case "", "none":
	case "kube":
		if o.tlsSecret == "" {
			return errors.New("--auth kube needs --tls-secret: tokens must never travel in clear text")
		}
		if ns, name, ok := strings.Cut(o.agentServiceAccount, ":"); !ok || ns == "" || name == "" || strings.Contains(name, ":") {
			return fmt.Errorf("--agent-service-account %q: want NAMESPACE:NAME", o.agentServiceAccount)
		}
		if o.agentTokenAudience == "" {
			return errors.New("--auth kube needs an --agent-token-audience")
		}
	default:
		return fmt.Errorf("--auth %q: want none or kube", o.auth)
	}
	if o.tlsSecret != "" && o.serviceName == "" {
		return errors.New("--tls-secret needs a --service-name for the certificate")
	}
	if (o.leaderElect || o.tlsSecret != "") && o.namespace() == "" {
		return errors.New("the controller's namespace is unknown: set $POD_NAMESPACE or --leader-elect-namespace")
	}
	return nil
}

// envsFit reports whether environments can run: their store and their
// forks' runtime come from the same place, a cluster or the lab.
func (o *options) envsFit() bool { return (o.storeBackend == "kube") == (o.inventoryFrom == "kube") }

// runEnvironments reports whether to run environments.
func (o *options) runEnvironments() bool {
	return o.environments == "on" || o.environments == "auto" && o.envsFit()
}

// namespace is the controller's own: that of its Lease, serving Secret and
// CA ConfigMap.
func (o *options) namespace() string {
	if o.leaderElectNamespace != "" {
		return o.leaderElectNamespace
	}
	return os.Getenv("POD_NAMESPACE")
}

// identity is this replica's name in the Lease.
func (o *options) identity() (string, error) {
	if o.leaderElectID != "" {
		return o.leaderElectID, nil
	}
	if n := os.Getenv("POD_NAME"); n != "" {
		return n, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("--leader-elect-id: no $POD_NAME and no host name: %w", err)
	}
	return h, nil
}

// needsKube reports whether anything asked for talks to the API server.
func (o *options) needsKube() bool {
	return o.storeBackend == "kube" || o.inventoryFrom == "kube" || o.leaderElect || o.auth == "kube" || o.tlsSecret != ""
}

func newLogger(o *options, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	ho := &slog.HandlerOptions{Level: lvl}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
}

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(2)
	}
	log, err := newLogger(o, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("controller failed", "err", err)
		os.Exit(1)
	}
}

// run serves until ctx ends. Without --leader-elect it serves at once; with
// it, it serves only while it holds the Lease (see elect).
func run(ctx context.Context, o *options, log *slog.Logger) error {
	if err := o.validate(); err != nil {
		return err
	}
	var kc *kubeClients
	if o.needsKube() {
		var err error
		if kc, err = newKubeClients(o.kubeconfig); err != nil {
			return err
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	leader := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "detour", Subsystem: "controller", Name: "leader",
		Help: "1 while this replica serves: it holds the leader-election Lease, or runs without --leader-elect.",
	})
	reg.MustRegister(leader)

	// /metrics, /healthz and /readyz are served whether or not this
	// replica leads: /readyz tells the Service which one to send to.
	ready := newReadiness("starting")
	metricsLis, err := net.Listen("tcp", o.metricsListen)
	if err != nil {
		return fmt.Errorf("listen metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.Handle("/readyz", ready)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	metricsErr := make(chan error, 1)
	go func() {
		if err := hs.Serve(metricsLis); !errors.Is(err, http.ErrServerClosed) {
			metricsErr <- err
		}
		close(metricsErr)
	}()
	defer func() {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(shutCtx)
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		if err := <-metricsErr; err != nil {
			log.Error("metrics server failed", "err", err)
			cancel()
		}
	}()

	d := &deps{o: o, log: log, reg: reg, kube: kc, ready: ready, leader: leader, metricsAddr: metricsLis.Addr().String()}
	if !o.leaderElect {
		return serve(ctx, d)
	}
	return elect(ctx, d)
}

// deps is what serve needs from run.
type deps struct {
	o           *options
	log         *slog.Logger
	reg         *prometheus.Registry
	kube        *kubeClients // nil when nothing talks to the API server
	ready       *readiness
	leader      prometheus.Gauge
	metricsAddr string
}

// serve opens the store and the inventory, builds the server and serves
// gRPC until ctx ends, then shuts down in the order that loses nothing:
// /readyz turns 503, watch streams end (clients reconnect to the next
// controller), in-flight calls finish, and the store closes last.
func serve(ctx context.Context, d *deps) error {
	o, log := d.o, d.log
	st, where, err := openStore(ctx, o, d.kube)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("close store", "err", err)
		}
	}()
	// The parts run in a group: the first to fail stops the others, and
	// serve returns its error once all have ended.
	ctx, cancel := context.WithCancel(ctx)
	g, ctx := errgroup.WithContext(ctx)
	defer func() { cancel(); _ = g.Wait() }()
	goRun := func(name string, f func() error) {
		g.Go(func() error {
			if err := f(); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
	}
	inv, invWhere, err := openInventory(o, d.kube, log.With("component", "inventory"))
	if err != nil {
		return err
	}
	goRun("inventory", func() error { return inv.Run(ctx) })
	// Nothing is judged before the inventory is read: a new leader whose
	// informers have not synced would refuse every intercept it loads and
	// send agents empty desired state, tearing down steering for a moment.
	if err := waitInventory(ctx, inv); err != nil {
		cancel()
		if first := g.Wait(); first != nil {
			return first
		}
		return err
	}
	var sink controller.StatusSink
	if ks, ok := st.(*kube.Store); ok {
		w, err := ks.NewStatusWriter(kube.StatusOptions{
			FieldManager: statusFieldManager, Logger: log.With("component", "status"), Registerer: d.reg,
		})
		if err != nil {
			return err
		}
		sink = w
	}
	srv, err := controller.New(ctx, controller.Config{
		Store: st, Inventory: inv, Logger: log, Registerer: d.reg, Version: version, Status: sink,
	})
	if err != nil {
		return err
	}
	if o.runEnvironments() {
		rec, err := startEnvironments(ctx, o, d, st, inv, srv)
		if err != nil {
			return err
		}
		if rec != nil {
			goRun("environments", func() error { return rec.Run(ctx) })
		}
	}
	if err := startParity(ctx, d, goRun); err != nil {
		return err
	}
	sec, err := grpcSecurity(ctx, o, d.kube, log)
	if err != nil {
		return err
	}
	grpcLis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen gRPC: %w", err)
	}
	gs := grpc.NewServer(sec.opts...)
	srv.RegisterServices(gs)

	goRun("gRPC", func() error { return gs.Serve(grpcLis) })
	goRun("leases", func() error { return srv.Run(ctx) })
	d.leader.Set(1)
	d.ready.set("")
	log.Info("controller serving", "version", version, "grpc", grpcLis.Addr().String(), "tls", sec.tls, "auth", sec.auth,
		"metrics", d.metricsAddr, "store", where, "inventory", invWhere)

	<-ctx.Done()
	log.Info("shutting down")
	d.ready.set("shutting down")
	d.leader.Set(0)
	srv.Close()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		log.Warn("gRPC calls still running after 5s; closing them")
		gs.Stop()
	}
	return g.Wait() // nil when every part ended because of ctx
}

// waitInventory returns once the inventory answers, or when ctx ends.
func waitInventory(ctx context.Context, inv inventorySource) error {
	for {
		if _, err := inv.Get(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("inventory not read before stopping: %w", context.Cause(ctx))
		case <-inv.Changed():
		case <-time.After(time.Second):
		}
	}
}

// readiness is /readyz: 200 once serving, else 503 with the reason.
type readiness struct {
	mu     sync.Mutex
	reason string // "" when ready
}

func newReadiness(reason string) *readiness { return &readiness{reason: reason} }

func (r *readiness) set(reason string) {
	r.mu.Lock()
	r.reason = reason
	r.mu.Unlock()
}

func (r *readiness) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	r.mu.Lock()
	reason := r.reason
	r.mu.Unlock()
	if reason != "" {
		http.Error(w, reason, http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}
