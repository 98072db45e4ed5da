//go:build unix

package proxy

import (
	"errors"
	"net"
	"syscall"
)

// alive tells whether a pooled connection can still carry a request. A
// non-blocking MSG_PEEK costs one syscall and catches the common case of an
// upstream that closed its idle side (EOF) or sent something unasked (an
// error response before timing out): either way the connection is unusable,
// and finding out now is cheaper than failing a request.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true // cannot tell; the request path copes with failures
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var (
		rerr error
		buf  [1]byte
	)
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait: this is a probe
	})
	if err != nil {
		return false
	}
	if errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) {
		return true // nothing to read: open and quiet
	}
	return false // EOF, unexpected bytes, or an error
}
