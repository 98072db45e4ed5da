package proxy

// Graceful stop: Shutdown lets a proxy finish what it has while its port is
// no longer steered to it, so that stopping or restarting the agent loses no
// request. Each protocol ends at its own natural boundary:
//
//   - The listener keeps accepting: connections the kernel already handed to
//     it (its accept queue, and handshakes it had begun) are served. It is
//     left once nothing arrived for acceptSettle and no connection is left.
//   - HTTP/1: a request in flight is finished; its response, and the response
//     to any request that arrives during the drain, carries "Connection:
//     close", so the client opens its next connection elsewhere (straight to
//     the app, the steering being gone). A connection idle between requests
//     is closed at once, as net/http.Server.Shutdown does.
//   - HTTP/2: GOAWAY (NO_ERROR) with the last stream taken; streams in flight
//     finish, the client sends new ones on a new connection, and the server
//     closes the connection once its last stream is done.
//   - L4 relays, passthrough connections and HTTP/1 tunnels (WebSocket) have
//     no boundary the proxy can see: they go on until Shutdown's context
//     ends and Close cuts them.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// acceptSettle is how long a draining listener waits for one more
// connection before it is left. Once the steering is removed no new
// connection is handed to it, but a handshake the kernel began before (a
// SYN it answered) completes into its accept queue up to a round trip later,
// or a SYN-ACK retransmission later (1 s) when a packet is lost; a round
// trip inside a cluster is well under this.
const acceptSettle = 250 * time.Millisecond

// drainPoll is how often Shutdown looks whether everything has finished,
// and tells HTTP/2 connections that started after it began to go away.
const drainPoll = 20 * time.Millisecond

// What a client connection turned out to be, for Active.
const (
	kindHTTP1 int32 = iota
	kindH2
	kindL4
	kindPassthrough
	kindTunnel
)

// Activity is what a proxy is serving.
type Activity struct {
	HTTP1        int // HTTP/1 client connections (idle ones included, except during a drain)
	HTTP2        int // HTTP/2 client connections
	HTTP2Streams int // streams being forwarded on them
	L4           int // connections relayed whole to an L4 route's destination or the app
	Passthrough  int // connections neither HTTP/1 nor HTTP/2, passed to the app untouched
	Tunnels      int // HTTP/1 connections that switched protocols (WebSocket, CONNECT)
}

// Conns is the number of client connections.
func (a Activity) Conns() int { return a.HTTP1 + a.HTTP2 + a.L4 + a.Passthrough + a.Tunnels }

// Add sums two activities.
func (a Activity) Add(b Activity) Activity {
	return Activity{
		HTTP1: a.HTTP1 + b.HTTP1, HTTP2: a.HTTP2 + b.HTTP2, HTTP2Streams: a.HTTP2Streams + b.HTTP2Streams,
		L4: a.L4 + b.L4, Passthrough: a.Passthrough + b.Passthrough, Tunnels: a.Tunnels + b.Tunnels,
	}
}

// LogValue logs an activity as a group of counts.
func (a Activity) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("http1_conns", a.HTTP1), slog.Int("h2_conns", a.HTTP2), slog.Int("h2_streams", a.HTTP2Streams),
		slog.Int("l4_conns", a.L4), slog.Int("passthrough_conns", a.Passthrough), slog.Int("tunnels", a.Tunnels),
	)
}

// Active returns what the proxy is serving now.
func (p *Proxy) Active() Activity {
	var a Activity
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cl := range p.conns {
		if cl == nil {
			continue // an upstream connection
		}
		switch cl.kind.Load() {
		case kindHTTP1:
			a.HTTP1++
		case kindH2:
			a.HTTP2++
		case kindL4:
			a.L4++
		case kindPassthrough:
			a.Passthrough++
		case kindTunnel:
			a.Tunnels++
		}
	}
	for s := range p.h2.sessions {
		a.HTTP2Streams += s.streamCount()
	}
	return a
}

// deadliner is a listener whose Accept can be woken, as *net.TCPListener.
type deadliner interface {
	SetDeadline(time.Time) error
}

// Shutdown stops the proxy gracefully, as net/http.Server.Shutdown does,
// for a port whose steering to the proxy has just been removed: it keeps
// serving the connections it has and the ones still in its listeners'
// accept queues, ends each at its protocol's boundary (see the top of this
// file), and returns nil once nothing is left, or ctx.Err() when ctx ends
// first; Active then tells what is left. Serve calls then return; the
// listeners are the caller's to close, then Close ends what is left. Only
// listeners that have SetDeadline (*net.TCPListener) are drained: Shutdown
// cannot wake another's Accept. Routing is unchanged during the drain.
// Shutdown may be called more than once and concurrently.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.draining.Store(true)
	lns := make([]deadliner, 0, len(p.lns))
	for _, dl := range p.lns {
		lns = append(lns, dl)
	}
	clients := make([]*client, 0, len(p.conns))
	for _, cl := range p.conns {
		if cl != nil {
			clients = append(clients, cl)
		}
	}
	p.mu.Unlock()

	settle := time.Now().Add(acceptSettle)
	for _, dl := range lns {
		_ = dl.SetDeadline(settle) // wakes Accept once the queue has been empty for a while
	}
	for _, cl := range clients {
		cl.wakeIdle()
	}
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for {
		if p.drained() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// drained reports whether a draining proxy has nothing left to serve. On
// the way it tells the HTTP/2 sessions that were not told yet to go away:
// a session that started after the last round (an h2c upgrade, or a
// connection accepted from the queue) registers only once it is served,
// so one round is not enough.
func (p *Proxy) drained() bool {
	p.mu.Lock()
	done := p.closed || len(p.lns) == 0 && p.serving == 0
	sessions := p.h2.takeSessions()
	p.mu.Unlock()
	if !done {
		for _, s := range sessions {
			s.startGoAway() // once per session
		}
	}
	return done
}

// quiet reports whether a draining proxy serves no connection, so a
// listener whose queue stayed empty for acceptSettle can be left.
func (p *Proxy) quiet() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.serving == 0
}

