//go:build unix

package proxy

import (
	"errors"
	"net"
	"syscall"
)

// prober tells whether a pooled connection can still carry a request. A
// non-blocking MSG_PEEK costs one syscall and catches the common case of an
// upstream that closed its idle side (EOF) or sent something unasked (an
// error response before timing out): either way the connection is unusable,
// and finding out now is cheaper than failing a request. The raw connection
// and the callback are made once per connection, so a probe allocates
// nothing.
type prober struct {
	rc   syscall.RawConn // nil: cannot tell
	peek func(fd uintptr) bool
	err  error
	buf  [1]byte
}

func newProber(c net.Conn) *prober {
	pr := &prober{}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return pr
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		pr.err = err
		return pr
	}
	pr.rc = rc
	pr.peek = func(fd uintptr) bool {
		_, _, pr.err = syscall.Recvfrom(int(fd), pr.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait: this is a probe
	}
	return pr
}

func (pr *prober) alive() bool {
	if pr.rc == nil {
		return pr.err == nil // cannot tell; the request path copes with failures
	}
	if err := pr.rc.Read(pr.peek); err != nil {
		return false
	}
	if errors.Is(pr.err, syscall.EAGAIN) || errors.Is(pr.err, syscall.EWOULDBLOCK) {
		return true // nothing to read: open and quiet
	}
	return false // EOF, unexpected bytes, or an error
}
