package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
)

// countingBackend is a backend whose accepted connections are counted.
func countingBackend(t *testing.T, name string) (*backend, *countingListener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: l}
	return serveBackend(t, name, ln), ln
}

// A client keeps its upstream connection while its requests go to the same
// address, and hands it to the pool when they go elsewhere, so neither a run
// of requests nor a switch between destinations dials again.
func TestUpstreamKeptAcrossRequests(t *testing.T) {
	app, appLn := countingBackend(t, "app")
	dev, devLn := countingBackend(t, "dev")
	rec := &recorder{}
	p, addr, _ := startProxy(t, Config{App: app.addr, Observer: rec})
	p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", dev.addr)})
	c := oneConnClient(t)
	for i, session := range []string{"", "", "alice", "alice", "alice", "", "alice", ""} {
		want := map[string]string{"": "app", "alice": "dev"}[session]
		if b, _ := get(t, c, "http://"+addr+"/", session); b != want {
			t.Fatalf("request %d: answered by %q, want %q", i, b, want)
		}
	}
	if a, d := appLn.n.Load(), devLn.n.Load(); a != 1 || d != 1 {
		t.Fatalf("upstream connections: app %d, dev %d; want 1 each", a, d)
	}
	// The client leaves: its connection joins the pool for the next one.
	c.Transport.(*http.Transport).CloseIdleConnections()
	testutil.Eventually(t, 5*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if n := len(p.idle[app.addr]); n != 1 {
			return fmt.Errorf("%d idle connections to the app, want 1", n)
		}
		return nil
	})
	c = oneConnClient(t)
	if b, _ := get(t, c, "http://"+addr+"/", ""); b != "app" {
		t.Fatalf("answered by %q, want app", b)
	}
	if a := appLn.n.Load(); a != 1 {
		t.Fatalf("app connections after the client left and another came: %d, want 1", a)
	}
}

// oneShotUpstream answers one request per connection and then closes it
// without saying so (no Connection: close), as an upstream whose idle
// timeout fires at once would. It counts the requests by method and
// reports each close, once done, on closed.
func oneShotUpstream(t *testing.T) (addr string, got map[string]*atomic.Int64, closed chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = map[string]*atomic.Int64{"GET": {}, "POST": {}}
	closed = make(chan struct{}, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { c.Close(); closed <- struct{}{} }()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				got[req.Method].Add(1)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	return ln.Addr().String(), got, closed
}

// The connection a client keeps may have been closed by the upstream by its
// next request. An idempotent request without a body is sent on it without
// a probe and replayed on a new connection when it fails; any other request
// is sent only on a connection probed alive, so it is never lost or sent
// twice.
func TestKeptUpstreamClosedByUpstream(t *testing.T) {
	up, got, closed := oneShotUpstream(t)
	_, addr, _ := startProxy(t, Config{App: up})
	c := dialRaw(t, addr)
	br := bufio.NewReader(c)
	methods := []string{"GET", "GET", "POST", "GET", "POST", "POST", "GET"}
	for i, m := range methods {
		req := m + " / HTTP/1.1\r\nHost: x\r\n\r\n"
		if m == "POST" {
			req = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
		}
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d (%s): %v", i, m, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("request %d (%s): %d %q", i, m, resp.StatusCode, b)
		}
		// The upstream has closed its side (and the FIN is in the proxy's
		// socket) before the next request.
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("upstream did not close")
		}
	}
	if g, p := got["GET"].Load(), got["POST"].Load(); g != 4 || p != 3 {
		t.Fatalf("upstream saw %d GET and %d POST, want 4 and 3", g, p)
	}
}

// usable probes a connection idle for longer than probeAfter even before a
// request that could be replayed, and never trusts one past IdleTimeout.
func TestUsable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := New(Config{App: ln.Addr().String(), IdleTimeout: time.Minute})
	defer p.Close()
	uc, err := p.dial(t.Context(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		idle  time.Duration
		retry bool
		want  bool
	}{
		{0, true, true}, {0, false, true}, {2 * probeAfter, true, true}, {2 * probeAfter, false, true},
		{time.Minute, true, false},
	} {
		uc.idleAt = now.Add(-tc.idle)
		if got := uc.usable(now, tc.retry); got != tc.want {
			t.Errorf("open, idle %v, retry %v: usable %v, want %v", tc.idle, tc.retry, got, tc.want)
		}
	}
	srv.Close()
	// Once the FIN has reached the proxy's side, a probe sees it.
	testutil.Eventually(t, 5*time.Second, func() error {
		uc.idleAt = now.Add(-2 * probeAfter)
		if uc.usable(now, false) {
			return fmt.Errorf("closed connection still looks alive")
		}
		return nil
	})
	for _, tc := range []struct {
		idle  time.Duration
		retry bool
		want  bool
	}{
		// Recently used and replayable: not probed, so trusted; the
		// replay in exchange covers it.
		{0, true, true},
		{0, false, false}, {2 * probeAfter, true, false}, {2 * probeAfter, false, false},
	} {
		uc.idleAt = now.Add(-tc.idle)
		if got := uc.usable(now, tc.retry); got != tc.want {
			t.Errorf("closed, idle %v, retry %v: usable %v, want %v", tc.idle, tc.retry, got, tc.want)
		}
	}
}

// The developer's pod dies while a client keeps a connection to it: the next
// request (sent without a probe, then replayed) falls back to the app instead
// of failing, as the lab test of a killed developer pod needs.
func TestKeptUpstreamToDeadDestinationFallsBack(t *testing.T) {
	app := newBackend(t, "app")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "dev") })}
	go srv.Serve(l)
	rec := &recorder{}
	p, addr, _ := startProxy(t, Config{App: app.addr, Observer: rec})
	p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", l.Addr().String())})
	c := oneConnClient(t)
	if b, _ := get(t, c, "http://"+addr+"/", "alice"); b != "dev" {
		t.Fatalf("before: answered by %q", b)
	}
	srv.Close() // closes the listener and the kept connection: the pod is gone
	if b, _ := get(t, c, "http://"+addr+"/", "alice"); b != "app" {
		t.Fatalf("after the destination died: answered by %q, want the app", b)
	}
	rec.waitCount(t, event{"alice", OutcomeFallback}, 1)
}
