package splice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/redirect/internal/bpfutil"
)

const mib = 1 << 20

func newSplicer(tb testing.TB) *Splicer {
	tb.Helper()
	s, err := New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return s
}

// TestPrivilegedSplice moves 100 MiB each way at once through a spliced
// proxy and checks that none of it passed through userspace.
func TestPrivilegedSplice(t *testing.T) {
	testutil.RequirePrivileged(t)
	const size = 100 * mib
	n := newNet(t)
	s := newSplicer(t)
	results := n.startProxy(t, s.Splice, proxyOpts{})
	start := time.Now()
	// Nobody sends before both sockets are in the map, so that nothing is
	// queued for Splice to forward itself.
	n.exchange(t, size, results, whenSpliced(s, 2))
	r := waitResult(t, results)
	t.Logf("100 MiB each way in %v: %+v", time.Since(start), r.m)
	if r.err != nil {
		t.Fatalf("Splice: %v", r.err)
	}
	if r.m != (Moved{AToB: size, BToA: size}) {
		t.Fatalf("Moved = %+v, want %d each way, none in userspace", r.m, size)
	}
	if got, err := s.Sockets(); err != nil || got != 0 {
		t.Fatalf("sockets left in the map: %d, %v", got, err)
	}
}

// TestPrivilegedCopy is TestPrivilegedSplice through the userspace fallback.
func TestPrivilegedCopy(t *testing.T) {
	testutil.RequirePrivileged(t)
	const size = 100 * mib
	n := newNet(t)
	results := n.startProxy(t, Copy, proxyOpts{})
	n.exchange(t, size, results, nil)
	r := waitResult(t, results)
	if r.err != nil {
		t.Fatalf("Copy: %v", r.err)
	}
	if r.m != (Moved{AToB: size, BToA: size, Userspace: 2 * size}) {
		t.Fatalf("Moved = %+v, want %d each way, all in userspace", r.m, size)
	}
}

// whenSpliced closes the returned channel once want sockets are in the map,
// or once within has passed: the test then fails on what it sees next.
func whenSpliced(s *Splicer, want int) <-chan struct{} {
	gate := make(chan struct{})
	go func() {
		defer close(gate)
		_ = testutil.Poll(within, func() error {
			if n, err := s.Sockets(); err == nil && n < want {
				return fmt.Errorf("%d sockets in the map, want %d", n, want)
			}
			return nil
		})
	}()
	return gate
}

// TestPrivilegedHalfClose checks that a FIN is passed on each way and that
// the other direction goes on after it: one side says its piece and
// half-closes, the other answers only after it has seen that EOF.
func TestPrivilegedHalfClose(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, clientFirst := range []bool{true, false} {
		name := map[bool]string{true: "client closes first", false: "server closes first"}[clientFirst]
		t.Run(name, func(t *testing.T) {
			n := newNet(t)
			s := newSplicer(t)
			results := n.startProxy(t, s.Splice, proxyOpts{})
			first, second := []byte("first words"), []byte("answer after EOF")
			// speak writes msg and half-closes; answer reads to EOF, then
			// writes msg and half-closes; both return what they read.
			speak := func(c *net.TCPConn, msg []byte) ([]byte, error) {
				if _, err := c.Write(msg); err != nil {
					return nil, err
				}
				if err := c.CloseWrite(); err != nil {
					return nil, err
				}
				return io.ReadAll(c)
			}
			answer := func(c *net.TCPConn, msg []byte) ([]byte, error) {
				got, err := io.ReadAll(c)
				if err != nil {
					return got, err
				}
				if _, err := c.Write(msg); err != nil {
					return got, err
				}
				return got, c.CloseWrite()
			}
			srv := make(chan []byte, 1)
			gate := whenSpliced(s, 2)
			n.serve(t, func(c *net.TCPConn) {
				_ = c.SetDeadline(time.Now().Add(within))
				<-gate
				var got []byte
				if clientFirst {
					got, _ = answer(c, second)
				} else {
					got, _ = speak(c, first)
				}
				srv <- got
			})
			c := n.dial(t)
			_ = c.SetDeadline(time.Now().Add(within))
			<-gate
			var got []byte
			var err error
			if clientFirst {
				got, err = speak(c, first)
			} else {
				got, err = answer(c, second)
			}
			if err != nil {
				t.Fatalf("client: %v", err)
			}
			sgot := <-srv
			wantClient, wantServer := second, first
			if !clientFirst {
				wantClient, wantServer = first, second
			}
			if !bytes.Equal(got, wantClient) || !bytes.Equal(sgot, wantServer) {
				t.Fatalf("client got %q, server got %q; want %q, %q", got, sgot, wantClient, wantServer)
			}
			r := waitResult(t, results)
			if r.err != nil || r.m.Userspace != 0 {
				t.Fatalf("Splice: %+v, %v", r.m, r.err)
			}
		})
	}
}

