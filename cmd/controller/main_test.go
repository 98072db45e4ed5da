package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
)

func TestFlags(t *testing.T) {
	var out bytes.Buffer
	_, err := parseFlags([]string{"--help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"-listen", "127.0.0.1:7070", "-metrics-listen", "127.0.0.1:9470", "/readyz", "-store", "/var/lib/detour/controller.db", "-inventory", "/run/detour/lab/inventory.json", "-log-level",
		"-leader-elect", "-leader-elect-namespace", "$POD_NAMESPACE", "-leader-elect-id", "$POD_NAME", "Lease detour-controller", "not the leader",
		"-auth", "TokenReview", "SubjectAccessReview", "-agent-service-account", "detour-system:detour-agent", "-agent-token-audience",
		"-tls-secret", "-ca-configmap", "detour-ca", "-service-name", "NAME.NAMESPACE.svc.cluster.local", "status"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Error("stray argument accepted")
	}
	t.Setenv("POD_NAMESPACE", "")
	for _, tt := range []struct {
		args []string
		want string // in the error; "" means accepted
	}{
		{[]string{"--auth", "kube"}, "--auth kube needs --tls-secret"},
		{[]string{"--auth", "oidc"}, "want none or kube"},
		{[]string{"--auth", "kube", "--tls-secret", "tls", "--leader-elect-namespace", "detour-system", "--agent-service-account", "detour-agent"}, "want NAMESPACE:NAME"},
		{[]string{"--auth", "kube", "--tls-secret", "tls", "--leader-elect-namespace", "detour-system"}, ""},
		{[]string{"--leader-elect"}, "namespace is unknown"},
		{[]string{"--tls-secret", "tls"}, "namespace is unknown"},
		{[]string{"--leader-elect", "--leader-elect-namespace", "detour-system"}, ""},
	} {
		_, err := parseFlags(tt.args, io.Discard)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%v: %v, want %q", tt.args, err, tt.want)
		}
	}
	t.Setenv("POD_NAMESPACE", "detour-system")
	if o, err := parseFlags([]string{"--leader-elect"}, io.Discard); err != nil || o.namespace() != "detour-system" {
		t.Errorf("--leader-elect with $POD_NAMESPACE: %v", err)
	}
	t.Setenv("POD_NAME", "detour-controller-0")
	if id, err := (&options{}).identity(); err != nil || id != "detour-controller-0" {
		t.Errorf("identity %q %v, want $POD_NAME", id, err)
	}
	if got := servingNames("detour-controller", "detour-system"); !slices.Equal(got, []string{"detour-controller", "detour-controller.detour-system",
		"detour-controller.detour-system.svc", "detour-controller.detour-system.svc.cluster.local"}) {
		t.Errorf("serving names %v", got)
	}
	if _, err := newLogger(&options{logLevel: "loud", logFormat: "text"}, io.Discard); err == nil {
		t.Error("bad --log-level accepted")
	}
	if _, err := newLogger(&options{logLevel: "debug", logFormat: "xml"}, io.Discard); err == nil {
		t.Error("bad --log-format accepted")
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRunServesAndStops runs the whole controller with a missing inventory
// file, talks to it, and stops it as a signal would.
func TestRunServesAndStops(t *testing.T) {
	dir := t.TempDir()
	o := &options{
		listen:        freeAddr(t),
		metricsListen: freeAddr(t),
		storePath:     filepath.Join(dir, "state", "controller.db"),
		inventoryPath: filepath.Join(dir, "missing.json"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, o, slog.New(slog.DiscardHandler)) }()

	conn, err := grpc.NewClient(o.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := detourv1.NewControlServiceClient(conn)
	var st *detourv1.GetStatusResponse
	testutil.Eventually(t, 5*time.Second, func() error {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		defer ccancel()
		st, err = c.GetStatus(cctx, &detourv1.GetStatusRequest{}, grpc.WaitForReady(true))
		if err != nil {
			return fmt.Errorf("GetStatus: %w", err)
		}
		return nil
	})
	if st.GetControllerVersion() != version {
		t.Errorf("version %q", st.GetControllerVersion())
	}
	// A watch stream open at shutdown must not hold the stop up.
	ws, err := detourv1.NewAgentSyncServiceClient(conn).WatchDesiredState(context.Background(), &detourv1.WatchDesiredStateRequest{Node: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); err != nil {
		t.Fatal(err)
	}

	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get(fmt.Sprintf("http://%s%s", o.metricsListen, path))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		if path == "/metrics" && !strings.Contains(string(body), "detour_controller_intercepts_active") {
			t.Errorf("/metrics lacks the controller's series")
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("controller did not stop")
	}
}

// runController runs the controller with o until the returned stop, which
// ends it as SIGTERM would and fails the test if it does not stop cleanly
// within 20 s. stop is also a cleanup, so calling it is optional.
func runController(t *testing.T, ctx context.Context, o *options) (stop func()) {
	t.Helper()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx, o, slog.New(slog.DiscardHandler)) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("controller did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// dialControl is a ControlService client of the controller at addr.
func dialControl(t *testing.T, addr string) detourv1.ControlServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return detourv1.NewControlServiceClient(conn)
}
