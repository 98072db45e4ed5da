package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/detourdev/detour/pkg/redirect/http1"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// rawUpstream answers every request on every connection with a tiny fixed
// response, reading and writing without allocating, so a benchmark through
// the proxy measures the proxy and not an HTTP server.
func rawUpstream(b *testing.B) string {
	b.Helper()
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	return serveTCP(b, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if err := skipHead(br); err != nil {
				return
			}
			if _, err := c.Write(resp); err != nil {
				return
			}
		}
	})
}

// skipHead reads one message head (no body follows in these benchmarks).
func skipHead(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			return nil
		}
	}
}

// benchClient sends req over one keep-alive connection to addr and reads
// each fixed-length response, without allocating.
type benchClient struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte
	buf [64]byte
}

func newBenchClient(b *testing.B, addr string, req []byte) *benchClient {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &benchClient{c: c, br: bufio.NewReader(c), req: req}
}

func (bc *benchClient) roundTrip() error {
	if _, err := bc.c.Write(bc.req); err != nil {
		return err
	}
	n := -1
	for {
		line, err := bc.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(v))) // <32 bytes: no allocation
		}
	}
	if n < 0 || n > len(bc.buf) {
		return io.ErrUnexpectedEOF
	}
	_, err := io.ReadFull(bc.br, bc.buf[:n])
	return err
}

