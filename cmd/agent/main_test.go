package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/agent"
)

const controllerName = "detour-controller.detour-system.svc"

func TestParseFlags(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	tests := []struct {
		name     string
		args     []string
		getenv   func(string) string
		wantNode string
		wantErr  string
	}{
		{name: "lab defaults", getenv: env(), wantNode: "lab"},
		{name: "node from NODE_NAME", getenv: env("NODE_NAME", "node-a"), wantNode: "node-a"},
		{name: "--node wins", args: []string{"--node", "node-b"}, getenv: env("NODE_NAME", "node-a"), wantNode: "node-b"},
		{name: "TLS with token", getenv: env("NODE_NAME", "node-a"), wantNode: "node-a",
			args: []string{"--controller-ca", "ca.crt", "--controller-server-name", controllerName, "--token-file", "token"}},
		{name: "unexpanded Service variable", getenv: env(),
			args:    []string{"--controller", "$(DETOUR_CONTROLLER_SERVICE_HOST):$(DETOUR_CONTROLLER_SERVICE_PORT_GRPC)"},
			wantErr: `--controller "$(DETOUR_CONTROLLER_SERVICE_HOST):$(DETOUR_CONTROLLER_SERVICE_PORT_GRPC)": $(DETOUR_CONTROLLER_SERVICE_HOST) was not expanded`},
		{name: "unexpanded node variable", getenv: env(), args: []string{"--node=$(NODE_NAME)"},
			wantErr: "$(NODE_NAME) was not expanded"},
		{name: "token without TLS", getenv: env(), args: []string{"--token-file", "token"},
			wantErr: "--token-file needs --controller-ca"},
		{name: "server name without TLS", getenv: env(), args: []string{"--controller-server-name", controllerName},
			wantErr: "--controller-server-name needs --controller-ca"},
		{name: "fast path off", getenv: env(), args: []string{"--fast-path=off"}, wantNode: "lab"},
		{name: "bad fast path", getenv: env(), args: []string{"--fast-path=on"}, wantErr: `--fast-path "on": want auto or off`},
		{name: "stray argument", getenv: env(), args: []string{"extra"}, wantErr: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, tt.getenv, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseFlags(%q) = %v, want an error containing %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.node != tt.wantNode {
				t.Fatalf("node %q, want %q", o.node, tt.wantNode)
			}
			if len(tt.args) == 0 && o.fastPath != "auto" {
				t.Fatalf("--fast-path defaults to %q, want auto", o.fastPath)
			}
		})
	}
}

func TestShutdownGraceFlag(t *testing.T) {
	getenv := func(string) string { return "" }
	tests := []struct {
		args    []string
		want    time.Duration
		wantErr string
	}{
		{args: nil, want: agent.DefaultShutdownGrace},
		{args: []string{"--shutdown-grace", "25s"}, want: 25 * time.Second},
		{args: []string{"--shutdown-grace=0"}, want: 0},
		{args: []string{"--shutdown-grace=-1s"}, wantErr: "must not be negative"},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, getenv, io.Discard)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseFlags(%q) = %v, want an error containing %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseFlags(%q): %v", tt.args, err)
		} else if o.shutdownGrace != tt.want {
			t.Errorf("parseFlags(%q): grace %v, want %v", tt.args, o.shutdownGrace, tt.want)
		}
	}
	var help bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, getenv, &help); err == nil {
		t.Fatal("--help: no flag.ErrHelp")
	}
	for _, want := range []string{"-shutdown-grace duration", "(default 10s)", "On SIGTERM or SIGINT it stops gracefully"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, help.String())
		}
	}
}

func TestControllerDialOptionsErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ca := testutil.NewCA(t)
	good := filepath.Join(dir, "good-ca.crt")
	if err := os.WriteFile(good, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		o       options
		wantErr string
	}{
		{"CA file missing", options{controllerCA: filepath.Join(dir, "none.crt")}, "--controller-ca: open"},
		{"CA file not PEM", options{controllerCA: notPEM}, "no PEM certificate in"},
		{"token file missing", options{controllerCA: good, tokenFile: filepath.Join(dir, "none")}, "--token-file: read token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := controllerDialOptions(&tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("controllerDialOptions = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestControllerTLSWithToken: with --controller-ca, --controller-server-name
// and --token-file the agent reaches a TLS controller whose certificate holds
// the name, and sends the token on every call, reread after rotation.
func TestControllerTLSWithToken(t *testing.T) {
	c, o := tlsSetup(t, controllerName)
	startAgent(t, o, &bytes.Buffer{})

	testutil.Eventually(t, 10*time.Second, func() error { return c.wantCall("Register", "Bearer token-1") })
	if err := os.WriteFile(o.tokenFile, []byte("token-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error { return c.wantCall("ReportStatus", "Bearer token-2") })
}

// TestControllerWrongServerName: a controller whose certificate does not
// hold --controller-server-name is refused: no call reaches it, and the
// agent's log tells why.
func TestControllerWrongServerName(t *testing.T) {
	c, o := tlsSetup(t, "other.detour-system.svc")
	var logs testutil.SyncBuffer
	startAgent(t, o, &logs)
	testutil.Eventually(t, 10*time.Second, func() error {
		if want := "x509: certificate is valid for " + controllerName + ", not other.detour-system.svc"; !strings.Contains(logs.String(), want) {
			return fmt.Errorf("log lacks %q:\n%s", want, logs.String())
		}
		return nil
	})
	if calls := c.all(); len(calls) > 0 {
		t.Fatalf("the controller was called with a certificate for another name: %v", calls)
	}
}

// tlsSetup serves a controller over TLS with a certificate for
// controllerName and returns the agent's options to reach it, verifying
// serverName, with token-1 in its token file.
func tlsSetup(t *testing.T, serverName string) (*recordingController, *options) {
	t.Helper()
	ca := testutil.NewCA(t)
	dir := t.TempDir()
	caFile, tokenFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "token")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &recordingController{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{ca.Issue(t, controllerName)},
		MinVersion:   tls.VersionTLS12,
	})))
	detourv1.RegisterAgentSyncServiceServer(srv, c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	o, err := parseFlags([]string{"--controller", ln.Addr().String(), "--controller-ca", caFile,
		"--controller-server-name", serverName, "--token-file", tokenFile},
		func(k string) string { return map[string]string{"NODE_NAME": "node-a"}[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return c, o
}

// startAgent runs an agent built from o, as run does, over a steering that
// does nothing, until the test ends.
func startAgent(t *testing.T, o *options, logs io.Writer) {
	t.Helper()
	opts, err := controllerDialOptions(o)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{
		Node: o.node, Controller: o.controller, DialOptions: opts,
		ReportInterval: 20 * time.Millisecond,
		Logger:         slog.New(slog.NewTextHandler(logs, nil)),
	}, nopSteerer{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// recordingController answers an agent with an empty desired state and
// records each call's method, node and authorization header.
type recordingController struct {
	detourv1.UnimplementedAgentSyncServiceServer
	mu    sync.Mutex
	calls []string // "METHOD node=NODE authorization=VALUE"
}

func (c *recordingController) record(ctx context.Context, method, node string) {
	md, _ := metadata.FromIncomingContext(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, fmt.Sprintf("%s node=%s authorization=%s", method, node, strings.Join(md.Get("authorization"), ",")))
}

func (c *recordingController) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

// wantCall checks that a call of method came from node-a with auth.
func (c *recordingController) wantCall(method, auth string) error {
	want := fmt.Sprintf("%s node=node-a authorization=%s", method, auth)
	calls := c.all()
	for _, got := range calls {
		if got == want {
			return nil
		}
	}
	return fmt.Errorf("no call %q among %q", want, calls)
}

func (c *recordingController) Register(ctx context.Context, req *detourv1.RegisterRequest) (*detourv1.RegisterResponse, error) {
	c.record(ctx, "Register", req.Node)
	return &detourv1.RegisterResponse{}, nil
}

func (c *recordingController) WatchDesiredState(req *detourv1.WatchDesiredStateRequest, s grpc.ServerStreamingServer[detourv1.WatchDesiredStateResponse]) error {
	c.record(s.Context(), "WatchDesiredState", req.Node)
	if err := s.Send(&detourv1.WatchDesiredStateResponse{Type: detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (c *recordingController) ReportStatus(ctx context.Context, req *detourv1.ReportStatusRequest) (*detourv1.ReportStatusResponse, error) {
	c.record(ctx, "ReportStatus", req.Node)
	return &detourv1.ReportStatusResponse{}, nil
}

type nopSteerer struct{}

func (nopSteerer) Attach(string) error                              { return nil }
func (nopSteerer) Detach(string) error                              { return nil }
func (nopSteerer) Steer(netip.Addr, uint16, *net.TCPListener) error { return nil }
func (nopSteerer) Unsteer(netip.Addr, uint16) error                 { return nil }
func (nopSteerer) Connections(netip.Addr, uint16) (uint64, error)   { return 0, nil }
func (nopSteerer) Close() error                                     { return nil }

var _ agent.Steerer = nopSteerer{}
