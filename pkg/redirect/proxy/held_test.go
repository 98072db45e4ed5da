package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
	"golang.org/x/sys/unix"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); a.Close() })
	return c.(*net.TCPConn), a.(*net.TCPConn)
}

// mustHold returns a held reader of c; this kernel must allow one (in CI
// it does: a refusal fails the test there).
func mustHold(t *testing.T, c net.Conn) *heldReader {
	t.Helper()
	r := newHeldReader(c)
	if r == nil {
		if testutil.InCI() {
			t.Fatal("the kernel refuses SO_PEEK_OFF on TCP (CI=true forbids skipping)")
		}
		t.Skip("the kernel refuses SO_PEEK_OFF on TCP: upstreams are read as usual")
	}
	return r
}

// The stream read through a held reader is the stream written, byte for
// byte, whatever the sizes of writes and reads and the pauses between
// them, and it ends in io.EOF. Held bytes that pinned a large buffer and
// closed the window would stall it (a round takes 0.1 s; the test's
// deadline fails a stall).
func TestHeldReaderKeepsTheStream(t *testing.T) {
	for seed := range uint64(10) {
		heldStream(t, seed)
	}
}

func heldStream(t *testing.T, seed uint64) {
	c, peer := tcpPair(t)
	r := mustHold(t, c)
	want := make([]byte, 12<<20)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(want)
	rng := rand.New(rand.NewPCG(seed, 2))
	var stalled atomic.Bool
	deadline := time.AfterFunc(20*time.Second, func() { stalled.Store(true); c.Close() })
	defer deadline.Stop()
	go func() {
		rng := rand.New(rand.NewPCG(seed, 4))
		for rest := want; len(rest) > 0; {
			k := min(len(rest), 1+rng.IntN(70000))
			if rng.IntN(4) == 0 {
				k = min(len(rest), 1+rng.IntN(200)) // small pieces, as responses are
			}
			if _, err := peer.Write(rest[:k]); err != nil {
				return
			}
			rest = rest[k:]
			if rng.IntN(8) == 0 {
				time.Sleep(100 * time.Microsecond) // the reader finds the queue empty
			}
		}
		peer.CloseWrite()
	}()
	br := bufio.NewReaderSize(r, 32<<10)
	got := make([]byte, 0, len(want))
	buf := make([]byte, 50000)
	maxHeld := 0
	for {
		n, err := io.ReadFull(br, buf[:1+rng.IntN(len(buf))])
		got = append(got, buf[:n]...)
		maxHeld = max(maxHeld, r.held)
		if err != nil {
			if stalled.Load() {
				t.Fatalf("round %d: stalled for 20 s after %d bytes, %d of them held", seed, len(got), r.held)
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("round %d: after %d bytes: %v", seed, len(got), err)
			}
			break
		}
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("round %d: read %d bytes of %d; the first difference at %d", seed, len(got), len(want), i)
	}
	if limit := len(buf); maxHeld > limit { // what the last read returned, at most one buffer
		t.Errorf("held up to %d bytes, more than %d", maxHeld, limit)
	}
}

// Closing an upstream connection with bytes held takes them off first:
// the backend reads a FIN, not a reset.
func TestHeldConnClosesWithFIN(t *testing.T) {
	c, peer := tcpPair(t)
	p := New(Config{App: "127.0.0.1:1", Observer: &nopObserver{}})
	t.Cleanup(func() { p.Close() })
	if !p.track(c, nil) {
		t.Fatal("not tracked")
	}
	tc := &trackedConn{Conn: c, p: p}
	if tc.hold() == nil {
		mustHold(t, c)
	}
	if _, err := peer.Write([]byte("a response")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := tc.held.Read(buf)
	if err != nil || string(buf[:n]) != "a response" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if tc.held.held != n {
		t.Fatalf("%d bytes held, want %d", tc.held.held, n)
	}
	tc.Close()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("the backend read %d bytes, %v; want io.EOF", n, err)
	}
}

// What the held reader is for: a backend whose responses come in two
// pieces (Go's HTTP/2 server writes a head apart from the body) gets no
// ACK-only segment per response from the agent; the next request carries
// the acknowledgement.
func TestH2UpstreamResponsesAreAckedByRequests(t *testing.T) {
	var accepted atomic.Pointer[net.TCPConn]
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := serveH2Backend(t, "alice", acceptHook{l, func(c net.Conn) { accepted.Store(c.(*net.TCPConn)) }})
	probe, _ := tcpPair(t)
	mustHold(t, probe)
	_, addr, _ := startProxy(t, Config{App: b.addr, Observer: &recorder{}})
	client := h2Client(t)
	const n = 400
	for i := range n {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != "alice" || resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %q %v", i, resp.StatusCode, body, err)
		}
	}
	up := accepted.Load()
	if up == nil {
		t.Fatal("the backend accepted nothing")
	}
	rc, err := up.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if ierr != nil {
		t.Fatal(ierr)
	}
	pure := info.Segs_in - info.Data_segs_in
	t.Logf("the backend received %d segments, %d of them without data, for %d requests", info.Segs_in, pure, n)
	// Reading as usual sends one per request; a few more than none
	// allow for delayed ACKs on a loaded machine.
	if pure > n/4 {
		t.Errorf("the agent sent %d ACK-only segments for %d requests, want at most %d", pure, n, n/4)
	}
}

// acceptHook calls seen with every connection it accepts.
type acceptHook struct {
	net.Listener
	seen func(net.Conn)
}

func (l acceptHook) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.seen(c)
	}
	return c, err
}
