// Command detour-agent is the node agent: it loads the eBPF steering, follows
// the controller's desired state for its node and routes intercepted
// requests. It runs as a DaemonSet pod in Kubernetes and as a process in the
// lab.
package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/detourdev/detour/pkg/agent"
	"github.com/detourdev/detour/pkg/kubeauth"
	"github.com/detourdev/detour/pkg/podns"
	"github.com/detourdev/detour/pkg/redirect/connect"
	"github.com/detourdev/detour/pkg/redirect/fastpath"
	"github.com/detourdev/detour/pkg/redirect/flowmetrics"
	"github.com/detourdev/detour/pkg/redirect/proxy"
	"github.com/detourdev/detour/pkg/redirect/splice"
	"github.com/detourdev/detour/pkg/redirect/steer"
)

var version = "dev"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "detour-agent:", err)
		os.Exit(1)
	}
}

const usage = `Usage: detour-agent [flags]

The Detour node agent: loads the eBPF steering, follows the controller's
desired state for its node and routes the requests of intercepted pod ports.

In Kubernetes it runs as a DaemonSet pod with hostNetwork and hostPID, and
needs no access to the Kubernetes API: it finds a target pod's network
namespace by the pod's IP, as /proc/<pid>/ns/net of a process of the pod. In
the lab the controller names each pod's namespace path.

It runs as root with these capabilities:
  CAP_BPF                 load its eBPF programs and maps
  CAP_NET_ADMIN           create the socket maps (SOCKHASH) the steering
                          (and --l4-relay=sockmap) hand sockets through;
                          load the cgroup programs of --connect-redirect
                          and --fast-path (which also reads TCP sequence
                          numbers through BTF: CAP_PERFMON, implied by
                          CAP_SYS_ADMIN)
  CAP_SYS_ADMIN           setns(2) into pod network namespaces: to list their
                          addresses, open its listener there and dial the app
                          (attaching sk_lookup needs only the namespace's fd)
  CAP_SYS_PTRACE          open /proc/<pid>/ns/net of processes of other users
                          or with capabilities the agent lacks (a ptrace
                          access check; a pod's sandbox process usually runs
                          as user 65535)

It serves /metrics, /healthz (200 while it serves, even with the controller
away) and /readyz (200 once its eBPF objects are loaded and it has applied a
desired state, from the controller or the state file; else 503 and why).
On SIGTERM or SIGINT it stops gracefully: it removes all steering at once,
so new connections reach the pods' apps directly, and /readyz turns 503. It
then finishes what it already has: connections already queued on its
listeners, HTTP/1 requests in flight (keep-alive connections are closed at
their next request boundary, the last response saying Connection: close),
HTTP/2 streams in flight (clients are sent GOAWAY), and L4 relays. After
--shutdown-grace it closes whatever is left, logs it, and exits. Keep the
grace below the pod's terminationGracePeriodSeconds (30 in the DaemonSet).

Flags:
`

// options are the agent's flags.
type options struct {
	node, controller                               string
	controllerCA, serverName, tokenFile            string
	metricsAddr, stateFile, logLevel               string
	l4Relay, cpuProfile, flowCgroup, connectCgroup string
	fastPath                                       string
	shutdownGrace, headTimeout                     time.Duration
	maxSlowHeads                                   int
}

