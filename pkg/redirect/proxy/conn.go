package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detourdev/detour/pkg/redirect/http1"
)

// client is one accepted connection being served.
type client struct {
	p    *Proxy
	ctx  context.Context
	c    net.Conn
	bufs *connBufs
	req  http1.Request
	resp http1.Response
	src  netip.Addr // the client's address, for source-restricted routes
	up   *upConn    // the upstream connection of the last request, kept for the next (pool.go)
	kind atomic.Int32
	// With a fast path: the client connection as the buffers see it
	// (counting bytes), and the client's part in the fast path once its
	// first request showed it speaks HTTP/1 (fast.go).
	cc   *countingConn
	fast *fastClient
	// deadline: readRequestHead set a read deadline (heads.go)
	deadline bool

	// A drain closes the connection while it waits for its next request
	// (drain.go).
	mu    sync.Mutex
	idle  bool // waiting for the next request of a kept-alive connection
	woken bool // Shutdown set a read deadline to end the wait
}

// ServeConn serves requests on c until it closes, ctx ends or the proxy
// closes. A connection that starts with the HTTP/2 preface is served as
// HTTP/2 and each stream routed on its own. Nothing within FirstByteTimeout
// (a protocol where the server speaks first), bytes that are neither HTTP/1
// nor HTTP/2, and a head that cannot be routed in any position (malformed,
// oversized, or not complete within HeadTimeout) send the rest of the
// connection to the app untouched, the bytes read so far first (heads.go).
func (p *Proxy) ServeConn(ctx context.Context, c net.Conn) {
	cl := &client{p: p, ctx: ctx, c: c}
	if !p.track(c, cl) {
		c.Close()
		return
	}
	cl.serveConn()
}

// serveConn is ServeConn once the connection is tracked.
func (cl *client) serveConn() {
	p, c := cl.p, cl.c
	defer p.wg.Done()
	stop := context.AfterFunc(cl.ctx, func() { c.Close() })
	defer stop()

	b := p.bufs.Get().(*connBufs)
	var rw net.Conn = c
	if p.cfg.FastPath != nil {
		cl.cc = &countingConn{Conn: c}
		rw = cl.cc
	}
	b.r.Reset(rw)
	b.w.Reset(rw)
	cl.bufs, cl.src = b, sourceOf(c)
	if rt := p.l4Route(cl.src); rt != nil {
		cl.kind.Store(kindL4)
		cl.relay(rt)
	} else {
		cl.serve()
		cl.stopFast()
		cl.release()
	}

	c.Close()
	p.forget(c)
	b.r.Reset(nil)
	b.w.Reset(nil)
	p.bufs.Put(b)
}

func (cl *client) serve() {
	n, err := cl.readRequestHead(time.Now())
	if errors.Is(err, http1.ErrNotHTTP1) && cl.sawPreface() {
		cl.clearDeadline()
		cl.serveH2() // HTTP/2 with prior knowledge (h2.go)
		return
	}
	cl.clearDeadline()
	if err == nil {
		cl.startFast()
	}
	for err == nil && cl.exchange(n) {
		if cl.fast != nil {
			cl.fastIdle()
		}
		if !cl.awaitRequest() {
			return
		}
		n, err = cl.readRequestHead(time.Now())
		cl.clearDeadline()
		if err == nil && cl.fast != nil {
			if !cl.fastWait() {
				return // the kernel's request is still without its response
			}
			cl.fastActive()
		}
	}
	if err != nil && !gone(err) {
		// A head that cannot be routed, in any position: the rest of
		// the connection is the app's (heads.go).
		cl.stopFast()
		cl.passthrough(reasonOf(err), err)
	}
}

