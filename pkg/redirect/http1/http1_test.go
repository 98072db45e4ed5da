package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	type want struct {
		method, path string
		cl           int64
		chunked      bool
		keepAlive    bool
		expect       bool
		upgrade      bool
		minor        int
	}
	for _, tc := range []struct {
		name string
		in   string
		want want
		err  error // ErrIncomplete, ErrNotHTTP1, ErrHeadTooLarge, or errMalformed
	}{
		{"simple", "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n", want{method: "GET", path: "/a", cl: -1, keepAlive: true, minor: 1}, nil},
		{"bare LF", "GET / HTTP/1.1\nHost: x\n\n", want{method: "GET", path: "/", cl: -1, keepAlive: true, minor: 1}, nil},
		{"leading CRLF", "\r\nGET / HTTP/1.1\r\n\r\n", want{method: "GET", path: "/", cl: -1, keepAlive: true, minor: 1}, nil},
		{"absolute form", "GET http://h:80/p/q?x HTTP/1.1\r\n\r\n", want{method: "GET", path: "/p/q", cl: -1, keepAlive: true, minor: 1}, nil},
		{"absolute no path", "GET http://h HTTP/1.1\r\n\r\n", want{method: "GET", path: "/", cl: -1, keepAlive: true, minor: 1}, nil},
		{"asterisk", "OPTIONS * HTTP/1.1\r\n\r\n", want{method: "OPTIONS", path: "*", cl: -1, keepAlive: true, minor: 1}, nil},
		{"content-length", "POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n", want{method: "POST", path: "/", cl: 12, keepAlive: true, minor: 1}, nil},
		{"repeated same length", "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n", want{method: "POST", path: "/", cl: 5, keepAlive: true, minor: 1}, nil},
		{"chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n", want{method: "POST", path: "/", cl: -1, chunked: true, keepAlive: true, minor: 1}, nil},
		{"close", "GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n", want{method: "GET", path: "/", cl: -1, minor: 1}, nil},
		{"1.0", "GET / HTTP/1.0\r\n\r\n", want{method: "GET", path: "/", cl: -1}, nil},
		{"1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", want{method: "GET", path: "/", cl: -1, keepAlive: true}, nil},
		{"expect", "PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", want{method: "PUT", path: "/", cl: 1, keepAlive: true, expect: true, minor: 1}, nil},
		{"expect 1.0 ignored", "PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", want{method: "PUT", path: "/", cl: -1}, nil},
		{"upgrade", "GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", want{method: "GET", path: "/ws", cl: -1, keepAlive: true, upgrade: true, minor: 1}, nil},
		{"upgrade header only", "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", want{method: "GET", path: "/ws", cl: -1, keepAlive: true, minor: 1}, nil},
		{"custom method", "PROPFIND /d HTTP/1.1\r\n\r\n", want{method: "PROPFIND", path: "/d", cl: -1, keepAlive: true, minor: 1}, nil},

		{"incomplete", "GET / HTTP/1.1\r\nHost: x\r\n", want{}, ErrIncomplete},
		{"incomplete method", "GE", want{}, ErrIncomplete},
		{"empty", "", want{}, ErrIncomplete},
		{"tls", "\x16\x03\x01\x00", want{}, ErrNotHTTP1},
		{"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", want{}, ErrNotHTTP1},
		{"http/2 version", "GET / HTTP/2\r\n\r\n", want{}, ErrNotHTTP1},
		{"too large", "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", MaxHeadBytes), want{}, ErrHeadTooLarge},
		{"conflicting lengths", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", want{}, errMalformed},
		{"conflicting list", "POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", want{}, errMalformed},
		{"bad length", "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", want{}, errMalformed},
		{"length and chunked", "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", want{}, errMalformed},
		{"chunked not last", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", want{}, errMalformed},
		{"chunked twice", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", want{}, errMalformed},
		{"te in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", want{}, errMalformed},
		{"obs-fold", "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", want{}, errMalformed},
		{"space before colon", "GET / HTTP/1.1\r\nX : a\r\n\r\n", want{}, errMalformed},
		{"no colon", "GET / HTTP/1.1\r\nX\r\n\r\n", want{}, errMalformed},
		{"bad name", "GET / HTTP/1.1\r\nX(y): a\r\n\r\n", want{}, errMalformed},
		{"bare CR", "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", want{}, errMalformed},
		{"ctl in value", "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n", want{}, errMalformed},
		{"double space", "GET  / HTTP/1.1\r\n\r\n", want{}, errMalformed},
		{"no version", "GET /\r\n\r\n", want{}, errMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, n, err := ParseRequest([]byte(tc.in))
			if tc.err != nil {
				if !matchesErr(err, tc.err) {
					t.Fatalf("error %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n != len(tc.in) {
				t.Fatalf("consumed %d of %d", n, len(tc.in))
			}
			got := want{r.Method(), r.Path(), r.ContentLength, r.Chunked, r.KeepAlive, r.Expect100, r.Upgrade, r.Minor}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// errMalformed stands for any *ParseError in tables.
var errMalformed = errors.New("malformed")

func matchesErr(err, want error) bool {
	if want == errMalformed {
		var pe *ParseError
		return errors.As(err, &pe)
	}
	return errors.Is(err, want)
}

func TestRequestHeader(t *testing.T) {
	in := "GET / HTTP/1.1\r\nX-Detour-Session:  alice \r\nBaggage: a=1\r\nbaggage: b=2\r\nEmpty:\r\n\r\nBODY"
	r, n, err := ParseRequest([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if n != len(in)-4 {
		t.Fatalf("head length %d", n)
	}
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"x-detour-session", "alice", true},
		{"BAGGAGE", "a=1, b=2", true},
		{"empty", "", true},
		{"missing", "", false},
	} {
		if v, ok := r.Header(tc.name); v != tc.want || ok != tc.ok {
			t.Errorf("Header(%q) = %q, %v; want %q, %v", tc.name, v, ok, tc.want, tc.ok)
		}
	}
}

func TestParseResponse(t *testing.T) {
	type want struct {
		status    int
		framing   Framing
		cl        int64
		keepAlive bool
		interim   bool
	}
	for _, tc := range []struct {
		name, in, method string
		want             want
		err              error
	}{
		{"fixed", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "GET", want{200, FixedLength, 3, true, false}, nil},
		{"zero", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", want{200, NoBody, 0, true, false}, nil},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", want{200, Chunked, -1, true, false}, nil},
		{"until close", "HTTP/1.1 200 OK\r\n\r\n", "GET", want{200, UntilClose, -1, false, false}, nil},
		{"te not chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET", want{200, UntilClose, -1, false, false}, nil},
		{"head", "HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n", "HEAD", want{200, NoBody, 30, true, false}, nil},
		{"204", "HTTP/1.1 204 No Content\r\n\r\n", "GET", want{204, NoBody, -1, true, false}, nil},
		{"304", "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", "GET", want{304, NoBody, 9, true, false}, nil},
		{"100", "HTTP/1.1 100 Continue\r\n\r\n", "POST", want{100, NoBody, -1, true, true}, nil},
		{"103", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", "GET", want{103, NoBody, -1, true, true}, nil},
		{"101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "GET", want{101, Tunnel, -1, false, false}, nil},
		{"connect", "HTTP/1.1 200 OK\r\n\r\n", "CONNECT", want{200, Tunnel, -1, false, false}, nil},
		{"close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", "GET", want{200, FixedLength, 1, false, false}, nil},
		{"1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", "GET", want{200, FixedLength, 1, false, false}, nil},
		{"1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", "GET", want{200, FixedLength, 1, true, false}, nil},
		{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "GET", want{200, NoBody, 0, true, false}, nil},
		{"incomplete", "HTTP/1.1 200 OK\r\n", "GET", want{}, ErrIncomplete},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", "GET", want{}, ErrNotHTTP1},
		{"bad status", "HTTP/1.1 2x0 OK\r\n\r\n", "GET", want{}, errMalformed},
		{"conflicting", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "GET", want{}, errMalformed},
		{"cl and te", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", want{}, errMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, n, err := ParseResponse([]byte(tc.in), tc.method)
			if tc.err != nil {
				if !matchesErr(err, tc.err) {
					t.Fatalf("error %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n != len(tc.in) {
				t.Fatalf("consumed %d of %d", n, len(tc.in))
			}
			got := want{r.Status, r.Framing, r.ContentLength, r.KeepAlive, r.Interim()}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestForwardChunked(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		err        bool
	}{
		{"simple", "5\r\nhello\r\n0\r\n\r\n", false},
		{"extensions and trailers", "5;a=b;c\r\nhello\r\nA ; x=\"y\"\r\n0123456789\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n", false},
		{"bare LF", "5\nhello\n0\n\n", false},
		{"upper hex", "1F\r\n" + strings.Repeat("x", 31) + "\r\n0\r\n\r\n", false},
		{"no size", "\r\nhello\r\n0\r\n\r\n", true},
		{"bad size", "g\r\n", true},
		{"missing crlf after data", "5\r\nhelloX\r\n0\r\n\r\n", true},
		{"truncated", "5\r\nhel", true},
		{"huge", "fffffffffffffffff\r\n", true},
		{"folded trailer", "0\r\nX: a\r\n b\r\n\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const next = "GET /next HTTP/1.1\r\n\r\n"
			src := bufio.NewReaderSize(strings.NewReader(tc.body+next), 16)
			var out bytes.Buffer
			dst := bufio.NewWriter(&out)
			n, err := ForwardChunked(dst, src)
			dst.Flush()
			if tc.err {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.body || n != int64(len(tc.body)) {
				t.Fatalf("forwarded %q (%d), want %q", out.String(), n, tc.body)
			}
			rest, _ := io.ReadAll(src)
			if string(rest) != next {
				t.Fatalf("left %q after the body, want the next message", rest)
			}
		})
	}
}

func TestForwardFixed(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10000)
	src := bufio.NewReaderSize(bytes.NewReader(append(data, "tail"...)), 4096)
	var out bytes.Buffer
	dst := bufio.NewWriter(&out)
	n, err := ForwardFixed(dst, src, int64(len(data)))
	dst.Flush()
	if err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("n=%d err=%v equal=%v", n, err, bytes.Equal(out.Bytes(), data))
	}
	if rest, _ := io.ReadAll(src); string(rest) != "tail" {
		t.Fatalf("left %q", rest)
	}
	_, err = ForwardFixed(bufio.NewWriter(io.Discard), bufio.NewReader(strings.NewReader("abc")), 5)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short body: %v", err)
	}
	var all bytes.Buffer
	w := bufio.NewWriter(&all)
	if n, err := ForwardUntilEOF(w, bufio.NewReader(strings.NewReader("until the end"))); err != nil || n != 13 {
		t.Fatalf("ForwardUntilEOF = %d, %v", n, err)
	}
	if w.Flush(); all.String() != "until the end" {
		t.Fatalf("got %q", all.String())
	}
}

func TestParseReuseDoesNotAllocate(t *testing.T) {
	in := []byte("GET /api/x?y HTTP/1.1\r\nHost: h\r\nX-Detour-Session: alice\r\nContent-Length: 0\r\n\r\n")
	var r Request
	if _, err := r.Parse(in); err != nil {
		t.Fatal(err)
	}
	if a := testing.AllocsPerRun(100, func() { r.Parse(in) }); a != 0 {
		t.Fatalf("Parse allocates %v times per call", a)
	}
}

func BenchmarkParseRequest(b *testing.B) {
	in := []byte("GET /api/v1/items?limit=10 HTTP/1.1\r\nHost: payments.staging.svc\r\nUser-Agent: curl/8\r\nAccept: */*\r\nX-Detour-Session: alice\r\nBaggage: a=1,detour-session=alice\r\n\r\n")
	var r Request
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Parse(in); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
		"GET http://h/p HTTP/1.0\nConnection: keep-alive\n\n",
		"\r\nPUT /x HTTP/1.1\r\nExpect: 100-continue\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Request
		n, err := r.Parse(b)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			return
		}
		if n <= 0 || n > len(b) || n > MaxHeadBytes+16 {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		// The head alone parses the same way: nothing after it mattered.
		var r2 Request
		n2, err := r2.Parse(b[:n])
		if err != nil || n2 != n {
			t.Fatalf("re-parse of head: n=%d err=%v, first n=%d", n2, err, n)
		}
		if r.Method() != r2.Method() || r.Path() != r2.Path() || r.ContentLength != r2.ContentLength ||
			r.Chunked != r2.Chunked || r.KeepAlive != r2.KeepAlive || r.Upgrade != r2.Upgrade || r.Expect100 != r2.Expect100 {
			t.Fatalf("re-parse differs")
		}
		if r.Chunked && r.ContentLength >= 0 {
			t.Fatalf("both chunked and a length")
		}
		r.Header("x-detour-session")
	})
}

func FuzzParseResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.0 200\nTransfer-Encoding: chunked\n\n",
		"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
	} {
		f.Add([]byte(s), "GET")
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\n\r\n"), "CONNECT")
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"), "HEAD")
	f.Fuzz(func(t *testing.T, b []byte, method string) {
		var r Response
		n, err := r.Parse(b, method)
		if err != nil {
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		var r2 Response
		n2, err := r2.Parse(b[:n], method)
		if err != nil || n2 != n || r2.Status != r.Status || r2.Framing != r.Framing || r2.KeepAlive != r.KeepAlive || r2.ContentLength != r.ContentLength {
			t.Fatalf("re-parse differs: n=%d err=%v", n2, err)
		}
		if r.Status < 100 || r.Status > 999 {
			t.Fatalf("status %d", r.Status)
		}
		if r.Framing == FixedLength && r.ContentLength <= 0 {
			t.Fatalf("fixed framing with length %d", r.ContentLength)
		}
	})
}

func FuzzForwardChunked(f *testing.F) {
	for _, s := range []string{"5\r\nhello\r\n0\r\n\r\n", "1;a=b\nx\n0\nT: 1\n\n", "0\r\n\r\nGET"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		src := bufio.NewReaderSize(bytes.NewReader(b), 16)
		var out bytes.Buffer
		dst := bufio.NewWriter(&out)
		n, err := ForwardChunked(dst, src)
		dst.Flush()
		if n != int64(out.Len()) || out.Len() > len(b) {
			t.Fatalf("reported %d, wrote %d of %d input bytes", n, out.Len(), len(b))
		}
		if !bytes.HasPrefix(b, out.Bytes()) {
			t.Fatalf("output is not the input's prefix")
		}
		if err == nil {
			// A complete body is forwarded whole, and what follows is untouched.
			rest, _ := io.ReadAll(src)
			if out.Len()+len(rest) != len(b) {
				t.Fatalf("consumed %d + left %d != %d", out.Len(), len(rest), len(b))
			}
		}
	})
}
