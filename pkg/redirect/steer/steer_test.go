package steer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

var (
	podAddr    = netip.MustParseAddr("10.250.0.1")
	clientAddr = netip.MustParseAddr("10.250.0.2")
)

const (
	steeredPort = 8080
	otherPort   = 9090
	within      = 5 * time.Second
)

func TestKeyOf(t *testing.T) {
	tests := []struct {
		name    string
		addr    netip.Addr
		port    uint16
		want    [4]byte // the key's address as it lies in memory
		wantErr bool
	}{
		{name: "ipv4", addr: podAddr, port: 8080, want: [4]byte{10, 250, 0, 1}},
		{name: "ipv4-mapped ipv6", addr: netip.MustParseAddr("::ffff:10.250.0.1"), port: 1, want: [4]byte{10, 250, 0, 1}},
		{name: "ipv6", addr: netip.MustParseAddr("fd00::1"), port: 8080, wantErr: true},
		{name: "zero addr", addr: netip.Addr{}, port: 8080, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := keyOf(tt.addr, tt.port)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("keyOf(%v) = %+v, want error", tt.addr, key)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got [4]byte
			binary.NativeEndian.PutUint32(got[:], key.Addr)
			if got != tt.want || key.Port != tt.port || key.Pad != 0 {
				t.Fatalf("keyOf(%v, %d) = %v/%d/%d, want %v/%d/0", tt.addr, tt.port, got, key.Port, key.Pad, tt.want, tt.port)
			}
		})
	}
}

// skLookupCtx mirrors struct bpf_sk_lookup for BPF_PROG_TEST_RUN.
type skLookupCtx struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      uint32
	RemoteIP6      [4]uint32
	RemotePort     uint16 // network byte order
	_              uint16
	LocalIP4       uint32
	LocalIP6       [4]uint32
	LocalPort      uint32
	IngressIfindex uint32
	_              uint32
}

func ip4(s string) uint32 {
	a := netip.MustParseAddr(s).As4()
	return binary.NativeEndian.Uint32(a[:])
}

// TestPrivilegedDecision runs the program on synthetic lookups: the kernel
// reports the cookie of the socket it would have assigned.
func TestPrivilegedDecision(t *testing.T) {
	testutil.RequirePrivileged(t)
	s := newSteering(t)
	ln := listen(t, "", "tcp4", "127.0.0.1:0", "agent")
	if err := s.Steer(podAddr, steeredPort, ln); err != nil {
		t.Fatal(err)
	}

	base := skLookupCtx{
		Family:     2, // AF_INET
		Protocol:   6, // IPPROTO_TCP
		RemoteIP4:  ip4("10.250.0.2"),
		RemotePort: 0x3930, // any port
		LocalIP4:   ip4("10.250.0.1"),
		LocalPort:  steeredPort,
	}
	tests := []struct {
		name  string
		edit  func(*skLookupCtx)
		steer bool
	}{
		{name: "remote client", edit: func(*skLookupCtx) {}, steer: true},
		{name: "agent dialling app from pod address", edit: func(c *skLookupCtx) { c.RemoteIP4 = c.LocalIP4 }},
		{name: "loopback", edit: func(c *skLookupCtx) { c.RemoteIP4 = ip4("127.0.0.1") }},
		{name: "loopback /8", edit: func(c *skLookupCtx) { c.RemoteIP4 = ip4("127.1.2.3") }},
		{name: "just outside loopback", edit: func(c *skLookupCtx) { c.RemoteIP4 = ip4("128.0.0.1") }, steer: true},
		{name: "port not steered", edit: func(c *skLookupCtx) { c.LocalPort = otherPort }},
		{name: "address not steered", edit: func(c *skLookupCtx) { c.LocalIP4 = ip4("10.250.0.3") }},
		{name: "udp", edit: func(c *skLookupCtx) { c.Protocol = 17 }},
		{name: "ipv6", edit: func(c *skLookupCtx) {
			c.Family, c.RemoteIP4, c.LocalIP4 = 10, 0, 0
			c.RemoteIP6, c.LocalIP6 = [4]uint32{0xfd, 0, 0, 2}, [4]uint32{0xfd, 0, 0, 1}
		}},
	}
	var want uint64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := base
			tt.edit(&in)
			var out skLookupCtx
			ret, err := s.objs.SteerLookup.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
			if err != nil {
				t.Fatal(err)
			}
			if ret != 1 { // SK_PASS
				t.Fatalf("verdict %d, want SK_PASS", ret)
			}
			if got := out.Cookie != 0; got != tt.steer {
				t.Fatalf("assigned a socket: %v, want %v", got, tt.steer)
			}
			if tt.steer {
				want++
			}
		})
	}
	if got, err := s.Connections(podAddr, steeredPort); err != nil || got != want {
		t.Fatalf("Connections = %d, %v; want %d", got, err, want)
	}
}

