package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// backend is an HTTP server that names itself in every answer.
type backend struct {
	name string
	addr string
	srv  *http.Server
}

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveBackend(t, name, ln)
}

func serveBackend(t *testing.T, name string, ln net.Listener) *backend {
	b := &backend{name: name, addr: ln.Addr().String()}
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		io.WriteString(w, name)
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		w.Header().Set("X-Backend", name)
		fmt.Fprintf(w, "%s %d %x", name, n, h.Sum(nil))
	})
	mux.HandleFunc("/reject", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		http.Error(w, "no", http.StatusExpectationFailed)
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		data := payload(n)
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Sum", sum(data))
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(n))
		}
		for len(data) > 0 {
			k := min(len(data), 100_000)
			w.Write(data[:k])
			data = data[k:]
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.PathValue("code"))
		w.Header().Set("X-Backend", name)
		w.WriteHeader(code)
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, append([]byte(name+":"), msg...)); err != nil {
				return
			}
		}
	})
	b.srv = &http.Server{Handler: mux}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func payload(n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(n)})
	b := make([]byte, n)
	r.Read(b)
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

type event struct {
	intercept string
	outcome   Outcome
}

type recorder struct {
	mu      sync.Mutex
	events  []event
	reasons []Reason
}

func (r *recorder) Request(intercept string, o Outcome, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{intercept, o})
}

func (r *recorder) Passthrough(why Reason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reasons = append(r.reasons, why)
}

// passthroughs are the reasons of the passthroughs so far, in order.
func (r *recorder) passthroughs() []Reason {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Reason(nil), r.reasons...)
}

// waitCount waits until e was observed exactly want times: the observer runs
// just after the client has its response, so it may lag a moment.
func (r *recorder) waitCount(t *testing.T, e event, want int) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		if got := r.count(e); got != want {
			return fmt.Errorf("%v observed %d times, want %d", e, got, want)
		}
		return nil
	})
}

func (r *recorder) count(e event) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, x := range r.events {
		if x == e {
			n++
		}
	}
	return n
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

type harness struct {
	p    *Proxy
	addr string
	ln   *countingListener
	rec  *recorder
	app  *backend
	dev  *backend
}

func sessionRoute(t *testing.T, name, key, dest string) Route {
	t.Helper()
	m, err := match.Compile([]match.Condition{{Kind: match.Session, Value: key}})
	if err != nil {
		t.Fatal(err)
	}
	return Route{Intercept: name, Matcher: m, Destination: dest}
}

func startProxy(t *testing.T, cfg Config) (*Proxy, string, *countingListener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: l}
	p := New(cfg)
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		p.Close()
	})
	return p, ln.Addr().String(), ln
}

// newHarness starts an app, a dev backend, and a proxy that sends session
// alice to dev.
func newHarness(t *testing.T) *harness {
	h := &harness{rec: &recorder{}, app: newBackend(t, "app"), dev: newBackend(t, "dev")}
	h.p, h.addr, h.ln = startProxy(t, Config{App: h.app.addr, Observer: h.rec, FirstByteTimeout: 200 * time.Millisecond})
	h.p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", h.dev.addr)})
	return h
}

func oneConnClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, ExpectContinueTimeout: 5 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func get(t *testing.T, c *http.Client, url, session string) (string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if session != "" {
		req.Header.Set("X-Detour-Session", session)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp
}

func TestKeepAliveRoutesEachRequest(t *testing.T) {
	h := newHarness(t)
	c := oneConnClient(t)
	reused := 0
	for i := range 10 {
		session, want := "", "app"
		if i%2 == 0 {
			session, want = "alice", "dev"
		}
		req, _ := http.NewRequest("GET", "http://"+h.addr+"/", nil)
		if session != "" {
			req.Header.Set("X-Detour-Session", session)
		}
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) {
				if i.Reused {
					reused++
				}
			},
		}))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Fatalf("request %d (session %q): answered by %q, want %q", i, session, b, want)
		}
	}
	if got := h.ln.n.Load(); got != 1 || reused != 9 {
		t.Fatalf("client connections: %d accepted, %d reuses; want 1 and 9", got, reused)
	}
	h.rec.waitCount(t, event{"alice", OutcomeMatched}, 5)
	h.rec.waitCount(t, event{"", OutcomeUnmatched}, 5)
}

