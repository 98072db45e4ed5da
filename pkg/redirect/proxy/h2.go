package proxy

// The HTTP/2 front: how a client connection becomes an HTTP/2 server
// connection whose streams are routed one by one (h2route.go).
//
// HTTP/1 can be routed by reading heads and copying bytes, but HTTP/2
// multiplexes streams for different developers over one connection, with
// one HPACK state and one flow-control window per direction: no stream can
// be moved to another backend without re-encoding the frames. So the proxy
// terminates HTTP/2 on both sides: golang.org/x/net/http2's server reads the
// client's streams, and pooled HTTP/2 connections carry each one to its
// backend.
//
// The x/net server is used although its API is deprecated in favour of
// net/http's: net/http has no way to serve a connection the proxy has
// already read from. Only ServeConn, ServeConnOpts and ConfigureServer are
// used, which the go1.27 x/net implementation keeps by wrapping net/http.
//
// Only a connection that starts with the preface (prior knowledge, as gRPC
// sends it) is served so. An h2c Upgrade is an HTTP/1 request like any
// other Upgrade (conn.go): it goes to the backend its head routes it to,
// and the connection switches protocols only if that backend answers 101,
// after which it stays with that backend, as a WebSocket does. Taking the
// upgrade over instead made a client that the app would have kept on
// HTTP/1.1 end on HTTP/2 (docs/architecture.md, "Data path on a node").

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

//lint:file-ignore SA1019 x/net/http2 on purpose: net/http cannot serve one accepted connection (ServeConn), and its transport dials per request while none is up (see newUpstreamTransport)

// goAwayGrace bounds how long Close waits for every HTTP/2 client to have
// been sent its GOAWAY before closing connections anyway.
const goAwayGrace = 500 * time.Millisecond

// h2Side is what a Proxy shares between its HTTP/2 connections.
type h2Side struct {
	srv  *http2.Server
	base *http.Server // logger for srv; its Shutdown makes srv send GOAWAY
	up   *http2.Transport
	bufs sync.Pool // *[]byte for response bodies

	fronts map[*h2Front]struct{} // guarded by Proxy.mu
}

func newH2(p *Proxy) *h2Side {
	h := &h2Side{
		srv: &http2.Server{},
		base: &http.Server{
			// The server logs protocol errors of clients; they are
			// the client's problem, not the operator's.
			ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		},
		fronts: map[*h2Front]struct{}{},
	}
	h.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	// ConfigureServer registers srv's connections with base, so that
	// base.Shutdown sends GOAWAY on all of them; it fails only on TLS
	// settings, which base has none of.
	if err := http2.ConfigureServer(h.base, h.srv); err != nil {
		p.log.Warn("http2 server", "err", err)
	}
	h.up = newUpstreamTransport(p)
	return h
}

// sawPreface reports whether the client's first bytes are the HTTP/2
// connection preface. It is asked once the HTTP/1 parser has ruled the
// bytes out, which for the preface happens after its first line, and reads
// the rest of it under the same first-byte deadline.
func (cl *client) sawPreface() bool {
	br := cl.bufs.r
	b, _ := br.Peek(br.Buffered())
	k := min(len(b), len(http2.ClientPreface))
	if string(b[:k]) != http2.ClientPreface[:k] {
		return false
	}
	b, err := br.Peek(len(http2.ClientPreface))
	return err == nil && string(b) == http2.ClientPreface
}

// hasToken reports whether the comma-separated list v holds tok, ignoring
// case and whitespace.
func hasToken(v, tok string) bool {
	for part := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.TrimSpace(part), tok) {
			return true
		}
	}
	return false
}

// serveH2 serves the client connection as HTTP/2 from the bytes buffered so
// far on: the connection began with the preface.
func (cl *client) serveH2() {
	// The server's reader may outlive ServeConn by a moment, so it must
	// not read from the pooled buffer, which is reused once this returns.
	br := cl.bufs.r
	b, _ := br.Peek(br.Buffered())
	pending := bytes.Clone(b)
	br.Discard(len(b))
	cl.kind.Store(kindH2)
	cl.p.serveH2(cl.ctx, cl.c, pending)
}

