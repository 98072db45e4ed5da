package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/redirect/match"
)

//lint:file-ignore SA1019 x/net/http2 on purpose: the tests serve single accepted connections (ServeConn) and drive a client whose connections they control, which net/http cannot

// h2Backend is an HTTP server speaking HTTP/1.1 and prior-knowledge h2c,
// as the lab's echo server and gRPC servers do, that names itself in
// every answer.
type h2Backend struct {
	name      string
	addr      string
	ln        *countingListener
	cancelled atomic.Int64  // /wait requests that saw their request cancelled
	release   chan struct{} // closed to let /wait requests finish
}

func newH2Backend(t *testing.T, name string) *h2Backend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveH2Backend(t, name, l)
}

func serveH2Backend(t *testing.T, name string, l net.Listener) *h2Backend {
	b := &h2Backend{name: name, addr: l.Addr().String(), ln: &countingListener{Listener: l}, release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		fmt.Fprintf(w, "%s", name)
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s %s %s ua=%q", name, r.Proto, r.Method, r.RequestURI, r.Host, r.Header.Get("User-Agent"))
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		// Full duplex: every chunk comes back at once, before the
		// request body has ended.
		http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				fmt.Fprintf(w, "%s:%s", name, buf[:n])
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintf(w, "%s %d %s", name, len(data), sum(data))
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		data := payload(n)
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Sum", sum(data))
		w.Write(data)
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Declared")
		w.WriteHeader(200)
		io.WriteString(w, name)
		w.Header().Set("X-Declared", "d-"+name)
		w.Header().Set(http.TrailerPrefix+"X-Undeclared", "u-"+name)
	})
	mux.HandleFunc("/reset", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // RST_STREAM
	})
	mux.HandleFunc("/wait", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			b.cancelled.Add(1)
		case <-b.release:
			io.WriteString(w, " done")
		}
	})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protos}
	go srv.Serve(b.ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

// h2Client speaks prior-knowledge h2c; it multiplexes every request on one
// connection.
func h2Client(t *testing.T) *http.Client {
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

type h2Harness struct {
	p               *Proxy
	addr            string
	ln              *countingListener
	rec             *recorder
	app, alice, bob *h2Backend
	client          *http.Client
}

// newH2Harness starts app, alice and bob backends and a proxy that sends
// session alice to alice and bob to bob.
func newH2Harness(t *testing.T) *h2Harness {
	h := &h2Harness{
		rec: &recorder{}, app: newH2Backend(t, "app"), alice: newH2Backend(t, "alice"), bob: newH2Backend(t, "bob"),
		client: h2Client(t),
	}
	h.p, h.addr, h.ln = startProxy(t, Config{App: h.app.addr, Observer: h.rec, FirstByteTimeout: 200 * time.Millisecond})
	h.p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", h.alice.addr), sessionRoute(t, "bob", "bob", h.bob.addr)})
	return h
}

func (h *h2Harness) get(t *testing.T, path, session string) (string, *http.Response, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+h.addr+path, nil)
	if session != "" {
		req.Header.Set("X-Detour-Session", session)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp, err
}

func wantBackend(session string) string {
	if session == "" {
		return "app"
	}
	return session
}

func TestH2PriorKnowledgeRoutesEachStream(t *testing.T) {
	h := newH2Harness(t)
	sessions := []string{"alice", "bob", ""}
	round := func() {
		var wg sync.WaitGroup
		for i := range 30 {
			wg.Go(func() {
				s := sessions[i%3]
				b, resp, err := h.get(t, "/", s)
				if err != nil {
					t.Error(err)
					return
				}
				if b != wantBackend(s) || resp.ProtoMajor != 2 || resp.Header.Get("X-Backend") != wantBackend(s) {
					t.Errorf("session %q: %s answered %q (header %q), want %s", s, resp.Proto, b, resp.Header.Get("X-Backend"), wantBackend(s))
				}
			})
		}
		wg.Wait()
	}
	round()
	if got := h.ln.n.Load(); got != 1 {
		t.Fatalf("%d client connections, want 1", got)
	}
	h.rec.waitCount(t, event{"alice", OutcomeMatched}, 10)
	h.rec.waitCount(t, event{"bob", OutcomeMatched}, 10)
	h.rec.waitCount(t, event{"", OutcomeUnmatched}, 10)

	// Upstream connections are pooled and multiplexed: a second round
	// dials nothing new, and the first dialled only a few.
	before := map[string]int64{}
	for _, b := range []*h2Backend{h.app, h.alice, h.bob} {
		before[b.name] = b.ln.n.Load()
		if before[b.name] < 1 || before[b.name] > 3 {
			t.Errorf("%s: %d upstream connections for 10 concurrent streams", b.name, before[b.name])
		}
	}
	round()
	for _, b := range []*h2Backend{h.app, h.alice, h.bob} {
		if got := b.ln.n.Load(); got != before[b.name] {
			t.Errorf("%s: %d upstream connections after a second round, want %d (pooled)", b.name, got, before[b.name])
		}
	}

	// Baggage, method, path and authority arrive as the client sent them.
	req, _ := http.NewRequest("DELETE", "http://"+h.addr+"/whoami?q=1&r=%2F", nil)
	req.Host = "shop.example:8080"
	req.Header.Set("Baggage", "a=b, detour-session=bob")
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `bob HTTP/2.0 DELETE /whoami?q=1&r=%2F shop.example:8080 ua="Go-http-client/2.0"`; string(b) != want {
		t.Fatalf("got %q\nwant %q", b, want)
	}
}

func TestH2PathAndMethodRoutes(t *testing.T) {
	h := newH2Harness(t)
	pathM, err := match.Compile([]match.Condition{{Kind: match.PathPrefix, Value: "/whoami"}, {Kind: match.Method, Value: "POST"}})
	if err != nil {
		t.Fatal(err)
	}
	h.p.SetRoutes([]Route{{Intercept: "posts", Matcher: pathM, Destination: h.bob.addr}})
	for _, tc := range []struct{ method, path, want string }{
		{"POST", "/whoami?x=1", "bob"},
		{"GET", "/whoami", "app"},
		{"POST", "/", "app"},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+h.addr+tc.path, strings.NewReader("x"))
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(b), tc.want) {
			t.Errorf("%s %s answered %q, want %s", tc.method, tc.path, b, tc.want)
		}
	}
}

