package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// fuzzProxy starts a proxy in front of app that sends session alice to
// alice, and makes sure, once the fuzz target ends, that closing the proxy
// leaves no goroutine of its own behind.
func fuzzProxy(f *testing.F, app, alice string) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	p := New(Config{App: app, FirstByteTimeout: 50 * time.Millisecond})
	m, err := match.Compile([]match.Condition{{Kind: match.Session, Value: "alice"}})
	if err != nil {
		f.Fatal(err)
	}
	p.SetRoutes([]Route{{Intercept: "alice", Matcher: m, Destination: alice}})
	go p.Serve(l)
	f.Cleanup(func() {
		l.Close()
		p.Close()
		err := testutil.Poll(10*time.Second, func() error {
			if leaked := proxyGoroutines(); len(leaked) > 0 {
				return fmt.Errorf("%d goroutines of the proxy left after Close:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
			}
			return nil
		})
		if err != nil {
			f.Error(err)
		}
	})
	return l.Addr().String()
}

// proxyGoroutines returns the stacks of goroutines running the proxy's code
// or the HTTP/2 server and transport it drives. Counting all goroutines
// would not do: the fuzzing engine starts some of its own.
func proxyGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, mark := range []string{
			"redirect/proxy.(*Proxy)", "redirect/proxy.(*client)", "redirect/proxy.(*h2",
			"redirect/proxy.splice", "redirect/proxy.pipe",
			"x/net/http2.(*serverConn)", "x/net/http2.(*ClientConn)", "x/net/http2.(*clientConnReadLoop)",
		} {
			if strings.Contains(g, mark) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// nameServer is an HTTP/1 and h2c server that answers its name, and
// nothing a fuzzer could make expensive.
func nameServer(tb testing.TB, name string) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		io.WriteString(w, name)
	})}
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// exchangeAndHangUp writes data, half-closes, and requires the proxy to end
// the connection: whatever the bytes, it must not hang or crash. With h2,
// the proxy speaks HTTP/2 back, and a GOAWAY is as good as the end: after
// one for an error the server waits a second before closing, so that the
// client reads the GOAWAY rather than a reset.
func exchangeAndHangUp(t *testing.T, addr string, data []byte, h2 bool) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(data) // the proxy may hang up first
	c.(*net.TCPConn).CloseWrite()
	if h2 {
		fr := http2.NewFramer(nil, c)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			if _, ok := f.(*http2.GoAwayFrame); ok {
				return
			}
		}
	}
	_, err = io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the proxy kept the connection open after %q", data)
	}
}

// h2Seeds are frame sequences to send after the preface.
func h2Seeds() [][]byte {
	var seeds [][]byte
	add := func(build func(fr *http2.Framer, hdr func(...string) []byte)) {
		var buf, hb bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		enc := hpack.NewEncoder(&hb)
		hdr := func(kv ...string) []byte {
			hb.Reset()
			kv = append([]string{":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/"}, kv...)
			for i := 0; i+1 < len(kv); i += 2 {
				enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			return bytes.Clone(hb.Bytes())
		}
		build(fr, hdr)
		seeds = append(seeds, buf.Bytes())
	}
	add(func(fr *http2.Framer, hdr func(...string) []byte) {})
	add(func(fr *http2.Framer, hdr func(...string) []byte) { fr.WriteSettings() })
	add(func(fr *http2.Framer, hdr func(...string) []byte) {
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr("x-detour-session", "alice"), EndHeaders: true, EndStream: true})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hdr(), EndHeaders: true, EndStream: true})
	})
	add(func(fr *http2.Framer, hdr func(...string) []byte) {
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr(":method", "POST"), EndHeaders: true})
		fr.WriteData(1, false, []byte("hello"))
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hdr("baggage", "detour-session=alice"), EndHeaders: true})
		fr.WriteData(3, true, []byte("world"))
	})
	add(func(fr *http2.Framer, hdr func(...string) []byte) {
		b := hdr("x-detour-session", "alice")
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3], EndStream: true})
		fr.WriteContinuation(1, true, b[3:])
		fr.WriteWindowUpdate(0, 0)
		fr.WritePing(false, [8]byte{1})
		fr.WritePriority(1, http2.PriorityParam{StreamDep: 1})
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	})
	add(func(fr *http2.Framer, hdr func(...string) []byte) {
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff}, EndHeaders: true})
		fr.WriteData(0, true, []byte("x"))
	})
	seeds = append(seeds, []byte("\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage"))
	return seeds
}

// FuzzH2Frames writes arbitrary bytes after a valid preface. The HTTP/2
// front must answer with GOAWAY or serve what it can, and always end the
// connection once the client has, without crashing or leaking goroutines.
func FuzzH2Frames(f *testing.F) {
	for _, s := range h2Seeds() {
		f.Add(s)
	}
	addr := fuzzProxy(f, nameServer(f, "app"), nameServer(f, "alice"))
	f.Fuzz(func(t *testing.T, data []byte) {
		exchangeAndHangUp(t, addr, append([]byte(http2.ClientPreface), data...), true)
	})
}

// FuzzDetect writes arbitrary first bytes: HTTP/1, the HTTP/2 preface or
// anything else must each take its path and end with the client.
func FuzzDetect(f *testing.F) {
	for _, s := range []string{
		"",
		"GET / HTTP/1.1\r\nHost: x\r\nX-Detour-Session: alice\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nContent-Length: 3\r\n\r\nabc",
		http2.ClientPreface,
		http2.ClientPreface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00",
		"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
		"SSH-2.0-OpenSSH\r\n",
	} {
		f.Add([]byte(s))
	}
	addr := fuzzProxy(f, nameServer(f, "app"), nameServer(f, "alice"))
	f.Fuzz(func(t *testing.T, data []byte) {
		exchangeAndHangUp(t, addr, data, false)
	})
}