// reportCPU reports the process's CPU time per request since since: the
// client and the upstreams cost the same whatever the proxy does, so a
// change in it is the proxy's, and it is steadier than wall time when other
// work shares the machine.
func reportCPU(b *testing.B, since time.Duration) {
	if cpu := processCPU() - since; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

type nopObserver struct{ n atomic.Int64 }

func (o *nopObserver) Request(string, Outcome, time.Duration) { o.n.Add(1) }
func (o *nopObserver) Passthrough(Reason)                     {}

// benchProxy starts a proxy whose app and destination are both raw
// upstreams, with one session route, as the agent runs for one intercept.
func benchProxy(b *testing.B) string { return benchProxyN(b, 1) }

// benchProxyN is benchProxy with n session routes, alice's the last: the
// others stand for the other environments sharing the port.
func benchProxyN(b *testing.B, n int) string {
	b.Helper()
	app, dev := rawUpstream(b), rawUpstream(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p := New(Config{App: app, Observer: &nopObserver{}})
	p.SetRoutes(sessionRoutes(b, n, dev))
	go p.Serve(ln)
	b.Cleanup(func() { ln.Close(); p.Close() })
	return ln.Addr().String()
}

// sessionRoutes is n session routes to dest, the last one alice's.
func sessionRoutes(b *testing.B, n int, dest string) []Route {
	rs := make([]Route, n)
	for i := range rs {
		key := fmt.Sprintf("env-%04d", i)
		if i == n-1 {
			key = "alice"
		}
		m, err := match.Compile([]match.Condition{{Kind: match.Session, Value: key}})
		if err != nil {
			b.Fatal(err)
		}
		rs[i] = Route{Intercept: "default/" + key, Matcher: m, Destination: dest}
	}
	return rs
}

var benchRequests = []struct {
	name string
	req  string
}{
	{"matched", "GET / HTTP/1.1\r\nHost: app\r\nUser-Agent: bench\r\nAccept: */*\r\nX-Detour-Session: alice\r\n\r\n"},
	{"unmatched", "GET / HTTP/1.1\r\nHost: app\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"},
}

// BenchmarkKeepAlive is one client sending request after request over one
// connection through the proxy, as wrk -c1 does: each request pays the
// proxy's per-request work (parse, route, upstream connection, metrics).
func BenchmarkKeepAlive(b *testing.B) {
	for _, tc := range benchRequests {
		b.Run(tc.name, func(b *testing.B) {
			bc := newBenchClient(b, benchProxy(b), []byte(tc.req))
			if err := bc.roundTrip(); err != nil { // connect the upstream
				b.Fatal(err)
			}
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				if err := bc.roundTrip(); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkInterceptCount is BenchmarkKeepAlive's matched request on a port
// with 1 and with 1,000 session intercepts; it reports the median round
// trip, which must stay within 1.1× (docs/performance.md, "Cost flat in
// intercept count").
func BenchmarkInterceptCount(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			bc := newBenchClient(b, benchProxyN(b, n), []byte(benchRequests[0].req))
			if err := bc.roundTrip(); err != nil {
				b.Fatal(err)
			}
			var lat []time.Duration
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				if err := bc.roundTrip(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
		})
	}
}

// BenchmarkRoute is the routing decision alone, for a parsed head that
// selects the last of n session routes.
func BenchmarkRoute(b *testing.B) {
	for _, n := range []int{1, 10, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			p := New(Config{App: "127.0.0.1:1"})
			b.Cleanup(func() { p.Close() })
			p.SetRoutes(sessionRoutes(b, n, "127.0.0.1:2"))
			var r http1.Request
			if _, err := r.Parse([]byte(benchRequests[0].req)); err != nil {
				b.Fatal(err)
			}
			src := netip.MustParseAddr("10.0.0.1")
			b.ReportAllocs()
			for b.Loop() {
				if rt := p.route(&r, src); rt == nil || rt.Intercept != "default/alice" {
					b.Fatal("misrouted")
				}
			}
		})
	}
}

// BenchmarkKeepAliveParallel is several keep-alive clients at once, as
// wrk -c32 does, so shared locks on the path contend.
func BenchmarkKeepAliveParallel(b *testing.B) {
	for _, tc := range benchRequests {
		b.Run(tc.name, func(b *testing.B) {
			addr := benchProxy(b)
			b.ReportAllocs()
			b.SetParallelism(4)
			b.ResetTimer()
			cpu := processCPU()
			b.RunParallel(func(pb *testing.PB) {
				bc := newBenchClient(b, addr, []byte(tc.req))
				for pb.Next() {
					if err := bc.roundTrip(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkIsDown is the check every matched request makes before using
// its destination, from many connections at once, with nothing down.
func BenchmarkIsDown(b *testing.B) {
	p := New(Config{App: "127.0.0.1:1"})
	b.Cleanup(func() { p.Close() })
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if p.isDown("10.0.0.1:8080") {
				b.Error("down")
				return
			}
		}
	})
}

// BenchmarkH2 is one HTTP/2 client sending request after request, one
// stream at a time, through the proxy to a backend (as h2load -m1 does):
// each pays the proxy's per-stream work (decode, route, encode, forward).
// Client and backend are hand-driven framers, so that the proxy's share of
// the CPU shows.
func BenchmarkH2(b *testing.B) {
	for _, tc := range []struct{ name, session string }{{"matched", "alice"}, {"unmatched", ""}} {
		b.Run(tc.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			p := New(Config{App: rawH2Upstream(b), Observer: &nopObserver{}})
			p.SetRoutes(sessionRoutes(b, 1, rawH2Upstream(b)))
			go p.Serve(ln)
			b.Cleanup(func() { ln.Close(); p.Close() })

			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, http2.ClientPreface)
			fr := http2.NewFramer(c, bufio.NewReader(c))
			fr.WriteSettings()
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			fields := []string{":method", "GET", ":scheme", "http", ":authority", "app", ":path", "/", "user-agent", "bench", "accept", "*/*"}
			if tc.session != "" {
				fields = append(fields, "x-detour-session", tc.session)
			}
			id := uint32(1)
			roundTrip := func() {
				hb.Reset()
				for i := 0; i < len(fields); i += 2 {
					enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
				}
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						b.Fatal(err)
					}
					if f.Header().StreamID == id && f.Header().Flags.Has(http2.FlagDataEndStream) {
						if d, ok := f.(*http2.DataFrame); ok && len(d.Data()) > 0 {
							fr.WriteWindowUpdate(0, uint32(len(d.Data())))
						}
						break
					}
					if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
						fr.WriteSettingsAck()
					}
				}
				id += 2
			}
			roundTrip()
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				roundTrip()
			}
			reportCPU(b, cpu)
		})
	}
}

// rawH2Upstream is an h2c backend that answers every request with a 200,
// two header fields and 5 bytes, doing as little as a backend can.
func rawH2Upstream(b *testing.B) string {
	return serveTCP(b, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := br.Discard(len(http2.ClientPreface)); err != nil {
			return
		}
		fr := http2.NewFramer(c, br)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings()
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				hb.Reset()
				enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "text/plain"})
				enc.WriteField(hpack.HeaderField{Name: "content-length", Value: "5"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
				fr.WriteData(f.StreamID, true, []byte("hello"))
			}
		}
	})
}
