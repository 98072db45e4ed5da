// Command controller is Detour's control plane: it holds the intercepts in
// a one-file store or as Intercept custom resources in Kubernetes, serves the CLI and the node agents over gRPC, and turns
// intercepts plus the node inventory into each node's desired state.
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
	"google.golang.org/grpc"

	"github.com/detourdev/detour/pkg/controller"
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
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7070", "gRPC address for the CLI and the agents")
	fs.StringVar(&o.metricsListen, "metrics-listen", "127.0.0.1:9470", "HTTP address serving /metrics and /healthz")
	fs.StringVar(&o.storeBackend, "store-backend", "bolt", "where intercepts are kept: bolt (the --store file) or kube (Intercept custom resources, which kubectl may also create, edit and delete)")
	fs.StringVar(&o.storePath, "store", "/var/lib/detour/controller.db", "intercept store file for --store-backend=bolt (bbolt; created with its directory)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for --store-backend=kube; empty means the in-cluster config when running in a pod, else $KUBECONFIG or ~/.kube/config")
	fs.StringVar(&o.inventoryPath, "inventory", "/run/detour/lab/inventory.json", "lab inventory file for --inventory-source=file, reread when it changes; while missing, the inventory is empty")
	fs.StringVar(&o.inventoryFrom, "inventory-source", "file", "where pods and services come from: file (the lab's --inventory) or kube (the API server of --kubeconfig, through informers)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format on stderr: text or json")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: controller [flags]

Detour's controller: holds intercepts (leased; persisted in the --store file,
or with --store-backend=kube as Intercept resources of the API server), serves
the CLI (ControlService) and the node agents (AgentSyncService) over gRPC on
--listen, and streams each node's desired state to its agent. Stops cleanly
on SIGINT or SIGTERM.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch o.storeBackend {
	case "bolt", "kube":
	default:
		return nil, fmt.Errorf("--store-backend %q: want bolt or kube", o.storeBackend)
	}
	switch o.inventoryFrom {
	case "file", "kube":
	default:
		return nil, fmt.Errorf("--inventory-source %q: want file or kube", o.inventoryFrom)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return o, nil
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

// run serves until ctx ends, then shuts down in the order that loses
// nothing: watch streams end (clients reconnect to the next controller),
// in-flight calls finish, and the store closes last.
func run(ctx context.Context, o *options, log *slog.Logger) error {
	st, where, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("close store", "err", err)
		}
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	inv, invWhere, err := openInventory(o, log.With("component", "inventory"))
	if err != nil {
		return err
	}
	srv, err := controller.New(ctx, controller.Config{
		Store: st, Inventory: inv, Logger: log, Registerer: reg, Version: version,
	})
	if err != nil {
		return err
	}

	grpcLis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen gRPC: %w", err)
	}
	metricsLis, err := net.Listen("tcp", o.metricsListen)
	if err != nil {
		_ = grpcLis.Close()
		return fmt.Errorf("listen metrics: %w", err)
	}
	gs := grpc.NewServer()
	srv.RegisterServices(gs)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	goRun := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	goRun("gRPC", func() error { return gs.Serve(grpcLis) })
	goRun("metrics", func() error {
		if err := hs.Serve(metricsLis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	goRun("inventory", func() error { return inv.Run(ctx) })
	goRun("leases", func() error { return srv.Run(ctx) })
	log.Info("controller serving", "version", version, "grpc", grpcLis.Addr().String(),
		"metrics", metricsLis.Addr().String(), "store", where, "inventory", invWhere)

	<-ctx.Done()
	log.Info("shutting down")
	srv.Close()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		log.Warn("gRPC calls still running after 5s; closing them")
		gs.Stop()
	}
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer shutCancel()
	_ = hs.Shutdown(shutCtx)
	wg.Wait()
	close(errs)
	return <-errs // nil when every part ended because of the signal
}
