package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/podns"
)

// fakeSteerer is the kernel steering as the agent sees it: which namespaces
// (by inode) have the program attached and which pod ports are steered.
type fakeSteerer struct {
	mu        sync.Mutex
	attached  map[uint64]bool
	steered   map[netip.AddrPort]bool
	attachErr error
	closed    bool
}

var _ Steerer = (*fakeSteerer)(nil)

func newFakeSteerer() *fakeSteerer {
	return &fakeSteerer{attached: map[uint64]bool{}, steered: map[netip.AddrPort]bool{}}
}

func (s *fakeSteerer) Attach(path string) error {
	ino, err := netns.Inode(path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.attachErr != nil {
		return s.attachErr
	}
	s.attached[ino] = true
	return nil
}

func (s *fakeSteerer) Detach(path string) error {
	ino, err := netns.Inode(path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.attached, ino)
	return nil
}

func (s *fakeSteerer) Steer(addr netip.Addr, port uint16, _ *net.TCPListener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steered[netip.AddrPortFrom(addr, port)] = true
	return nil
}

func (s *fakeSteerer) Unsteer(addr netip.Addr, port uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.steered, netip.AddrPortFrom(addr, port))
	return nil
}

func (s *fakeSteerer) Connections(netip.Addr, uint16) (uint64, error) { return 0, nil }

func (s *fakeSteerer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	clear(s.attached)
	clear(s.steered)
	return nil
}

func (s *fakeSteerer) setAttachErr(err error) {
	s.mu.Lock()
	s.attachErr = err
	s.mu.Unlock()
}

// state is what is attached and steered, as "inode N" and "ADDR:PORT".
func (s *fakeSteerer) state() (attached, steered []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ino := range s.attached {
		attached = append(attached, fmt.Sprintf("inode %d", ino))
	}
	for ap := range s.steered {
		steered = append(steered, ap.String())
	}
	slices.Sort(attached)
	slices.Sort(steered)
	return attached, steered
}

// wantState checks the steering, for testutil.Eventually.
func (s *fakeSteerer) wantState(attachedInodes []uint64, steered ...string) error {
	var wantA []string
	for _, ino := range attachedInodes {
		wantA = append(wantA, fmt.Sprintf("inode %d", ino))
	}
	slices.Sort(wantA)
	slices.Sort(steered)
	gotA, gotS := s.state()
	if !slices.Equal(gotA, wantA) || !slices.Equal(gotS, steered) {
		return fmt.Errorf("attached %v, steered %v; want attached %v, steered %v", gotA, gotS, wantA, steered)
	}
	return nil
}

// fakeResolver answers pod addresses from a table, and counts the asks.
type fakeResolver struct {
	mu    sync.Mutex
	at    map[netip.Addr]string
	calls int
}

func newFakeResolver() *fakeResolver { return &fakeResolver{at: map[netip.Addr]string{}} }

func (r *fakeResolver) resolve(ip netip.Addr) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if p, ok := r.at[ip]; ok {
		return p, nil
	}
	return "", &podns.NotFoundError{Addr: ip}
}

func (r *fakeResolver) set(ip netip.Addr, path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if path == "" {
		delete(r.at, ip)
	} else {
		r.at[ip] = path
	}
}

func (r *fakeResolver) asked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

// fakeNetNS is a file standing for a pod's namespace: the dataplane only
// opens a namespace and tells it by inode, and listens through d.listen.
func fakeNetNS(t *testing.T) (path string, ino uint64) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ino, err := netns.Inode(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, ino
}

// logBuffer collects an agent's log lines.
type logBuffer struct{ testutil.SyncBuffer }

func (l *logBuffer) count(substr string) int { return strings.Count(l.String(), substr) }

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// listenHere stands in for netns.Listen: the fake namespaces cannot be
// entered, so listeners open in the test's own namespace, on loopback.
func listenHere(_, network, _ string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), network, "127.0.0.1:0")
}

// dialHere stands in for netns.Dialer, as listenHere for netns.Listen.
func dialHere(string) func(context.Context, string, string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext
}

// newTestDataplane is a dataplane over fakes that is closed with the test.
func newTestDataplane(t *testing.T, s Steerer, r *fakeResolver, logs *logBuffer) *dataplane {
	t.Helper()
	d := newDataplane(s, logs.logger(), newMetrics(prometheus.NewRegistry()))
	d.listen, d.dialFrom = listenHere, dialHere
	if r != nil {
		d.resolve = r.resolve
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func target(pod string, ip netip.Addr, port uint32) *detourv1.Target {
	return &detourv1.Target{PodNamespace: "default", PodName: pod, PodIp: ip.String(), Port: port}
}

// intercept is alice's header intercept of the given targets.
func intercept(name string, targets ...*detourv1.Target) *detourv1.Assignment {
	return &detourv1.Assignment{
		Namespace: "default", Name: name,
		Match:       []*detourv1.Condition{{Kind: detourv1.Condition_KIND_HEADER_EXACT, Name: "x-dev", Value: "alice"}},
		Targets:     targets,
		Destination: "127.0.0.1:9",
	}
}

// report is the intercept's status as the controller would receive it.
func report(reports []*detourv1.InterceptReport, id string) *detourv1.InterceptReport {
	for _, r := range reports {
		if interceptID(r.Namespace, r.Name) == id {
			return r
		}
	}
	return nil
}

// wantReport checks an intercept's report, for testutil.Eventually:
// attached or not, and an error containing errSub ("" : no error).
func wantReport(reports []*detourv1.InterceptReport, id string, attached bool, errSub string) error {
	r := report(reports, id)
	switch {
	case r == nil:
		return fmt.Errorf("no report for %s in %v", id, reports)
	case r.SteeringAttached != attached:
		return fmt.Errorf("%s: steering_attached=%v (error %q), want %v", id, r.SteeringAttached, r.Error, attached)
	case errSub == "" && r.Error != "":
		return fmt.Errorf("%s: error %q, want none", id, r.Error)
	case errSub != "" && !strings.Contains(r.Error, errSub):
		return fmt.Errorf("%s: error %q, want one containing %q", id, r.Error, errSub)
	}
	return nil
}