// TestPrivilegedQueued splices connections with bytes already waiting in
// the kernel, or read in part by the proxy, when Splice starts: the echo
// only comes back if Splice forwards them, since nothing follows them.
func TestPrivilegedQueued(t *testing.T) {
	testutil.RequirePrivileged(t)
	hello := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	greeting := []byte("server speaks first")
	inq := func(c *net.TCPConn, want int) error {
		return testutil.Poll(within, func() error {
			n, err := inQueue(c)
			if err == nil && n < want {
				return fmt.Errorf("%d of %d bytes queued", n, want)
			}
			return err
		})
	}
	tests := []struct {
		name   string
		before func(client, upstream *net.TCPConn) error
		queued uint64 // bytes Splice forwards itself
	}{
		{
			name:   "client bytes queued",
			before: func(c, _ *net.TCPConn) error { return inq(c, len(hello)) },
			queued: uint64(len(hello)),
		},
		{
			name: "client bytes read in part by the proxy",
			before: func(c, u *net.TCPConn) error {
				if err := inq(c, len(hello)); err != nil {
					return err
				}
				head := make([]byte, 7) // the agent read a head...
				if _, err := io.ReadFull(c, head); err != nil {
					return err
				}
				_, err := u.Write(head) // ...and flushes it before Splice
				return err
			},
			queued: uint64(len(hello) - 7),
		},
		{
			name:   "server bytes queued",
			before: func(_, u *net.TCPConn) error { return inq(u, len(greeting)) },
			queued: uint64(len(greeting)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNet(t)
			s := newSplicer(t)
			results := n.startProxy(t, s.Splice, proxyOpts{before: tt.before})
			// The server greets, then echoes.
			n.serve(t, func(c *net.TCPConn) {
				if _, err := c.Write(greeting); err != nil {
					return
				}
				if _, err := io.Copy(c, c); err == nil {
					_ = c.CloseWrite()
				}
			})
			c := n.dial(t)
			_ = c.SetDeadline(time.Now().Add(within))
			if _, err := c.Write(hello); err != nil {
				t.Fatal(err)
			}
			want := append(append([]byte{}, greeting...), hello...)
			got := make([]byte, len(want))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("read greeting and echo: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("got %d bytes %.40q..., want %d bytes %.40q...", len(got), got, len(want), want)
			}
			// And the splice carries on in the kernel.
			more := []byte("more, after the splice")
			if _, err := c.Write(more); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(rest, more) {
				t.Fatalf("after splice: got %q, %v; want %q", rest, err, more)
			}
			r := waitResult(t, results)
			if r.err != nil {
				t.Fatalf("Splice: %v", r.err)
			}
			if r.m.Userspace < tt.queued {
				t.Fatalf("Moved = %+v, want at least %d bytes forwarded by Splice itself", r.m, tt.queued)
			}
		})
	}
}

