package proxy

// Per-stream routing for HTTP/2 (h2.go has the session): each stream the
// client opens is matched against the routes on its own and forwarded over
// one of the session's connections to its backend. Upstream connections
// are dialled through Config.Dial, because the agent dials from inside the
// pod's network namespace. Everything here runs with the session's lock
// held, except the routing and dialling of a new stream.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// h2stream is one request and its response: a stream of the client's
// connection and the stream of an upstream connection it is forwarded on.
type h2stream struct {
	down, up  uint32 // its ID on the client's and on the upstream connection
	upc       *h2conn
	req, res  h2half        // client → upstream, upstream → client
	answered  bool          // a final response head went to the client
	detached  bool          // the upstream is done with it: its whole response came
	resetCode http2.ErrCode // for the client once that response has gone, if it still sends
	gone      bool          // dropped
	intercept string
	outcome   Outcome
	start     time.Time
}

// h2half is one direction of a stream.
type h2half struct {
	str          *h2stream
	from, to     *h2conn
	fromID, toID uint32
	buf          []byte // DATA received, waiting for the window of to
	off          int    // buf[off:] is still to send
	trailers     []hpack.HeaderField
	ended        bool  // END_STREAM received
	done         bool  // END_STREAM sent on
	sendWin      int64 // to's window for this stream
	recvUsed     int64 // received on this stream and not given back as credit
	credit       int64 // stream credit owed to from, not sent yet
	blocked      bool  // in to.blocked
}

// halfTo is the direction of str whose frames go to x.
func (str *h2stream) halfTo(x *h2conn) *h2half {
	if str.res.to == x {
		return &str.res
	}
	return &str.req
}

// halfFrom is the direction of str whose frames come from x.
func (str *h2stream) halfFrom(x *h2conn) *h2half {
	if str.req.from == x {
		return &str.req
	}
	return &str.res
}

var errUpstreamGone = errors.New("the upstream connection ended")

// h2BadGateway is the head the session answers a stream with when its
// upstream cannot be reached or ended before answering.
var h2BadGateway = []hpack.HeaderField{{Name: ":status", Value: "502"}}

// h2HeadersTooLarge answers a request whose header fields exceed
// h2MaxHeaderList.
var h2HeadersTooLarge = []hpack.HeaderField{{Name: ":status", Value: "431"}}