// addListener registers a listener Serve accepts from, so that Shutdown can
// wake it; a listener added during a drain drains at once.
func (p *Proxy) addListener(ln net.Listener) (dl deadliner, ok bool) {
	dl, ok = ln.(deadliner)
	if !ok {
		return nil, false
	}
	p.mu.Lock()
	p.lns[ln] = dl
	draining := p.draining.Load()
	p.mu.Unlock()
	if draining {
		_ = dl.SetDeadline(time.Now().Add(acceptSettle))
	}
	return dl, true
}

func (p *Proxy) removeListener(ln net.Listener) {
	p.mu.Lock()
	delete(p.lns, ln)
	p.mu.Unlock()
}

// drainAccept handles an Accept error of a draining listener: a timeout is
// Shutdown's deadline. While connections are still being served the
// deadline is set again: what may yet arrive is accepted until they are
// done. Once none is, Serve returns unless a connection waits in the queue
// (a deadline in the past fails Accept without looking at the queue, and a
// loaded Serve may get there late: the queue is polled instead). It
// reports whether the error was handled so, and whether Serve should return.
func (p *Proxy) drainAccept(dl deadliner, err error) (handled, stop bool) {
	var ne net.Error
	if dl == nil || !p.draining.Load() || !errors.As(err, &ne) || !ne.Timeout() {
		return false, false
	}
	if p.quiet() && !queued(dl) {
		return true, true
	}
	_ = dl.SetDeadline(time.Now().Add(acceptSettle))
	return true, false
}

// queued reports, without blocking, whether a connection waits in the
// accept queue of the listener: a listening socket polls readable then.
func queued(dl deadliner) bool {
	sc, ok := dl.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ready := false
	_ = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		ready = err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
	})
	return ready
}

// enterIdle marks the client as waiting for its next request, where a
// drain may close it. It reports false when the proxy is draining and no
// byte of a next request has arrived: the connection is to be closed now.
// A request already buffered (pipelined) is not waited for, so the client
// is not idle.
func (cl *client) enterIdle() bool {
	if cl.bufs.r.Buffered() > 0 {
		return true
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.p.draining.Load() {
		return false
	}
	cl.idle = true
	return true
}

// leaveIdle ends the wait enterIdle began. It reports whether Shutdown woke
// the wait meanwhile (its read deadline, which leaveIdle clears).
func (cl *client) leaveIdle() (woken bool) {
	cl.mu.Lock()
	woken = cl.woken
	cl.idle, cl.woken = false, false
	cl.mu.Unlock()
	if woken {
		cl.c.SetReadDeadline(time.Time{})
	}
	return woken
}

// wakeIdle makes an idle client's wait for its next request return, by a
// read deadline in the past. Under cl.mu, so that a client that is no
// longer idle (reading a request's body, say) is never given one.
func (cl *client) wakeIdle() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.idle && !cl.woken {
		cl.woken = true
		cl.c.SetReadDeadline(time.Now())
	}
}

// lastOnDrain reports whether a final response is to be the last on its
// client connection because the proxy is draining: the request and the
// response would have kept the connection open.
func (cl *client) lastOnDrain(reqKeepAlive, respKeepAlive bool) bool {
	return reqKeepAlive && respKeepAlive && cl.p.draining.Load()
}

// connClose is the field added to a response head that must end its
// connection.
const connClose = "Connection: close\r\n"

// closeSplit returns where in a complete response head connClose goes:
// before the empty line that ends it ("\r\n" or a bare "\n", which RFC 9112
// tolerates).
func closeSplit(head []byte) int {
	k := len(head) - 1 // the empty line's LF
	if k > 0 && head[k-1] == '\r' {
		k--
	}
	return k
}

// writeHeadClosing writes a response head with connClose added; a client
// that reads both "keep-alive" and "close" closes (RFC 9112 9.6).
func writeHeadClosing(w interface {
	Write([]byte) (int, error)
	WriteString(string) (int, error)
}, head []byte) {
	k := closeSplit(head)
	w.Write(head[:k])
	w.WriteString(connClose)
	w.Write(head[k:])
}
