package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Listening reports whether a TCP socket in the namespace at path accepts
// connections to addr: one listening on its port, bound to its address or
// to any address. It asks the kernel (sock_diag) for the namespace's
// listening sockets; nothing is sent to addr to find out.
//
// The agent asks this four times a second per destination of a connect-time
// intercept, so the request names the listening state only: the kernel then
// walks its table of listening sockets and not the node's connections
// (which a dump of every state walks, whatever the namespace), and sends
// no TCP_INFO.
func Listening(path string, addr netip.AddrPort) (bool, error) {
	var found bool
	err := Do(path, func() error {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			ok, err := listeningIn(family, addr)
			if err != nil {
				return fmt.Errorf("sock_diag: %w", err)
			}
			if ok {
				found = true
				return nil
			}
		}
		return nil
	})
	return found, err
}

const tcpListen = 10 // TCP_LISTEN in include/net/tcp_states.h

// listeningIn looks through the current namespace's listening TCP sockets
// of one family for one that takes connections to addr. A dump the kernel
// reports as interrupted (the table changed under it) is asked again.
func listeningIn(family uint8, addr netip.AddrPort) (bool, error) {
	for try := 0; ; try++ {
		var found bool
		req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
		req.AddData(listenDumpRequest{family: family})
		err := req.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
			if listenerFor(msg, addr) {
				found = true
				return false
			}
			return true
		})
		if found || err == nil {
			return found, nil
		}
		if !errors.Is(err, nl.ErrDumpInterrupted) || try == 2 {
			return false, err
		}
	}
}

// listenDumpRequest is a struct inet_diag_req_v2 (linux/inet_diag.h) that
// asks for a family's TCP sockets in the listening state, no extensions.
type listenDumpRequest struct{ family uint8 }

const sizeofInetDiagReqV2 = 56

func (r listenDumpRequest) Len() int { return sizeofInetDiagReqV2 }

func (r listenDumpRequest) Serialize() []byte {
	b := make([]byte, sizeofInetDiagReqV2)
	b[0] = r.family
	b[1] = unix.IPPROTO_TCP
	// b[2], extensions: none; b[3]: padding
	binary.NativeEndian.PutUint32(b[4:8], 1<<tcpListen)
	// the socket ID that follows (ports, addresses, interface, cookie) is
	// not a filter in a dump: zero
	return b
}

// listenerFor reports whether msg, a struct inet_diag_msg, is a listening
// socket that takes connections to addr. Its layout: family, state, timer,
// retransmits (a byte each), then the socket ID: source and destination
// ports (big endian), source and destination addresses (16 bytes each, an
// IPv4 one in the first 4).
func listenerFor(msg []byte, addr netip.AddrPort) bool {
	const sizeofInetDiagMsg = 72
	if len(msg) < sizeofInetDiagMsg || msg[1] != tcpListen {
		return false
	}
	if binary.BigEndian.Uint16(msg[4:6]) != addr.Port() {
		return false
	}
	src := msg[8:24]
	if msg[0] == unix.AF_INET {
		src = src[:4]
	}
	return listensFor(src, addr.Addr())
}

// listensFor reports whether a socket bound to bound accepts connections
// to addr: bound to it, or to any address (0.0.0.0, or :: which takes IPv4
// too unless IPV6_V6ONLY, the Linux default being dual-stack).
func listensFor(bound []byte, addr netip.Addr) bool {
	b, ok := netip.AddrFromSlice(bound)
	if !ok {
		return false
	}
	b = b.Unmap()
	return b.IsUnspecified() || b == addr
}
