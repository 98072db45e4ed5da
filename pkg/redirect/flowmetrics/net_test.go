package flowmetrics

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/splice"
)

// The flows TestPrivilegedSockOps measures are a proxy's, as the agent's L4
// relay makes them: the client and the server in one throw-away namespace,
// the proxy in another, joined by a veth, and the proxy's two sockets
// spliced in the kernel (pkg/redirect/splice).

var (
	proxyAddr = netip.MustParseAddr("10.252.0.1") // the agent's namespace
	peerAddr  = netip.MustParseAddr("10.252.0.2") // client and server
)

const (
	proxyPort  = 8000
	serverPort = 9000
	within     = 10 * time.Second
	mib        = 1 << 20
)

type testNet struct{ proxy, peers string }

func newNet(tb testing.TB) *testNet {
	tb.Helper()
	n := &testNet{proxy: testutil.NewNetNS(tb), peers: testutil.NewNetNS(tb)}
	testutil.Veth(tb, testutil.End{NetNS: n.proxy, Dev: "proxy0", Addr: proxyAddr}, testutil.End{NetNS: n.peers, Dev: "peer0", Addr: peerAddr})
	return n
}

// startSplicingProxy accepts connections in the proxy namespace, dials the
// server for each and splices the two. Each splice's error arrives on the
// returned channel.
func (n *testNet) startSplicingProxy(tb testing.TB) <-chan error {
	tb.Helper()
	s, err := splice.New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close splicer: %v", err)
		}
	})
	ln, err := netns.Listen(n.proxy, "tcp4", netip.AddrPortFrom(proxyAddr, proxyPort).String())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(func() { cancel(); ln.Close() })
	results := make(chan error, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				client := c.(*net.TCPConn)
				defer client.Close()
				d := netns.Dialer{Path: n.proxy}
				u, err := d.DialContext(ctx, "tcp4", netip.AddrPortFrom(peerAddr, serverPort).String())
				if err != nil {
					results <- fmt.Errorf("dial upstream: %w", err)
					return
				}
				defer u.Close()
				_, err = s.Splice(ctx, client, u.(*net.TCPConn))
				results <- err
			}()
		}
	}()
	return results
}

// serve runs handle for every connection to the server.
func (n *testNet) serve(tb testing.TB, handle func(*net.TCPConn)) {
	tb.Helper()
	ln, err := netns.Listen(n.peers, "tcp4", netip.AddrPortFrom(peerAddr, serverPort).String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
}

// dial connects a client to the proxy.
func (n *testNet) dial(tb testing.TB) *net.TCPConn {
	tb.Helper()
	d := netns.Dialer{Path: n.peers}
	c, err := d.DialContext(context.Background(), "tcp4", netip.AddrPortFrom(proxyAddr, proxyPort).String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func waitResult(tb testing.TB, results <-chan error) error {
	tb.Helper()
	select {
	case err := <-results:
		return err
	case <-time.After(60 * time.Second):
		tb.Fatal("splice did not return within 60s")
		return nil
	}
}

// stream is size deterministic pseudo-random bytes.
func stream(seed uint64, size int64) io.Reader {
	var s [32]byte
	s[0] = byte(seed)
	return io.LimitReader(rand.NewChaCha8(s), size)
}
