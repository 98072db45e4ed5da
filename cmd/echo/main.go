// Command detour-echo is the lab's test server (package internal/echo): an
// HTTP/1.1 and h2c server that answers with the name of the pod it runs in.
// Build it as detour-echo: go build -o bin/detour-echo ./cmd/echo
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/detourdev/detour/internal/echo"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "detour-echo:", err)
		os.Exit(1)
	}
}

func run() error {
	def := os.Getenv("DETOUR_POD_NAME")
	if def == "" {
		def, _ = os.Hostname()
	}
	name := flag.String("name", def, "name to answer with (default: $DETOUR_POD_NAME, else the hostname)")
	listen := flag.String("listen", ":8080", "address to listen on")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `Usage: detour-echo [--name NAME] [--listen ADDR]

Serves HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on ADDR; every response
carries the header X-Detour-Pod: NAME.

  GET  /healthz                  ok
  GET  /download?bytes=N&seed=S  N deterministic bytes (ChaCha8 seeded by S), chunked
  POST /upload                   {"pod":NAME,"bytes":N,"sha256":HEX} of the body
  GET  /ws                       WebSocket echo, each message prefixed "NAME: "
  any  other path                NAME

`)
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := echo.NewServer(*name, *listen)
	log.Info("serving", "name", *name, "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	log.Info("stopped")
	return nil
}