func TestH2StreamingAndLargeBodies(t *testing.T) {
	h := newH2Harness(t)

	t.Run("full duplex", func(t *testing.T) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", "http://"+h.addr+"/echo", pr)
		req.Header.Set("X-Detour-Session", "alice")
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		for i := range 5 {
			msg := fmt.Sprintf("m%d;", i)
			if _, err := io.WriteString(pw, msg); err != nil {
				t.Fatal(err)
			}
			// The answer must come while the request is still open.
			got := make([]byte, len("alice:")+len(msg))
			if _, err := io.ReadFull(br, got); err != nil {
				t.Fatal(err)
			}
			if string(got) != "alice:"+msg {
				t.Fatalf("echo %q, want %q", got, "alice:"+msg)
			}
		}
		pw.Close()
		if rest, _ := io.ReadAll(br); len(rest) != 0 {
			t.Fatalf("trailing %q", rest)
		}
	})

	const size = 6<<20 + 12345
	data := payload(size)
	for _, s := range []string{"bob", ""} {
		t.Run("upload/"+wantBackend(s), func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+h.addr+"/upload", io.MultiReader(bytes.NewReader(data)))
			req.Header.Set("X-Detour-Session", s)
			resp, err := h.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("%s %d %s", wantBackend(s), size, sum(data)); string(b) != want {
				t.Fatalf("got %q, want %q", b, want)
			}
		})
		t.Run("download/"+wantBackend(s), func(t *testing.T) {
			b, resp, err := h.get(t, fmt.Sprintf("/download?n=%d", size), s)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != size || sum([]byte(b)) != resp.Header.Get("X-Sum") || resp.Header.Get("X-Backend") != wantBackend(s) {
				t.Fatalf("download: %d bytes from %s", len(b), resp.Header.Get("X-Backend"))
			}
		})
	}

	t.Run("trailers", func(t *testing.T) {
		b, resp, err := h.get(t, "/trailers", "bob")
		if err != nil {
			t.Fatal(err)
		}
		if b != "bob" || resp.Trailer.Get("X-Declared") != "d-bob" || resp.Trailer.Get("X-Undeclared") != "u-bob" {
			t.Fatalf("body %q trailers %v", b, resp.Trailer)
		}
	})
	if got := h.ln.n.Load(); got != 1 {
		t.Errorf("%d client connections, want 1", got)
	}
}

