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
