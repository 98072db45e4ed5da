package netns

import (
	"net"
	"net/netip"
	"testing"
)

func TestListensFor(t *testing.T) {
	dest := netip.MustParseAddr("10.0.0.9")
	for _, tt := range []struct {
		bound string
		want  bool
	}{
		{"0.0.0.0", true},
		{"::", true},
		{"10.0.0.9", true},
		{"::ffff:10.0.0.9", true},
		{"127.0.0.1", false},
		{"10.0.0.8", false},
	} {
		if got := listensFor(net.ParseIP(tt.bound).To16(), dest); got != tt.want {
			t.Errorf("listensFor(%s, %s) = %v, want %v", tt.bound, dest, got, tt.want)
		}
	}
	// sock_diag gives IPv4 addresses in 4 bytes too.
	if !listensFor(net.ParseIP("10.0.0.9").To4(), dest) {
		t.Error("a 4-byte address was not recognised")
	}
}

// TestListenerFor: what a sock_diag message says is read at the offsets of
// struct inet_diag_msg, and a message too short to be one is no listener.
func TestListenerFor(t *testing.T) {
	addr := netip.MustParseAddrPort("10.0.0.9:8080")
	msg := func(family, state byte, port uint16, src string) []byte {
		m := make([]byte, 72)
		m[0], m[1] = family, state
		m[4], m[5] = byte(port>>8), byte(port)
		ip := net.ParseIP(src)
		if family == 2 {
			copy(m[8:], ip.To4())
		} else {
			copy(m[8:], ip.To16())
		}
		return m
	}
	for _, tt := range []struct {
		name string
		msg  []byte
		want bool
	}{
		{"IPv4, its address", msg(2, tcpListen, 8080, "10.0.0.9"), true},
		{"IPv4, any address", msg(2, tcpListen, 8080, "0.0.0.0"), true},
		{"IPv6, any address", msg(10, tcpListen, 8080, "::"), true},
		{"IPv6, mapped", msg(10, tcpListen, 8080, "::ffff:10.0.0.9"), true},
		{"another port", msg(2, tcpListen, 8081, "10.0.0.9"), false},
		{"another address", msg(2, tcpListen, 8080, "10.0.0.8"), false},
		{"established", msg(2, 1, 8080, "10.0.0.9"), false},
		{"short", msg(2, tcpListen, 8080, "10.0.0.9")[:71], false},
	} {
		if got := listenerFor(tt.msg, addr); got != tt.want {
			t.Errorf("%s: listenerFor = %v, want %v", tt.name, got, tt.want)
		}
	}
}