func TestBaggageSession(t *testing.T) {
	h := newHarness(t)
	c := oneConnClient(t)
	req, _ := http.NewRequest("GET", "http://"+h.addr+"/", nil)
	req.Header.Set("Baggage", "a=b, detour-session = alice;p=1")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "dev" {
		t.Fatalf("answered by %q, want dev", b)
	}
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

func TestPipelined(t *testing.T) {
	h := newHarness(t)
	c := dialRaw(t, h.addr)
	var reqs bytes.Buffer
	want := []string{"dev", "app", "dev", "app", "app"}
	for i, w := range want {
		switch {
		case i == 3:
			// A body in the middle must not confuse the framing.
			reqs.WriteString("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
		case w == "dev":
			reqs.WriteString("GET / HTTP/1.1\r\nHost: x\r\nX-Detour-Session: alice\r\n\r\n")
		default:
			reqs.WriteString("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		}
	}
	if _, err := c.Write(reqs.Bytes()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i, w := range want {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(b), w) {
			t.Fatalf("response %d: %q, want from %s", i, b, w)
		}
	}
}

func TestLargeBodies(t *testing.T) {
	h := newHarness(t)
	c := oneConnClient(t)
	const size = 6<<20 + 12345
	data := payload(size)
	for _, session := range []string{"alice", ""} {
		want := map[string]string{"alice": "dev", "": "app"}[session]
		for _, chunked := range []bool{false, true} {
			t.Run(fmt.Sprintf("upload/%s/chunked=%v", want, chunked), func(t *testing.T) {
				var body io.Reader = bytes.NewReader(data)
				if chunked {
					body = io.MultiReader(body) // unknown length: net/http sends it chunked
				}
				req, _ := http.NewRequest("POST", "http://"+h.addr+"/upload", body)
				req.Header.Set("X-Detour-Session", session)
				if !chunked {
					req.ContentLength = size
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if exp := fmt.Sprintf("%s %d %s", want, size, sum(data)); string(b) != exp {
					t.Fatalf("got %q, want %q", b, exp)
				}
			})
			t.Run(fmt.Sprintf("download/%s/chunked=%v", want, chunked), func(t *testing.T) {
				q := ""
				if chunked {
					q = "&chunked=1"
				}
				b, resp := get(t, c, fmt.Sprintf("http://%s/download?n=%d%s", h.addr, size, q), session)
				if len(b) != size || sum([]byte(b)) != resp.Header.Get("X-Sum") || resp.Header.Get("X-Backend") != want {
					t.Fatalf("download: %d bytes from %s, integrity %v", len(b), resp.Header.Get("X-Backend"), sum([]byte(b)) == resp.Header.Get("X-Sum"))
				}
				if chunked != (len(resp.TransferEncoding) > 0) {
					t.Fatalf("transfer encoding %v, want chunked=%v", resp.TransferEncoding, chunked)
				}
			})
		}
	}
	if got := h.ln.n.Load(); got != 1 {
		t.Errorf("%d client connections, want 1", got)
	}
}

func TestExpectContinue(t *testing.T) {
	h := newHarness(t)
	c := oneConnClient(t) // ExpectContinueTimeout 5s: passing fast proves the 100 came through
	data := payload(1 << 20)
	start := time.Now()
	req, _ := http.NewRequest("POST", "http://"+h.addr+"/upload", bytes.NewReader(data))
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("X-Detour-Session", "alice")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if exp := fmt.Sprintf("dev %d %s", len(data), sum(data)); string(b) != exp {
		t.Fatalf("got %q, want %q", b, exp)
	}
	if el := time.Since(start); el > 4*time.Second {
		t.Fatalf("took %v: the client waited out ExpectContinueTimeout", el)
	}

	// A final answer instead of 100: the client never sends the body, and
	// the proxy must still answer and then close.
	req, _ = http.NewRequest("POST", "http://"+h.addr+"/reject", bytes.NewReader(data))
	req.Header.Set("Expect", "100-continue")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusExpectationFailed || resp.Header.Get("X-Backend") != "app" {
		t.Fatalf("got %d from %q", resp.StatusCode, resp.Header.Get("X-Backend"))
	}
	// And the next request still works (on a new connection if need be).
	if b, _ := get(t, c, "http://"+h.addr+"/", "alice"); b != "dev" {
		t.Fatalf("after reject: %q", b)
	}
}

func TestExpectContinueRaw(t *testing.T) {
	h := newHarness(t)
	c := dialRaw(t, h.addr)
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("first line %q, %v; want 100 Continue", line, err)
	}
	if l, _ := br.ReadString('\n'); l != "\r\n" {
		t.Fatalf("100 response not followed by empty line: %q", l)
	}
	io.WriteString(c, "hello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if !strings.HasPrefix(string(b), "app 5 ") {
		t.Fatalf("got %q", b)
	}
}

func expectEOF(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("connection still open, want it closed")
	} else if !errors.Is(err, io.EOF) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection not closed: %v", err)
		}
	}
}

func TestConnectionClose(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct{ name, req, want string }{
		{"client close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Detour-Session: alice\r\n\r\n", "dev"},
		{"http/1.0", "GET / HTTP/1.0\r\n\r\n", "app"},
		{"http/1.0 session", "GET / HTTP/1.0\r\nx-detour-session: alice\r\n\r\n", "dev"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, h.addr)
			io.WriteString(c, tc.req)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if string(b) != tc.want {
				t.Fatalf("got %q, want %q", b, tc.want)
			}
			expectEOF(t, br)
		})
	}
}