// clientHeaders handles a header block from the client: a new stream, or
// the trailers of one. A new stream is routed and its upstream connection
// found (or dialled) without the session's lock.
func (s *h2Session) clientHeaders(f *h2Block) bool {
	id := f.StreamID
	s.mu.Lock()
	if str := s.down.streams[id]; str != nil {
		s.trailers(&str.req, f)
		s.unlock()
		return true
	}
	switch {
	case id <= s.lastID:
		// A stream that ended (reset by the proxy, say): what the
		// client sent before it knew is dropped.
		s.unlock()
		return true
	case id%2 == 0:
		s.down.goAway(s.lastID, http2.ErrCodeProtocol)
		s.unlock()
		return false
	}
	s.lastID = id
	if s.goingAway || len(s.down.streams) >= h2MaxStreams {
		s.down.rst(id, http2.ErrCodeRefusedStream) // the client may retry it elsewhere
		s.unlock()
		return true
	}
	if f.tooBig {
		// Its fields were not kept, so it cannot go to the app
		// unrouted, as an HTTP/1 head over its bound does.
		s.down.headers(id, true, h2HeadersTooLarge)
		if !f.StreamEnded() {
			s.down.rst(id, http2.ErrCodeNo)
		}
		s.unlock()
		return true
	}
	s.unlock()

	head := h2Head(f.fields)
	method := head.Method()
	if method == "" || head.pseudo(":path") == "" && method != "CONNECT" || head.pseudo(":status") != "" {
		s.mu.Lock()
		s.down.rst(id, http2.ErrCodeProtocol)
		s.unlock()
		return true
	}
	p := s.p
	str := &h2stream{down: id, outcome: OutcomeUnmatched, start: time.Now()}
	addr := p.cfg.App
	if rt := p.route(head, s.src); rt != nil {
		str.intercept, str.outcome = rt.Intercept, OutcomeFallback
		if dest, ok := p.pick(rt); ok {
			str.outcome, addr = OutcomeMatched, dest
		}
	}
	u, err := s.upstream(addr)
	var de *dialError
	if err != nil && addr != p.cfg.App && errors.As(err, &de) {
		p.log.Info("destination unreachable, falling back to the app",
			"intercept", str.intercept, "destination", addr, "err", err)
		p.markDown(addr)
		str.outcome, addr = OutcomeFallback, p.cfg.App
		u, err = s.upstream(addr)
	}
	s.mu.Lock()
	defer s.unlock()
	for try := 0; err == nil && !u.open(); try++ {
		// It went away (GOAWAY, closed, idle) while the lock was
		// released: another, dialled if need be.
		if try == 2 {
			err = errUpstreamGone
			break
		}
		s.mu.Unlock()
		u, err = s.upstream(addr)
		s.mu.Lock()
	}
	end := f.StreamEnded()
	if err != nil {
		p.log.Warn("upstream unreachable", "upstream", addr, "err", err)
		s.down.headers(id, true, h2BadGateway)
		if !end {
			s.down.rst(id, http2.ErrCodeNo) // the request's body is not wanted
		}
		p.observe(str.intercept, str.outcome, str.start)
		return true
	}
	str.up, str.upc = u.nextID, u
	u.nextID += 2
	if u.nextID > h2MaxStreamID {
		u.noNew = true
	}
	str.req = h2half{str: str, from: s.down, to: u, fromID: id, toID: str.up, sendWin: u.initWin, ended: end, done: end}
	str.res = h2half{str: str, from: u, to: s.down, fromID: str.up, toID: id, sendWin: s.down.initWin}
	s.down.streams[id] = str
	u.streams[str.up] = str
	if u.idle != nil {
		u.idle.Stop()
	}
	u.headers(str.up, end, forwarded(f.fields))
	return true
}

// open reports whether an upstream connection can take one more stream;
// s.mu is held.
func (u *h2conn) open() bool {
	return !u.failed && !u.noNew && uint32(len(u.streams)) < u.maxStreams
}

// upstream returns a connection to addr that can take one more stream,
// dialling one if none can.
func (s *h2Session) upstream(addr string) (*h2conn, error) {
	s.mu.Lock()
	for _, u := range s.ups[addr] {
		if u.open() {
			s.mu.Unlock()
			return u, nil
		}
	}
	s.mu.Unlock()
	c, err := s.p.dialUpstream(s.ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	var rd io.Reader = c
	if h := c.hold(); h != nil {
		rd = h
	}
	u := s.newConn(c, bufio.NewReaderSize(rd, 32<<10), addr)
	s.mu.Lock()
	u.out = append(u.out, http2.ClientPreface...)
	u.settings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: h2MaxHeaderList},
	)
	u.windowUpdate(0, h2ConnWindow-h2DefaultWindow)
	s.ups[addr] = append(s.ups[addr], u)
	s.mu.Unlock()
	s.wg.Go(func() {
		s.read(u)
		s.upstreamEnded(u)
	})
	return u, nil
}

