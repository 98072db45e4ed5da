package splice

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
)

// Moved counts the bytes a Splice or Copy moved each way.
type Moved struct {
	AToB, BToA uint64
	// Userspace is how many of them passed through the agent's memory: all
	// of them for Copy; for Splice, the bytes already queued on the sockets
	// when it started and any direction that fell back to copying.
	Userspace uint64
}

// Copy moves bytes both ways between a and b in userspace until both
// directions have ended, the way Splice does in the kernel: the end of one
// direction (EOF) is passed on as a half-close (CloseWrite) of the other
// side, and the other direction goes on until its own EOF. It is the
// fallback for when the kernel refuses to splice (ErrRefused). It returns on
// the first error, or when ctx ends, with both connections' deadlines set in
// the past; it closes neither connection.
//
// Copy uses io.Copy, which between two TCP connections is
// (*net.TCPConn).ReadFrom: splice(2) through a pipe, so even this path does
// not copy the payload into Go's memory, though every chunk costs syscalls.
func Copy(ctx context.Context, a, b *net.TCPConn) (Moved, error) {
	return copyBoth(ctx, a, b, false)
}

func copyBoth(parent context.Context, a, b *net.TCPConn, plain bool) (Moved, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		_ = a.SetDeadline(aLongTimeAgo)
		_ = b.SetDeadline(aLongTimeAgo)
	})
	defer stop()

	var (
		wg         sync.WaitGroup
		aToB, bToA uint64
		errA, errB error
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		aToB, errA = copyHalf(b, a, plain)
		if errA != nil {
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		bToA, errB = copyHalf(a, b, plain)
		if errB != nil {
			cancel()
		}
	}()
	wg.Wait()
	m := Moved{AToB: aToB, BToA: bToA, Userspace: aToB + bToA}
	if err := parent.Err(); err != nil {
		return m, err
	}
	// The direction that failed first cancelled the other one: report the
	// cause, not the deadline that interrupted the other.
	for _, err := range []error{errA, errB} {
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return m, err
		}
	}
	return m, errors.Join(errA, errB)
}

// copyHalf copies src to dst until src's EOF, then half-closes dst. With
// plain it reads into a buffer (a socket in a sockmap must be read with
// read(), where the kernel queues what the verdict passed; splice(2) would
// read the TCP receive queue past it).
func copyHalf(dst *net.TCPConn, src io.Reader, plain bool) (uint64, error) {
	var (
		n   int64
		err error
	)
	if plain {
		n, err = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 256<<10))
	} else {
		n, err = io.Copy(dst, src)
	}
	if err != nil {
		return uint64(n), err
	}
	return uint64(n), dst.CloseWrite()
}
