package proxy

// HTTP/2, forwarded frame by frame (docs/architecture.md, "Data path on a
// node"; docs/performance.md, "HTTP/2 by forwarding frames").
//
// HTTP/1 can be routed by reading heads and copying bytes, but HTTP/2
// multiplexes streams for different developers over one connection, with
// one HPACK state and one flow-control window per direction. A client
// connection that begins with the preface becomes an h2Session: the
// client's connection and, per backend its streams go to, upstream
// connections of its own, opened with prior knowledge (what gRPC servers
// and h2c services speak). Of each stream only the header blocks are
// decoded (h2read.go), for the decision, and encoded again for the
// connection they go on (h2route.go); DATA, trailers and RST_STREAM pass
// through with the stream's ID changed. SETTINGS, PING, WINDOW_UPDATE and
// GOAWAY belong to one connection and are answered by the session.
//
// Flow control: the session grants each peer h2StreamWindow per stream and
// h2ConnWindow per connection, and gives credit back only for bytes it has
// passed on to the other side, so what a session holds is bounded by what
// it granted, however slow either peer reads.
//
// Writes: frames are appended to their connection's out buffer under the
// session's lock. The goroutine that appended them writes them once it has
// handled every frame it had already read, so a burst becomes one write;
// if another goroutine is writing that connection, that one takes them.
// Nothing is written with the lock held.
//
// An h2c Upgrade is an HTTP/1 request like any other Upgrade (conn.go): it
// goes to the backend its head routes it to, and the connection switches
// protocols only if that backend answers 101, after which it stays with
// that backend, as a WebSocket does.

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// goAwayGrace bounds how long Close waits for every HTTP/2 client to
	// have been sent its GOAWAY before closing connections anyway.
	goAwayGrace = 500 * time.Millisecond
	// h2StreamWindow and h2ConnWindow are the windows the session grants
	// each peer, per stream and per connection: the most it buffers.
	h2StreamWindow = 256 << 10
	h2ConnWindow   = 1 << 20
	// Credit goes back once this much of a window was passed on: often
	// enough that a peer never waits for it, rarely enough that a small
	// request costs no WINDOW_UPDATE at all.
	h2StreamCredit = 32 << 10
	h2ConnCredit   = h2ConnWindow / 4
	// h2OutRoom is how much DATA may wait in a connection's out buffer:
	// a peer that grants a large window but reads slowly must not make
	// the session hold that much. h2OutCap is the most anything may.
	h2OutRoom = 256 << 10
	h2OutCap  = 4 << 20
	// h2MaxStreams is the client's concurrent stream limit (x/net's).
	h2MaxStreams = 250
	// h2MaxHeaderList bounds a decoded header block, as
	// http.DefaultMaxHeaderBytes bounds an HTTP/1 head.
	h2MaxHeaderList = 1 << 20
	// h2DefaultWindow and h2DefaultFrame are RFC 9113's initial values.
	h2DefaultWindow = 65535
	h2DefaultFrame  = 16384
	h2MaxWindow     = 1<<31 - 1
	h2MaxStreamID   = 1<<31 - 1
	// h2CloseGrace is how long a client told to go away may take to
	// close after its last stream, so it reads the GOAWAY, not a reset.
	h2CloseGrace = time.Second
)

// A backend pod that vanished without a FIN must not hold streams forever.
// Its connection is probed by TCP keepalive, not by HTTP/2 PINGs, which
// servers count against a client when nothing else was sent (gRPC's
// keepalive policy answers the third in five minutes with GOAWAY), and
// unacknowledged data or a write that does not complete gives it up after
// upstreamTimeout.
const (
	upstreamTimeout   = 30 * time.Second
	upstreamKeepAlive = 15 * time.Second
)

// h2MaxSettings bounds the entries of one SETTINGS frame (each may touch
// every stream), as x/net does.
const h2MaxSettings = 100

// h2Side is what a Proxy keeps of its HTTP/2 sessions; guarded by Proxy.mu.
type h2Side struct {
	sessions map[*h2Session]struct{}
}

func newH2() *h2Side { return &h2Side{sessions: map[*h2Session]struct{}{}} }

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

// h2Session is one client connection served as HTTP/2, with the upstream
// connections its streams were sent on.
type h2Session struct {
	p    *Proxy
	ctx  context.Context
	src  netip.Addr
	down *h2conn
	wg   sync.WaitGroup // upstream readers

	mu        sync.Mutex
	ups       map[string][]*h2conn // by address
	dirty     []*h2conn            // connections with frames to write and no writer
	closing   []net.Conn           // to close once the lock is released (unlock)
	lastID    uint32               // the highest stream ID the client opened
	goingAway bool                 // GOAWAY was queued for the client
	told      chan struct{}        // closed once it was written (or cannot be)
	toldOnce  sync.Once
	hungUp    bool // the connection to the client was half-closed after the GOAWAY
	ended     bool // the client's connection ended
}

