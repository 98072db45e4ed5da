package proxy

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detourdev/detour/pkg/redirect/http1"
)

// FastPath lets the kernel route a port's requests (docs/architecture.md,
// "Data path on a node", step 7; pkg/redirect/fastpath). The proxy serves
// each caller's first requests itself, pairs the caller with the upstream
// connections those used, and offers the caller to the kernel between
// requests; what the kernel cannot settle comes back as ordinary bytes.
type FastPath interface {
	// Caller registers the caller at the other end of c, or says why
	// the kernel cannot route it.
	Caller(c net.Conn) (FastCaller, error)
}

// FastCaller is one caller the kernel may route (*fastpath.Conn).
type FastCaller interface {
	// Slot is the kernel's number for a destination address of the port.
	Slot(dest string) (uint32, bool)
	// Pair hands up, which then carries nothing else, to the kernel for
	// slot's requests.
	Pair(slot uint32, up net.Conn) error
	Unpair(slot uint32)
	// Handback offers the caller to the kernel, given the bytes the
	// proxy read from and wrote to it.
	Handback(read, written uint64) bool
	// Pending tells about the last request the kernel routed.
	Pending() (busy bool, slot uint32, taken, head bool)
	// Tail: the kernel left the proxy only the current response's last
	// n bytes (a request was pipelined behind it).
	Tail() (n uint32, ok bool)
	// FinishTaken: the proxy forwarded the response the kernel left it,
	// or ended the client because that response will not come.
	FinishTaken()
	// WaitIdle waits until no request the kernel routed awaits its
	// response.
	WaitIdle(ctx context.Context) error
	Close(ctx context.Context)
}

// fastCloseWait bounds how long a closing caller waits for the response
// to a request the kernel routed.
const fastCloseWait = 5 * time.Second

// countingConn counts the bytes read from and written to a client
// connection, for the handback.
type countingConn struct {
	net.Conn
	read, written atomic.Uint64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(uint64(n))
	return n, err
}

// fastClient is a client's part in the fast path.
type fastClient struct {
	fc FastCaller
	cc *countingConn

	mu     sync.Mutex
	ups    map[uint32]*upConn // paired, each read by its watch
	closed bool
	wg     sync.WaitGroup

	// w is held by whichever goroutine writes to the client: the
	// client's own while it serves a request (active), a watch while it
	// forwards a response the kernel left it. The kernel's state orders
	// them already (fastWait); the lock makes that order one Go sees.
	w      sync.Mutex
	active bool // the client's goroutine holds w
}

// startFast registers the client with the fast path once its first request
// showed it speaks HTTP/1.
func (cl *client) startFast() {
	if cl.cc == nil || cl.p.cfg.FastPath == nil {
		return
	}
	fc, err := cl.p.cfg.FastPath.Caller(cl.c)
	if err != nil {
		cl.p.log.Debug("fast path: serving the caller in userspace", "remote", cl.c.RemoteAddr(), "why", err)
		return
	}
	cl.fast = &fastClient{fc: fc, cc: cl.cc, ups: map[uint32]*upConn{}}
	cl.fastActive()
}

// fastActive: the client's goroutine is about to serve a request (or its
// first one); a watch forwarding a response finishes first.
func (cl *client) fastActive() {
	f := cl.fast
	if !f.active {
		f.w.Lock()
		f.active = true
	}
}

// fastInactive: the client's goroutine waits for a request.
func (cl *client) fastInactive() {
	f := cl.fast
	if f.active {
		f.active = false
		f.w.Unlock()
	}
}

// fastIdle runs between requests: it pairs the upstream connection of the
// request just answered, when its destination has none yet, and offers the
// client to the kernel when nothing of it is buffered.
func (cl *client) fastIdle() {
	f := cl.fast
	if up := cl.up; up != nil && up.bufs.r.Buffered() == 0 {
		if slot, ok := f.fc.Slot(up.addr); ok && cl.pair(slot, up) {
			cl.up = nil
		}
	}
	if cl.bufs.r.Buffered() > 0 || cl.bufs.w.Buffered() > 0 {
		cl.fastInactive()
		return
	}
	read := f.cc.read.Load() - uint64(cl.bufs.r.Buffered())
	f.fc.Handback(read, f.cc.written.Load())
	cl.fastInactive()
}

// pair hands up to the kernel for slot and watches it; it reports whether
// it did (the slot may be paired already, or the upstream's socket not be
// in the kernel's map).
func (cl *client) pair(slot uint32, up *upConn) bool {
	f := cl.fast
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.ups[slot] != nil {
		return false
	}
	if err := f.fc.Pair(slot, up.c); err != nil {
		cl.p.log.Debug("fast path: upstream not paired", "upstream", up.addr, "err", err)
		return false
	}
	f.ups[slot] = up
	f.wg.Add(1)
	go cl.watch(slot, up)
	return true
}

