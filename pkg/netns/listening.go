package netns

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Listening reports whether a TCP socket in the namespace at path accepts
// connections to addr: one listening on its port, bound to its address or
// to any address. It asks the kernel (sock_diag) for the namespace's
// listening sockets; nothing is sent to addr to find out.
func Listening(path string, addr netip.AddrPort) (bool, error) {
	var found bool
	err := Do(path, func() error {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			socks, err := netlink.SocketDiagTCP(family)
			if err != nil {
				return fmt.Errorf("sock_diag: %w", err)
			}
			for _, s := range socks {
				if s.State == tcpListen && s.ID.SourcePort == addr.Port() && listensFor(s.ID.Source, addr.Addr()) {
					found = true
					return nil
				}
			}
		}
		return nil
	})
	return found, err
}

const tcpListen = 10 // TCP_LISTEN in include/net/tcp_states.h

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