func TestHTTP10KeepAlive(t *testing.T) {
	h := newHarness(t)
	c := dialRaw(t, h.addr)
	br := bufio.NewReader(c)
	for _, s := range []string{"alice", "", "alice"} {
		fmt.Fprintf(c, "GET / HTTP/1.0\r\nConnection: keep-alive\r\nX-Detour-Session: %s\r\n\r\n", s)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if want := map[string]string{"alice": "dev", "": "app"}[s]; string(b) != want {
			t.Fatalf("got %q, want %q", b, want)
		}
	}
}

func TestNoBodyResponses(t *testing.T) {
	h := newHarness(t)
	c := oneConnClient(t)
	req, _ := http.NewRequest("HEAD", "http://"+h.addr+"/download?n=1000", nil)
	req.Header.Set("X-Detour-Session", "alice")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ContentLength != 1000 || resp.Header.Get("X-Backend") != "dev" {
		t.Fatalf("HEAD: length %d from %q", resp.ContentLength, resp.Header.Get("X-Backend"))
	}
	for _, code := range []int{204, 304} {
		for _, s := range []string{"alice", ""} {
			_, resp := get(t, c, fmt.Sprintf("http://%s/status/%d", h.addr, code), s)
			if resp.StatusCode != code {
				t.Fatalf("status %d, want %d", resp.StatusCode, code)
			}
		}
	}
	if b, _ := get(t, c, "http://"+h.addr+"/", "alice"); b != "dev" {
		t.Fatalf("after no-body responses: %q", b)
	}
	if got := h.ln.n.Load(); got != 1 {
		t.Errorf("%d client connections, want 1", got)
	}
}

func TestWebSocket(t *testing.T) {
	h := newHarness(t)
	for _, s := range []string{"alice", ""} {
		want := map[string]string{"alice": "dev", "": "app"}[s]
		hdr := http.Header{}
		if s != "" {
			hdr.Set("X-Detour-Session", s)
		}
		ws, _, err := websocket.DefaultDialer.Dial("ws://"+h.addr+"/ws", hdr)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			msg := fmt.Sprintf("m%d", i)
			if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, got, err := ws.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want+":"+msg {
				t.Fatalf("echo %q, want %q", got, want+":"+msg)
			}
		}
		ws.Close()
	}
}

// echoServer is a raw TCP echo server, to show non-HTTP bytes reach the
// app untouched.
func echoServer(t *testing.T, banner string) string {
	return serveTCP(t, func(c net.Conn) {
		io.WriteString(c, banner)
		io.Copy(c, c)
	})
}