// upstreamHeaders handles a header block from an upstream: a response
// head (informational ones included), or trailers.
func (s *h2Session) upstreamHeaders(x *h2conn, f *h2Block) {
	str := x.streams[f.StreamID]
	if str == nil {
		return
	}
	h := &str.res
	switch {
	case f.tooBig && !str.answered:
		str.upc.rst(str.up, http2.ErrCodeCancel)
		s.down.headers(str.down, true, h2BadGateway)
		if !str.req.ended {
			s.down.rst(str.down, http2.ErrCodeNo)
		}
		s.drop(str)
		return
	case f.tooBig:
		s.reset(str, http2.ErrCodeProtocol)
		return
	case h.ended:
		s.reset(str, http2.ErrCodeStreamClosed)
		return
	case str.answered:
		s.trailers(h, f)
		return
	}
	end := f.StreamEnded()
	if st := h2Head(f.fields).pseudo(":status"); len(st) == 3 && st[0] == '1' && !end {
		s.down.headers(str.down, false, forwarded(f.fields)) // 1xx: the final head is still to come
		return
	}
	str.answered = true
	s.down.headers(str.down, end, forwarded(f.fields))
	if end {
		h.ended, h.done = true, true
		s.finish(str)
	}
}

// trailers takes the header block that ends h, to be sent once its DATA
// has gone.
func (s *h2Session) trailers(h *h2half, f *h2Block) {
	if h.ended || !f.StreamEnded() || f.tooBig || len(f.fields) > 0 && f.fields[0].IsPseudo() {
		s.reset(h.str, http2.ErrCodeProtocol)
		return
	}
	// Kept until its DATA has gone: not the connection's fields, which
	// its next block overwrites.
	h.trailers = slices.Clone(forwarded(f.fields))
	h.ended = true
	s.pump(h)
}

// onData passes a DATA frame on, or holds what the other side's window
// does not take yet.
func (s *h2Session) onData(x *h2conn, f *http2.DataFrame) bool {
	n := int64(f.Length)
	x.recvUsed += n
	if x.recvUsed > h2ConnWindow {
		x.goAway(s.lastIDFor(x), http2.ErrCodeFlowControl)
		return false
	}
	str := x.streams[f.StreamID]
	if str == nil {
		s.creditConn(x, n) // a stream that ended
		return true
	}
	h := str.halfFrom(x)
	switch {
	case h.ended:
		s.creditConn(x, n)
		s.reset(str, http2.ErrCodeStreamClosed)
		return true
	case h.done:
		// The request of a stream the upstream is done with: nobody
		// wants it any more.
		s.creditConn(x, n)
		h.ended = f.StreamEnded()
		return true
	}
	h.recvUsed += n
	if h.recvUsed > h2StreamWindow {
		s.creditConn(x, n)
		s.reset(str, http2.ErrCodeFlowControl)
		return true
	}
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		s.credit(h, pad)
	}
	h.ended = f.StreamEnded()
	if h.off == len(h.buf) && int64(len(data)) <= h.room() {
		// The common case: all of it goes at once, without a copy
		// into the stream's buffer.
		if len(data) > 0 || h.ended {
			h.to.data(h.toID, h.ended, data)
		}
		k := int64(len(data))
		h.sendWin -= k
		h.to.sendWin -= k
		s.credit(h, k)
		if h.ended {
			h.done = true
			s.finish(str)
		}
		return true
	}
	h.buf = append(h.buf, data...)
	s.pump(h)
	return true
}

// pump sends what h holds as far as the windows allow, then its end.
func (s *h2Session) pump(h *h2half) {
	if h.str.gone || h.done {
		return
	}
	for h.off < len(h.buf) {
		k := int(min(int64(len(h.buf)-h.off), h.room()))
		if k <= 0 {
			if !h.blocked {
				h.blocked = true
				h.to.blocked = append(h.to.blocked, h)
			}
			return
		}
		end := h.off+k == len(h.buf) && h.ended && h.trailers == nil
		h.to.data(h.toID, end, h.buf[h.off:h.off+k])
		h.off += k
		h.sendWin -= int64(k)
		h.to.sendWin -= int64(k)
		s.credit(h, int64(k))
		h.done = end
	}
	h.buf, h.off = h.buf[:0], 0
	if h.ended && !h.done {
		if h.trailers != nil {
			h.to.headers(h.toID, true, h.trailers)
		} else {
			h.to.data(h.toID, true, nil)
		}
		h.done = true
	}
	if h.done {
		s.finish(h.str)
	}
}

