package splice

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

const directPort = 7000

// benchConn is a client connection to an echo (ping-pong) or a sink
// (throughput) through path: "direct" (a server in the proxy's namespace,
// one veth crossing), "splice" or "copy" (through the proxy, two).
func benchConn(b *testing.B, path string, echo bool) *net.TCPConn {
	b.Helper()
	testutil.RequirePrivileged(b)
	n := newNet(b)
	handle := func(c *net.TCPConn) {
		if echo {
			_, _ = io.Copy(c, c)
		} else {
			_, _ = io.Copy(io.Discard, c)
		}
		_ = c.CloseWrite()
	}
	switch path {
	case "direct":
		ln, err := netns.Listen(n.proxy, "tcp4", netip.AddrPortFrom(proxyAddr, directPort).String())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go handle(c.(*net.TCPConn))
			}
		}()
		d := netns.Dialer{Path: n.peers}
		c, err := d.DialContext(context.Background(), "tcp4", netip.AddrPortFrom(proxyAddr, directPort).String())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	case "splice":
		s := newSplicer(b)
		n.startProxy(b, s.Splice, proxyOpts{})
		n.serve(b, handle)
		c := n.dial(b)
		<-whenSpliced(s, 2)
		return c
	default:
		n.startProxy(b, Copy, proxyOpts{})
		n.serve(b, handle)
		return n.dial(b)
	}
}

var benchPaths = []string{"direct", "splice", "copy"}

// BenchmarkThroughput streams 1 MiB per op one way.
func BenchmarkThroughput(b *testing.B) {
	for _, path := range benchPaths {
		b.Run(path, func(b *testing.B) {
			c := benchConn(b, path, false)
			buf := make([]byte, mib)
			b.SetBytes(mib)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			// Wait for the sink to have it all: half-close, read its EOF.
			if err := c.CloseWrite(); err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, c); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkPingPong is one round trip of 64 bytes per op, the shape of a
// small request and its response.
func BenchmarkPingPong(b *testing.B) {
	for _, path := range benchPaths {
		b.Run(path, func(b *testing.B) {
			c := benchConn(b, path, true)
			msg, got := make([]byte, 64), make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
