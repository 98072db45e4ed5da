package connect

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

func TestKeyOf(t *testing.T) {
	for _, tt := range []struct {
		in      string
		wantErr bool
	}{
		{in: "10.1.2.3:80"},
		{in: "[::ffff:10.1.2.3]:80"},
		{in: "[fd00::1]:80", wantErr: true},
		{in: "10.1.2.3:0", wantErr: true},
	} {
		k, err := keyOf(From{NetNS: 7, Addr: netip.MustParseAddrPort(tt.in)})
		if (err != nil) != tt.wantErr {
			t.Errorf("keyOf(%s) = %+v, %v; want error %v", tt.in, k, err, tt.wantErr)
		}
		if err == nil && (k.Port != 80 || k.Netns != 7) {
			t.Errorf("keyOf(%s) = %+v, want port 80 in host order and netns 7", tt.in, k)
		}
	}
}

// banner serves connections on ln by writing name and the caller's address
// as the server sees it, then closing.
func banner(t *testing.T, ln net.Listener, name string) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(name + " " + c.RemoteAddr().String() + "\n"))
			c.Close()
		}
	}()
}

type answer struct {
	server string         // who answered
	seenAs string         // the caller's address as the server saw it
	peer   netip.AddrPort // what getpeername told the caller
	local  netip.AddrPort
}

// dial connects from the namespace at nsPath ("" the test's own) to addr and
// reads the banner.
func dial(t *testing.T, nsPath string, addr netip.AddrPort) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	d := &netns.Dialer{Path: nsPath}
	c, err := d.DialContext(ctx, "tcp4", addr.String())
	if err != nil {
		t.Fatalf("dial %s from %q: %v", addr, nsPath, err)
	}
	defer c.Close()
	var a answer
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		var sa unix.Sockaddr
		if sa, serr = unix.Getpeername(int(fd)); serr == nil {
			in := sa.(*unix.SockaddrInet4)
			a.peer = netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(in.Port))
		}
	}); err != nil || serr != nil {
		t.Fatalf("getpeername: %v %v", err, serr)
	}
	a.local = c.LocalAddr().(*net.TCPAddr).AddrPort()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("banner from %s: %v", addr, err)
	}
	a.server, a.seenAs, _ = strings.Cut(strings.TrimSpace(line), " ")
	return a
}

func containsAll(ids, want []link.ID) bool {
	for _, id := range want {
		if !slices.Contains(ids, id) {
			return false
		}
	}
	return true
}