// room is how much DATA h may send now, in one frame: what the peer's
// windows and the room in its out buffer allow.
func (h *h2half) room() int64 {
	return min(h.sendWin, h.to.sendWin, int64(h.to.maxFrame), int64(h2OutRoom-len(h.to.out)))
}

// credit gives n bytes of h's window back to its sender, once enough have
// gathered to be worth a WINDOW_UPDATE.
func (s *h2Session) credit(h *h2half, n int64) {
	s.creditConn(h.from, n)
	h.recvUsed -= n
	if h.ended {
		return // the sender has nothing more to send on it
	}
	h.credit += n
	if h.credit >= h2StreamCredit {
		h.from.windowUpdate(h.fromID, h.credit)
		h.credit = 0
	}
}

func (s *h2Session) creditConn(x *h2conn, n int64) {
	x.recvUsed -= n
	x.credit += n
	if x.credit >= h2ConnCredit {
		x.windowUpdate(0, x.credit)
		x.credit = 0
	}
}

// finish drops a stream whose both directions have ended.
func (s *h2Session) finish(str *h2stream) {
	if str.req.done && str.res.done {
		s.drop(str)
	}
}

// onReset passes a RST_STREAM on to the other side of the stream.
func (s *h2Session) onReset(x *h2conn, id uint32, code http2.ErrCode) {
	str := x.streams[id]
	if str == nil {
		return
	}
	switch {
	case x == s.down:
		if !str.detached {
			str.upc.rst(str.up, code)
		}
	case str.res.ended:
		// The whole response came first (RFC 9113 8.1 allows a server
		// to reset a request it has answered): what is held of it
		// still goes to the client.
		str.resetCode = code
		s.detach(str)
		return
	default:
		s.down.rst(str.down, code)
	}
	s.drop(str)
}

// detach takes a stream whose response the upstream has sent whole off its
// upstream connection, which may then end: the response is still sent as
// the client's window allows, and the rest of the request is dropped.
func (s *h2Session) detach(str *h2stream) {
	u := str.upc
	str.detached = true
	delete(u.streams, str.up)
	if h := &str.req; !h.done {
		s.creditConn(s.down, int64(len(h.buf)-h.off))
		h.buf, h.off, h.done = nil, 0, true
	}
	s.upstreamIdle(u)
	s.finish(str)
}

// reset ends a stream on both sides.
func (s *h2Session) reset(str *h2stream, code http2.ErrCode) {
	s.down.rst(str.down, code)
	str.upc.rst(str.up, code)
	s.drop(str)
}

// streamError answers a frame the framer refused for one stream.
func (s *h2Session) streamError(x *h2conn, se http2.StreamError) {
	if str := x.streams[se.StreamID]; str != nil {
		s.reset(str, se.Code)
		return
	}
	if x == s.down && se.StreamID > s.lastID {
		s.lastID = se.StreamID
	}
	x.rst(se.StreamID, se.Code)
}

// upstreamGoAway: the streams the upstream did not take are refused to the
// client, which may retry them; new streams go over another connection.
func (s *h2Session) upstreamGoAway(x *h2conn, last uint32) {
	x.noNew = true
	for id, str := range x.streams {
		if id > last {
			s.down.rst(str.down, http2.ErrCodeRefusedStream)
			s.drop(str)
		}
	}
	s.upstreamIdle(x)
}

// upstreamEnded ends the streams of an upstream connection that ended:
// one not answered yet is answered 502, as an HTTP/1 request would be.
func (s *h2Session) upstreamEnded(u *h2conn) {
	s.mu.Lock()
	u.failed = true
	us := s.ups[u.addr]
	for i := range us {
		if us[i] == u {
			s.ups[u.addr] = append(us[:i:i], us[i+1:]...)
			break
		}
	}
	for _, str := range u.streams {
		switch {
		case str.res.ended:
			s.detach(str) // the client still gets what is held of the response
			continue
		case !str.answered:
			s.down.headers(str.down, true, h2BadGateway)
			if !str.req.ended {
				s.down.rst(str.down, http2.ErrCodeNo)
			}
		default:
			s.down.rst(str.down, http2.ErrCodeInternal)
		}
		s.drop(str)
	}
	if u.idle != nil {
		u.idle.Stop()
	}
	closing := append(s.closing, u.c)
	s.closing = nil
	s.mu.Unlock()
	s.flush()
	for _, c := range closing {
		c.Close()
	}
}

