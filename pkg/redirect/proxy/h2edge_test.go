package proxy

// HTTP/2 forwarding at its edges: peers that end, reset or refuse at
// awkward moments, and frames the session must refuse.

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// serveRawH2 accepts connections that begin with the preface, sends
// SETTINGS (ss), and hands each request head to answer, which writes what
// it likes with fr; false ends the connection.
func serveRawH2(t *testing.T, answer func(c net.Conn, fr *http2.Framer, h *http2.MetaHeadersFrame) bool, ss ...http2.Setting) string {
	return serveTCP(t, func(c net.Conn) {
		io.ReadFull(c, make([]byte, len(http2.ClientPreface)))
		fr := http2.NewFramer(c, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings(ss...)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok && !answer(c, fr, h) {
				return
			}
		}
	})
}

// status200 is a header block of ":status: 200" alone, from the static
// table: it leaves the HPACK state of any connection as it was.
func status200() []byte { return []byte{0x88} }

// writeBlock sends a header block as HEADERS and as many CONTINUATION
// frames as 16,000-byte pieces need.
func writeBlock(fr *http2.Framer, id uint32, endStream bool, b []byte) {
	k := min(len(b), 16000)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b[:k], EndHeaders: k == len(b), EndStream: endStream})
	for b = b[k:]; len(b) > 0; b = b[k:] {
		k = min(len(b), 16000)
		fr.WriteContinuation(id, k == len(b), b[:k])
	}
}

// rawH2Backend accepts connections and, for the first request HEADERS,
// sends a 200 with size bytes of DATA ending the stream, then calls after.
func rawH2Backend(t *testing.T, size int, after func(c net.Conn, fr *http2.Framer, id uint32)) string {
	return serveRawH2(t, func(c net.Conn, fr *http2.Framer, h *http2.MetaHeadersFrame) bool {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: status200(), EndHeaders: true})
		chunk := make([]byte, 16384)
		for left := size; left > 0; {
			k := min(left, len(chunk))
			left -= k
			fr.WriteData(h.StreamID, left == 0, chunk[:k])
		}
		after(c, fr, h.StreamID)
		return false
	})
}

// readBody reads stream 1 with the default 65535 windows; once they are
// used up it waits, then opens them wide, and returns what it got and how
// the stream ended.
func readBody(t *testing.T, raw *rawH2) (int, string) {
	got, opened := 0, false
	for {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			return got, err.Error()
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			got += len(f.Data())
			if f.StreamEnded() {
				return got, "END_STREAM"
			}
			if got >= 65535 && !opened {
				opened = true
				time.Sleep(300 * time.Millisecond) // the backend finishes meanwhile
				raw.fr.WriteWindowUpdate(0, 1<<20)
				raw.fr.WriteWindowUpdate(1, 1<<20)
			}
		case *http2.RSTStreamFrame:
			return got, "RST_STREAM " + f.ErrCode.String()
		case *http2.GoAwayFrame:
			return got, "GOAWAY " + f.ErrCode.String()
		}
	}
}

// TestH2UpstreamClosesAfterCompleteResponse: a backend that sends a
// complete response and then closes its connection (graceful shutdown,
// gRPC's MaxConnectionAge): the part still waiting for the client's window
// reaches the client all the same.
func TestH2UpstreamClosesAfterCompleteResponse(t *testing.T) {
	const size = 200000
	back := rawH2Backend(t, size, func(c net.Conn, fr *http2.Framer, id uint32) {
		fr.WriteGoAway(id, http2.ErrCodeNo, nil)
		time.Sleep(50 * time.Millisecond)
	})
	_, addr, _ := startProxy(t, Config{App: back})
	c := dialRaw(t, addr)
	raw := newRawH2(t, c, c)
	raw.request(1, "GET", "/")
	if got, how := readBody(t, raw); got != size || how != "END_STREAM" {
		t.Fatalf("got %d of %d bytes, then %s", got, size, how)
	}
}