// h2conn is one connection of a session: the client's, or an upstream one.
// The fields after mu's comment are guarded by the session's lock.
type h2conn struct {
	s      *h2Session
	c      net.Conn
	br     *bufio.Reader
	fr     *http2.Framer // reads frames other than header blocks; the reader's alone
	blocks h2Blocks      // reads header blocks (h2read.go); the reader's alone
	addr   string        // an upstream's address; "" for the client
	// wdeadline is an upstream's write deadline; the writer's alone
	wdeadline time.Time

	// guarded by s.mu
	out, spare   []byte // frames to write; the buffer being written
	writing      bool   // a goroutine is writing out
	queued       bool   // in s.dirty
	failed       bool   // ended or failed: nothing more is written
	goAwayQueued bool   // out holds a GOAWAY to the client
	enc          *hpack.Encoder
	hbuf         []byte
	streams      map[uint32]*h2stream // by this connection's stream IDs
	blocked      []*h2half            // halves with DATA for this peer, waiting for its window
	sendWin      int64                // connection window for what is sent to this peer
	initWin      int64                // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame     int                  // the peer's SETTINGS_MAX_FRAME_SIZE
	maxStreams   uint32               // an upstream's SETTINGS_MAX_CONCURRENT_STREAMS
	recvUsed     int64                // DATA received and not given back as credit
	credit       int64                // credit owed to the peer, not sent yet
	nextID       uint32               // an upstream's next stream ID
	noNew        bool                 // an upstream that sent GOAWAY: no new streams
	idle         *time.Timer          // closes an upstream left without streams
}

func (s *h2Session) newConn(c net.Conn, br *bufio.Reader, addr string) *h2conn {
	x := &h2conn{
		s: s, c: c, br: br, addr: addr,
		fr:         http2.NewFramer(nil, br),
		streams:    map[uint32]*h2stream{},
		sendWin:    h2DefaultWindow,
		initWin:    h2DefaultWindow,
		maxFrame:   h2DefaultFrame,
		maxStreams: h2MaxStreamID,
		nextID:     1,
	}
	x.fr.SetReuseFrames()
	x.fr.SetMaxReadFrameSize(h2DefaultFrame) // the session never asks for more
	x.blocks.init()
	x.enc = hpack.NewEncoder((*hpackSink)(x))
	return x
}

// hpackSink collects what a connection's HPACK encoder writes.
type hpackSink h2conn

func (w *hpackSink) Write(p []byte) (int, error) {
	w.hbuf = append(w.hbuf, p...)
	return len(p), nil
}

// serveH2 serves the client connection as HTTP/2; it began with the
// preface, which br holds.
func (cl *client) serveH2() {
	cl.kind.Store(kindH2)
	cl.bufs.r.Discard(len(http2.ClientPreface))
	cl.p.serveH2(cl.ctx, cl.c, cl.bufs.r, cl.src)
}

func (p *Proxy) serveH2(ctx context.Context, c net.Conn, br *bufio.Reader, src netip.Addr) {
	s := &h2Session{p: p, ctx: ctx, src: src, ups: map[string][]*h2conn{}, told: make(chan struct{})}
	s.down = s.newConn(c, br, "")
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.h2.sessions[s] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.h2.sessions, s)
		p.mu.Unlock()
	}()

	s.mu.Lock()
	s.down.settings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: h2MaxHeaderList},
	)
	s.down.windowUpdate(0, h2ConnWindow-h2DefaultWindow)
	s.unlock()
	// A drain that began before this session was registered tells it to
	// go away on a later round (Proxy.drained).
	s.read(s.down)
	s.end()
}

// read handles the frames of one connection until it ends.
func (s *h2Session) read(x *h2conn) {
	for {
		if x.br.Buffered() == 0 {
			s.flush()
		}
		f, b, err := x.readFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				s.mu.Lock()
				s.streamError(x, se)
				s.unlock()
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				s.connError(x, http2.ErrCode(ce))
			} else if errors.Is(err, http2.ErrFrameTooLarge) {
				s.connError(x, http2.ErrCodeFrameSize)
			}
			return
		}
		if b != nil {
			ok := s.handleBlock(x, b)
			x.blocks.release()
			if !ok {
				s.flush() // the GOAWAY that says why
				return
			}
			continue
		}
		if !s.handle(x, f) {
			s.flush() // the GOAWAY that says why
			return
		}
	}
}

