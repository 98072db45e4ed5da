package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// dialFrom connects from a chosen loopback source address, so source
// filters can be tested without namespaces.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// bannerOf reads the banner an echoServer sends first.
func bannerOf(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestL4RouteTakesWholeConnections(t *testing.T) {
	rec := &recorder{}
	app, dev := echoServer(t, "app\n"), echoServer(t, "dev\n")
	var relayed atomic.Int64
	p, addr, _ := startProxy(t, Config{App: app, Observer: rec,
		Relay: func(ctx context.Context, a, b *net.TCPConn) error {
			relayed.Add(1)
			return relayCopy(a, b)
		}})
	p.SetRoutes([]Route{{Intercept: "bulk", L4: true, Destination: dev}})

	// Any bytes, HTTP or not, go to dev untouched, and dev speaks first.
	for _, data := range [][]byte{[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), []byte("\x16\x03\x01 tls-ish"), bytes.Repeat([]byte("z"), 1<<20)} {
		c := dialFrom(t, "127.0.0.1", addr)
		if got := bannerOf(t, c, 4); got != "dev\n" {
			t.Fatalf("l4 connection answered by %q", got)
		}
		go func() { c.Write(data); c.(*net.TCPConn).CloseWrite() }()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("echo of %d bytes: got %d bytes, err %v", len(data), len(got), err)
		}
	}
	rec.waitCount(t, event{"bulk", OutcomeMatched}, 3)
	if relayed.Load() != 3 {
		t.Fatalf("Config.Relay used %d times, want 3", relayed.Load())
	}
}

// relayCopy is a plain two-way copy, standing in for the agent's relay.
func relayCopy(a, b *net.TCPConn) error {
	done := make(chan struct{})
	go func() { io.Copy(b, a); b.CloseWrite(); close(done) }()
	io.Copy(a, b)
	a.CloseWrite()
	<-done
	return nil
}

func TestL4FallsBackToApp(t *testing.T) {
	rec := &recorder{}
	app := echoServer(t, "app\n")
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close() // refused
	p, addr, _ := startProxy(t, Config{App: app, Observer: rec})
	p.SetRoutes([]Route{{Intercept: "bulk", L4: true, Destination: deadAddr}})
	c := dialFrom(t, "127.0.0.1", addr)
	if got := bannerOf(t, c, 4); got != "app\n" {
		t.Fatalf("fallback answered by %q", got)
	}
	rec.waitCount(t, event{"bulk", OutcomeFallback}, 1)
}

func TestSourceFilters(t *testing.T) {
	rec := &recorder{}
	app, dev := newBackend(t, "app"), newBackend(t, "dev")
	l4dev := echoServer(t, "l4dev\n")
	p, addr, _ := startProxy(t, Config{App: app.addr, Observer: rec})
	only := func(a string) map[netip.Addr]struct{} {
		return map[netip.Addr]struct{}{netip.MustParseAddr(a): {}}
	}
	alice := sessionRoute(t, "alice", "alice", dev.addr)
	alice.Sources = only("127.0.0.2")
	p.SetRoutes([]Route{alice, {Intercept: "bulk", L4: true, Destination: l4dev, Sources: only("127.0.0.3")}})

	// From 127.0.0.2 alice's requests are detoured; from 127.0.0.1 they are not.
	for src, want := range map[string]string{"127.0.0.2": "dev", "127.0.0.1": "app"} {
		c := dialFrom(t, src, addr)
		req, _ := http.NewRequest("GET", "http://x/", nil)
		req.Header.Set("X-Detour-Session", "alice")
		req.Write(c)
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != want {
			t.Fatalf("from %s answered by %q, want %q", src, body, want)
		}
	}
	// Only 127.0.0.3's connections take the L4 route.
	c := dialFrom(t, "127.0.0.3", addr)
	if got := bannerOf(t, c, 6); got != "l4dev\n" {
		t.Fatalf("l4 from 127.0.0.3 answered by %q", got)
	}
	// An empty, non-nil set admits nobody.
	none := sessionRoute(t, "alice", "alice", dev.addr)
	none.Sources = map[netip.Addr]struct{}{}
	p.SetRoutes([]Route{none})
	c = dialFrom(t, "127.0.0.2", addr)
	req, _ := http.NewRequest("GET", "http://x/", nil)
	req.Header.Set("X-Detour-Session", "alice")
	req.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != "app" {
		t.Fatalf("empty source set: answered by %q", body)
	}
}