// drop forgets a stream: what it held is credited back, and it is
// observed.
func (s *h2Session) drop(str *h2stream) {
	if str.gone {
		return
	}
	str.gone = true
	if str.detached && !str.req.ended {
		s.down.rst(str.down, str.resetCode) // after the response: stop sending
	}
	for _, h := range [...]*h2half{&str.req, &str.res} {
		s.creditConn(h.from, int64(len(h.buf)-h.off))
		h.buf = nil
		if h.blocked {
			h.to.blocked = slices.DeleteFunc(h.to.blocked, func(b *h2half) bool { return b == h })
		}
	}
	delete(s.down.streams, str.down)
	if !str.detached {
		delete(str.upc.streams, str.up)
		s.upstreamIdle(str.upc)
	}
	s.p.observe(str.intercept, str.outcome, str.start)
	s.hangUpIfDone()
}

// upstreamIdle looks after an upstream connection that may have been left
// without streams: one that takes no new stream is closed, another is
// closed once it has had none for Config.IdleTimeout.
func (s *h2Session) upstreamIdle(u *h2conn) {
	if len(u.streams) > 0 || u.failed {
		return
	}
	if u.noNew || u.maxStreams == 0 {
		s.giveUp(u)
		return
	}
	if u.idle != nil {
		u.idle.Reset(s.p.cfg.IdleTimeout)
		return
	}
	u.idle = time.AfterFunc(s.p.cfg.IdleTimeout, func() {
		s.mu.Lock()
		if len(u.streams) == 0 {
			u.noNew = true
			s.upstreamIdle(u)
		}
		s.unlock()
	})
}

// dialError marks a failure to reach a backend at all, the one failure
// after which a stream can still go to the app: nothing was sent.
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string { return fmt.Sprintf("dial %s: %v", e.addr, e.err) }
func (e *dialError) Unwrap() error { return e.err }

func (p *Proxy) dialUpstream(ctx context.Context, network, addr string) (*trackedConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	c, err := p.cfg.Dial(ctx, network, addr)
	if err != nil {
		return nil, &dialError{addr: addr, err: err}
	}
	keepUpstreamAlive(c)
	if !p.track(c, nil) {
		c.Close()
		return nil, &dialError{addr: addr, err: net.ErrClosed}
	}
	return &trackedConn{Conn: c, p: p}, nil
}

// keepUpstreamAlive makes the kernel find out about a backend that vanished
// without a FIN: keepalive probes while the connection is idle, and a bound
// on how long sent data may stay unacknowledged (see upstreamTimeout).
func keepUpstreamAlive(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: upstreamKeepAlive, Interval: upstreamKeepAlive / 3, Count: 3})
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(upstreamTimeout/time.Millisecond))
		})
	}
}

// trackedConn is an upstream connection of a session, known to the proxy
// so that Close reaches it.
type trackedConn struct {
	net.Conn
	p    *Proxy
	once sync.Once
	held *heldReader // reads the connection, if hold made one
}

// hold returns a reader of c that leaves what it read queued until more
// comes (held_linux.go), or nil where the kernel cannot.
func (c *trackedConn) hold() *heldReader {
	c.held = newHeldReader(c.Conn)
	return c.held
}

func (c *trackedConn) Close() error {
	if c.held != nil {
		c.held.drop() // a FIN, not the reset unread bytes would cause
	}
	err := c.Conn.Close()
	c.once.Do(func() { c.p.forget(c.Conn) })
	return err
}
