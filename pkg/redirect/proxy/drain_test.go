package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/redirect/http1"
)

func TestWriteHeadClosing(t *testing.T) {
	tests := []struct {
		name, head, want string
	}{
		{"CRLF", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"},
		{"bare LF", "HTTP/1.1 204 No Content\nX-A: b\n\n",
			"HTTP/1.1 204 No Content\nX-A: b\nConnection: close\r\n\n"},
		{"CRLF then bare LF", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\n"},
		{"keep-alive said", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
			"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"},
		{"no fields", "HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			writeHeadClosing(&b, []byte(tt.head))
			if b.String() != tt.want {
				t.Fatalf("got %q, want %q", b.String(), tt.want)
			}
			// Both parsers read it as the connection's last response.
			r, n, err := http1.ParseResponse(b.Bytes(), "GET")
			if err != nil || n != b.Len() || r.KeepAlive {
				t.Fatalf("http1: %+v, %d of %d bytes, %v", r, n, b.Len(), err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(&b), nil)
			if err != nil || !resp.Close {
				t.Fatalf("net/http: close=%v, %v", resp != nil && resp.Close, err)
			}
		})
	}
}

// drainApp is an app whose /hold requests wait until released, and whose
// handlers say when they start.
type drainApp struct {
	addr    string
	started chan string   // the path and id of a request whose handler started
	release chan struct{} // closed to answer /hold requests
}

func newDrainApp(t *testing.T) *drainApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &drainApp{addr: ln.Addr().String(), started: make(chan string, 100), release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app") })
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		a.started <- "hold " + r.URL.Query().Get("id")
		select {
		case <-a.release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "held")
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		a.started <- "upload"
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintf(w, "got %d", len(b))
	})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protos}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *drainApp) waitStarted(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-a.started:
		if got != want {
			t.Fatalf("app started %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("app never started %q", want)
	}
}

// startDrainProxy serves a proxy on a TCP listener, which Shutdown can
// drain; served yields Serve's result.
func startDrainProxy(t *testing.T, cfg Config) (p *Proxy, addr string, served <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p = New(cfg)
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		p.Close()
	})
	return p, ln.Addr().String(), done
}

// shutdown runs p.Shutdown with a deadline; the channel yields its result.
func shutdown(p *Proxy, within time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		done <- p.Shutdown(ctx)
	}()
	return done
}

func waitErr(t *testing.T, what string, ch <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(within):
		t.Fatalf("%s did not return within %v", what, within)
		return nil
	}
}

// rawRequest sends req on c and reads the response, which must be 200 with
// body want; it returns whether the response said the connection closes.
func rawRequest(t *testing.T, c net.Conn, br *bufio.Reader, req, want string) (closes bool) {
	t.Helper()
	if req != "" {
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
	}
	return readResponse(t, br, want)
}

func readResponse(t *testing.T, br *bufio.Reader, want string) (closes bool) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(b) != want {
		t.Fatalf("got %s %q (%v), want 200 %q", resp.Status, b, err, want)
	}
	return resp.Close
}

const getRoot = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"

