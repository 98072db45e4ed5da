package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An upstream HTTP/2 connection is read by peeking: what a read returns
// stays in the socket's receive queue until the next read has found newer
// bytes behind it, and only then is taken off (MSG_TRUNC, no copy).
//
// Why: a read that empties the receive queue after two small pushed
// segments came in makes the kernel send an ACK-only segment at once
// (__tcp_cleanup_rbuf), and most HTTP/2 servers send a response's HEADERS
// and DATA as two segments. Left queued, the response is acknowledged by
// the next frame the agent sends on that connection, as an HTTP/1
// response is by the next request: one packet fewer per request
// (docs/performance.md, "HTTP/2 by forwarding frames"). Taking bytes off
// while newer ones are queued never empties the queue, so it sends
// nothing either.
//
// SO_PEEK_OFF, which recent kernels accept for TCP, makes each peek
// start where the last ended; where the kernel refuses it, the connection
// is read as usual.
//
// Held bytes must never close the window the reader waits on: the
// kernel frees a received buffer only once all of its bytes have been
// read, so a few held bytes can pin many times their size (a zero window was seen with 3 KiB held
// and 117 KiB of the socket's 128 KiB in use). So before waiting with
// bytes held, the reader asks the socket how much memory its queue takes
// (SO_MEMINFO) and takes everything off when that passes a quarter of the
// receive buffer, below the half at which the kernel starts to shrink the
// window. Closing the connection takes the held bytes off first, so that
// the backend sees a FIN, not the reset unread data would cause.

// heldReader is the peeking reader of one upstream connection; its
// reader goroutine's alone, but for drop.
type heldReader struct {
	rc   syscall.RawConn
	held int // bytes returned by Read and still queued: the peek offset
	p    []byte
	n    int
	err  error
	peek func(fd uintptr) bool // r.peekFD, made once
}

// newHeldReader returns a peeking reader of c, or nil where the kernel or
// the socket does not allow it.
func newHeldReader(c net.Conn) *heldReader {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0)
	}); err != nil || serr != nil {
		return nil
	}
	r := &heldReader{rc: rc}
	r.peek = r.peekFD
	return r
}

func (r *heldReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p = p
	err := r.rc.Read(r.peek)
	r.p = nil
	switch {
	case err != nil:
		return 0, err
	case r.err != nil:
		return 0, r.err
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// peekFD peeks into r.p behind what is held; false: nothing there yet.
func (r *heldReader) peekFD(fd uintptr) bool {
	n, errno := recvfrom(fd, unsafe.Pointer(&r.p[0]), len(r.p), unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case errno == unix.EAGAIN:
		if r.held > 0 && queueIsLarge(fd) {
			r.take(fd)
		}
		return false
	case errno != 0:
		r.n, r.err = 0, errno
		return true
	}
	if n > 0 && r.held > 0 {
		// Newer bytes are queued, so the queue stays non-empty. Held
		// bytes are taken off at once: every peek walks them first.
		r.take(fd)
	}
	r.held += n
	r.n, r.err = n, nil
	return true
}

// take takes the held bytes off the queue.
func (r *heldReader) take(fd uintptr) {
	if d, errno := recvfrom(fd, nil, r.held, unix.MSG_TRUNC|unix.MSG_DONTWAIT); errno == 0 {
		r.held -= d
	}
}

// queueIsLarge: the receive queue takes more than a quarter of the
// socket's receive buffer (or the socket cannot tell).
func queueIsLarge(fd uintptr) bool {
	var m [unix.SK_MEMINFO_VARS]uint32
	n := uint32(unsafe.Sizeof(m))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO, uintptr(unsafe.Pointer(&m)), uintptr(unsafe.Pointer(&n)), 0)
	return errno != 0 || m[unix.SK_MEMINFO_RMEM_ALLOC] > m[unix.SK_MEMINFO_RCVBUF]/4
}

// drop takes everything queued off before the connection is closed; it
// may run beside Read, which then fails on the closed connection.
func (r *heldReader) drop() {
	r.rc.Control(func(fd uintptr) {
		recvfrom(fd, nil, 1<<30, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
	})
}

// recvfrom is recv(2) with flags, retried on EINTR. With MSG_TRUNC a TCP
// socket discards instead of copying, so buf may be nil.
func recvfrom(fd uintptr, buf unsafe.Pointer, n, flags int) (int, syscall.Errno) {
	for {
		r, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(buf), uintptr(n), uintptr(flags), 0, 0)
		if errno != unix.EINTR {
			return int(r), errno
		}
	}
}
