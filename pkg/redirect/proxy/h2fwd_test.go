package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2FlowControlIsForwarded: a client that grants tiny windows and reads
// slowly gets the whole body, never more DATA than it allowed, and one
// stream stalled on its window does not hold up another on the same
// connection.
func TestH2FlowControlIsForwarded(t *testing.T) {
	h := newH2Harness(t)
	c := dialRaw(t, h.addr)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	raw := &rawH2{t: t, c: c, fr: http2.NewFramer(c, c)}
	raw.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	raw.enc = hpack.NewEncoder(&raw.buf)
	const streamWin = 1000
	if err := raw.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWin}); err != nil {
		t.Fatal(err)
	}
	const size = 1<<20 + 7
	raw.request(1, "GET", fmt.Sprintf("/download?n=%d", size), "x-detour-session", "bob")

	win := map[uint32]int64{1: streamWin}
	connWin := int64(65535)
	var body strings.Builder
	other := ""
	wantSum := ""
	stalled, otherDone := false, false
	for done := false; !done; {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d bytes: %v", body.Len(), err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				raw.fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				wantSum = f.PseudoValue("status") + " " + headerOf(f, "x-sum")
			}
		case *http2.DataFrame:
			n := int64(len(f.Data()))
			if n > win[f.StreamID] || n > connWin {
				t.Fatalf("stream %d: %d bytes of DATA with a window of %d (connection %d)", f.StreamID, n, win[f.StreamID], connWin)
			}
			win[f.StreamID] -= n
			connWin -= n
			if f.StreamID == 3 {
				other += string(f.Data())
				if f.StreamEnded() {
					if other != "alice" {
						t.Fatalf("stream 3: %q", other)
					}
					otherDone = true
					raw.fr.WriteWindowUpdate(1, 64<<10) // now stream 1 may go on
					win[1] += 64 << 10
				}
				break
			}
			body.Write(f.Data())
			if f.StreamEnded() {
				done = true
				break
			}
			if win[1] == 0 && !stalled {
				// Stream 1 waits for credit: another stream must
				// still be answered meanwhile.
				stalled = true
				win[3] = streamWin
				raw.request(3, "GET", "/", "x-detour-session", "alice")
			} else if win[1] == 0 && otherDone {
				raw.fr.WriteWindowUpdate(1, 64<<10)
				win[1] += 64 << 10
			}
			if connWin < 128<<10 {
				raw.fr.WriteWindowUpdate(0, 1<<20)
				connWin += 1 << 20
			}
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			t.Fatalf("unexpected %v", f)
		}
	}
	if !otherDone {
		t.Fatal("stream 3 was not answered while stream 1 waited for its window")
	}
	if got := "200 " + sum([]byte(body.String())); body.Len() != size || got != wantSum {
		t.Fatalf("%d bytes, %q, want %d bytes, %q", body.Len(), got, size, wantSum)
	}
}

func headerOf(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// TestH2UpstreamStreamLimit: a backend that takes few concurrent streams
// gets more connections, and no stream fails.
func TestH2UpstreamStreamLimit(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: l}
	release := make(chan struct{})
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: &protos,
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 3},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-release
			io.WriteString(w, "limited")
		}),
	}
	go srv.Serve(ln)
	_, addr, _ := startProxy(t, Config{App: ln.Addr().String()})
	t.Cleanup(func() { srv.Close() })
	client := h2Client(t)
	const n = 10
	errs := make(chan error, n)
	for range n {
		go func() {
			resp, err := client.Get("http://" + addr + "/")
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil && string(b) != "limited" {
				err = fmt.Errorf("%d %q", resp.StatusCode, b)
			}
			errs <- err
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for ln.n.Load() < (n+2)/3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := ln.n.Load(); got < (n+2)/3 {
		t.Fatalf("%d streams over %d upstream connections of 3 streams each", n, got)
	}
}

// TestH2UpstreamVanishes: streams on an upstream connection that ends
// before answering are answered 502; the client's connection stays.
func TestH2UpstreamVanishes(t *testing.T) {
	gone := serveTCP(t, func(c net.Conn) {
		// Read the preface and the first frames, then hang up.
		c.Read(make([]byte, 1024))
		time.Sleep(50 * time.Millisecond)
	})
	h := newH2Harness(t)
	h.p.SetRoutes([]Route{sessionRoute(t, "carol", "carol", gone), sessionRoute(t, "bob", "bob", h.bob.addr)})
	for range 3 {
		_, resp, err := h.get(t, "/", "carol")
		if err != nil || resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("vanished upstream: %v, %v; want 502", resp, err)
		}
		if b, _, err := h.get(t, "/", "bob"); err != nil || b != "bob" {
			t.Fatalf("the connection after it: %q, %v", b, err)
		}
	}
	if got := h.ln.n.Load(); got != 1 {
		t.Errorf("%d client connections, want 1", got)
	}
}

// TestH2SlowReaderWithLargeWindowIsBounded: a client that grants a huge
// window and then does not read holds up its backends after a bounded
// amount, instead of making the proxy buffer whole responses, and gets
// everything once it reads. Two backends, because the goroutine reading
// one of them waits in its write to the client, and the other's must not
// pile up meanwhile.
func TestH2SlowReaderWithLargeWindowIsBounded(t *testing.T) {
	const size = 64 << 20
	var written atomic.Int64
	backend := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			chunk := make([]byte, 64<<10)
			for range size / len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
				written.Add(int64(len(chunk)))
			}
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		return l.Addr().String()
	}
	p, addr, _ := startProxy(t, Config{App: backend()})
	p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", backend())})

	c := dialRaw(t, addr)
	io.WriteString(c, http2.ClientPreface)
	raw := &rawH2{t: t, c: c, fr: http2.NewFramer(c, c)}
	raw.enc = hpack.NewEncoder(&raw.buf)
	raw.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	raw.fr.WriteWindowUpdate(0, 1<<31-1-65535)
	raw.request(1, "GET", "/")
	raw.request(3, "GET", "/", "x-detour-session", "alice")
	// Nothing is read: the backends must come to a stop well short of
	// their 128 MiB, after what the socket buffers and the proxy's
	// windows and out buffer hold.
	var last int64 = -1
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
		n := written.Load()
		if n == last {
			break
		}
		last = n
	}
	if n := written.Load(); n != last || n > 48<<20 {
		t.Fatalf("the backends wrote %d MiB to a client that reads nothing (still growing: %v)", n>>20, n != last)
	}
	t.Logf("backends stopped after %.1f MiB", float64(last)/(1<<20))
	// Then the client reads, and gets all of it.
	c.SetDeadline(time.Now().Add(30 * time.Second))
	got := map[uint32]int{}
	for ended := 0; ended < 2; {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %v bytes: %v", got, err)
		}
		if d, ok := f.(*http2.DataFrame); ok {
			got[d.StreamID] += len(d.Data())
			if d.StreamEnded() {
				ended++
			}
		}
	}
	if got[1] != size || got[3] != size {
		t.Fatalf("read %v bytes, want %d on each stream", got, size)
	}
}
