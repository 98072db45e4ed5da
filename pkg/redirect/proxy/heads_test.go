package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
)

// slowWrite writes the parts of a request with a pause between them: a
// client on a slow link, or one that sends a head line by line.
func slowWrite(t *testing.T, c net.Conn, pause time.Duration, parts ...string) {
	t.Helper()
	for i, p := range parts {
		if i > 0 {
			time.Sleep(pause)
		}
		if _, err := io.WriteString(c, p); err != nil {
			t.Fatal(err)
		}
	}
}

// answers reads n responses and returns "STATUS BODY" for each; after the
// last it notes whether the connection ended.
func answers(t *testing.T, c net.Conn, n int) []string {
	t.Helper()
	br := bufio.NewReader(c)
	var out []string
	for i := range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v (so far %q)", i, err, out)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, fmt.Sprintf("%d %s", resp.StatusCode, b))
	}
	return out
}

// TestSlowHeadKeepsItsSession: a head that takes longer than
// FirstByteTimeout, in the first position on its connection or a later
// one, is still routed by its complete head.
func TestSlowHeadKeepsItsSession(t *testing.T) {
	h := &harness{rec: &recorder{}, app: newBackend(t, "app"), dev: newBackend(t, "dev")}
	h.p, h.addr, h.ln = startProxy(t, Config{App: h.app.addr, Observer: h.rec, FirstByteTimeout: 100 * time.Millisecond})
	h.p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", h.dev.addr)})
	const pause = 300 * time.Millisecond // three first-byte timeouts
	t.Run("first", func(t *testing.T) {
		c := dialRaw(t, h.addr)
		slowWrite(t, c, pause, "GET / HTTP/1.1\r\nHost: x\r\n", "X-Detour-Session: alice\r\n\r\n")
		if got := answers(t, c, 1); got[0] != "200 dev" {
			t.Fatalf("slow first head answered %q, want dev's", got)
		}
	})
	t.Run("later", func(t *testing.T) {
		c := dialRaw(t, h.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		slowWrite(t, c, pause, "GET / HTTP/1.1\r\nHost: x\r\n", "X-Detour-Session: alice\r\n\r\n")
		if got := answers(t, c, 2); !slices.Equal(got, []string{"200 app", "200 dev"}) {
			t.Fatalf("answers %q, want the app's, then dev's for the slow head", got)
		}
	})
}

// TestUnroutableHeadsAreTheApps: a head the proxy cannot route (over
// MaxHeadBytes, malformed) gets, in any position on a keep-alive
// connection, what the app answers it, as straight to the app: the rest of
// the connection is the app's.
func TestUnroutableHeadsAreTheApps(t *testing.T) {
	h := newHarness(t)
	ok := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	big := "GET / HTTP/1.1\r\nHost: x\r\nX-Detour-Session: alice\r\nX-Big: " + strings.Repeat("b", 100<<10) + "\r\n\r\n"
	bad := "GET / HTTP/1.1\r\nHost: x\r\nX-Detour-Session: alice\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
	for _, tc := range []struct {
		name string
		reqs []string
		n    int // responses before the connection ends, or the last read
	}{
		{"oversized first", []string{big, ok}, 2},
		{"oversized second", []string{ok, big, ok}, 3},
		{"oversized pipelined third", []string{ok + ok + big + ok}, 4},
		{"malformed second", []string{ok, bad}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []string
			for _, addr := range []string{h.app.addr, h.addr} {
				c := dialRaw(t, addr)
				go func() {
					for _, r := range tc.reqs {
						if _, err := io.WriteString(c, r); err != nil {
							return
						}
					}
				}()
				got := answers(t, c, tc.n)
				if addr == h.app.addr {
					want = got
					continue
				}
				if !slices.Equal(got, want) {
					t.Fatalf("through the proxy %q,\nstraight to the app %q", clipAll(got), clipAll(want))
				}
			}
		})
	}
}

func clipAll(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = x[:min(len(x), 60)]
	}
	return out
}