// parseFlags reads the flags; getenv gives --node its default, $NODE_NAME.
func parseFlags(args []string, getenv func(string) string, output io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("detour-agent", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&o.node, "node", cmp.Or(getenv("NODE_NAME"), "lab"), "name of the node this agent serves (default $NODE_NAME when set)")
	fs.StringVar(&o.controller, "controller", "127.0.0.1:7070", "controller gRPC address")
	fs.StringVar(&o.controllerCA, "controller-ca", "", "PEM CA bundle: talk to the controller over TLS, verified against it (empty: insecure, for the lab)")
	fs.StringVar(&o.serverName, "controller-server-name", "", "name the controller's certificate must hold (e.g. detour-controller.detour-system.svc when --controller is a ClusterIP); empty: the host of --controller; needs --controller-ca")
	fs.StringVar(&o.tokenFile, "token-file", "", "file with a bearer token sent on every call (a projected service-account token, reread each call); needs --controller-ca")
	fs.StringVar(&o.metricsAddr, "metrics-listen", "127.0.0.1:9471", "address for /metrics, /healthz and /readyz")
	fs.StringVar(&o.stateFile, "state-file", "/var/lib/detour/agent-state.json", "where the last desired state is kept across restarts (empty: not kept)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.l4Relay, "l4-relay", "copy", "how L4 intercepts move bytes: copy (io.Copy, which uses splice(2)) or sockmap (SOCKHASH + sk_skb verdict in the kernel; EXPERIMENTAL: slower than copy here, and it needs Linux 6.2+, BTF and CAP_PERFMON; see docs/architecture.md)")
	fs.StringVar(&o.cpuProfile, "cpu-profile", "", "write a CPU profile of the whole run to this file when the agent stops (for benchmarks)")
	fs.StringVar(&o.flowCgroup, "flow-metrics-cgroup", "auto", "cgroup v2 directory whose TCP flows feed the RTT and retransmit metrics (sockops), only flows with an intercepted pod port or a destination's port at either end: auto = the agent's own cgroup, off = none")
	fs.StringVar(&o.connectCgroup, "connect-redirect", "auto", "send the connect() of an L4 intercept's callers in pod namespaces on this node (only the source pods', with --from-pod/--from-namespace) straight to the developer's pod (cgroup connect4 on this cgroup v2 directory): auto = the node's cgroup v2 root (/host/sys/fs/cgroup first, for a container), off = every caller goes through the agent's relay")
	fs.StringVar(&o.fastPath, "fast-path", "auto", "route the HTTP/1.1 requests of callers on this node in the kernel (sk_msg on the node's cgroup v2 root; docs/architecture.md, data path step 7; measured in docs/performance.md): auto = where the kernel supports it (Linux 5.17+ with BTF; a log line says when it does not), off = the agent routes every request")
	fs.DurationVar(&o.headTimeout, "head-timeout", proxy.DefaultHeadTimeout, "how long a request head may take from its first byte: one still arriving after the first second is waited for up to this long (at most --max-slow-heads at a time), so a client on a slow link keeps its session; then the rest of its connection goes to the app untouched. At least 1s; keep it no shorter than the apps' own header timeouts")
	fs.IntVar(&o.maxSlowHeads, "max-slow-heads", proxy.DefaultMaxSlowHeads, "how many connections, over all ports, may wait beyond the first second for the rest of a request head (each holds 80 KiB of buffers); one more goes to the app untouched (0: none waits)")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", agent.DefaultShutdownGrace, "on SIGTERM/SIGINT, how long to finish the requests, streams and connections already taken once the steering is removed, before closing them (0: close at once)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err} // the flag package has told what is wrong
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var err error
	fs.Visit(func(f *flag.Flag) {
		if err == nil {
			err = checkExpanded(f.Name, f.Value.String())
		}
	})
	if err != nil {
		return nil, err
	}
	if o.shutdownGrace < 0 {
		return nil, fmt.Errorf("--shutdown-grace %v: must not be negative", o.shutdownGrace)
	}
	if o.headTimeout < time.Second {
		return nil, fmt.Errorf("--head-timeout %v: want 1s or more (the first second decides the protocol)", o.headTimeout)
	}
	if o.maxSlowHeads < 0 {
		return nil, fmt.Errorf("--max-slow-heads %d: want 0 or more", o.maxSlowHeads)
	}
	if o.fastPath != "auto" && o.fastPath != "off" {
		return nil, fmt.Errorf("--fast-path %q: want auto or off", o.fastPath)
	}
	if o.controllerCA == "" {
		switch {
		case o.tokenFile != "":
			return nil, errors.New("--token-file needs --controller-ca: a token is never sent in clear text")
		case o.serverName != "":
			return nil, errors.New("--controller-server-name needs --controller-ca: without TLS there is no certificate to check")
		}
	}
	return &o, nil
}

// usageError is a command line the flag package could not parse.
type usageError struct{ error }

