package netns_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

// TestPrivilegedCreateSurvivesIPNetnsAdd: a namespace made by Create can
// still be entered after `ip netns add` makes one of its own; without a
// shared /run/netns mount the second would hide the first.
func TestPrivilegedCreateSurvivesIPNetnsAdd(t *testing.T) {
	path := testutil.NewNetNS(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("iproute2 is needed: %v", err)
	}
	name := "dt-test-ipadd-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if err := netns.Do(path, func() error { return nil }); err != nil {
		t.Fatalf("the namespace made by Create cannot be entered after ip netns add: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "exec", name, "true").CombinedOutput(); err != nil {
		t.Fatalf("ip netns exec: %v\n%s", err, out)
	}
}

// TestPrivilegedListening: a socket listening inside a namespace is seen
// there, for its own address or, bound to any address, for every address;
// a port nothing listens on is not, and neither is a socket that is
// connected rather than listening.
func TestPrivilegedListening(t *testing.T) {
	path := testutil.NewNetNS(t)
	lnLo, err := netns.Listen(path, "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lnLo.Close()
	lnAny, err := netns.Listen(path, "tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer lnAny.Close()
	lo := netip.MustParseAddrPort(lnLo.Addr().String())
	anyPort := uint16(lnAny.Addr().(*net.TCPAddr).Port)
	// A connection accepted on lo: its socket has lo's port, not listening.
	d := &netns.Dialer{Path: path}
	c, err := d.DialContext(context.Background(), "tcp4", lo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client := netip.MustParseAddrPort(c.LocalAddr().String())

	for _, tt := range []struct {
		addr netip.AddrPort
		want bool
	}{
		{lo, true},
		{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), lo.Port()), false},
		{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), anyPort), true},
		{netip.AddrPortFrom(netip.MustParseAddr("10.1.2.3"), anyPort), true},
		{client, false},
	} {
		got, err := netns.Listening(path, tt.addr)
		if err != nil || got != tt.want {
			t.Errorf("Listening(%s) = %v, %v; want %v", tt.addr, got, err, tt.want)
		}
	}
	// The namespace's sockets only: another namespace has none of them.
	if got, err := netns.Listening(testutil.NewNetNS(t), lo); err != nil || got {
		t.Errorf("Listening(%s) in another namespace = %v, %v; want false", lo, got, err)
	}
}