func addLoAddr(t *testing.T, nsPath string, addrs ...string) {
	t.Helper()
	err := netns.Do(nsPath, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: netlink.NewIPNet(net.ParseIP(a))}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedRedirect attaches the programs to the cgroup v2 root and
// checks what a caller sees: a connect from a pod namespace to a redirected
// address reaches the developer's server, which sees the caller's own
// address, while getpeername shows the address dialled; a caller in the
// host's namespace is left alone; deleting or closing ends the redirect.
func TestPrivilegedRedirect(t *testing.T) {
	testutil.RequirePrivileged(t)
	root, err := CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	pod := testutil.NewNetNS(t)
	// 10.251.0.1 is the intercepted pod, 10.251.0.2 the developer's.
	addLoAddr(t, pod, "10.251.0.1", "10.251.0.2")
	appLn, err := netns.Listen(pod, "tcp4", "10.251.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	banner(t, appLn, "app")
	app := appLn.Addr().(*net.TCPAddr).AddrPort()
	devLn, err := netns.Listen(pod, "tcp4", "10.251.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	banner(t, devLn, "dev")
	dev := devLn.Addr().(*net.TCPAddr).AddrPort()
	// The host namespace has an app of its own on a loopback address.
	hostLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	banner(t, hostLn, "host")
	hostApp := hostLn.Addr().(*net.TCPAddr).AddrPort()

	if got := dial(t, pod, app); got.server != "app" {
		t.Fatalf("before any redirect, %s answered %q", app, got.server)
	}

	r, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	var mine []link.ID
	for _, l := range r.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		mine = append(mine, info.ID)
	}
	if ids, err := LinkIDs(); err != nil || len(mine) != 3 || !containsAll(ids, mine) {
		t.Fatalf("LinkIDs() = %v, %v; want it to list this Redirects' 3 links %v", ids, err, mine)
	}
	if err := r.Set(From{Addr: app}, dev); err != nil {
		t.Fatal(err)
	}
	if err := r.Set(From{Addr: hostApp}, dev); err != nil {
		t.Fatal(err)
	}

	got := dial(t, pod, app)
	if got.server != "dev" {
		t.Fatalf("a connect to %s from a pod namespace was answered by %q, want dev", app, got.server)
	}
	if got.peer != app {
		t.Errorf("getpeername = %s, want the address dialled, %s", got.peer, app)
	}
	if got.seenAs != got.local.String() {
		t.Errorf("the developer's server saw the caller as %s, want its own address %s", got.seenAs, got.local)
	}
	// From the pod namespace, a loopback destination is redirected too:
	// the key is the address, whichever namespace it is dialled from.
	if got := dial(t, pod, hostApp); got.server != "dev" {
		t.Errorf("a connect to %s from a pod namespace was answered by %q, want dev", hostApp, got.server)
	}
	if got := dial(t, "", hostApp); got.server != "host" {
		t.Errorf("a connect to %s from the host namespace was answered by %q, want host (never redirected)", hostApp, got.server)
	}
	if n, err := r.Connections(From{Addr: app}); err != nil || n != 1 {
		t.Errorf("Connections(%s) = %d, %v; want 1", app, n, err)
	}
	if n, err := r.Connections(From{Addr: hostApp}); err != nil || n != 1 {
		t.Errorf("Connections(%s) = %d, %v; want 1 (the host's connect is not counted)", hostApp, n, err)
	}

	// Each redirected socket's origin is forgotten when it is closed.
	testutil.Eventually(t, 5*time.Second, func() error {
		var (
			cookie uint64
			o      connectConnectOrigin
			n      int
		)
		for it := r.objs.ConnectOrigins.Iterate(); it.Next(&cookie, &o); {
			n++
		}
		if n != 0 {
			return fmt.Errorf("%d origins kept after their sockets closed", n)
		}
		return nil
	})

	// Moving the redirect keeps its count.
	if err := r.Set(From{Addr: app}, hostApp); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.Connections(From{Addr: app}); n != 1 {
		t.Errorf("after Set to a new destination, Connections = %d, want 1", n)
	}
	if err := r.Set(From{Addr: app}, dev); err != nil {
		t.Fatal(err)
	}

	n, err := r.Delete(From{Addr: app})
	if err != nil || n != 1 {
		t.Errorf("Delete(%s) = %d, %v; want 1", app, n, err)
	}
	if got := dial(t, pod, app); got.server != "app" {
		t.Errorf("after Delete, %s answered %q, want app", app, got.server)
	}
	if n, err := r.Delete(From{Addr: app}); err != nil || n != 0 {
		t.Errorf("second Delete = %d, %v; want 0, nil", n, err)
	}

	if err := r.Set(From{Addr: app}, dev); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := dial(t, pod, app); got.server != "app" {
		t.Errorf("after Close, %s answered %q, want app (the programs detached)", app, got.server)
	}
	if ids, err := LinkIDs(); err != nil || slices.ContainsFunc(mine, func(id link.ID) bool { return slices.Contains(ids, id) }) {
		t.Errorf("after Close, LinkIDs() = %v, %v: still lists one of %v", ids, err, mine)
	}
	if err := r.Set(From{Addr: app}, dev); !errors.Is(err, ErrClosed) {
		t.Errorf("Set after Close = %v, want ErrClosed", err)
	}
}

func TestPrivilegedSetRefusesBadAddresses(t *testing.T) {
	testutil.RequirePrivileged(t)
	root, err := CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	good := netip.MustParseAddrPort("10.251.9.1:80")
	for _, tt := range []struct{ from, to string }{
		{"[fd00::1]:80", "10.251.9.2:80"},
		{"10.251.9.1:80", "[fd00::2]:80"},
		{"10.251.9.1:80", "10.251.9.2:0"},
	} {
		if err := r.Set(From{Addr: netip.MustParseAddrPort(tt.from)}, netip.MustParseAddrPort(tt.to)); err == nil {
			t.Errorf("Set(%s, %s) accepted", tt.from, tt.to)
		}
	}
	if n, err := r.Connections(From{Addr: good}); err != nil || n != 0 {
		t.Errorf("Connections of an address never set = %d, %v", n, err)
	}
}

// TestPrivilegedRedirectPerNamespace checks redirects for one caller
// namespace: they apply to that namespace's connects only, and win over a
// redirect for any namespace.
func TestPrivilegedRedirectPerNamespace(t *testing.T) {
	testutil.RequirePrivileged(t)
	root, err := CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	server, other := testutil.NewNetNS(t), testutil.NewNetNS(t)
	srvIP := netip.MustParseAddr("10.251.1.1")
	testutil.Veth(t, testutil.End{NetNS: server, Dev: "dtc0", Addr: srvIP},
		testutil.End{NetNS: other, Dev: "dtc1", Addr: netip.MustParseAddr("10.251.1.2")})
	listen := func(name string) netip.AddrPort {
		ln, err := netns.Listen(server, "tcp4", netip.AddrPortFrom(srvIP, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		banner(t, ln, name)
		return ln.Addr().(*net.TCPAddr).AddrPort()
	}
	app, dev, anyDev := listen("app"), listen("dev"), listen("any")
	otherNS, err := NetNSCookieOf(other)
	if err != nil {
		t.Fatal(err)
	}
	serverNS, err := NetNSCookieOf(server)
	if err != nil {
		t.Fatal(err)
	}
	if otherNS == 0 || otherNS == serverNS {
		t.Fatalf("netns cookies %d and %d: want two different non-zero ones", otherNS, serverNS)
	}

	r, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Set(From{NetNS: otherNS, Addr: app}, dev); err != nil {
		t.Fatal(err)
	}
	if got := dial(t, other, app); got.server != "dev" || got.peer != app {
		t.Errorf("from the namespace redirected: answered by %q, peer %s; want dev, peer %s", got.server, got.peer, app)
	}
	if got := dial(t, server, app); got.server != "app" {
		t.Errorf("from another namespace: answered by %q, want app (not redirected)", got.server)
	}
	if err := r.Set(From{Addr: app}, anyDev); err != nil {
		t.Fatal(err)
	}
	if got := dial(t, other, app); got.server != "dev" {
		t.Errorf("with an any-namespace redirect too, the namespace's own: answered by %q, want dev", got.server)
	}
	if got := dial(t, server, app); got.server != "any" {
		t.Errorf("with an any-namespace redirect, another namespace: answered by %q, want any", got.server)
	}
	if n, _ := r.Connections(From{NetNS: otherNS, Addr: app}); n != 2 {
		t.Errorf("the namespace's redirect counted %d, want 2", n)
	}
	if n, _ := r.Connections(From{Addr: app}); n != 1 {
		t.Errorf("the any-namespace redirect counted %d, want 1", n)
	}
}