func TestPrivilegedSteering(t *testing.T) {
	testutil.RequirePrivileged(t)
	tests := []struct {
		name, network, bind string
	}{
		{name: "tcp4 wildcard", network: "tcp4", bind: "0.0.0.0:0"},
		{name: "tcp4 pod address", network: "tcp4", bind: podAddr.String() + ":0"},
		{name: "dual-stack wildcard", network: "tcp", bind: "[::]:0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNet(t)
			agent := listen(t, n.pod, tt.network, tt.bind, "agent")

			s := newSteering(t)
			n.expect(t, n.client, steeredPort, "app")

			// Go's default listener is MPTCP where the kernel has it.
			mptcp, err := netns.Listen(n.pod, tt.network, tt.bind)
			if err != nil {
				t.Fatal(err)
			}
			defer mptcp.Close()
			isMPTCP := protocol(t, mptcp.(*net.TCPListener)) == unix.IPPROTO_MPTCP
			t.Logf("default Go listener is MPTCP: %v", isMPTCP)
			err = s.Steer(podAddr, steeredPort, mptcp.(*net.TCPListener))
			if isMPTCP != errors.Is(err, errMPTCP) || (!isMPTCP && err != nil) {
				t.Fatalf("Steer with a default Go listener (MPTCP: %v): %v", isMPTCP, err)
			}
			if err := s.Unsteer(podAddr, steeredPort); err != nil {
				t.Fatal(err)
			}

			if err := s.Attach(n.pod); err != nil {
				t.Fatal(err)
			}
			if err := s.Attach(n.pod); err != nil { // idempotent
				t.Fatal(err)
			}
			if got := s.Attached(); !slices.Equal(got, []string{n.pod}) {
				t.Fatalf("Attached() = %v, want [%s]", got, n.pod)
			}
			n.expectLinks(t, 1)
			// Attached but nothing steered: nothing changes.
			n.expect(t, n.client, steeredPort, "app")

			if err := s.Steer(podAddr, steeredPort, agent); err != nil {
				t.Fatal(err)
			}
			const steered = 3
			for range steered {
				// The agent sees the original destination as its local address.
				n.expect(t, n.client, steeredPort, "agent@10.250.0.1:8080")
			}
			n.expect(t, n.client, otherPort, "app")
			// The agent dials the app from inside the pod: exempt.
			n.expect(t, n.pod, steeredPort, "app")
			if got, err := s.Connections(podAddr, steeredPort); err != nil || got != steered {
				t.Fatalf("Connections = %d, %v; want %d", got, err, steered)
			}

			if err := s.Unsteer(podAddr, steeredPort); err != nil {
				t.Fatal(err)
			}
			n.expect(t, n.client, steeredPort, "app")
			if got, err := s.Connections(podAddr, steeredPort); err != nil || got != 0 {
				t.Fatalf("Connections after Unsteer = %d, %v; want 0", got, err)
			}
			if err := s.Unsteer(podAddr, steeredPort); err != nil {
				t.Fatalf("second Unsteer: %v", err)
			}

			if err := s.Steer(podAddr, steeredPort, agent); err != nil {
				t.Fatal(err)
			}
			n.expect(t, n.client, steeredPort, "agent@10.250.0.1:8080")
			if err := s.Detach(n.pod); err != nil {
				t.Fatal(err)
			}
			if got := s.Attached(); len(got) != 0 {
				t.Fatalf("Attached() after Detach = %v", got)
			}
			n.expectLinks(t, 0)
			n.expect(t, n.client, steeredPort, "app")

			if err := s.Attach(n.pod); err != nil {
				t.Fatal(err)
			}
			n.expect(t, n.client, steeredPort, "agent@10.250.0.1:8080")
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			n.expectLinks(t, 0)
			n.expect(t, n.client, steeredPort, "app")
			if err := s.Attach(n.pod); !errors.Is(err, ErrClosed) {
				t.Fatalf("Attach after Close: %v, want ErrClosed", err)
			}
		})
	}
}

// TestPrivilegedAgentDeath kills an agent process that steers a port and
// checks that traffic flows to the app again: the kernel drops the link with
// the process's file descriptors.
func TestPrivilegedAgentDeath(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNet(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestAgentProcess$", "-test.v")
	cmd.Env = append(os.Environ(), agentEnv+"="+n.pod)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe() // the agent lives until stdin closes
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- nil
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- fmt.Errorf("agent process exited before ready: %v", sc.Err())
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent process not ready within 30s")
	}

	n.expect(t, n.client, steeredPort, "agent@10.250.0.1:8080")
	n.expectLinks(t, 1)

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	n.expectLinks(t, 0)
	n.expect(t, n.client, steeredPort, "app")
}

const agentEnv = "DETOUR_STEER_TEST_AGENT_NETNS"