// TestUnroutableHeadsCountedByReason: each head the proxy cannot route
// passes through with its reason, whatever its position.
func TestUnroutableHeadsCountedByReason(t *testing.T) {
	rec := &recorder{}
	app := echoServer(t, "")
	_, addr, _ := startProxy(t, Config{App: app, Observer: rec, FirstByteTimeout: 100 * time.Millisecond, HeadTimeout: 300 * time.Millisecond})
	big := "GET / HTTP/1.1\r\nX-Big: " + strings.Repeat("b", 70<<10) + "\r\n\r\n"
	for _, tc := range []struct {
		name string
		data string
		want Reason
	}{
		{"tls", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ReasonNotHTTP},
		{"oversized", big, ReasonHeadTooLarge},
		{"malformed", "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", ReasonMalformed},
		{"cut short", "GET / HT", ReasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(rec.passthroughs())
			c := dialRaw(t, addr)
			io.WriteString(c, tc.data)
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != tc.data {
				t.Fatalf("the app got %d bytes back (%v), want the %d sent", len(got), err, len(tc.data))
			}
			testutil.Eventually(t, 5*time.Second, func() error {
				if r := rec.passthroughs(); len(r) != before+1 || r[before] != tc.want {
					return fmt.Errorf("passthroughs %v, want one more: %s", r, tc.want)
				}
				return nil
			})
		})
	}
	t.Run("server speaks first", func(t *testing.T) {
		before := len(rec.passthroughs())
		c := dialRaw(t, addr)
		testutil.Eventually(t, 5*time.Second, func() error {
			if r := rec.passthroughs(); len(r) != before+1 || r[before] != ReasonNoRequest {
				return fmt.Errorf("passthroughs %v, want one more: %s", r, ReasonNoRequest)
			}
			return nil
		})
		c.Close()
	})
}

