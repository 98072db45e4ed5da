package controller

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/store"
)

// fakeClock moves only when a test advances it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) At(t time.Time) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if !t.After(c.now) {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{t, ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
			continue
		}
		kept = append(kept, w)
	}
	c.waiters = kept
}

// labInventory is two nodes: the shared api on both, the developers' pods
// on the first.
func labInventory() *inventory.Inventory {
	return &inventory.Inventory{
		Node: "lab",
		Pods: []inventory.Pod{
			{Name: "api-0", Namespace: "default", Labels: map[string]string{"app": "api"}, IP: "10.0.0.10", NetNS: "/run/netns/api-0"},
			{Name: "api-1", Namespace: "default", Labels: map[string]string{"app": "api"}, IP: "10.0.1.11", NetNS: "/run/netns/api-1", Node: "node-b"},
			{Name: "api-alice", Namespace: "default", Labels: map[string]string{"app": "api-alice"}, IP: "10.0.0.20", NetNS: "/run/netns/api-alice"},
			{Name: "api-bob", Namespace: "default", Labels: map[string]string{"app": "api-bob"}, IP: "10.0.0.21", NetNS: "/run/netns/api-bob"},
			{Name: "web-0", Namespace: "team-a", Labels: map[string]string{"app": "web"}, IP: "10.0.0.30", NetNS: "/run/netns/web-0"},
		},
		Services: []inventory.Service{
			{Name: "api", Namespace: "default", Selector: map[string]string{"app": "api"},
				Ports: []inventory.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "grpc", Port: 9090}}},
			{Name: "web", Namespace: "team-a", Selector: map[string]string{"app": "web"},
				Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8000}}},
		},
	}
}

// harness is a controller behind a real gRPC server on an in-memory
// listener, with real clients.
type harness struct {
	t      *testing.T
	clock  *fakeClock
	inv    *inventory.StaticSource
	path   string
	reg    *prometheus.Registry
	srv    *Server
	st     *store.Bolt
	ctl    detourv1.ControlServiceClient
	agents detourv1.AgentSyncServiceClient
	stop   func()
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{
		t:     t,
		clock: newFakeClock(),
		inv:   inventory.NewStaticSource(labInventory()),
		path:  filepath.Join(t.TempDir(), "controller.db"),
	}
	h.start()
	t.Cleanup(func() { h.stop() })
	return h
}

// start runs a controller over the harness's store file; stop ends it, the
// way a controller process ends, so start again is a restart.
func (h *harness) start() {
	t := h.t
	t.Helper()
	st, err := store.Open(h.path)
	if err != nil {
		t.Fatal(err)
	}
	h.st = st
	h.reg = prometheus.NewRegistry()
	srv, err := New(context.Background(), Config{
		Store: st, Inventory: h.inv, Clock: h.clock, Registerer: h.reg, Version: "v-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	h.serve(srv, st.Close)
}

// serve puts srv behind a real gRPC server on an in-memory listener, runs
// it, and gives the harness its clients and a stop that ends it the way a
// controller process ends (Run's error fails the test), then closes the
// store with closeStore.
func (h *harness) serve(srv *Server, closeStore func() error) {
	t := h.t
	t.Helper()
	h.srv = srv
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	srv.RegisterServices(gs)
	go func() { _ = gs.Serve(lis) }()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- srv.Run(ctx) }()

	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.ctl = detourv1.NewControlServiceClient(conn)
	h.agents = detourv1.NewAgentSyncServiceClient(conn)
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			_ = conn.Close()
			cancel()
			if err := <-runDone; err != nil {
				t.Errorf("Run: %v", err)
			}
			srv.Close()
			gs.Stop()
			_ = closeStore()
		})
	}
}

func (h *harness) restart() {
	h.stop()
	h.start()
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// spec builds a create request for the shared api.
func req(name string, dest string, ttl time.Duration, conds ...*detourv1.Condition) *detourv1.CreateInterceptRequest {
	r := &detourv1.CreateInterceptRequest{Intercept: &detourv1.Intercept{
		Name: name,
		Spec: &detourv1.InterceptSpec{
			ServiceNamespace: "default",
			ServiceName:      "api",
			Port:             80,
			Match:            conds,
			Destination:      dest,
		},
	}}
	if ttl != 0 {
		r.Intercept.Spec.Ttl = durationpb.New(ttl)
	}
	return r
}

func session(key string) *detourv1.Condition {
	return &detourv1.Condition{Kind: detourv1.Condition_KIND_SESSION, Value: key}
}

func (h *harness) create(r *detourv1.CreateInterceptRequest) *detourv1.Intercept {
	h.t.Helper()
	resp, err := h.ctl.CreateIntercept(ctx(h.t), r)
	if err != nil {
		h.t.Fatalf("create %s: %v", r.GetIntercept().GetName(), err)
	}
	return resp.GetIntercept()
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error %v, want code %v", err, code)
	}
}