// TestAgentProcess is the agent process of TestPrivilegedAgentDeath; it does
// nothing unless started by that test.
func TestAgentProcess(t *testing.T) {
	pod := os.Getenv(agentEnv)
	if pod == "" {
		return
	}
	agent := listen(t, pod, "tcp4", "0.0.0.0:0", "agent")
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(pod); err != nil {
		t.Fatal(err)
	}
	if err := s.Steer(podAddr, steeredPort, agent); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // killed before this returns
}

func protocol(t *testing.T, ln *net.TCPListener) int {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var proto int
	var perr error
	if err := rc.Control(func(fd uintptr) {
		proto, perr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	}); err != nil {
		t.Fatal(err)
	}
	if perr != nil {
		t.Fatal(perr)
	}
	return proto
}

func newSteering(t *testing.T) *Steering {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// testNet is a pod namespace holding podAddr, with an app on
// podAddr:steeredPort and on *:otherPort, and a client namespace holding
// clientAddr, joined by a veth pair.
type testNet struct {
	pod, client string
	podIno      uint64
}

func newNet(t *testing.T) *testNet {
	t.Helper()
	n := &testNet{pod: testutil.NewNetNS(t), client: testutil.NewNetNS(t)}
	ino, err := netns.Inode(n.pod)
	if err != nil {
		t.Fatal(err)
	}
	n.podIno = ino

	testutil.Veth(t, testutil.End{NetNS: n.pod, Dev: "pod0", Addr: podAddr}, testutil.End{NetNS: n.client, Dev: "client0", Addr: clientAddr})

	listen(t, n.pod, "tcp4", netip.AddrPortFrom(podAddr, steeredPort).String(), "app")
	listen(t, n.pod, "tcp4", fmt.Sprintf("0.0.0.0:%d", otherPort), "app")
	return n
}

// listen serves name on a listener inside the namespace at path; the agent
// ("agent") also writes the local address the connection arrived at. Apps
// listen as Go does by default (MPTCP where the kernel has it); the agent
// listens with plain TCP, as sockmaps require.
func listen(t *testing.T, path, network, addr, name string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := netns.Do(path, func() error {
		var lc net.ListenConfig
		if name == "agent" {
			lc.SetMultipathTCP(false)
		}
		var err error
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, path, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			msg := name
			if name == "agent" {
				local := c.LocalAddr().(*net.TCPAddr).AddrPort()
				msg = fmt.Sprintf("agent@%v", netip.AddrPortFrom(local.Addr().Unmap(), local.Port()))
			}
			_, _ = c.Write([]byte(msg))
			c.Close()
		}
	}()
	return ln.(*net.TCPListener)
}

// who dials podAddr:port from the namespace at from and returns what the
// server that answered says.
func who(from string, port uint16) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d := netns.Dialer{Path: from}
	c, err := d.DialContext(ctx, "tcp4", netip.AddrPortFrom(podAddr, port).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// expect checks that a new connection from the namespace at from to
// podAddr:port is answered by want.
func (n *testNet) expect(t *testing.T, from string, port uint16, want string) {
	t.Helper()
	got, err := who(from, port)
	if err != nil || got != want {
		t.Fatalf("connection from %s to port %d: got %q, %v; want %q", from, port, got, err, want)
	}
}

// expectLinks waits until the pod namespace has want links of our program.
func (n *testNet) expectLinks(t *testing.T, want int) {
	t.Helper()
	testutil.Eventually(t, within, func() error {
		ids, err := LinkIDs(n.podIno)
		if err != nil {
			return err
		}
		if len(ids) != want {
			return fmt.Errorf("links in pod netns: %v, want %d", ids, want)
		}
		return nil
	})
}

// openFDs lists the process's open descriptors.
func openFDs(t *testing.T) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []int
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err == nil {
			fds = append(fds, fd)
		}
	}
	return fds
}

// TestPrivilegedLinkHeldAboveEveryDescriptor: a link is held at a
// descriptor above every other of the process, those opened after it
// included (as the agent's listeners and connections are), so that a
// SIGKILLed agent's link is released before its sockets; detaching lets go
// of it. TestPrivilegedAgentSIGKILLFailsOpen (test/integration) shows what
// it is for.
func TestPrivilegedLinkHeldAboveEveryDescriptor(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNet(t)
	s := newSteering(t)
	if err := s.Attach(n.pod); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
	}
	s.mu.Lock()
	high := s.links[n.podIno].high
	s.mu.Unlock()
	fds := openFDs(t)
	if slices.Max(fds) != high {
		t.Fatalf("the link is held at descriptor %d, below %d", high, slices.Max(fds))
	}
	if target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", high)); err != nil || target != "anon_inode:bpf_link" {
		t.Fatalf("descriptor %d is %q (%v), want the link", high, target, err)
	}
	if err := s.Detach(n.pod); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(openFDs(t), high) {
		t.Fatalf("descriptor %d still open after Detach", high)
	}
	n.expectLinks(t, 0)
}