func (p *Proxy) serveH2(ctx context.Context, c net.Conn, pending []byte) {
	gate := &handlerGate{}
	f := &h2Front{Conn: c, pending: pending, gate: gate, goAway: make(chan struct{}), done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.h2.fronts[f] = struct{}{}
	p.mu.Unlock()
	// A drain that began before the server registers this connection
	// tells it to go away on a later round (Proxy.drained).
	defer func() {
		p.mu.Lock()
		delete(p.h2.fronts, f)
		p.mu.Unlock()
		close(f.done)
	}()

	ctx, cancel := context.WithCancel(ctx)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !gate.enter() {
			return // the connection is gone; see handlerGate
		}
		defer gate.exit()
		p.serveStream(w, r)
	})
	p.h2.srv.ServeConn(f, &http2.ServeConnOpts{
		Context:    ctx,
		BaseConfig: p.h2.base,
		Handler:    handler,
	})
	// ServeConn returns when the connection ends, but handlers may still
	// be running: cancel their requests and wait, so that Close waits for
	// them too and nothing outlives the connection.
	cancel()
	gate.closeAndWait()
}

// goAway sends GOAWAY to every HTTP/2 client of the closing proxy and waits,
// at most goAwayGrace, until it has gone out, so clients learn that the
// connection ended on purpose and which streams were not processed.
func (h *h2Side) goAway(fronts []*h2Front) {
	if len(fronts) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), goAwayGrace)
	defer cancel()
	h.startGoAway()
	for _, f := range fronts {
		select {
		case <-f.goAway:
		case <-f.done:
		case <-ctx.Done():
			return
		}
	}
}

// startGoAway makes the server send GOAWAY (NO_ERROR, with the last stream
// it took) on every connection it serves that was not sent one yet; each
// then closes once its last stream is done (after a second, to let the
// client read the GOAWAY: x/net's goAwayTimeout). It returns at once.
func (h *h2Side) startGoAway() {
	// Shutdown runs the GOAWAY hook ConfigureServer registered; base has
	// no listeners or connections of its own, so it returns at once.
	_ = h.base.Shutdown(context.Background())
}

// takeFronts returns the HTTP/2 client connections; p.mu must be held.
func (h *h2Side) takeFronts() []*h2Front {
	fs := make([]*h2Front, 0, len(h.fronts))
	for f := range h.fronts {
		fs = append(fs, f)
	}
	return fs
}

// h2Front is a client connection served as HTTP/2: the bytes already read
// come first, and writes are watched for the GOAWAY frame.
type h2Front struct {
	net.Conn
	pending []byte    // read by the server's single reader goroutine only
	scan    frameScan // written by the server's single writer at a time
	gate    *handlerGate
	goAway  chan struct{}
	once    sync.Once
	done    chan struct{} // closed when the connection has been served
}

func (f *h2Front) Read(b []byte) (int, error) {
	if len(f.pending) > 0 {
		n := copy(b, f.pending)
		f.pending = f.pending[n:]
		return n, nil
	}
	return f.Conn.Read(b)
}

func (f *h2Front) Write(b []byte) (int, error) {
	sawGoAway := f.scan.goAway(b)
	n, err := f.Conn.Write(b)
	if sawGoAway || err != nil {
		f.once.Do(func() { close(f.goAway) })
	}
	return n, err
}

// frameScan follows frame boundaries in what the HTTP/2 server writes (it
// writes nothing but frames) to tell when a GOAWAY frame goes out.
type frameScan struct {
	hdr  [9]byte
	nhdr int
	left int // payload bytes of the current frame still to come
}

func (s *frameScan) goAway(p []byte) bool {
	saw := false
	for len(p) > 0 {
		if s.left > 0 {
			n := min(s.left, len(p))
			s.left -= n
			p = p[n:]
			continue
		}
		n := copy(s.hdr[s.nhdr:], p)
		s.nhdr += n
		p = p[n:]
		if s.nhdr == len(s.hdr) {
			s.nhdr = 0
			s.left = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
			saw = saw || http2.FrameType(s.hdr[3]) == http2.FrameGoAway
		}
	}
	return saw
}

// handlerGate counts the stream handlers of one connection. The server
// starts each handler on its own goroutine, which may first run after
// ServeConn has returned; once closeAndWait has begun such a late handler
// must not start work nobody waits for, so enter refuses it.
type handlerGate struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   chan struct{}
}

func (g *handlerGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.n++
	return true
}

// count is the number of handlers running.
func (g *handlerGate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

func (g *handlerGate) exit() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.n == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

func (g *handlerGate) closeAndWait() {
	g.mu.Lock()
	g.closed = true
	if g.n == 0 {
		g.mu.Unlock()
		return
	}
	idle := make(chan struct{})
	g.idle = idle
	g.mu.Unlock()
	<-idle
}
