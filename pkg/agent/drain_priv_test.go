package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/steer"
)

// stopLab is a pod namespace whose app answers who reached it (the agent,
// which dials the app from the pod's own address, or the client directly),
// a client namespace joined to it, and an agent with real steering that
// intercepts the app's port.
type stopLab struct {
	client string
	pod    *testPod
	app    *stopApp
	agent  *Agent
	logs   *logBuffer
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned runErr
	runErr error
}

// wait waits at most within for Run to return and returns its result.
func (l *stopLab) wait(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case <-l.done:
		return l.runErr
	case <-time.After(within):
		t.Fatalf("Run did not return within %v of the stop", within)
		return nil
	}
}

// stopApp is the pod's app, over HTTP/1 and h2c. /slow answers after
// slowFor; /hang answers when the test ends. inFlight counts the /slow and
// /hang requests being answered that came through the agent, by HTTP major
// version.
type stopApp struct {
	podIP    netip.Addr
	slowFor  time.Duration
	hang     chan struct{}
	inFlight [3]atomic.Int64
}

func (a *stopApp) via(r *http.Request) string {
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	if ap.Addr().Unmap() == a.podIP {
		return "agent"
	}
	return "direct"
}

func (a *stopApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	via := a.via(r)
	if r.URL.Path == "/slow" || r.URL.Path == "/hang" {
		if via == "agent" {
			a.inFlight[r.ProtoMajor].Add(1)
			defer a.inFlight[r.ProtoMajor].Add(-1)
		}
		if r.URL.Path == "/slow" {
			time.Sleep(a.slowFor) // a response in flight when the agent stops
		} else {
			select {
			case <-a.hang:
			case <-r.Context().Done():
			}
		}
	}
	io.WriteString(w, via)
}

func newStopLab(t *testing.T, grace time.Duration) *stopLab {
	t.Helper()
	testutil.RequirePrivileged(t)
	l := &stopLab{client: testutil.NewNetNS(t), logs: &logBuffer{}}
	podIP := netip.MustParseAddr("203.0.113.10")
	l.pod = &testPod{ns: testutil.NewNetNS(t), ip: podIP}
	testutil.Veth(t, testutil.End{NetNS: l.pod.ns, Dev: "pd1", Addr: podIP},
		testutil.End{NetNS: l.client, Dev: "cl1", Addr: netip.MustParseAddr("203.0.113.1")})
	var err error
	if l.pod.ino, err = netns.Inode(l.pod.ns); err != nil {
		t.Fatal(err)
	}
	ln, err := netns.Listen(l.pod.ns, "tcp4", netip.AddrPortFrom(podIP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	l.app = &stopApp{podIP: podIP, slowFor: time.Second, hang: make(chan struct{})}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: l.app, Protocols: &protos}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		close(l.app.hang)
		_ = srv.Close()
	})

	s, err := steer.New()
	if err != nil {
		t.Fatal(err)
	}
	tg := target("api-0", podIP, 8080)
	tg.Netns = l.pod.ns
	c := &fakeController{state: []*detourv1.Assignment{intercept("api", tg)}, released: make(chan struct{})}
	c.release()
	l.agent, err = New(Config{
		Node: "node-1", Controller: "passthrough:///controller", DialOptions: serveController(t, c),
		ReportInterval: 10 * time.Millisecond, RetryInterval: 10 * time.Millisecond,
		Logger: l.logs.logger(), ShutdownGrace: grace,
	}, s)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel, l.done = cancel, make(chan struct{})
	go func() {
		defer close(l.done)
		l.runErr = l.agent.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-l.done
	})
	testutil.Eventually(t, 10*time.Second, func() error { return wantReport(c.lastReport(), "default/api", true, "") })
	if err := wantLinks(l.pod.ino, 1); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *stopLab) url(path string) string {
	return "http://" + netip.AddrPortFrom(l.pod.ip, 8080).String() + path
}

// httpClient sends requests from the client's namespace: over HTTP/1
// (keep-alive or a connection per request) or h2c with prior knowledge.
func (l *stopLab) httpClient(t *testing.T, keepAlive, h2 bool) *http.Client {
	d := &netns.Dialer{Path: l.client}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: !keepAlive,
	}
	if h2 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// get sends one request and returns who answered it: "agent" or "direct".
func get1(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %q", resp.Status, b)
	}
	return string(b), nil
}

// loadResult is one request of the load.
type loadResult struct {
	client     string
	start, end time.Time
	via        string
	err        error
}

// load sends requests back to back from several clients until stopped.
type load struct {
	mu      sync.Mutex
	results []loadResult
	stop    chan struct{}
	wg      sync.WaitGroup
}

func (ld *load) run(name string, c *http.Client, url string) {
	ld.wg.Go(func() {
		for {
			select {
			case <-ld.stop:
				return
			default:
			}
			start := time.Now()
			via, err := get1(c, url)
			ld.mu.Lock()
			ld.results = append(ld.results, loadResult{client: name, start: start, end: time.Now(), via: via, err: err})
			ld.mu.Unlock()
		}
	})
}

func (ld *load) snapshot() []loadResult {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return append([]loadResult(nil), ld.results...)
}

// count counts the results that pass keep.
func (ld *load) count(keep func(r loadResult) bool) int {
	n := 0
	for _, r := range ld.snapshot() {
		if keep(r) {
			n++
		}
	}
	return n
}