var kubeVar = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkExpanded refuses a flag value with a $(VAR) reference left in it:
// Kubernetes replaces $(VAR) in a container's args only with a variable the
// container has, and leaves it as it is otherwise.
func checkExpanded(flagName, value string) error {
	m := kubeVar.FindStringSubmatch(value)
	if m == nil {
		return nil
	}
	return fmt.Errorf("--%s %q: $(%s) was not expanded. Kubernetes expands $(VAR) in args only with variables the container has; "+
		"a Service's variables (like DETOUR_CONTROLLER_SERVICE_HOST) exist only in pods started after the Service, in its namespace: "+
		"create the Service, then restart the agent pods", flagName, value, m[1])
}

// controllerDialOptions are the agent's credentials with the controller:
// TLS verified against the CA bundle (and the server name) and a bearer
// token on every call, or nothing (insecure, the lab) without a CA.
func controllerDialOptions(o *options) ([]grpc.DialOption, error) {
	if o.controllerCA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(o.controllerCA)
	if err != nil {
		return nil, fmt.Errorf("--controller-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--controller-ca: no PEM certificate in %s", o.controllerCA)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs:    pool,
		ServerName: o.serverName,
		MinVersion: tls.VersionTLS12,
	}))}
	if o.tokenFile != "" {
		tok := kubeauth.TokenFile(o.tokenFile)
		// Read once now, so a missing token fails the start, not every call.
		if _, err := tok.GetRequestMetadata(context.Background()); err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(tok))
	}
	return opts, nil
}

func run() error {
	o, err := parseFlags(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if errors.As(err, new(usageError)) {
		os.Exit(2)
	}
	if err != nil {
		return err
	}
	dialOpts, err := controllerDialOptions(o)
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("bad --log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	loadErrors := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "detour_agent_bpf_load_errors_total",
		Help: "Failures to load the eBPF steering objects at start.",
	})
	reg.MustRegister(loadErrors)

	s, err := steer.New()
	if err != nil {
		loadErrors.Inc()
		return fmt.Errorf("load eBPF steering: %w", err)
	}
	// Run closes the steering itself, first thing when it stops (the
	// steering goes, then the routers drain); this Close, a no-op then, is
	// for the returns before Run.
	defer s.Close()
	cfg := agent.Config{
		Node: o.node, Controller: o.controller, StateFile: o.stateFile,
		Version: version, Logger: log, Registry: reg,
		// Targets that name no namespace path (Kubernetes) are found by
		// their pod's address.
		ResolveNetNS: podns.New().Resolve,
		DialOptions:  dialOpts,
		// --shutdown-grace=0 is no grace, which the agent's Config
		// spells negative (its zero is the default); the same for
		// --max-slow-heads=0.
		ShutdownGrace: cmp.Or(o.shutdownGrace, -1),
		HeadTimeout:   o.headTimeout,
		MaxSlowHeads:  cmp.Or(o.maxSlowHeads, -1),
	}
	switch o.l4Relay {
	case "copy":
	case "sockmap":
		sp, err := splice.New()
		if err != nil {
			loadErrors.Inc()
			return fmt.Errorf("load the sockmap splice: %w", err)
		}
		defer sp.Close()
		cfg.Relay = func(ctx context.Context, a, b *net.TCPConn) error {
			_, err := sp.Relay(ctx, a, b)
			return err
		}
	default:
		return fmt.Errorf("bad --l4-relay %q: want copy or sockmap", o.l4Relay)
	}
	if cr, err := connectRedirects(o.connectCgroup); err != nil {
		// The relay serves every caller without it.
		loadErrors.Inc()
		log.Warn("connect-time redirects unavailable; L4 intercepts are relayed for every caller", "err", err)
	} else if cr != nil {
		defer cr.Close() // as for the steering: Run closes it first
		cfg.Connector = cr
		log.Info("connect-time redirects for L4 intercepts", "cgroup", cr.Cgroup())
	}
	switch o.fastPath {
	case "off":
	case "auto":
		if fp, err := fastPath(); err != nil {
			// The agent routes every request without it.
			loadErrors.Inc()
			log.Warn("HTTP/1.1 fast path unavailable on this node; the agent routes every request", "err", err)
		} else {
			defer fp.Close() // after Run: the routers are closed by then
			cfg.FastPath = fp
			log.Info("HTTP/1.1 fast path on: callers on this node are routed in the kernel where their requests allow")
		}
	}
	if ops, err := flowMetrics(o.flowCgroup); err != nil {
		// Metrics are not worth refusing to route for.
		loadErrors.Inc()
		log.Warn("flow metrics (sockops) unavailable", "err", err)
	} else if ops != nil {
		defer ops.Close()
		cfg.FlowPorts = ops.SetPorts
		reg.MustRegister(ops)
		log.Info("flow metrics from sockops", "cgroup", o.flowCgroup)
	}
	a, err := agent.New(cfg, s)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", o.metricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	log.Info("agent started", "node", o.node, "controller", o.controller, "tls", o.controllerCA != "",
		"token", o.tokenFile != "", "metrics", ln.Addr().String(), "shutdown_grace", o.shutdownGrace)
	err = a.Run(ctx)
	log.Info("agent stopped; steering removed")
	return err
}

