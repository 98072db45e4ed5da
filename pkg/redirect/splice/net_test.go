package splice

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

var (
	proxyAddr = netip.MustParseAddr("10.252.0.1") // the agent's namespace
	peerAddr  = netip.MustParseAddr("10.252.0.2") // client and server
)

const (
	proxyPort  = 8000
	serverPort = 9000
	within     = 10 * time.Second
)

// testNet is two throw-away namespaces joined by a veth pair: the proxy's,
// and the one where the client and the server live, so both legs of a
// proxied connection cross the veth.
type testNet struct{ proxy, peers string }

func newNet(tb testing.TB) *testNet {
	tb.Helper()
	n := &testNet{proxy: testutil.NewNetNS(tb), peers: testutil.NewNetNS(tb)}
	testutil.Veth(tb, testutil.End{NetNS: n.proxy, Dev: "proxy0", Addr: proxyAddr}, testutil.End{NetNS: n.peers, Dev: "peer0", Addr: peerAddr})
	return n
}

// relayFunc is what the proxy does with an accepted client and the upstream
// connection it dialled for it.
type relayFunc func(ctx context.Context, client, upstream *net.TCPConn) (Moved, error)

type proxyOpts struct {
	mptcp bool // dial upstream as Go does by default (MPTCP where possible)
	// before runs on the two connections before relay, as the agent reads
	// a request head and flushes what it read.
	before func(client, upstream *net.TCPConn) error
}

type relayResult struct {
	m   Moved
	err error
}

// startProxy accepts connections in the proxy namespace, dials the server
// for each and relays. Results arrive on the returned channel.
func (n *testNet) startProxy(tb testing.TB, relay relayFunc, opts proxyOpts) <-chan relayResult {
	tb.Helper()
	ln, err := netns.Listen(n.proxy, "tcp4", netip.AddrPortFrom(proxyAddr, proxyPort).String())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(func() { cancel(); ln.Close() })
	results := make(chan relayResult, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				client := c.(*net.TCPConn)
				defer client.Close()
				u, err := n.dialUpstream(ctx, opts.mptcp)
				if err != nil {
					results <- relayResult{err: fmt.Errorf("dial upstream: %w", err)}
					return
				}
				upstream := u.(*net.TCPConn)
				defer upstream.Close()
				if opts.before != nil {
					if err := opts.before(client, upstream); err != nil {
						results <- relayResult{err: fmt.Errorf("before relay: %w", err)}
						return
					}
				}
				m, err := relay(ctx, client, upstream)
				results <- relayResult{m: m, err: err}
			}()
		}
	}()
	return results
}

// dialUpstream connects the proxy to the server. pkg/netns.Dialer always
// turns MPTCP off (the agent's sockets must go into sockmaps), so an MPTCP
// upstream, as Go dials by default, is made here with a plain net.Dialer.
func (n *testNet) dialUpstream(ctx context.Context, mptcp bool) (net.Conn, error) {
	addr := netip.AddrPortFrom(peerAddr, serverPort).String()
	if !mptcp {
		d := netns.Dialer{Path: n.proxy}
		return d.DialContext(ctx, "tcp4", addr)
	}
	var c net.Conn
	err := netns.Do(n.proxy, func() error {
		var d net.Dialer
		d.SetMultipathTCP(true)
		var err error
		c, err = d.DialContext(ctx, "tcp4", addr)
		return err
	})
	return c, err
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

func waitResult(tb testing.TB, results <-chan relayResult) relayResult {
	tb.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(60 * time.Second):
		tb.Fatal("relay did not return within 60s")
		return relayResult{}
	}
}

// stream is size deterministic pseudo-random bytes.
func stream(seed uint64, size int64) io.Reader {
	var s [32]byte
	s[0] = byte(seed)
	return io.LimitReader(rand.NewChaCha8(s), size)
}

type digest [sha256.Size]byte

// talk writes size bytes of stream seed to c, half-closes, and at the same
// time reads c to EOF. It returns the digests of what it sent and received.
func talk(c *net.TCPConn, seed uint64, size int64) (sent, got digest, n int64, err error) {
	if err := c.SetDeadline(time.Now().Add(60 * time.Second)); err != nil {
		return sent, got, 0, err
	}
	werr := make(chan error, 1)
	go func() {
		h := sha256.New()
		_, err := io.Copy(c, io.TeeReader(stream(seed, size), h))
		if err == nil {
			err = c.CloseWrite()
		}
		copy(sent[:], h.Sum(nil))
		werr <- err
	}()
	h := sha256.New()
	n, rerr := io.Copy(h, c)
	copy(got[:], h.Sum(nil))
	if err := <-werr; err != nil {
		return sent, got, n, fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return sent, got, n, fmt.Errorf("read: %w", rerr)
	}
	return sent, got, n, nil
}

// exchange moves size bytes each way at once between a client and the
// server through the proxy and checks that each side got exactly what the
// other sent.
// Both sides wait for gate, if not nil, before they send anything.
func (n *testNet) exchange(t *testing.T, size int64, results <-chan relayResult, gate <-chan struct{}) {
	t.Helper()
	defer func() {
		if t.Failed() {
			select {
			case r := <-results:
				t.Logf("relay: moved %+v, err %v", r.m, r.err)
			case <-time.After(5 * time.Second):
			}
		}
	}()
	type side struct {
		sent, got digest
		n         int64
		err       error
	}
	srv := make(chan side, 1)
	wait := func() {
		if gate != nil {
			<-gate
		}
	}
	n.serve(t, func(c *net.TCPConn) {
		wait()
		var s side
		s.sent, s.got, s.n, s.err = talk(c, 2, size)
		srv <- s
	})
	c := n.dial(t)
	wait()
	var cl side
	cl.sent, cl.got, cl.n, cl.err = talk(c, 1, size)
	if cl.err != nil {
		t.Fatalf("client: %v (read %d bytes)", cl.err, cl.n)
	}
	var sv side
	select {
	case sv = <-srv:
	case <-time.After(60 * time.Second):
		t.Fatal("server did not finish")
	}
	if sv.err != nil {
		t.Fatalf("server: %v (read %d bytes)", sv.err, sv.n)
	}
	if cl.n != size || sv.n != size {
		t.Fatalf("client read %d, server read %d; want %d each", cl.n, sv.n, size)
	}
	if cl.sent != sv.got {
		t.Fatalf("client to server: sha256 %x sent, %x received", cl.sent, sv.got)
	}
	if sv.sent != cl.got {
		t.Fatalf("server to client: sha256 %x sent, %x received", sv.sent, cl.got)
	}
}
