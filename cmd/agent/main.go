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
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/detourdev/detour/pkg/agent"
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
	a, err := agent.New(agent.Config{
		Node: *node, Controller: *controller, StateFile: *stateFile,
		Version: version, Logger: log, Registry: reg,
	}, s)
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
