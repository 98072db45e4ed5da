package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
)

// fakeController serves one desired state, sent once release is called,
// and keeps the agent's last status report.
type fakeController struct {
	detourv1.UnimplementedAgentSyncServiceServer
	state    []*detourv1.Assignment
	released chan struct{}
	once     sync.Once

	mu     sync.Mutex
	report []*detourv1.InterceptReport
}

var _ detourv1.AgentSyncServiceServer = (*fakeController)(nil)

func (c *fakeController) Register(context.Context, *detourv1.RegisterRequest) (*detourv1.RegisterResponse, error) {
	return &detourv1.RegisterResponse{}, nil
}

func (c *fakeController) WatchDesiredState(_ *detourv1.WatchDesiredStateRequest, s grpc.ServerStreamingServer[detourv1.WatchDesiredStateResponse]) error {
	select {
	case <-c.released:
	case <-s.Context().Done():
		return s.Context().Err()
	}
	if err := s.Send(&detourv1.WatchDesiredStateResponse{Type: detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT, Assignments: c.state}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (c *fakeController) ReportStatus(_ context.Context, req *detourv1.ReportStatusRequest) (*detourv1.ReportStatusResponse, error) {
	c.mu.Lock()
	c.report = req.Intercepts
	c.mu.Unlock()
	return &detourv1.ReportStatusResponse{}, nil
}

func (c *fakeController) release() { c.once.Do(func() { close(c.released) }) }

func (c *fakeController) lastReport() []*detourv1.InterceptReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.report
}

// serveController serves c over bufconn (nil c: nothing answers) and
// returns the dial options that reach it.
func serveController(t *testing.T, c *fakeController) []grpc.DialOption {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	if c != nil {
		srv := grpc.NewServer()
		detourv1.RegisterAgentSyncServiceServer(srv, c)
		go func() { _ = srv.Serve(lis) }()
		t.Cleanup(srv.Stop)
	} else {
		_ = lis.Close()
	}
	return []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	})}
}

// startAgent runs an agent over fakes until the test ends; the returned
// channel yields Run's result.
func startAgent(t *testing.T, cfg Config, s Steerer) (*Agent, context.CancelFunc, <-chan error) {
	t.Helper()
	cfg.Node = "node-1"
	cfg.Controller = "passthrough:///controller"
	if cfg.ReportInterval == 0 {
		cfg.ReportInterval = 10 * time.Millisecond
	}
	cfg.RetryInterval = 10 * time.Millisecond
	a, err := New(cfg, s)
	if err != nil {
		t.Fatal(err)
	}
	a.dp.listen = listenHere
	ctx, cancel := context.WithCancel(context.Background())
	done, stopped := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(stopped)
		done <- a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
	})
	return a, cancel, done
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func wantHTTP(url string, code int, bodySub string) error {
	got, body, err := get(url)
	if err != nil {
		return err
	}
	if got != code || !strings.Contains(body, bodySub) {
		return fmt.Errorf("GET %s = %d %q, want %d with %q", url, got, body, code, bodySub)
	}
	return nil
}