// readHead reads until parse finds a complete head at the start of br's
// buffer. io.EOF means the peer closed between messages.
func readHead(br *bufio.Reader, parse func([]byte) (int, error)) (int, error) {
	for {
		buf, _ := br.Peek(br.Buffered())
		n, err := parse(buf)
		if !errors.Is(err, http1.ErrIncomplete) {
			return n, err
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if errors.Is(err, io.EOF) && br.Buffered() > 0 {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
}

// exchange routes and forwards the request whose head is the first n bytes
// buffered, then its response. It reports whether the client connection
// can carry another request.
func (cl *client) exchange(n int) bool {
	x := cl.begin(n)
	if !cl.connect(&x) {
		return false
	}
	if x.hasBody {
		res, bodyOK := cl.forwardWithBody(&x)
		return cl.end(&x, res, bodyOK)
	}
	return cl.end(&x, cl.forwardWithoutBody(&x), true)
}

// inflight is one request on its way through exchange: what the steps
// need of its head once the head has left the read buffer, the upstream
// connection it goes out on, and how it is counted. It lives on
// exchange's stack: the steps take it by pointer and keep none.
type inflight struct {
	n         int // the head's length at the start of the client's buffer
	start     time.Time
	method    string
	keepAlive bool // the request allows another after it
	expect    bool // Expect: 100-continue
	chunked   bool
	length    int64
	hasBody   bool
	// retry: the request can be sent again if its upstream connection
	// turns out dead (see replay), so it needs no liveness probe first.
	retry bool

	up        *upConn
	intercept string
	outcome   Outcome
}

// begin reads what the exchange needs from the request head, before the
// head leaves the buffer.
func (cl *client) begin(n int) inflight {
	start := time.Now()
	req := &cl.req
	method, hasBody := req.Method(), req.HasBody()
	return inflight{
		n:         n,
		start:     start,
		method:    method,
		keepAlive: req.KeepAlive,
		expect:    req.Expect100,
		chunked:   req.Chunked,
		length:    req.ContentLength,
		hasBody:   hasBody,
		retry:     !hasBody && replayable(method),
		outcome:   OutcomeUnmatched,
	}
}

// connect picks the request's upstream connection: to the destination of
// the route it matches, or to the app when it matches none or the
// destination is down or unreachable (a fallback). When not even the app
// answers, the client gets a 502 and connect reports false.
func (cl *client) connect(x *inflight) bool {
	p := cl.p
	if rt := p.route(&cl.req, cl.src); rt != nil {
		x.intercept, x.outcome = rt.Intercept, OutcomeFallback
		for range rt.tries() {
			dest, ok := p.pick(rt)
			if !ok {
				break
			}
			uc, err := cl.upstream(dest, x.start, x.retry)
			if err == nil {
				x.up, x.outcome = uc, OutcomeMatched
				return true
			}
			p.log.Info("destination unreachable, trying another or the app",
				"intercept", rt.Intercept, "destination", dest, "err", err)
			p.markDown(dest)
		}
	}
	uc, err := cl.upstream(p.cfg.App, x.start, x.retry)
	if err != nil {
		p.log.Warn("app unreachable", "app", p.cfg.App, "err", err)
		cl.fail()
		p.observe(x.intercept, x.outcome, x.start)
		return false
	}
	x.up = uc
	return true
}

// forwardWithBody sends the head, then copies the body while it forwards
// the response: the upstream may answer before (or while) it reads the
// body, and the client may wait for 100 Continue before sending it. It
// reports whether the whole body went through.
func (cl *client) forwardWithBody(x *inflight) (result, bool) {
	br, up := cl.bufs.r, x.up
	head, _ := br.Peek(x.n)
	up.bufs.w.Write(head)
	br.Discard(x.n)
	var res result
	if x.expect {
		// The client waits for 100 Continue: the upstream must see
		// the head now, not once the body fills the buffer.
		if err := up.bufs.w.Flush(); err != nil {
			res.err = err
		}
	}
	bodyDone := make(chan error, 1)
	go forwardBody(up, br, x.chunked, x.length, bodyDone)
	if res.err == nil {
		res = cl.forwardResponse(up, x.method, x.keepAlive)
	}
	return res, cl.awaitBody(x, res, bodyDone)
}

// forwardBody copies a request body from the client's buffer to up and
// sends the outcome on done. On error it closes up, which unblocks the
// response reader. It takes everything as arguments: a closure capturing
// exchange's variables would move them to the heap on every request.
func forwardBody(up *upConn, br *bufio.Reader, chunked bool, length int64, done chan<- error) {
	var err error
	if chunked {
		_, err = http1.ForwardChunked(up.bufs.w, br)
	} else {
		_, err = http1.ForwardFixed(up.bufs.w, br, length)
	}
	if err == nil {
		err = up.bufs.w.Flush()
	}
	if err != nil {
		up.c.Close()
	}
	done <- err
}

// awaitBody waits for forwardBody once the response is through, and
// reports whether the body went through whole.
func (cl *client) awaitBody(x *inflight, res result, bodyDone <-chan error) bool {
	select {
	case err := <-bodyDone:
		return err == nil
	default:
	}
	if res.err != nil || x.expect && !res.sawContinue {
		// The client will not send the body (it got a final answer
		// instead of 100 Continue), or there is no one left to send it
		// to: stop waiting for it.
		cl.c.SetReadDeadline(time.Now())
		x.up.c.Close()
	}
	ok := <-bodyDone == nil
	cl.c.SetReadDeadline(time.Time{})
	return ok
}

// forwardWithoutBody sends the head and forwards the response, replaying
// the request on a fresh connection when its reused one turns out dead.
func (cl *client) forwardWithoutBody(x *inflight) result {
	br := cl.bufs.r
	head, _ := br.Peek(x.n)
	x.up.bufs.w.Write(head)
	res := cl.sendAndForward(x.up, x.method, x.keepAlive)
	if res.err != nil && !res.forwarded && x.up.reused && x.retry {
		res = cl.replay(x, head, res)
	}
	br.Discard(x.n)
	return res
}

// replay sends head again on a new connection. The reused connection was
// closed by the upstream while idle (usable did not probe it, or it died
// after the probe): the upstream saw nothing, so the request can go again,
// as net/http does. When no new connection can be made, the first
// attempt's result stands.
func (cl *client) replay(x *inflight, head []byte, first result) result {
	p := cl.p
	addr := x.up.addr
	x.up.close()
	uc, err := p.dial(cl.ctx, addr)
	if err != nil && x.outcome == OutcomeMatched {
		// The developer's pod died with the connection: the request
		// falls back, as it would on a fresh dial.
		p.log.Info("destination unreachable, falling back to the app",
			"intercept", x.intercept, "destination", addr, "err", err)
		p.markDown(addr)
		x.outcome = OutcomeFallback
		uc, err = p.dial(cl.ctx, p.cfg.App)
	}
	if err != nil {
		return first
	}
	x.up = uc
	uc.bufs.w.Write(head)
	return cl.sendAndForward(uc, x.method, x.keepAlive)
}

// end settles the exchange: it keeps the upstream connection on the client
// for its next request or closes it, hands the client connection to the
// upstream after a protocol switch, counts the request, and reports
// whether the client connection can carry another.
func (cl *client) end(x *inflight, res result, bodyOK bool) bool {
	p, up := cl.p, x.up
	if res.err != nil {
		p.log.Debug("exchange failed", "upstream", up.addr, "err", res.err)
		if !res.forwarded {
			cl.fail()
		}
		up.close()
		p.observe(x.intercept, x.outcome, x.start)
		return false
	}
	if res.framing == http1.Tunnel {
		p.observe(x.intercept, x.outcome, x.start)
		if bodyOK {
			// Switched protocols: the connection now belongs to this
			// upstream until either side is done with it.
			cl.kind.Store(kindTunnel)
			cl.stopFast()
			splice(cl.c, cl.bufs.r, up.c, up.bufs.r)
		}
		up.close()
		return false
	}
	reusable := bodyOK && x.keepAlive && res.keepAlive
	now := time.Now()
	if reusable && res.framing != http1.UntilClose {
		cl.keep(up, now)
	} else {
		up.close()
	}
	p.observeDuration(x.intercept, x.outcome, now.Sub(x.start))
	return reusable && !res.lastOnClient
}

// result is how forwarding a response went.
type result struct {
	err         error
	forwarded   bool // response bytes reached the client writer
	sawContinue bool // a 100 Continue was forwarded
	framing     http1.Framing
	keepAlive   bool // the upstream connection can carry another request
	// lastOnClient: the response told the client to close (a drain),
	// although the upstream connection can be kept.
	lastOnClient bool
}

func (cl *client) sendAndForward(up *upConn, method string, reqKeepAlive bool) result {
	if err := up.bufs.w.Flush(); err != nil {
		return result{err: err}
	}
	return cl.forwardResponse(up, method, reqKeepAlive)
}

// forwardResponse copies interim responses and then the final response
// from up to the client, heads and bodies unchanged, except that during a
// drain a final response that would keep the client connection open says
// "Connection: close" (drain.go). reqKeepAlive is what the request said.
func (cl *client) forwardResponse(up *upConn, method string, reqKeepAlive bool) result {
	var res result
	ur, cw := up.bufs.r, cl.bufs.w
	parse := func(b []byte) (int, error) { return cl.resp.Parse(b, method) }
	for {
		n, err := readHead(ur, parse)
		if err != nil {
			res.err = err
			return res
		}
		head, _ := ur.Peek(n)
		if !cl.resp.Interim() && cl.lastOnDrain(reqKeepAlive, cl.resp.KeepAlive) {
			writeHeadClosing(cw, head)
			res.lastOnClient = true
		} else {
			cw.Write(head)
		}
		ur.Discard(n)
		res.forwarded = true
		if cl.resp.Interim() {
			if cl.resp.Status == 100 {
				res.sawContinue = true
			}
			if res.err = cw.Flush(); res.err != nil {
				return res
			}
			continue
		}
		break
	}
	resp := &cl.resp
	res.framing, res.keepAlive = resp.Framing, resp.KeepAlive
	switch resp.Framing {
	case http1.FixedLength:
		_, res.err = http1.ForwardFixed(cw, ur, resp.ContentLength)
	case http1.Chunked:
		_, res.err = http1.ForwardChunked(cw, ur)
	case http1.UntilClose:
		_, res.err = http1.ForwardUntilEOF(cw, ur)
	}
	if res.err == nil {
		res.err = cw.Flush()
	}
	return res
}

func replayable(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// relay hands the whole connection to an L4 route's destination, or to the
// app if the destination cannot be dialled, without reading a byte.
func (cl *client) relay(rt *Route) {
	p := cl.p
	start := time.Now()
	outcome := OutcomeFallback
	var uc *upConn
	for range rt.tries() {
		dest, ok := p.pick(rt)
		if !ok {
			break
		}
		var err error
		if uc, err = p.dial(cl.ctx, dest); err == nil {
			outcome = OutcomeMatched
			break
		}
		p.log.Info("destination unreachable, trying another or the app",
			"intercept", rt.Intercept, "destination", dest, "err", err)
		p.markDown(dest)
	}
	if uc == nil {
		var err error
		if uc, err = p.dial(cl.ctx, p.cfg.App); err != nil {
			p.log.Warn("app unreachable", "app", p.cfg.App, "err", err)
			p.observe(rt.Intercept, outcome, start)
			return
		}
	}
	// Counted at connect: an L4 connection's life says nothing of latency.
	p.observe(rt.Intercept, outcome, start)
	a, aok := cl.c.(*net.TCPConn)
	b, bok := uc.c.(*net.TCPConn)
	if p.cfg.Relay != nil && aok && bok {
		if err := p.cfg.Relay(cl.ctx, a, b); err != nil {
			p.log.Debug("relay ended", "intercept", rt.Intercept, "err", err)
		}
	} else {
		splice(cl.c, cl.bufs.r, uc.c, uc.bufs.r)
	}
	uc.close()
}

// passthrough hands the rest of the connection to the app: the bytes
// already read, then everything else in both directions.
func (cl *client) passthrough(r Reason, why error) {
	p := cl.p
	start := time.Now()
	cl.kind.Store(kindPassthrough)
	if p.cfg.Observer != nil {
		p.cfg.Observer.Passthrough(r)
	}
	p.log.Debug("passing the connection through to the app", "remote", cl.c.RemoteAddr(), "reason", r, "why", why)
	uc, err := p.dial(cl.ctx, p.cfg.App)
	if err != nil {
		p.log.Warn("app unreachable", "app", p.cfg.App, "err", err)
		p.observe("", OutcomePassthrough, start)
		return
	}
	splice(cl.c, cl.bufs.r, uc.c, uc.bufs.r)
	uc.close()
	p.observe("", OutcomePassthrough, start)
}

func (cl *client) fail() { cl.writeStatus("502 Bad Gateway") }

func (cl *client) writeStatus(status string) {
	w := cl.bufs.w
	w.WriteString("HTTP/1.1 ")
	w.WriteString(status)
	w.WriteString("\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	w.Flush()
}

// splice copies both ways between a and b, each side's already-buffered
// bytes first, until both directions have ended. A direction that ends
// cleanly half-closes its destination so the peer sees the end of input
// and the other direction can finish; one that fails closes both.
func splice(a net.Conn, ar *bufio.Reader, b net.Conn, br *bufio.Reader) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(b, a, ar)
	}()
	pipe(a, b, br)
	wg.Wait()
}

func pipe(dst, src net.Conn, pending *bufio.Reader) {
	err := func() error {
		if n := pending.Buffered(); n > 0 {
			buf, _ := pending.Peek(n)
			if _, err := dst.Write(buf); err != nil {
				return err
			}
			pending.Discard(n)
		}
		// Between two TCP sockets io.Copy uses splice(2): the bytes
		// stay in the kernel.
		_, err := io.Copy(dst, src)
		return err
	}()
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		if cw.CloseWrite() == nil {
			return
		}
	}
	dst.Close()
	src.Close()
}