// connError tells the peer of x why its connection ends.
func (s *h2Session) connError(x *h2conn, code http2.ErrCode) {
	s.mu.Lock()
	x.goAway(s.lastIDFor(x), code)
	s.unlock()
	s.flush()
}

// handleBlock acts on one header block; false ends the connection.
func (s *h2Session) handleBlock(x *h2conn, b *h2Block) bool {
	if x == s.down {
		return s.clientHeaders(b)
	}
	s.mu.Lock()
	s.upstreamHeaders(x, b)
	s.unlock()
	return true
}

// handle acts on one frame other than a header block; false ends the
// connection.
func (s *h2Session) handle(x *h2conn, f http2.Frame) bool {
	s.mu.Lock()
	defer s.unlock()
	switch f := f.(type) {
	case *http2.DataFrame:
		return s.onData(x, f)
	case *http2.RSTStreamFrame:
		s.onReset(x, f.StreamID, f.ErrCode)
	case *http2.WindowUpdateFrame:
		return s.onWindowUpdate(x, f)
	case *http2.SettingsFrame:
		return s.onSettings(x, f)
	case *http2.PingFrame:
		if !f.IsAck() {
			x.pingAck(f.Data)
		}
	case *http2.GoAwayFrame:
		if x != s.down {
			s.upstreamGoAway(x, f.LastStreamID)
		}
	case *http2.PushPromiseFrame:
		// Push was turned off in the session's SETTINGS.
		x.goAway(0, http2.ErrCodeProtocol)
		return false
	}
	// PRIORITY and unknown frame types are ignored, as RFC 9113 allows.
	return true
}

// onSettings applies a peer's SETTINGS and acknowledges them.
func (s *h2Session) onSettings(x *h2conn, f *http2.SettingsFrame) bool {
	if f.IsAck() {
		return true
	}
	if f.NumSettings() > h2MaxSettings {
		x.goAway(s.lastIDFor(x), http2.ErrCodeEnhanceYourCalm)
		return false
	}
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - x.initWin
			x.initWin = int64(st.Val)
			for _, str := range x.streams {
				h := str.halfTo(x)
				h.sendWin += delta
				if h.sendWin > h2MaxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
		case http2.SettingMaxFrameSize:
			x.maxFrame = int(st.Val)
		case http2.SettingHeaderTableSize:
			x.enc.SetMaxDynamicTableSizeLimit(st.Val)
		case http2.SettingMaxConcurrentStreams:
			x.maxStreams = st.Val
		}
		return nil
	})
	if err != nil {
		code := http2.ErrCodeProtocol
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			code = http2.ErrCode(ce)
		}
		x.goAway(s.lastIDFor(x), code)
		return false
	}
	x.settingsAck()
	for _, str := range x.streams {
		s.pump(str.halfTo(x))
	}
	if x != s.down {
		// An upstream that takes no streams, and has none because the
		// stream it was dialled for went elsewhere meanwhile, closes.
		s.upstreamIdle(x)
	}
	return true
}

// lastIDFor is the last stream ID a GOAWAY to x names: the session never
// accepts streams from upstreams.
func (s *h2Session) lastIDFor(x *h2conn) uint32 {
	if x == s.down {
		return s.lastID
	}
	return 0
}

// onWindowUpdate adds a peer's credit and sends what waited for it.
func (s *h2Session) onWindowUpdate(x *h2conn, f *http2.WindowUpdateFrame) bool {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		x.sendWin += inc
		if inc == 0 || x.sendWin > h2MaxWindow {
			x.goAway(s.lastIDFor(x), http2.ErrCodeFlowControl)
			return false
		}
		s.unblock(x)
		return true
	}
	str := x.streams[f.StreamID]
	if str == nil {
		return true // a stream that has ended
	}
	h := str.halfTo(x)
	h.sendWin += inc
	if inc == 0 || h.sendWin > h2MaxWindow {
		s.reset(str, http2.ErrCodeFlowControl)
		return true
	}
	s.pump(h)
	return true
}

// unblock sends what waited for x's window or for room in its out buffer.
func (s *h2Session) unblock(x *h2conn) {
	blocked := x.blocked
	x.blocked = nil
	for _, h := range blocked {
		h.blocked = false
		s.pump(h)
	}
}

// giveUp ends a connection that cannot be written to any more.
func (s *h2Session) giveUp(x *h2conn) {
	if !x.failed {
		x.failed = true
		x.out = nil
		s.closing = append(s.closing, x.c)
	}
}