// fastWait runs before the proxy serves a request the kernel passed it:
// a response the kernel (or watch) is still delivering must be whole
// before the proxy writes to the client.
func (cl *client) fastWait() bool {
	ctx, cancel := context.WithTimeout(cl.ctx, fastCloseWait)
	defer cancel()
	return cl.fast.fc.WaitIdle(ctx) == nil
}

// watch reads a paired upstream connection. The kernel puts the responses
// to the requests it routed there into the client's queue itself; what
// comes here is a response it left to the proxy (taken), or bytes no one
// asked for, or the end of the connection.
func (cl *client) watch(slot uint32, up *upConn) {
	f := cl.fast
	defer f.wg.Done()
	for {
		_, err := up.bufs.r.Peek(1)
		busy, cur, taken, head := f.fc.Pending()
		if err == nil && busy && cur == slot && taken {
			if n, ok := f.fc.Tail(); ok {
				// The end of a response the kernel began: it comes
				// after what the kernel queued, before the answer to
				// the request pipelined behind it.
				f.w.Lock()
				_, err := io.CopyN(cl.bufs.w, up.bufs.r, int64(n))
				if err == nil {
					err = cl.bufs.w.Flush()
				}
				f.fc.FinishTaken()
				f.w.Unlock()
				if err == nil {
					continue
				}
				cl.unpair(slot, up)
				cl.abort()
				return
			}
			method := "GET"
			if head {
				method = "HEAD"
			}
			f.w.Lock()
			res := cl.forwardTaken(up, method)
			f.fc.FinishTaken()
			f.w.Unlock()
			if res.err == nil && res.keepAlive && (res.framing == http1.FixedLength || res.framing == http1.Chunked) {
				continue
			}
			cl.unpair(slot, up)
			cl.abort()
			return
		}
		// The upstream closed, or said what no request asked for (bytes
		// while idle, or past the end of a response): it goes. Once
		// unpaired, the kernel routes no request to it; one it routed
		// before will get no response, so the client is reset, as the
		// upstream's close would have reset a direct client, rather
		// than left waiting.
		cl.unpair(slot, up)
		if busy, cur, taken, _ := f.fc.Pending(); busy && cur == slot && !taken {
			f.fc.FinishTaken() // settled: a close must not wait for it
			cl.abort()
		}
		return
	}
}

// forwardTaken forwards a response the kernel left to the proxy. The client
// goroutine does not write meanwhile: it waits for the kernel's request to
// be answered (fastWait), which FinishTaken records after this.
func (cl *client) forwardTaken(up *upConn, method string) result {
	var resp http1.Response
	var res result
	ur, cw := up.bufs.r, cl.bufs.w
	for {
		n, err := readHead(ur, func(b []byte) (int, error) { return resp.Parse(b, method) })
		if err != nil {
			res.err = err
			return res
		}
		head, _ := ur.Peek(n)
		cw.Write(head)
		ur.Discard(n)
		if !resp.Interim() {
			break
		}
		if res.err = cw.Flush(); res.err != nil {
			return res
		}
	}
	res.framing, res.keepAlive = resp.Framing, resp.KeepAlive
	switch resp.Framing {
	case http1.FixedLength:
		_, res.err = http1.ForwardFixed(cw, ur, resp.ContentLength)
	case http1.Chunked:
		_, res.err = http1.ForwardChunked(cw, ur)
	case http1.UntilClose:
		_, res.err = http1.ForwardUntilEOF(cw, ur)
	}
	if err := cw.Flush(); res.err == nil {
		res.err = err
	}
	return res
}

func (cl *client) unpair(slot uint32, up *upConn) {
	f := cl.fast
	f.fc.Unpair(slot)
	f.mu.Lock()
	if f.ups[slot] == up {
		delete(f.ups, slot)
	}
	f.mu.Unlock()
	up.close()
}

// abort ends the client connection with a reset: a request is lost.
func (cl *client) abort() {
	if tc, ok := cl.c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	cl.c.Close()
}

// stopFast takes the client from the kernel as its connection ends: no
// request of it is routed there any more, the one under way gets its
// response first (within fastCloseWait), and the paired upstream
// connections close.
func (cl *client) stopFast() {
	f := cl.fast
	if f == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), fastCloseWait)
	f.fc.Close(ctx)
	cancel()
	f.mu.Lock()
	f.closed = true
	ups := f.ups
	f.ups = nil
	f.mu.Unlock()
	for _, up := range ups {
		up.c.Close() // its watch closes it
	}
	cl.fastInactive() // a watch may be forwarding
	f.wg.Wait()
	cl.fast = nil
}