func TestH2ClientResetEndsOnlyThatStream(t *testing.T) {
	h := newH2Harness(t)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+h.addr+"/wait", nil)
	req.Header.Set("X-Detour-Session", "alice")
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, len("alice"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "alice" {
		t.Fatalf("first bytes %q, %v", first, err)
	}
	// Another long stream on the same connection, to bob, stays open
	// across the reset.
	req2, _ := http.NewRequest("GET", "http://"+h.addr+"/wait", nil)
	req2.Header.Set("X-Detour-Session", "bob")
	resp2, err := h.client.Do(req2)
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()

	cancel() // RST_STREAM(CANCEL) from the client
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("cancelled stream ended cleanly")
	}
	resp.Body.Close()
	testutil.Eventually(t, 5*time.Second, func() error {
		if h.alice.cancelled.Load() != 1 {
			return errors.New("the cancellation did not reach alice's backend")
		}
		return nil
	})
	for _, s := range []string{"alice", "bob", ""} {
		if b, _, err := h.get(t, "/", s); err != nil || b != wantBackend(s) {
			t.Fatalf("after the reset, session %q: %q, %v", s, b, err)
		}
	}
	close(h.bob.release)
	if b, err := io.ReadAll(resp2.Body); err != nil || string(b) != "bob done" {
		t.Fatalf("the other stream: %q, %v", b, err)
	}
	if h.bob.cancelled.Load() != 0 {
		t.Fatal("bob's stream was cancelled too")
	}
	if got := h.ln.n.Load(); got != 1 {
		t.Errorf("%d client connections, want 1", got)
	}
}

func TestH2UpstreamResetEndsOnlyThatStream(t *testing.T) {
	h := newH2Harness(t)
	req, _ := http.NewRequest("GET", "http://"+h.addr+"/wait", nil)
	req.Header.Set("X-Detour-Session", "alice")
	long, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Body.Close()
	for range 3 {
		b, _, err := h.get(t, "/reset", "bob")
		var se http2.StreamError
		if err == nil || !errors.As(err, &se) {
			t.Fatalf("reset upstream stream: body %q, err %v; want a stream error", b, err)
		}
		for _, s := range []string{"alice", "bob", ""} {
			if b, _, err := h.get(t, "/", s); err != nil || b != wantBackend(s) {
				t.Fatalf("after an upstream reset, session %q: %q, %v", s, b, err)
			}
		}
	}
	close(h.alice.release)
	if b, err := io.ReadAll(long.Body); err != nil || string(b) != "alice done" {
		t.Fatalf("the long stream: %q, %v", b, err)
	}
	if got := h.ln.n.Load(); got != 1 {
		t.Errorf("%d client connections, want 1", got)
	}
}

func TestH2Fallback(t *testing.T) {
	h := newH2Harness(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()
	h.p.SetRoutes([]Route{sessionRoute(t, "carol", "carol", down)})
	for range 3 {
		if b, _, err := h.get(t, "/", "carol"); err != nil || b != "app" {
			t.Fatalf("with the destination down: %q, %v; want app", b, err)
		}
	}
	// A body is not lost on the way to the app.
	data := payload(100_000)
	req, _ := http.NewRequest("POST", "http://"+h.addr+"/upload", io.MultiReader(bytes.NewReader(data)))
	req.Header.Set("X-Detour-Session", "carol")
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("app %d %s", len(data), sum(data)); string(b) != want {
		t.Fatalf("got %q, want %q", b, want)
	}
	h.rec.waitCount(t, event{"carol", OutcomeFallback}, 4)

	// The destination comes back on the same address.
	l, err = net.Listen("tcp", down)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", down, err)
	}
	serveH2Backend(t, "carol", l)
	testutil.Eventually(t, 10*time.Second, func() error {
		if b, _, _ := h.get(t, "/", "carol"); b != "carol" {
			return fmt.Errorf("answered by %q", b)
		}
		return nil
	})
	h.rec.waitCount(t, event{"carol", OutcomeMatched}, 1)
}

func TestH2SlowPrefaceIsBounded(t *testing.T) {
	rec := &recorder{}
	app := echoServer(t, "")
	_, addr, _ := startProxy(t, Config{App: app, Observer: rec, FirstByteTimeout: 100 * time.Millisecond})
	c := dialRaw(t, addr)
	// The first line of the preface, then nothing: after FirstByteTimeout
	// the connection goes to the app as it is.
	io.WriteString(c, "PRI * HTTP/2.0\r\n\r\n")
	got := make([]byte, 18)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "PRI * HTTP/2.0\r\n\r\n" {
		t.Fatalf("echo %q, %v", got, err)
	}
	c.Close() // a passthrough is observed when it ends
	rec.waitCount(t, event{"", OutcomePassthrough}, 1)
}