// serveTCP accepts connections on a loopback port until the test ends and
// serves each on a goroutine of its own, closing it after; it returns the
// address.
func serveTCP(tb testing.TB, serve func(c net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestPassthrough(t *testing.T) {
	rec := &recorder{}
	app := echoServer(t, "")
	_, addr, _ := startProxy(t, Config{App: app, Observer: rec, FirstByteTimeout: 5 * time.Second})
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"tls", []byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 random bytes")},
		// The real preface is served as HTTP/2 (h2_test.go); one that
		// breaks off after its first line is something else.
		{"almost h2 preface", []byte("PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n\x00\x00\x12\x04")},
		{"text", []byte("hello world\n")},
		{"malformed first head", []byte("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")},
		{"oversized head", append(append([]byte("GET / HTTP/1.1\r\nX-Big: "), bytes.Repeat([]byte("a"), 70<<10)...), "\r\n\r\n"...)},
		{"half-closed partial", []byte("GET")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			if _, err := c.Write(tc.data); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.data) {
				t.Fatalf("echo of %d bytes came back as %d bytes: %.40q", len(tc.data), len(got), got)
			}
		})
	}
	rec.waitCount(t, event{"", OutcomePassthrough}, 6)
}

func TestOversizedHeadReachesApp(t *testing.T) {
	h := newHarness(t)
	req, _ := http.NewRequest("GET", "http://"+h.addr+"/", nil)
	req.Header.Set("X-Detour-Session", "alice")
	req.Header.Set("X-Big", strings.Repeat("b", 70<<10))
	resp, err := oneConnClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "app" {
		t.Fatalf("oversized head answered by %q, want the app untouched", b)
	}
}

func TestServerSpeaksFirst(t *testing.T) {
	app := echoServer(t, "220 banner\r\n")
	rec := &recorder{}
	_, addr, _ := startProxy(t, Config{App: app, Observer: rec, FirstByteTimeout: 50 * time.Millisecond})
	c := dialRaw(t, addr)
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "220 banner\r\n" {
		t.Fatalf("banner %q, %v", line, err)
	}
	io.WriteString(c, "QUIT\r\n")
	if line, _ := br.ReadString('\n'); line != "QUIT\r\n" {
		t.Fatalf("echo %q", line)
	}
}

func TestMalformedLaterRequest(t *testing.T) {
	h := newHarness(t)
	c := dialRaw(t, h.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
	br := bufio.NewReader(c)
	for i, want := range []int{200, 400} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("response %d: status %d, want %d", i, resp.StatusCode, want)
		}
	}
	expectEOF(t, br)
}

func TestFallback(t *testing.T) {
	h := newHarness(t)
	// A destination nobody listens on yet.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()
	h.p.SetRoutes([]Route{sessionRoute(t, "bob", "bob", down)})
	c := oneConnClient(t)
	for range 3 {
		if b, _ := get(t, c, "http://"+h.addr+"/", "bob"); b != "app" {
			t.Fatalf("with the destination down: answered by %q, want app", b)
		}
	}
	h.rec.waitCount(t, event{"bob", OutcomeFallback}, 3)
	// The destination comes back on the same address.
	l, err = net.Listen("tcp", down)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", down, err)
	}
	serveBackend(t, "bob", l)
	testutil.Eventually(t, 10*time.Second, func() error {
		if b, _ := get(t, c, "http://"+h.addr+"/", "bob"); b != "bob" {
			return fmt.Errorf("answered by %q", b)
		}
		return nil
	})
	testutil.Eventually(t, 5*time.Second, func() error {
		if h.rec.count(event{"bob", OutcomeMatched}) < 1 {
			return errors.New("matched not observed after the destination came back")
		}
		return nil
	})
}

func TestDialTimeoutFallsBack(t *testing.T) {
	h := newHarness(t)
	blocked := make(chan struct{})
	t.Cleanup(func() { close(blocked) })
	rec := &recorder{}
	p, addr, _ := startProxy(t, Config{
		App:         h.app.addr,
		Observer:    rec,
		DialTimeout: 100 * time.Millisecond,
		Dial: func(ctx context.Context, network, a string) (net.Conn, error) {
			if a == "10.255.255.1:80" { // a destination that never answers
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-blocked:
				}
			}
			var d net.Dialer
			return d.DialContext(ctx, network, a)
		},
	})
	p.SetRoutes([]Route{sessionRoute(t, "slow", "slow", "10.255.255.1:80")})
	c := oneConnClient(t)
	start := time.Now()
	for range 5 {
		if b, _ := get(t, c, "http://"+addr+"/", "slow"); b != "app" {
			t.Fatalf("answered by %q, want app", b)
		}
	}
	// Only the first request waits for the dial timeout; the rest fall back
	// at once while the destination is marked down.
	if el := time.Since(start); el > 900*time.Millisecond {
		t.Fatalf("5 fallbacks took %v", el)
	}
	rec.waitCount(t, event{"slow", OutcomeFallback}, 5)
}