// queue marks x as having frames to write; s.mu is held.
func (s *h2Session) queue(x *h2conn) {
	if !x.queued && !x.writing {
		x.queued = true
		s.dirty = append(s.dirty, x)
	}
}

// unlock releases the session's lock, then closes the connections that
// were given up while it was held (closing one takes the proxy's lock).
func (s *h2Session) unlock() {
	cs := s.closing
	s.closing = nil
	s.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// flush writes the frames queued on every connection that no other
// goroutine is writing.
func (s *h2Session) flush() {
	s.mu.Lock()
	for len(s.dirty) > 0 {
		x := s.dirty[len(s.dirty)-1]
		s.dirty = s.dirty[:len(s.dirty)-1]
		x.queued = false
		if x.writing {
			continue
		}
		x.writing = true
		for len(x.out) > 0 && !x.failed {
			buf, told := x.out, x.goAwayQueued
			x.out, x.spare, x.goAwayQueued = x.spare[:0], nil, false
			s.mu.Unlock()
			if x != s.down {
				// A backend that stops reading is given up;
				// moving the deadline once a second is enough.
				if now := time.Now(); x.wdeadline.Sub(now) < upstreamTimeout-time.Second {
					x.wdeadline = now.Add(upstreamTimeout)
					x.c.SetWriteDeadline(x.wdeadline)
				}
			}
			_, err := x.c.Write(buf)
			s.mu.Lock()
			if cap(buf) <= 4*h2DefaultFrame {
				x.spare = buf[:0]
			}
			if err != nil {
				s.giveUp(x)
			} else if len(x.blocked) > 0 {
				s.unblock(x) // there is room in out again
			}
			if told || err != nil && x == s.down {
				s.markTold()
			}
		}
		x.writing = false
		if x == s.down {
			s.hangUpIfDone()
		}
	}
	s.unlock()
}

// startGoAway tells the client that the session takes no new stream; the
// connection ends once its streams have. It returns at once.
func (s *h2Session) startGoAway() {
	s.mu.Lock()
	if s.goingAway || s.ended {
		s.mu.Unlock()
		return
	}
	s.goingAway = true
	s.down.goAway(s.lastID, http2.ErrCodeNo)
	s.down.goAwayQueued = !s.down.failed
	if s.down.failed {
		s.markTold()
	}
	s.unlock()
	// The write may wait for the client: not on the caller's time.
	go s.flush()
}

// markTold records that the client was sent its GOAWAY, or never will be.
func (s *h2Session) markTold() { s.toldOnce.Do(func() { close(s.told) }) }

// hangUpIfDone half-closes the client's connection once it was told to go
// away, has no stream left and every frame went out; the client then
// closes, or the connection is closed h2CloseGrace later. s.mu is held.
func (s *h2Session) hangUpIfDone() {
	x := s.down
	if !s.goingAway || s.hungUp || len(x.streams) > 0 || x.writing || len(x.out) > 0 {
		return
	}
	s.hungUp = true
	if cw, ok := x.c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	time.AfterFunc(h2CloseGrace, func() { x.c.Close() })
}

// end takes down what is left once the client's connection has ended:
// its streams, and the upstream connections, whose readers it waits for.
func (s *h2Session) end() {
	s.mu.Lock()
	s.ended = true
	s.down.failed = true
	for _, str := range s.down.streams {
		s.drop(str)
	}
	for _, us := range s.ups {
		for _, u := range us {
			if u.idle != nil {
				u.idle.Stop()
			}
			s.closing = append(s.closing, u.c)
		}
	}
	// An upstream's reader may be writing to the client: closing it
	// now ends that write.
	s.closing = append(s.closing, s.down.c)
	s.unlock()
	s.markTold()
	s.wg.Wait()
}

// streamCount is the number of streams being forwarded.
func (s *h2Session) streamCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.down.streams)
}

// goAway sends GOAWAY to every HTTP/2 client of the closing proxy and waits,
// at most goAwayGrace, until it has gone out, so clients learn that the
// connection ended on purpose and which streams were not processed.
func (h *h2Side) goAway(sessions []*h2Session) {
	if len(sessions) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), goAwayGrace)
	defer cancel()
	for _, s := range sessions {
		s.startGoAway()
	}
	for _, s := range sessions {
		select {
		case <-s.told:
		case <-ctx.Done():
			return
		}
	}
}

// takeSessions returns the HTTP/2 sessions; p.mu must be held.
func (h *h2Side) takeSessions() []*h2Session {
	ss := make([]*h2Session, 0, len(h.sessions))
	for s := range h.sessions {
		ss = append(ss, s)
	}
	return ss
}
