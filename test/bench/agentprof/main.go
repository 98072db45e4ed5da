// Command agentprof is the node agent of cmd/agent with a CPU profiler
// around it, for `go run ./test/bench -agent-profile FILE`: the agent itself
// has no pprof endpoint and should not grow one for a bench. It takes the
// agent's flags plus --cpuprofile, and writes the profile when it stops
// (SIGINT or SIGTERM).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourdev/detour/pkg/agent"
	"github.com/detourdev/detour/pkg/redirect/steer"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "agentprof:", err)
		os.Exit(1)
	}
}

func run() error {
	node := flag.String("node", "lab", "name of the node this agent serves")
	controller := flag.String("controller", "127.0.0.1:7070", "controller gRPC address")
	metricsAddr := flag.String("metrics-listen", "127.0.0.1:9471", "address for /metrics and /healthz")
	stateFile := flag.String("state-file", "", "where the last desired state is kept (empty: not kept)")
	cpuProfile := flag.String("cpuprofile", "agent.pprof", "where the CPU profile goes")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	f, err := os.Create(*cpuProfile)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()

	s, err := steer.New()
	if err != nil {
		return fmt.Errorf("load eBPF steering: %w", err)
	}
	a, err := agent.New(agent.Config{
		Node: *node, Controller: *controller, StateFile: *stateFile,
		Version: "agentprof", Logger: log, Registry: prometheus.NewRegistry(),
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
	return a.Run(ctx)
}
