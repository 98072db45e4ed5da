// Command detour-agent is the node agent: it loads the eBPF steering, follows
// the controller's desired state for its node and routes intercepted
// requests. It runs as a DaemonSet pod in Kubernetes and as a process in the
// lab.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/pkg/agent"
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

func run() error {
	fs := flag.NewFlagSet("detour-agent", flag.ContinueOnError)
	node := fs.String("node", "lab", "name of the node this agent serves")
	controller := fs.String("controller", "127.0.0.1:7070", "controller gRPC address")
	metricsAddr := fs.String("metrics-listen", "127.0.0.1:9471", "address for /metrics and /healthz")
	stateFile := fs.String("state-file", "/var/lib/detour/agent-state.json", "where the last desired state is kept across restarts (empty: not kept)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	l4Relay := fs.String("l4-relay", "copy", "how L4 intercepts move bytes: copy (io.Copy, which uses splice(2)) or sockmap (SOCKHASH + sk_skb verdict in the kernel; EXPERIMENTAL: slower here, and it duplicated bytes under load in the lab test, see docs/architecture.md)")
	cpuProfile := fs.String("cpu-profile", "", "write a CPU profile of the whole run to this file when the agent stops (for benchmarks)")
	flowCgroup := fs.String("flow-metrics-cgroup", "auto", "cgroup v2 directory whose TCP flows feed the RTT and retransmit metrics (sockops): auto = the agent's own cgroup, off = none")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: detour-agent [flags]\n\nThe Detour node agent. Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN to enter pod network namespaces).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		os.Exit(2)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
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
	cfg := agent.Config{
		Node: *node, Controller: *controller, StateFile: *stateFile,
		Version: version, Logger: log, Registry: reg,
	}
	switch *l4Relay {
	case "copy":
	case "sockmap":
		sp, err := splice.New()
		if err != nil {
			loadErrors.Inc()
			_ = s.Close()
			return fmt.Errorf("load the sockmap splice: %w", err)
		}
		defer sp.Close()
		cfg.Relay = func(ctx context.Context, a, b *net.TCPConn) error {
			_, err := sp.Relay(ctx, a, b)
			return err
		}
	default:
		_ = s.Close()
		return fmt.Errorf("bad --l4-relay %q: want copy or sockmap", *l4Relay)
	}
	if ops, err := flowMetrics(*flowCgroup); err != nil {
		// Metrics are not worth refusing to route for.
		loadErrors.Inc()
		log.Warn("flow metrics (sockops) unavailable", "err", err)
	} else if ops != nil {
		defer ops.Close()
		reg.MustRegister(ops)
		log.Info("flow metrics from sockops", "cgroup", *flowCgroup)
	}
	a, err := agent.New(cfg, s)
	if err != nil {
		_ = s.Close()
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", *metricsAddr)
	if err != nil {
		_ = s.Close()
		return fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	log.Info("agent started", "node", *node, "controller", *controller, "metrics", ln.Addr().String())
	err = a.Run(ctx)
	log.Info("agent stopped; steering removed")
	return err
}

// flowMetrics attaches the sockops flow metrics to a cgroup v2 directory:
// "auto" is the agent's own cgroup, whose sockets are exactly the flows the
// agent carries (an accepted socket belongs to its listener's cgroup).
func flowMetrics(cgroup string) (*splice.SockOps, error) {
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
	return splice.NewSockOps(cgroup)
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
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		var st unix.Statfs_t
		if unix.Statfs(root, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return filepath.Join(root, rel), nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy mounted")
}