// connectRedirects attaches the connect-time redirect programs to a cgroup
// v2 directory: "auto" is the node's cgroup v2 root, which every process is
// under; "off" is none.
func connectRedirects(cgroup string) (*connect.Redirects, error) {
	switch cgroup {
	case "off":
		return nil, nil
	case "auto":
		root, err := connect.CgroupV2Root()
		if err != nil {
			return nil, err
		}
		cgroup = root
	}
	return connect.New(cgroup)
}

// fastPath loads the fast path, its sock_ops program on the node's cgroup
// v2 root so that callers in every pod are seen.
func fastPath() (*fastpath.FastPath, error) {
	root, err := connect.CgroupV2Root()
	if err != nil {
		return nil, err
	}
	return fastpath.New(fastpath.Config{Cgroup: root})
}

// flowMetrics attaches the sockops flow metrics to a cgroup v2 directory:
// "auto" is the agent's own cgroup (an accepted socket belongs to its
// listener's cgroup). The cgroup can hold more than the agent (everything,
// when the agent runs in the root cgroup), so only the flows with a port the
// agent names (SetPorts: intercepted pod ports, destinations' ports) are
// tracked.
func flowMetrics(cgroup string) (*flowmetrics.SockOps, error) {
	switch cgroup {
	case "off", "":
		return nil, nil
	case "auto":
		dir, err := ownCgroupV2()
		if err != nil {
			return nil, err
		}
		cgroup = dir
	}
	return flowmetrics.NewOnPorts(cgroup)
}

// ownCgroupV2 finds this process's cgroup v2 directory, on a unified host
// (/sys/fs/cgroup) or a hybrid one (/sys/fs/cgroup/unified).
func ownCgroupV2() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	var rel string
	for _, line := range strings.Split(string(b), "\n") {
		if r, ok := strings.CutPrefix(line, "0::"); ok {
			rel = r
		}
	}
	if rel == "" {
		return "", errors.New("no cgroup v2 membership in /proc/self/cgroup")
	}
	// A container that shares the host's cgroup namespace sees its host
	// path ("/kubepods/..."): under the node's hierarchy mounted at
	// /host/sys/fs/cgroup (the DaemonSet's volume). One with its own
	// namespace, or a process in the root cgroup, sees "/": its own
	// mount, when it has a cgroup2 one, is then the right root.
	own := []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}
	host := []string{"/host/sys/fs/cgroup/unified", "/host/sys/fs/cgroup"}
	roots := append(own, host...)
	if rel != "/" {
		roots = append(host, own...)
	}
	for _, root := range roots {
		var st unix.Statfs_t
		if unix.Statfs(root, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			continue
		}
		if fi, err := os.Stat(filepath.Join(root, rel)); err == nil && fi.IsDir() {
			return filepath.Join(root, rel), nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 hierarchy mounted with this process's cgroup %s (looked in %v)", rel, roots)
}