// TestShutdownHTTP1: during a drain, requests in flight (one waiting for
// its response, one whose body is still coming) are finished and their
// responses say "Connection: close"; a connection idle between requests is
// closed at once; one accepted but silent, and new ones from the listener,
// have their request served as their last; Shutdown returns once all are
// done, and so does Serve.
func TestShutdownHTTP1(t *testing.T) {
	app := newDrainApp(t)
	p, addr, served := startDrainProxy(t, Config{App: app.addr, FirstByteTimeout: 5 * time.Second})

	waiting := dialRaw(t, addr)
	waitingR := bufio.NewReader(waiting)
	io.WriteString(waiting, "GET /hold?id=w HTTP/1.1\r\nHost: x\r\n\r\n")
	app.waitStarted(t, "hold w")

	uploading := dialRaw(t, addr)
	uploadingR := bufio.NewReader(uploading)
	io.WriteString(uploading, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
	app.waitStarted(t, "upload")

	idle := dialRaw(t, addr)
	idleR := bufio.NewReader(idle)
	if rawRequest(t, idle, idleR, getRoot, "app") {
		t.Fatal("a response before the drain said Connection: close")
	}
	silent := dialRaw(t, addr)
	silentR := bufio.NewReader(silent)
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := p.Active().HTTP1; n != 4 {
			return fmt.Errorf("%d HTTP/1 connections, want 4", n)
		}
		return nil
	})

	shut := shutdown(p, 20*time.Second)
	testutil.Eventually(t, 5*time.Second, func() error {
		if !p.draining.Load() {
			return errors.New("not draining yet")
		}
		return nil
	})
	expectEOF(t, idleR)

	if !rawRequest(t, silent, silentR, getRoot, "app") {
		t.Fatal("the first request of a connection accepted before the drain: no Connection: close")
	}
	expectEOF(t, silentR)
	late := dialRaw(t, addr)
	lateR := bufio.NewReader(late)
	if !rawRequest(t, late, lateR, getRoot, "app") {
		t.Fatal("a connection accepted during the drain: no Connection: close")
	}
	expectEOF(t, lateR)

	if !rawRequest(t, uploading, uploadingR, "hello", "got 5") {
		t.Fatal("the upload's response: no Connection: close")
	}
	expectEOF(t, uploadingR)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	default:
	}
	close(app.release)
	if !readResponse(t, waitingR, "held") {
		t.Fatal("the waiting request's response: no Connection: close")
	}
	expectEOF(t, waitingR)

	if err := waitErr(t, "Shutdown", shut, 15*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := waitErr(t, "Serve", served, 15*time.Second); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// gatedListener holds Accept until its gate opens, so connections wait in
// the kernel's accept queue, and then some: a Serve slow to get to them.
type gatedListener struct {
	*net.TCPListener
	gate  chan struct{}
	delay time.Duration
	once  sync.Once
}

func (l *gatedListener) Accept() (net.Conn, error) {
	<-l.gate
	l.once.Do(func() { time.Sleep(l.delay) })
	return l.TCPListener.Accept()
}

// TestShutdownDrainsAcceptQueue: connections the kernel accepted before
// the drain, which the proxy had not taken yet, are served, even when Serve
// gets to them after Shutdown's first deadline.
func TestShutdownDrainsAcceptQueue(t *testing.T) {
	app := newDrainApp(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Serve gets to the queue after Shutdown's first deadline has passed.
	ln := &gatedListener{TCPListener: l.(*net.TCPListener), gate: make(chan struct{}), delay: 2 * acceptSettle}
	t.Cleanup(func() { ln.Close() })
	var conns []net.Conn
	for range 5 {
		c := dialRaw(t, ln.Addr().String())
		io.WriteString(c, getRoot)
		conns = append(conns, c)
	}
	p := New(Config{App: app.addr})
	t.Cleanup(func() { p.Close() })
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	shut := shutdown(p, 20*time.Second)
	testutil.Eventually(t, 5*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if !p.draining.Load() || len(p.lns) == 0 {
			return errors.New("Serve or Shutdown not started")
		}
		return nil
	})
	close(ln.gate)
	for i, c := range conns {
		if !rawRequest(t, c, bufio.NewReader(c), "", "app") {
			t.Fatalf("connection %d: no Connection: close", i)
		}
	}
	if err := waitErr(t, "Shutdown", shut, 15*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := waitErr(t, "Serve", served, 15*time.Second); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestShutdownHTTP2: a drain sends GOAWAY (NO_ERROR, last stream the one
// in flight), lets that stream finish, and the connection then ends.
func TestShutdownHTTP2(t *testing.T) {
	app := newH2Backend(t, "app")
	p, addr, served := startDrainProxy(t, Config{App: app.addr})
	c := dialRaw(t, addr)
	raw := newRawH2(t, c, c)
	raw.request(1, "GET", "/wait")
	body := ""
	for body != "app" {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				raw.fr.WriteSettingsAck()
			}
		case *http2.DataFrame:
			body += string(f.Data())
		}
	}
	if a := p.Active(); a.HTTP2 != 1 || a.HTTP2Streams != 1 {
		t.Fatalf("active %+v, want one HTTP/2 connection with one stream", a)
	}

	shut := shutdown(p, 20*time.Second)
	sawGoAway, ended := false, false
	for !ended {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended (%v) before the stream", err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			if f.ErrCode != http2.ErrCodeNo || f.LastStreamID != 1 {
				t.Fatalf("GOAWAY %v last stream %d, want NO_ERROR and 1", f.ErrCode, f.LastStreamID)
			}
			sawGoAway = true
			close(app.release)
		case *http2.DataFrame:
			if !sawGoAway {
				t.Fatalf("stream went on before GOAWAY: %q", f.Data())
			}
			body += string(f.Data())
			ended = f.StreamEnded()
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset: %v", f.ErrCode)
		}
	}
	if body != "app done" {
		t.Fatalf("stream body %q, want %q", body, "app done")
	}
	// The server closes the connection once its last stream is done.
	for {
		if _, err := raw.fr.ReadFrame(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection not closed after its last stream")
			}
			break
		}
	}
	if err := waitErr(t, "Shutdown", shut, 15*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := waitErr(t, "Serve", served, 15*time.Second); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestShutdownL4UntilDeadline: an L4 relay goes on during a drain, which
// therefore lasts until its context ends; Active tells it is left, and
// Close ends it.
func TestShutdownL4UntilDeadline(t *testing.T) {
	app := echoServer(t, "app\n")
	p, addr, _ := startDrainProxy(t, Config{App: app})
	p.SetRoutes([]Route{{Intercept: "bulk", L4: true, Destination: app}})
	c := dialFrom(t, "127.0.0.1", addr)
	if got := bannerOf(t, c, 4); got != "app\n" {
		t.Fatalf("banner %q", got)
	}
	start := time.Now()
	const grace = 500 * time.Millisecond
	shut := shutdown(p, grace)
	for i := range 3 {
		msg := fmt.Sprintf("ping %d\n", i)
		io.WriteString(c, msg)
		if got := bannerOf(t, c, len(msg)); got != msg {
			t.Fatalf("echo during the drain: %q", got)
		}
	}
	if err := waitErr(t, "Shutdown", shut, 5*time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	if took := time.Since(start); took < grace {
		t.Fatalf("Shutdown returned after %v, before its deadline", took)
	}
	if a := p.Active(); a.L4 != 1 || a.Conns() != 1 {
		t.Fatalf("left %+v, want one L4 connection", a)
	}
	p.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("relay still open after Close")
	}
}

// TestShutdownUnderLoad: keep-alive and fresh-connection clients send
// requests back to back, some with a slow response, while the proxy is
// unsteered (new connections go to the app, as once the agent removed the
// steering) and drains: no request fails, and Shutdown returns while the
// clients go on without it.
func TestShutdownUnderLoad(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(200 * time.Millisecond) // a response in flight at the drain
		io.WriteString(w, "slow")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app") })
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appAddr := al.Addr().String()
	asrv := &http.Server{Handler: mux}
	go asrv.Serve(al)
	t.Cleanup(func() { asrv.Close() })
	p, addr, served := startDrainProxy(t, Config{App: appAddr})

	var steered atomic.Bool // new connections reach the proxy
	steered.Store(true)
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		to := appAddr
		if steered.Load() {
			to = addr
		}
		var d net.Dialer
		return d.DialContext(ctx, network, to)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	for i := range 8 {
		tr := &http.Transport{DialContext: dial, DisableKeepAlives: i%4 == 0}
		t.Cleanup(tr.CloseIdleConnections)
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		path, want := "/", "app"
		if i%2 == 1 {
			path, want = "/slow", "slow"
		}
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://app" + path)
				if err == nil {
					var b []byte
					b, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && string(b) != want {
						err = fmt.Errorf("body %q", b)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	atLeast := func(n int64) func() error {
		return func() error {
			if got := ok.Load(); got < n {
				return fmt.Errorf("%d requests answered, want %d", got, n)
			}
			return nil
		}
	}
	testutil.Eventually(t, 10*time.Second, atLeast(50))
	steered.Store(false)
	shut := shutdown(p, 20*time.Second)
	if err := waitErr(t, "Shutdown", shut, 10*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := waitErr(t, "Serve", served, 15*time.Second); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, atLeast(ok.Load()+20)) // the clients go on, without the proxy
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d requests failed; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	if a := p.Active(); a.Conns() != 0 {
		t.Fatalf("left %+v", a)
	}
}