// TestPrivilegedUserspaceDirection makes the verdict run on the client
// socket before its peer is in the map, the race the receive-queue hold
// narrows: that direction must fall back to userspace and lose nothing.
func TestPrivilegedUserspaceDirection(t *testing.T) {
	testutil.RequirePrivileged(t)
	const size = 8 * mib
	n := newNet(t)
	s := newSplicer(t)
	early := []byte("sent while only the client socket is in the map")
	var clientConn *net.TCPConn
	dialed, wrote := make(chan struct{}), make(chan struct{})
	s.afterFirstInsert = func(a, _ *net.TCPConn) {
		<-dialed
		defer close(wrote)
		if _, err := clientConn.Write(early); err != nil {
			t.Error(err)
			return
		}
		cookie, _ := cookieOf(a)
		// Given up on after within, the test fails on the bytes it gets.
		_ = testutil.Poll(within, func() error {
			if s.flags(cookie)&flagUserspace != 0 {
				return nil
			}
			_ = setRcvlowat(a, 1) // run the verdict now
			return errors.New("the direction has not fallen back to userspace")
		})
	}
	results := n.startProxy(t, s.Splice, proxyOpts{})
	// The server first reads the early bytes, then both talk.
	type side struct {
		early     []byte
		sent, got digest
		err       error
	}
	srv := make(chan side, 1)
	n.serve(t, func(c *net.TCPConn) {
		var sd side
		sd.early = make([]byte, len(early))
		if _, sd.err = io.ReadFull(c, sd.early); sd.err == nil {
			sd.sent, sd.got, _, sd.err = talk(c, 2, size)
		}
		srv <- sd
	})
	clientConn = n.dial(t)
	close(dialed)
	<-wrote
	sent, got, _, err := talk(clientConn, 1, size)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	sd := <-srv
	if sd.err != nil {
		t.Fatalf("server: %v", sd.err)
	}
	if !bytes.Equal(sd.early, early) || sent != sd.got || sd.sent != got {
		t.Fatalf("streams differ: client to server %v, server to client %v; moved %+v", sent == sd.got, sd.sent == got, waitResult(t, results).m)
	}
	r := waitResult(t, results)
	if r.err != nil {
		t.Fatalf("Splice: %v", r.err)
	}
	wantA := uint64(len(early)) + size
	if r.m.AToB != wantA || r.m.BToA != size || r.m.Userspace != wantA {
		t.Fatalf("Moved = %+v, want client to server (%d) in userspace, server to client (%d) in the kernel", r.m, wantA, size)
	}
}

// TestPrivilegedRelayMPTCP dials upstream the way Go does by default:
// MPTCP where the kernel has it. The kernel refuses that socket in a
// sockmap, and Relay falls back to Copy.
func TestPrivilegedRelayMPTCP(t *testing.T) {
	testutil.RequirePrivileged(t)
	const size = 4 * mib
	n := newNet(t)
	s := newSplicer(t)
	refused := make(chan error, 1)
	results := n.startProxy(t, func(ctx context.Context, a, b *net.TCPConn) (Moved, error) {
		m, err := s.Splice(ctx, a, b)
		refused <- err
		c, err := Copy(ctx, a, b)
		return Moved{AToB: m.AToB + c.AToB, BToA: m.BToA + c.BToA}, err
	}, proxyOpts{mptcp: true})
	n.exchange(t, size, results, nil)
	err := <-refused
	if !errors.Is(err, errMPTCP) || !errors.Is(err, ErrRefused) {
		t.Fatalf("Splice with an MPTCP upstream: %v, want ErrRefused naming MPTCP", err)
	}
	r := waitResult(t, results)
	if r.err != nil || r.m.AToB != size || r.m.BToA != size {
		t.Fatalf("Copy after refusal: %+v, %v", r.m, r.err)
	}
}

// TestPrivilegedClose checks that Close aborts an active splice, unloads
// the program, and is idempotent.
func TestPrivilegedClose(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNet(t)
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.programID()
	if err != nil {
		t.Fatal(err)
	}
	results := n.startProxy(t, s.Splice, proxyOpts{})
	n.serve(t, func(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) })
	n.dial(t)
	<-whenSpliced(s, 2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r := waitResult(t, results); !errors.Is(r.err, ErrClosed) {
		t.Fatalf("active Splice after Close: %v, want ErrClosed", r.err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Splice(context.Background(), nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Splice after Close: %v, want ErrClosed", err)
	}
	testutil.Eventually(t, within, func() error {
		if ok, err := bpfutil.ProgramLoaded(id); err != nil || ok {
			return fmt.Errorf("program %d still loaded (%v)", id, err)
		}
		return nil
	})
}