// TestH2UpstreamResetsAfterCompleteResponse: a backend that answers before
// reading the request body and then sends RST_STREAM(NO_ERROR) (RFC 9113
// 8.1; Go's server does this): the whole response reaches the client, then
// the reset, which tells it to stop sending.
func TestH2UpstreamResetsAfterCompleteResponse(t *testing.T) {
	const size = 200000
	back := rawH2Backend(t, size, func(c net.Conn, fr *http2.Framer, id uint32) {
		fr.WriteRSTStream(id, http2.ErrCodeNo)
		time.Sleep(2 * time.Second)
	})
	_, addr, _ := startProxy(t, Config{App: back})
	c := dialRaw(t, addr)
	raw := newRawH2(t, c, c)
	// A request whose body is still to come.
	raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: raw.headers("POST", "/"), EndHeaders: true})
	if got, how := readBody(t, raw); got != size || how != "END_STREAM" {
		t.Fatalf("got %d of %d bytes, then %s", got, size, how)
	}
	for {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok {
			if r.StreamID != 1 || r.ErrCode != http2.ErrCodeNo {
				t.Fatalf("%v, want RST_STREAM NO_ERROR on stream 1", r)
			}
			break
		}
	}
}

// TestH2OversizedFrame: the session never raised SETTINGS_MAX_FRAME_SIZE,
// so a larger frame is a FRAME_SIZE_ERROR (RFC 9113 4.2), not 16 MiB
// buffered for the connection's life.
func TestH2OversizedFrame(t *testing.T) {
	h := newH2Harness(t)
	c := dialRaw(t, h.addr)
	raw := newRawH2(t, c, c)
	n := 1<<24 - 1
	c.Write(append([]byte{byte(n >> 16), byte(n >> 8), byte(n), 0xfa, 0, 0, 0, 0, 0}, make([]byte, n)...))
	raw.wantGoAway(http2.ErrCodeFrameSize)
}

// TestH2GoAwaySaysWhy: a connection error found in a client's frame is
// told in a GOAWAY before the connection closes.
func TestH2GoAwaySaysWhy(t *testing.T) {
	h := newH2Harness(t)
	c := dialRaw(t, h.addr)
	raw := newRawH2(t, c, c)
	raw.fr.WriteWindowUpdate(0, 1<<31-1) // overflows the connection window
	raw.wantGoAway(http2.ErrCodeFlowControl)
}

// wantGoAway reads frames until a GOAWAY, which must carry code.
func (h *rawH2) wantGoAway(code http2.ErrCode) {
	h.t.Helper()
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("%v before GOAWAY", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != code {
				h.t.Fatalf("GOAWAY %v, want %v", g.ErrCode, code)
			}
			return
		}
	}
}

// TestH2UpstreamTakingNoStreams: a backend that advertises
// SETTINGS_MAX_CONCURRENT_STREAMS 0 (and answers anyway) does not leave an
// upstream connection open per stream.
func TestH2UpstreamTakingNoStreams(t *testing.T) {
	var accepted atomic.Int32
	var mu sync.Mutex
	counted := map[net.Conn]bool{}
	back := serveRawH2(t, func(c net.Conn, fr *http2.Framer, h *http2.MetaHeadersFrame) bool {
		mu.Lock()
		if !counted[c] {
			counted[c] = true
			accepted.Add(1)
		}
		mu.Unlock()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: status200(), EndHeaders: true, EndStream: true})
		return true
	}, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0})
	p, addr, _ := startProxy(t, Config{App: back})
	c := dialRaw(t, addr)
	raw := newRawH2(t, c, c)
	const n = 50
	for i := range n {
		raw.request(uint32(1+2*i), "GET", "/")
		raw.responses(1)
	}
	// Each is closed once its stream has ended, a moment after the
	// client has the response: wait for that, not for ever.
	testutil.Eventually(t, 5*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		ups := 0
		for s := range p.h2.sessions {
			s.mu.Lock()
			for _, us := range s.ups {
				ups += len(us)
			}
			s.mu.Unlock()
		}
		if ups > 2 {
			return fmt.Errorf("%d sequential streams: %d upstream connections dialled, %d still open", n, accepted.Load(), ups)
		}
		return nil
	})
}
