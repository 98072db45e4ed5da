package http1_test

import (
	"bufio"
	"errors"
	"fmt"
	"strings"

	"github.com/detourdev/detour/pkg/redirect/http1"
)

// ParseRequest reads a request head straight from a read buffer and says
// how long the head is; the body, and anything after it, stays in the
// buffer for the caller to forward.
func ExampleParseRequest() {
	buf := []byte("POST /api/orders?dry=1 HTTP/1.1\r\n" +
		"Host: shop\r\n" +
		"X-Detour-Session: alice\r\n" +
		"Content-Length: 5\r\n" +
		"\r\n" +
		"hello")
	r, n, err := http1.ParseRequest(buf)
	if err != nil {
		fmt.Println(err)
		return
	}
	session, _ := r.Header("x-detour-session")
	fmt.Println(r.Method(), r.Path(), session)
	fmt.Println("head:", n, "bytes; body:", r.ContentLength, "bytes, keep-alive:", r.KeepAlive)
	fmt.Printf("left in the buffer: %q\n", buf[n:])
	// Output:
	// POST /api/orders alice
	// head: 91 bytes; body: 5 bytes, keep-alive: true
	// left in the buffer: "hello"
}

// Request.Parse reuses one Request for every request of a connection. A
// head that has not fully arrived is ErrIncomplete: read more and parse
// again. Bytes that cannot start HTTP/1 at all (the HTTP/2 preface, TLS) are
// ErrNotHTTP1: the caller tries another protocol or passes the connection
// through. Input a client and a server could frame differently is a
// *ParseError, and the connection is closed.
func ExampleRequest_Parse() {
	var r http1.Request // one per connection, reused for each request
	for _, in := range []string{
		"GET /healthz HTTP/1.1\r\nHo",
		"GET /healthz HTTP/1.1\r\nHost: shop\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		n, err := r.Parse([]byte(in))
		var pe *http1.ParseError
		switch {
		case errors.Is(err, http1.ErrIncomplete):
			fmt.Println("incomplete: read more")
		case errors.Is(err, http1.ErrNotHTTP1):
			fmt.Println("not HTTP/1: try HTTP/2 or pass through")
		case errors.As(err, &pe):
			fmt.Println("malformed: close the connection:", pe.Reason)
		case err != nil:
			fmt.Println(err)
		default:
			fmt.Println(r.Method(), r.Path(), "head of", n, "bytes")
		}
	}
	// Output:
	// incomplete: read more
	// GET /healthz head of 37 bytes
	// not HTTP/1: try HTTP/2 or pass through
	// malformed: close the connection: both Content-Length and Transfer-Encoding
}

// A response's framing depends on the request it answers: the same head
// carries a body after GET but none after HEAD.
func ExampleParseResponse() {
	head := []byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
	for _, method := range []string{"GET", "HEAD"} {
		r, _, err := http1.ParseResponse(head, method)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(method, r.Status, r.Framing)
	}
	// Output:
	// GET 200 chunked
	// HEAD 200 none
}

// ForwardChunked copies one chunked body as it was framed, up to and
// including its end, and leaves the next message in the reader.
func ExampleForwardChunked() {
	src := bufio.NewReader(strings.NewReader(
		"5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n" +
			"GET /next HTTP/1.1\r\n"))
	var out strings.Builder
	dst := bufio.NewWriter(&out)
	n, err := http1.ForwardChunked(dst, src)
	if err != nil {
		fmt.Println(err)
		return
	}
	dst.Flush()
	rest, _ := src.Peek(src.Buffered())
	fmt.Printf("forwarded %d bytes: %q\n", n, out.String())
	fmt.Printf("next: %q\n", rest)
	// Output:
	// forwarded 33 bytes: "5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n"
	// next: "GET /next HTTP/1.1\r\n"
}

// ForwardFixed copies a Content-Length body; a sender that stops short is
// io.ErrUnexpectedEOF.
func ExampleForwardFixed() {
	var out strings.Builder
	dst := bufio.NewWriter(&out)
	n, err := http1.ForwardFixed(dst, bufio.NewReader(strings.NewReader("hello, world")), 5)
	dst.Flush()
	fmt.Printf("%d %q %v\n", n, out.String(), err)

	out.Reset()
	n, err = http1.ForwardFixed(dst, bufio.NewReader(strings.NewReader("hel")), 5)
	dst.Flush()
	fmt.Printf("%d %q %v\n", n, out.String(), err)
	// Output:
	// 5 "hello" <nil>
	// 3 "hel" unexpected EOF
}