// TestPrivilegedGracefulStop: clients keep sending requests (HTTP/1 over
// fresh and keep-alive connections, h2c streams; some slow, so requests
// are in flight) through an intercepted port while the agent stops. No
// request fails; the steering is gone at once, so a new connection reaches
// the app directly while the agent still finishes the requests in flight;
// Run returns well within the grace period; afterwards every request
// reaches the app directly.
func TestPrivilegedGracefulStop(t *testing.T) {
	const grace = 5 * time.Second
	l := newStopLab(t, grace)
	if via, err := get1(l.httpClient(t, false, false), l.url("/")); err != nil || via != "agent" {
		t.Fatalf("before the stop: answered %q (%v), want through the agent", via, err)
	}

	ld := &load{stop: make(chan struct{})}
	for _, c := range []struct {
		name          string
		keepAlive, h2 bool
	}{
		{"http1-fresh", false, false},
		{"http1-keepalive", true, false},
		{"h2c", true, true},
	} {
		client := l.httpClient(t, c.keepAlive, c.h2)
		ld.run(c.name, client, l.url("/"))
		ld.run(c.name+"-slow", client, l.url("/slow"))
	}
	t.Cleanup(func() {
		select {
		case <-ld.stop:
		default:
			close(ld.stop)
		}
		ld.wg.Wait()
	})
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, name := range []string{"http1-fresh", "http1-keepalive", "h2c"} {
			if n := ld.count(func(r loadResult) bool { return r.client == name && r.via == "agent" }); n < 5 {
				return fmt.Errorf("%s: %d requests through the agent", name, n)
			}
		}
		if l.app.inFlight[1].Load() == 0 || l.app.inFlight[2].Load() == 0 {
			return fmt.Errorf("slow requests in flight through the agent: HTTP/1 %d, HTTP/2 %d",
				l.app.inFlight[1].Load(), l.app.inFlight[2].Load())
		}
		return nil
	})

	stopped := l.stop(t)
	if err := l.wait(t, grace+5*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	returned := time.Now()
	ranFor := returned.Sub(stopped)
	// The load goes on without the agent.
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, name := range []string{"http1-fresh", "http1-keepalive", "h2c", "h2c-slow"} {
			if n := ld.count(func(r loadResult) bool { return r.client == name && r.start.After(returned) && r.err == nil }); n < 1 {
				return fmt.Errorf("%s: no request answered since the agent stopped", name)
			}
		}
		return nil
	})
	close(ld.stop)
	ld.wg.Wait()

	results := ld.snapshot()
	var failed []string
	drained := map[string]int{} // slow requests in flight at the stop, finished through the agent
	for _, r := range results {
		switch {
		case r.err != nil:
			failed = append(failed, fmt.Sprintf("%s at %+v: %v", r.client, r.start.Sub(stopped), r.err))
		case r.start.After(returned) && r.via != "direct":
			t.Errorf("%s: a request sent %v after Run returned reached the app through the agent", r.client, r.start.Sub(returned))
		case r.via == "agent" && r.start.Before(stopped) && r.end.After(stopped) && strings.HasSuffix(r.client, "-slow"):
			drained[r.client]++
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d requests failed:\n%s\nagent log:\n%s", len(failed), len(results), strings.Join(failed, "\n"), l.logs)
	}
	if drained["http1-keepalive-slow"]+drained["http1-fresh-slow"] == 0 || drained["h2c-slow"] == 0 {
		t.Fatalf("no slow request in flight at the stop finished through the agent: %v", drained)
	}
	if !strings.Contains(l.logs.String(), "msg=drained") {
		t.Errorf("the agent did not log that it drained:\n%s", l.logs)
	}
	t.Logf("%d requests, none failed; Run returned %v after the stop; in flight at the stop and finished: %v",
		len(results), ranFor.Round(time.Millisecond), drained)
}

// TestPrivilegedGracefulStopGraceEnds: a request that never finishes does
// not hold the agent: Run returns once the grace period is over, having
// logged what it closed, and the steering was gone from the start.
func TestPrivilegedGracefulStopGraceEnds(t *testing.T) {
	const grace = time.Second
	l := newStopLab(t, grace)
	hung := make(chan error, 1)
	go func() {
		_, err := get1(l.httpClient(t, true, false), l.url("/hang"))
		hung <- err
	}()
	testutil.Eventually(t, 10*time.Second, func() error {
		if l.app.inFlight[1].Load() == 0 {
			return errors.New("the hanging request has not reached the app through the agent")
		}
		return nil
	})

	stopped := l.stop(t)
	if err := l.wait(t, grace+5*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(stopped); took < grace {
		t.Fatalf("Run returned %v after the stop, before the grace period ended", took)
	}
	select {
	case err := <-hung:
		if err == nil {
			t.Fatal("the hanging request was answered")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the hanging request's connection was not closed when the grace period ended")
	}
	logs := l.logs.String()
	if !strings.Contains(logs, "grace period over") || !strings.Contains(logs, "left.http1_conns=1") {
		t.Fatalf("the agent did not log what it closed:\n%s", logs)
	}
}

// stop stops the agent and checks that steering is gone at once: the link
// leaves the kernel and a new connection reaches the app directly while
// the agent still drains. It returns when the stop began.
func (l *stopLab) stop(t *testing.T) time.Time {
	t.Helper()
	stopped := time.Now()
	l.cancel()
	testutil.Eventually(t, 5*time.Second, func() error { return wantLinks(l.pod.ino, 0) })
	if via, err := get1(l.httpClient(t, false, false), l.url("/")); err != nil || via != "direct" {
		t.Fatalf("a new connection during the drain: answered %q (%v), want by the app directly", via, err)
	}
	return stopped
}
