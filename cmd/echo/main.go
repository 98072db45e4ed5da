// Command detour-echo is the lab's test server (package internal/echo): an
// HTTP/1.1, h2c and gRPC server, and optionally a raw TCP echo, that answer
// with the name of the pod they run in.
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
	listen := flag.String("listen", ":8080", "address to listen on for HTTP and gRPC")
	tcpListen := flag.String("tcp-listen", "", "address to listen on for the raw TCP echo (default: none)")
	call := flag.String("call", os.Getenv("DETOUR_ECHO_CALL"), "base URL of the next service for GET /chain, e.g. http://api:8080 (default: $DETOUR_ECHO_CALL; none: /chain answers NAME)")
	database := flag.String("database", os.Getenv("DATABASE_URL"), "PostgreSQL URL that GET and POST /notes read and write (default: $DATABASE_URL)")
	propagate := flag.Bool("propagate", os.Getenv("DETOUR_ECHO_PROPAGATE") == "true", "copy x-detour-session and baggage from a /chain request to the call it makes (default: $DETOUR_ECHO_PROPAGATE is true)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `Usage: detour-echo [--name NAME] [--listen ADDR] [--tcp-listen ADDR] [--call URL [--propagate]] [--database URL]

Serves HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on --listen; every
HTTP response carries the header X-Detour-Pod: NAME.

  GET  /healthz                  ok
  GET  /download?bytes=N&seed=S  N deterministic bytes (ChaCha8 seeded by S), chunked
  POST /upload                   {"pod":NAME,"bytes":N,"sha256":HEX} of the body
  GET  /ws                       WebSocket echo, each message prefixed "NAME: "
  GET  /chain                    NAME; with --call URL: "NAME -> " and what URL/chain answers
                                 (a new connection per call; with --propagate the session
                                 header and baggage go along), also in header X-Detour-Chain
  GET  /notes                    the rows of --database's table notes (id, body), "ID<TAB>BODY" each
  POST /notes                    inserts the body as a row of notes; answers its id
  any  other path                NAME

gRPC on the same port: HTTP/2 requests with content-type application/grpc*
go to gRPC's interop service grpc.testing.TestService
(google.golang.org/grpc/interop/grpc_testing), whose calls answer with the
metadata x-detour-pod: NAME in both header and trailer:

  EmptyCall            empty
  UnaryCall            hostname NAME, username "<bytes> <sha256>" of the request
                       payload, response_size bytes of payload; response_status
                       set: fails with that code and message
  StreamingOutputCall  one message (payload NAME) per response_parameters;
                       none: one every 5ms until the client cancels
  StreamingInputCall   aggregated_payload_size of the request messages
  FullDuplexCall       each message answered at once with payload "NAME:<payload>";
                       a message with response_status set ends the call with it

With --tcp-listen, a raw TCP echo for L4 tests: each connection first gets
the line "NAME\n", then every byte it sends comes back, until it half-closes;
then the server closes the connection.

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
	var tcpLn net.Listener
	if *tcpListen != "" {
		if tcpLn, err = net.Listen("tcp", *tcpListen); err != nil {
			ln.Close()
			return err
		}
	}
	srv := echo.NewChainServer(echo.Options{Name: *name, Call: *call, Propagate: *propagate, Database: *database}, *listen)
	log.Info("serving", "name", *name, "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var tcpErrc chan error // nil without --tcp-listen: never ready
	if tcpLn != nil {
		log.Info("serving raw TCP echo", "name", *name, "addr", tcpLn.Addr().String())
		tcpErrc = make(chan error, 1)
		// ServeTCP closes its connections when ctx ends, and returns nil.
		go func() { tcpErrc <- echo.ServeTCP(ctx, tcpLn, *name) }()
	}
	select {
	case err := <-errc:
		return err
	case err := <-tcpErrc:
		if err != nil {
			return fmt.Errorf("tcp echo: %w", err)
		}
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
