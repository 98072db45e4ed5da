package splice

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// Sockmaps take no MPTCP socket (the kernel answers EOPNOTSUPP), and Go dials
// and listens with MPTCP by default where the kernel has it (Go 1.24+).
var errMPTCP = errors.New("socket is MPTCP, sockmaps take plain TCP only: " +
	"dial with net.Dialer.SetMultipathTCP(false) and listen with net.ListenConfig.SetMultipathTCP(false) (pkg/netns.Listen does)")

// aLongTimeAgo is a deadline that has passed: it interrupts blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// withFD runs fn with the socket of c. The fd is only valid during fn.
func withFD(c *net.TCPConn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// checkTCP refuses anything but a plain TCP socket.
func checkTCP(fd int) error {
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	switch {
	case err != nil:
		return fmt.Errorf("socket protocol: %w", err)
	case proto == unix.IPPROTO_MPTCP:
		return errMPTCP
	case proto != unix.IPPROTO_TCP:
		return fmt.Errorf("socket protocol %d is not TCP", proto)
	}
	return nil
}

// cookieOf is the socket's cookie, as bpf_get_socket_cookie sees it.
func cookieOf(c *net.TCPConn) (uint64, error) {
	var cookie uint64
	err := withFD(c, func(fd int) error {
		if err := checkTCP(fd); err != nil {
			return err
		}
		var err error
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err != nil {
			return fmt.Errorf("socket cookie: %w", err)
		}
		return nil
	})
	return cookie, err
}

// inQueue is how many received bytes nobody has consumed yet: neither a
// read() nor the verdict program (which advances copied_seq as it takes
// skbs off the receive queue).
func inQueue(c *net.TCPConn) (int, error) {
	var n int
	err := withFD(c, func(fd int) error {
		var err error
		n, err = unix.IoctlGetInt(fd, unix.SIOCINQ)
		return err
	})
	return n, err
}

// written is how many bytes were ever queued for sending on c (write_seq,
// less the initial sequence number): acknowledged plus still in the write
// queue. TCP_INFO is read before SIOCOUTQ so that an ACK arriving in
// between can only make the sum smaller than the truth, never larger.
func written(c *net.TCPConn) (uint64, error) {
	var n uint64
	err := withFD(c, func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return fmt.Errorf("tcp_info: %w", err)
		}
		outq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		if err != nil {
			return fmt.Errorf("SIOCOUTQ: %w", err)
		}
		n = info.Bytes_acked + uint64(outq)
		return nil
	})
	return n, err
}

// setRcvlowat sets SO_RCVLOWAT. For TCP the kernel then calls
// tcp_data_ready(), so lowering it kicks the verdict program on bytes that
// are queued already; raising it holds new bytes in the receive queue.
func setRcvlowat(c *net.TCPConn, n int) error {
	return withFD(c, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, n)
	})
}

// drain reads, without blocking, everything the kernel has queued on c.
// It reports whether it met the end of the stream.
func drain(c *net.TCPConn) ([]byte, bool, error) {
	var out []byte
	eof := false
	err := withFD(c, func(fd int) error {
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			switch {
			case errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.EAGAIN):
				return nil
			case err != nil:
				return fmt.Errorf("drain: %w", err)
			case n == 0:
				eof = true
				return nil
			}
			out = append(out, buf[:n]...)
		}
	})
	return out, eof, err
}

const pollRDHUP = 0x2000 // POLLRDHUP

// hangup reports whether c's peer has finished sending (FIN: POLLRDHUP or
// POLLHUP) and the socket's pending error, if any, without reading.
func hangup(fd int) (done bool, err error) {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: pollRDHUP}}
	for {
		_, perr := unix.Poll(pfd, 0)
		if errors.Is(perr, unix.EINTR) {
			continue
		}
		if perr != nil {
			return true, fmt.Errorf("poll: %w", perr)
		}
		break
	}
	if pfd[0].Revents&unix.POLLERR != 0 {
		soerr, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if gerr != nil {
			return true, fmt.Errorf("SO_ERROR: %w", gerr)
		}
		if soerr != 0 {
			return true, unix.Errno(soerr)
		}
		return true, errors.New("socket error")
	}
	return pfd[0].Revents&(pollRDHUP|unix.POLLHUP) != 0, nil
}

// waitHangup blocks until c's peer has finished sending or c fails, on Go's
// netpoller: no thread is held while waiting and nothing is read. The
// kernel wakes the socket's waiters on FIN (sk_state_change) even while a
// verdict program takes its bytes, and does not wake them for bytes it
// redirects. A read deadline interrupts it.
func waitHangup(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var herr error
	if err := rc.Read(func(fd uintptr) bool {
		var done bool
		done, herr = hangup(int(fd))
		return done
	}); err != nil {
		return err
	}
	return herr
}