func TestSetRoutesWhileServing(t *testing.T) {
	h := newHarness(t)
	other := newBackend(t, "other")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{}}
			defer c.Transport.(*http.Transport).CloseIdleConnections()
			for ctx.Err() == nil {
				req, _ := http.NewRequest("GET", "http://"+h.addr+"/", nil)
				req.Header.Set("X-Detour-Session", "alice")
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if s := string(b); s != "dev" && s != "other" && s != "app" {
					t.Errorf("unexpected answer %q", s)
					return
				}
			}
		}()
	}
	routes := [][]Route{
		{sessionRoute(t, "alice", "alice", h.dev.addr)},
		{sessionRoute(t, "alice2", "alice", other.addr), sessionRoute(t, "alice", "alice", h.dev.addr)},
		nil,
	}
	for i := range 200 {
		h.p.SetRoutes(routes[i%len(routes)])
	}
	h.p.SetRoutes(routes[1])
	cancel()
	wg.Wait()
	if b, _ := get(t, oneConnClient(t), "http://"+h.addr+"/", "alice"); b != "other" {
		t.Fatalf("first matching route should win: got %q", b)
	}
}

func TestCloseClosesEverything(t *testing.T) {
	app := newBackend(t, "app")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{App: app.addr})
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	addr := l.Addr().String()

	// An idle keep-alive connection, and a WebSocket in the middle of use.
	idle := dialRaw(t, addr)
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	ibr := bufio.NewReader(idle)
	resp, err := http.ReadResponse(ibr, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.WriteMessage(websocket.TextMessage, []byte("x"))
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatal(err)
	}

	l.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	expectEOF(t, ibr)
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := ws.ReadMessage(); err == nil {
		t.Fatal("websocket still open after Close")
	} else {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("websocket not closed by Close")
		}
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// A connection handed over after Close is refused at once.
	a, b := net.Pipe()
	defer a.Close()
	p.ServeConn(context.Background(), b)
	if _, err := a.Read(make([]byte, 1)); err == nil {
		t.Fatal("ServeConn after Close left the connection open")
	}
}

// TestSpreadOverDestinations: a route with several destinations (an
// environment's fork with more than one pod) takes them in turn, skips one
// that stopped answering, and falls back to the app only when none does.
func TestSpreadOverDestinations(t *testing.T) {
	h := newHarness(t)
	one, two := newBackend(t, "fork-1"), newBackend(t, "fork-2")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	rt := sessionRoute(t, "pr-7", "pr-7", "")
	rt.Destinations = []string{one.addr, two.addr}
	h.p.SetRoutes([]Route{rt})
	c := oneConnClient(t)
	seen := map[string]int{}
	for range 6 {
		b, _ := get(t, c, "http://"+h.addr+"/", "pr-7")
		seen[b]++
	}
	if seen["fork-1"] != 3 || seen["fork-2"] != 3 {
		t.Errorf("6 requests over two destinations: %v, want 3 each", seen)
	}
	if b, _ := get(t, c, "http://"+h.addr+"/", ""); b != "app" {
		t.Errorf("without the key: %q, want app", b)
	}
	// One destination gone: every request reaches the other.
	rt.Destinations = []string{dead, two.addr}
	h.p.SetRoutes([]Route{rt})
	for i := range 4 {
		if b, _ := get(t, c, "http://"+h.addr+"/", "pr-7"); b != "fork-2" {
			t.Errorf("request %d with one destination down: %q, want fork-2", i, b)
		}
	}
	// None left: the app, counted as a fallback.
	rt.Destinations = []string{dead, dead}
	h.p.SetRoutes([]Route{rt})
	if b, _ := get(t, c, "http://"+h.addr+"/", "pr-7"); b != "app" {
		t.Errorf("with every destination down: %q, want app", b)
	}
	h.rec.waitCount(t, event{"pr-7", OutcomeFallback}, 1)
}