// rawH2 is a hand-driven HTTP/2 client, for what the x/net client cannot
// do: h2c Upgrade, and watching frames such as GOAWAY.
type rawH2 struct {
	t   *testing.T
	c   net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

// newRawH2 starts HTTP/2 on c, reading through r (which may hold bytes
// already read from c).
func newRawH2(t *testing.T, c net.Conn, r io.Reader) *rawH2 {
	h := &rawH2{t: t, c: c}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	h.fr = http2.NewFramer(c, r)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.buf)
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// headers encodes a request head; kv are more header fields.
func (h *rawH2) headers(method, path string, kv ...string) []byte {
	h.buf.Reset()
	fields := append([]string{":method", method, ":scheme", "http", ":authority", "x", ":path", path}, kv...)
	for i := 0; i < len(fields); i += 2 {
		h.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(h.buf.Bytes())
}

func (h *rawH2) request(id uint32, method, path string, kv ...string) {
	h.t.Helper()
	err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.headers(method, path, kv...), EndHeaders: true, EndStream: true})
	if err != nil {
		h.t.Fatal(err)
	}
}

type rawResponse struct {
	status string
	body   string
}

// responses reads frames until n streams have ended, answering SETTINGS
// and PING; it fails on GOAWAY or RST_STREAM.
func (h *rawH2) responses(n int) map[uint32]*rawResponse {
	h.t.Helper()
	out := map[uint32]*rawResponse{}
	get := func(id uint32) *rawResponse {
		if out[id] == nil {
			out[id] = &rawResponse{}
		}
		return out[id]
	}
	for ended := 0; ended < n; {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				h.fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" {
				get(f.StreamID).status = s
			}
			if f.StreamEnded() {
				ended++
			}
		case *http2.DataFrame:
			get(f.StreamID).body += string(f.Data())
			if len(f.Data()) > 0 {
				h.fr.WriteWindowUpdate(0, uint32(len(f.Data())))
			}
			if f.StreamEnded() {
				ended++
			}
		case *http2.GoAwayFrame, *http2.RSTStreamFrame:
			h.t.Fatalf("unexpected %v", f)
		}
	}
	return out
}

func TestH2CloseSendsGoAway(t *testing.T) {
	app := newH2Backend(t, "app")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{App: app.addr})
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	c := dialRaw(t, l.Addr().String())
	raw := newRawH2(t, c, c)
	raw.request(1, "GET", "/")
	if r := raw.responses(1)[1]; r.body != "app" {
		t.Fatalf("got %+v", r)
	}
	l.Close()
	<-served
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	sawGoAway := false
	for {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			if !sawGoAway {
				t.Fatalf("connection ended (%v) without GOAWAY", err)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection not closed after GOAWAY")
			}
			break
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeNo {
				t.Errorf("GOAWAY %v, want NO_ERROR", ga.ErrCode)
			}
			sawGoAway = true
		}
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
}

// TestH2UpstreamGoAway: a backend that says GOAWAY finishes the streams it
// has; new streams go over a new connection and nothing fails.
func TestH2UpstreamGoAway(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: l}
	release := make(chan struct{})
	base := &http.Server{}
	srv := &http2.Server{}
	http2.ConfigureServer(base, srv)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			io.WriteString(w, "up ")
			w.(http.Flusher).Flush()
			<-release
		}
		io.WriteString(w, "up")
	})
	var conns sync.WaitGroup
	t.Cleanup(func() { // after the proxy's cleanup has closed its connections
		ln.Close()
		base.Close()
		conns.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { srv.ServeConn(c, &http2.ServeConnOpts{BaseConfig: base, Handler: handler}) })
		}
	}()

	_, addr, _ := startProxy(t, Config{App: ln.Addr().String()})
	client := h2Client(t)
	resp, err := client.Get("http://" + addr + "/wait")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	base.Shutdown(context.Background()) // GOAWAY on the upstream connection
	testutil.Eventually(t, 5*time.Second, func() error {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "up" || ln.n.Load() < 2 {
			return fmt.Errorf("%q over %d upstream connections", b, ln.n.Load())
		}
		return nil
	})
	close(release)
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "up up" {
		t.Fatalf("in-flight stream across GOAWAY: %q, %v", b, err)
	}
}