// TestReadyAfterDesiredState: /readyz answers 503 with a reason until the
// controller's desired state is applied, /healthz 200 all along, and the
// controller hears of a target whose pod is not found until it is.
func TestReadyAfterDesiredState(t *testing.T) {
	podIP := netip.MustParseAddr("10.0.0.5")
	c := &fakeController{
		state:    []*detourv1.Assignment{intercept("api", target("api-0", podIP, 8080))},
		released: make(chan struct{}),
	}
	s, r, logs := newFakeSteerer(), newFakeResolver(), &logBuffer{}
	a, cancel, done := startAgent(t, Config{
		DialOptions: serveController(t, c), ResolveNetNS: r.resolve, Logger: logs.logger(),
	}, s)
	web := httptest.NewServer(a.Handler())
	defer web.Close()

	if err := wantHTTP(web.URL+"/readyz", http.StatusServiceUnavailable, "no desired state applied yet"); err != nil {
		t.Fatal(err)
	}
	if err := wantHTTP(web.URL+"/healthz", http.StatusOK, "ok"); err != nil {
		t.Fatal(err)
	}

	c.release()
	testutil.Eventually(t, 5*time.Second, func() error { return wantHTTP(web.URL+"/readyz", http.StatusOK, "ok") })
	testutil.Eventually(t, 5*time.Second, func() error {
		return wantReport(c.lastReport(), "default/api", false, "no network namespace on this node has address 10.0.0.5")
	})

	nsPath, ino := fakeNetNS(t)
	r.set(podIP, nsPath)
	testutil.Eventually(t, 5*time.Second, func() error { return wantReport(c.lastReport(), "default/api", true, "") })
	if err := s.wantState([]uint64{ino}, "10.0.0.5:8080"); err != nil {
		t.Fatal(err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the agent did not stop within 5 s of being told to")
	}
	if err := s.wantState(nil); err != nil || !s.closed {
		t.Fatalf("after the agent stopped: %v, steering closed: %v", err, s.closed)
	}
	if err := wantHTTP(web.URL+"/readyz", http.StatusServiceUnavailable, "stopping"); err != nil {
		t.Fatal(err)
	}
}

// TestReportsOnceApplied: an applied desired state is reported at once,
// not at the next tick of ReportInterval, so that intercept create --wait
// returns as soon as the steering is on.
func TestReportsOnceApplied(t *testing.T) {
	podIP := netip.MustParseAddr("10.0.0.5")
	c := &fakeController{
		state:    []*detourv1.Assignment{intercept("api", target("api-0", podIP, 8080))},
		released: make(chan struct{}),
	}
	s, r := newFakeSteerer(), newFakeResolver()
	nsPath, _ := fakeNetNS(t)
	r.set(podIP, nsPath)
	startAgent(t, Config{DialOptions: serveController(t, c), ResolveNetNS: r.resolve, ReportInterval: time.Hour}, s)
	c.release()
	testutil.Eventually(t, 5*time.Second, func() error { return wantReport(c.lastReport(), "default/api", true, "") })
}

// TestReadyFromStateFile: with the controller away, an agent that has a
// saved state applies it and is ready.
func TestReadyFromStateFile(t *testing.T) {
	podIP := netip.MustParseAddr("10.0.0.5")
	nsPath, ino := fakeNetNS(t)
	r := newFakeResolver()
	r.set(podIP, nsPath)
	stateFile := filepath.Join(t.TempDir(), "agent-state.json")
	b, err := protojson.Marshal(&detourv1.WatchDesiredStateResponse{
		Type:        detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT,
		Assignments: []*detourv1.Assignment{intercept("api", target("api-0", podIP, 8080))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stateFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, logs := newFakeSteerer(), &logBuffer{}
	a, _, _ := startAgent(t, Config{
		DialOptions: serveController(t, nil), ResolveNetNS: r.resolve, StateFile: stateFile, Logger: logs.logger(),
	}, s)
	web := httptest.NewServer(a.Handler())
	defer web.Close()
	testutil.Eventually(t, 5*time.Second, func() error { return wantHTTP(web.URL+"/readyz", http.StatusOK, "ok") })
	if err := s.wantState([]uint64{ino}, "10.0.0.5:8080"); err != nil {
		t.Fatal(err)
	}
	if err := wantHTTP(web.URL+"/healthz", http.StatusOK, "controller_connected=false"); err != nil {
		t.Fatal(err)
	}
}

// TestRunFailsOnBadDialOptions: a token that would go out in clear text is
// refused before anything is applied, and the steering is released.
func TestRunFailsOnBadDialOptions(t *testing.T) {
	s := newFakeSteerer()
	a, err := New(Config{Node: "n", Controller: "127.0.0.1:1",
		DialOptions: []grpc.DialOption{grpc.WithPerRPCCredentials(secureOnly{})}}, s)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "controller client") {
		t.Fatalf("Run = %v, want a controller client error", err)
	}
	if !s.closed {
		t.Fatal("the steering was not released")
	}
}

type secureOnly struct{}

func (secureOnly) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return nil, errors.New("unused")
}
func (secureOnly) RequireTransportSecurity() bool { return true }
