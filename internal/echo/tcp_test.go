package echo

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// startTCP runs ServeTCP on a loopback port; stop ends it and returns its
// error.
func startTCP(t *testing.T, name string) (addr string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeTCP(ctx, ln, name) }()
	var once sync.Once
	var serveErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(10 * time.Second):
				serveErr = errors.New("ServeTCP did not return after its context ended")
			}
		})
		return serveErr
	}
	t.Cleanup(func() { stop() })
	return ln.Addr().String(), stop
}

func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

func TestTCPEcho(t *testing.T) {
	addr, _ := startTCP(t, "pod-t")
	for _, size := range []int{0, 1, 100, 3<<20 + 7} {
		c := dialTCP(t, addr)
		data, _ := io.ReadAll(io.LimitReader(Stream(uint64(size)), int64(size)))
		// Write and read at once: more than the socket buffers hold.
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			if err == nil {
				err = c.CloseWrite() // the half-close ends the echo
			}
			werr <- err
		}()
		br := bufio.NewReader(c)
		banner, err := br.ReadString('\n')
		if err != nil || banner != "pod-t\n" {
			t.Fatalf("size %d: banner %q, %v", size, banner, err)
		}
		got, err := io.ReadAll(br) // until the server closes
		if err != nil {
			t.Fatalf("size %d: read echo: %v", size, err)
		}
		if err := <-werr; err != nil {
			t.Fatalf("size %d: write: %v", size, err)
		}
		if sha256.Sum256(got) != sha256.Sum256(data) {
			t.Errorf("size %d: echoed %d bytes, differ from what was sent", size, len(got))
		}
	}
}

// Connections are served at once, each on its own.
func TestTCPEchoConcurrent(t *testing.T) {
	addr, _ := startTCP(t, "pod-t")
	a, b := dialTCP(t, addr), dialTCP(t, addr)
	ra, rb := bufio.NewReader(a), bufio.NewReader(b)
	for _, r := range []*bufio.Reader{ra, rb} {
		if l, err := r.ReadString('\n'); err != nil || l != "pod-t\n" {
			t.Fatalf("banner %q %v", l, err)
		}
	}
	// b is answered while a stays open and idle.
	io.WriteString(b, "to b")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(rb, buf); err != nil || string(buf) != "to b" {
		t.Fatalf("b: %q %v", buf, err)
	}
	io.WriteString(a, "to a")
	if _, err := io.ReadFull(ra, buf); err != nil || string(buf) != "to a" {
		t.Fatalf("a: %q %v", buf, err)
	}
}

// Ending the context closes the listener and the open connections.
func TestTCPEchoStop(t *testing.T) {
	addr, stop := startTCP(t, "pod-s")
	c := dialTCP(t, addr)
	br := bufio.NewReader(c)
	if l, err := br.ReadString('\n'); err != nil || l != "pod-s\n" {
		t.Fatalf("banner %q %v", l, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("ServeTCP: %v", err)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("open connection after stop: read %d, %v", n, err)
	}
	if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
		c.Close()
		t.Fatal("listener still accepts after stop")
	}
}

// A listener failing ends ServeTCP with its error.
func TestTCPEchoListenerError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := ServeTCP(context.Background(), ln, "x"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("got %v, want the listener's error", err)
	}
}