// TestSlowHeadTimesOut: a head not complete HeadTimeout after its first
// byte is not waited for: the rest of the connection is the app's, in the
// first position or a later one.
func TestSlowHeadTimesOut(t *testing.T) {
	h := &harness{rec: &recorder{}, app: newBackend(t, "app"), dev: newBackend(t, "dev")}
	h.p, h.addr, h.ln = startProxy(t, Config{App: h.app.addr, Observer: h.rec,
		FirstByteTimeout: 50 * time.Millisecond, HeadTimeout: 200 * time.Millisecond})
	h.p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", h.dev.addr)})
	for _, tc := range []struct {
		name   string
		before string
		want   []string
	}{
		{"first", "", []string{"200 app"}},
		{"later", "GET / HTTP/1.1\r\nHost: x\r\nX-Detour-Session: alice\r\n\r\n", []string{"200 dev", "200 app"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(h.rec.passthroughs())
			c := dialRaw(t, h.addr)
			io.WriteString(c, tc.before+"GET / HTTP/1.1\r\nHost: x\r\n")
			testutil.Eventually(t, 5*time.Second, func() error {
				if r := h.rec.passthroughs(); len(r) != n+1 || r[n] != ReasonHeadTimeout {
					return fmt.Errorf("passthroughs %v, want one more: %s", r, ReasonHeadTimeout)
				}
				return nil
			})
			io.WriteString(c, "X-Detour-Session: alice\r\n\r\n")
			if got := answers(t, c, len(tc.want)); !slices.Equal(got, tc.want) {
				t.Fatalf("answers %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSlowHeadsAreCapped: beyond FirstByteTimeout only SlowHeads.Max()
// connections wait for their head; another passes through at once, and the
// places free up as heads complete.
func TestSlowHeadsAreCapped(t *testing.T) {
	slow := NewSlowHeads(2)
	h := &harness{rec: &recorder{}, app: newBackend(t, "app"), dev: newBackend(t, "dev")}
	h.p, h.addr, h.ln = startProxy(t, Config{App: h.app.addr, Observer: h.rec,
		FirstByteTimeout: 50 * time.Millisecond, HeadTimeout: 10 * time.Second, SlowHeads: slow})
	h.p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", h.dev.addr)})
	var cs []net.Conn
	for range 2 {
		c := dialRaw(t, h.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n")
		cs = append(cs, c)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := slow.Waiting(); n != 2 {
			return fmt.Errorf("%d slow heads waiting, want 2", n)
		}
		return nil
	})
	third := dialRaw(t, h.addr)
	io.WriteString(third, "GET / HTTP/1.1\r\nHost: x\r\n")
	testutil.Eventually(t, 5*time.Second, func() error {
		if r := h.rec.passthroughs(); !slices.Equal(r, []Reason{ReasonSlowHeadsFull}) {
			return fmt.Errorf("passthroughs %v, want %s", r, ReasonSlowHeadsFull)
		}
		return nil
	})
	for _, c := range append(cs, third) {
		io.WriteString(c, "X-Detour-Session: alice\r\n\r\n")
	}
	for i, c := range cs {
		if got := answers(t, c, 1); got[0] != "200 dev" {
			t.Errorf("slow head %d answered %q, want dev's", i, got)
		}
	}
	if got := answers(t, third, 1); got[0] != "200 app" {
		t.Errorf("the head with no place left answered %q, want the app's", got)
	}
	if n := slow.Waiting(); n != 0 {
		t.Errorf("%d slow heads waiting once all are in, want 0", n)
	}
}

// dribbleConn writes everything in pieces of 1 to 3 bytes with a pause
// between: heads, bodies and HTTP/2 frames split across many small writes
// (and TCP segments: Go sets TCP_NODELAY).
type dribbleConn struct {
	net.Conn
	pause time.Duration
	n     int
}

func (d *dribbleConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		d.n++
		k := min(len(p), d.n%3+1)
		n, err := d.Conn.Write(p[:k])
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
		time.Sleep(d.pause)
	}
	return written, nil
}

// TestSplitWritesRouteByTheWholeHead: requests whose heads and bodies
// arrive in many small writes, taking longer than FirstByteTimeout, are
// routed by their complete heads in every position: the first request,
// later ones on a keep-alive connection, pipelined ones; over HTTP/1.1, an
// h2c Upgrade request, and HTTP/2 with prior knowledge.
func TestSplitWritesRouteByTheWholeHead(t *testing.T) {
	const pause = time.Millisecond
	fbt := 30 * time.Millisecond // shorter than a dribbled head takes
	t.Run("http1", func(t *testing.T) {
		h := &harness{rec: &recorder{}, app: newBackend(t, "app"), dev: newBackend(t, "dev")}
		h.p, h.addr, h.ln = startProxy(t, Config{App: h.app.addr, Observer: h.rec, FirstByteTimeout: fbt})
		h.p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", h.dev.addr)})
		get := func(session string) string {
			s := "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("p", 40) + "\r\n"
			if session != "" {
				s += "X-Detour-Session: " + session + "\r\n"
			}
			return s + "\r\n"
		}
		body := string(payload(700))
		post := func(session string) string {
			return "POST /upload HTTP/1.1\r\nHost: x\r\nX-Detour-Session: " + session + "\r\nContent-Length: 700\r\n\r\n" + body
		}
		up := func(who string) string { return fmt.Sprintf("200 %s 700 %s", who, sum([]byte(body))) }
		type step struct {
			write string // dribbled in once the answers to the step before are in
			want  []string
		}
		for _, tc := range []struct {
			name  string
			steps []step
		}{
			{"first", []step{{get("alice"), []string{"200 dev"}}}},
			{"first with body", []step{{post("alice"), []string{up("dev")}}}},
			{"later", []step{{get(""), []string{"200 app"}}, {get("alice"), []string{"200 dev"}},
				{post("alice"), []string{up("dev")}}, {get(""), []string{"200 app"}}}},
			{"pipelined", []step{{get("alice") + get("") + post("alice") + get("alice") + post("nobody"),
				[]string{"200 dev", "200 app", up("dev"), "200 dev", up("app")}}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := &dribbleConn{Conn: dialRaw(t, h.addr), pause: pause}
				br := bufio.NewReader(c)
				for i, st := range tc.steps {
					if _, err := io.WriteString(c, st.write); err != nil {
						t.Fatal(err)
					}
					var got []string
					for range st.want {
						resp, err := http.ReadResponse(br, nil)
						if err != nil {
							t.Fatalf("step %d, after %q: %v", i, got, err)
						}
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						got = append(got, fmt.Sprintf("%d %s", resp.StatusCode, b))
					}
					if !slices.Equal(got, st.want) {
						t.Fatalf("step %d: answers %q, want %q", i, got, st.want)
					}
				}
			})
		}
		if r := h.rec.passthroughs(); len(r) != 0 {
			t.Fatalf("passthroughs %v, want none", r)
		}
	})
	t.Run("h2c", func(t *testing.T) {
		h := &h2Harness{rec: &recorder{}, app: newH2Backend(t, "app"), alice: newH2Backend(t, "alice"), bob: newH2Backend(t, "bob")}
		h.p, h.addr, h.ln = startProxy(t, Config{App: h.app.addr, Observer: h.rec, FirstByteTimeout: fbt})
		h.p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", h.alice.addr), sessionRoute(t, "bob", "bob", h.bob.addr)})

		// An h2c Upgrade request dribbled in: routed by its head, and
		// answered in HTTP/1.1 by a backend that does not take it.
		c := &dribbleConn{Conn: dialRaw(t, h.addr), pause: pause}
		io.WriteString(c, upgradeRequest("POST", "/upload", "bob", "hello"))
		if got := answers(t, c, 1); got[0] != "200 bob 5 "+sum([]byte("hello")) {
			t.Fatalf("dribbled h2c Upgrade answered %q, want bob's", got)
		}

		// Prior knowledge: the preface and every frame dribbled in.
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr := &http.Transport{
			Protocols: &protos,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &dribbleConn{Conn: c, pause: pause}, nil
			},
		}
		t.Cleanup(tr.CloseIdleConnections)
		client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
		for _, s := range []string{"alice", "", "bob", "alice"} {
			body := bytes.Repeat([]byte(s+"."), 100)
			req, _ := http.NewRequest("POST", "http://"+h.addr+"/upload", bytes.NewReader(body))
			req.Header.Set("X-Detour-Session", s)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("%s %d %s", wantBackend(s), len(body), sum(body)); resp.ProtoMajor != 2 || string(b) != want {
				t.Fatalf("session %q: %s %q, want %q over HTTP/2", s, resp.Proto, b, want)
			}
		}
		if got := h.ln.n.Load(); got != 2 {
			t.Fatalf("%d client connections, want 2 (the upgrade's, then one HTTP/2)", got)
		}
		if r := h.rec.passthroughs(); len(r) != 0 {
			t.Fatalf("passthroughs %v, want none", r)
		}
	})
}

// TestTextProtocolPassesAtItsFirstLine: a protocol whose client speaks
// first in lines of text (memcached's "get k") is no HTTP/1 request once
// its first line has ended: it reaches the app at once, not after the
// first-byte or the head timeout, so its client's wait for an answer costs
// nothing.
func TestTextProtocolPassesAtItsFirstLine(t *testing.T) {
	rec := &recorder{}
	app := echoServer(t, "")
	_, addr, _ := startProxy(t, Config{App: app, Observer: rec, FirstByteTimeout: 5 * time.Second, HeadTimeout: 20 * time.Second})
	for _, line := range []string{"get some-key\r\n", "SET k v\r\n", "QUIT\r\n"} {
		c := dialRaw(t, addr)
		start := time.Now()
		io.WriteString(c, line)
		got := make([]byte, len(line))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != line {
			t.Fatalf("%q: echo %q, %v", line, got, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("%q reached the app after %v, want at once", line, d)
		}
	}
}
