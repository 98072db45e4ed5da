package http1

import (
	"bytes"

	"github.com/detourdev/detour/pkg/redirect/match"
)

// Request is a parsed request head. Its byte views alias the buffer given to
// Parse; the exported fields and the strings its methods return do not.
type Request struct {
	headers
	method, target []byte
	// Expect100 is true for an HTTP/1.1 request with Expect: 100-continue:
	// its client waits for an interim response before sending the body.
	Expect100 bool
	// Upgrade is true when the request asks to switch protocols
	// (Connection: upgrade and an Upgrade field).
	Upgrade bool
}

var _ match.RawRequest = (*Request)(nil)

// ParseRequest parses the request head at the start of b and returns it with
// the head's length. See Request.Parse.
func ParseRequest(b []byte) (*Request, int, error) {
	r := new(Request)
	n, err := r.Parse(b)
	if err != nil {
		return nil, 0, err
	}
	return r, n, nil
}

// Parse is ParseRequest reusing r's storage, so a connection can parse
// request after request without allocating. It returns ErrIncomplete while
// the head has not ended and b could still begin a valid request,
// ErrHeadTooLarge, ErrNotHTTP1 when the first bytes rule HTTP/1 out, or a
// *ParseError.
func (r *Request) Parse(b []byte) (int, error) {
	r.headers.reset()
	r.method, r.target, r.Expect100, r.Upgrade = nil, nil, false, false

	// RFC 9112 2.2: empty lines before a request are ignored; some clients
	// send a CRLF after a body.
	skip := 0
	for skip < len(b) && skip < 16 && (b[skip] == '\n' || b[skip] == '\r' && skip+1 < len(b) && b[skip+1] == '\n') {
		if b[skip] == '\r' {
			skip++
		}
		skip++
	}
	if skip == len(b) || len(b) > skip && b[skip] == '\r' && skip+1 == len(b) {
		return 0, ErrIncomplete
	}
	n, err := r.parse(b[skip:])
	if err != nil {
		return 0, err
	}
	return skip + n, nil
}

func (r *Request) parse(b []byte) (int, error) {
	end := headEnd(b)
	if end < 0 || end > MaxHeadBytes {
		if err := plausibleRequestStart(b); err != nil {
			return 0, err
		}
		// A first line that has ended must be an HTTP/1 request line: a
		// text protocol whose client speaks first (memcached's "get k")
		// is told apart at its first line, not at a head timeout.
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, _, err := nextLine(b[:i+1])
			if err == nil {
				err = r.requestLine(line)
			}
			if err != nil {
				return 0, err
			}
		}
		if len(b) >= MaxHeadBytes {
			return 0, ErrHeadTooLarge
		}
		return 0, ErrIncomplete
	}
	head := b[:end]
	line, rest, err := nextLine(head)
	if err != nil {
		return 0, err
	}
	if err := r.requestLine(line); err != nil {
		return 0, err
	}
	if err := r.parseFields(rest); err != nil {
		return 0, err
	}
	if err := r.finish(); err != nil {
		return 0, err
	}
	if r.te && !r.Chunked {
		// RFC 9112 6.3: a request body's length cannot be known.
		return 0, malformed("request Transfer-Encoding does not end in chunked")
	}
	r.Expect100 = r.expect100 && r.Minor >= 1
	r.Upgrade = r.connUpgrade && r.upgrade
	return end, nil
}

// requestLine parses the request line (without its line ending).
func (r *Request) requestLine(line []byte) error {
	if len(line) == 0 {
		return malformed("empty request line")
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return ErrNotHTTP1
	}
	r.method = line[:sp1]
	for _, c := range r.method {
		if !match.IsTokenChar(c) {
			return ErrNotHTTP1
		}
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return malformed("request line %q: want METHOD TARGET VERSION", clip(line))
	}
	r.target = line[sp1+1 : sp1+1+sp2]
	for _, c := range r.target {
		if c <= ' ' || c == 0x7f {
			return malformed("invalid character %q in request target", c)
		}
	}
	minor, ok := parseVersion(line[sp1+1+sp2+1:])
	if !ok {
		return ErrNotHTTP1 // includes "PRI * HTTP/2.0", the h2 preface
	}
	r.Minor = minor
	return nil
}

// plausibleRequestStart fails fast on bytes that cannot start a request, so
// a connection speaking something else is recognised on its first packet
// instead of after MaxHeadBytes or a timeout.
func plausibleRequestStart(b []byte) error {
	for i, c := range b {
		if c == ' ' && i > 0 {
			return nil
		}
		if !match.IsTokenChar(c) {
			return ErrNotHTTP1
		}
	}
	return nil
}

// Method returns the request method. Common methods come back as constants
// so matching a method does not allocate.
func (r *Request) Method() string {
	for _, m := range commonMethods {
		if string(r.method) == m {
			return m
		}
	}
	return string(r.method)
}

var commonMethods = [...]string{"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE"}

// Target returns the raw request target.
func (r *Request) Target() string { return string(r.target) }

// Path returns the target's path without query: for origin form the part
// before '?', for absolute form the part after the authority ("/" if empty),
// "*" for asterisk form, and "" for CONNECT's authority form.
func (r *Request) Path() string { return string(r.PathBytes()) }

// PathBytes is Path without copying: the result aliases the parsed buffer
// (or is a shared constant) and must not be modified. It implements
// match.RawRequest.
func (r *Request) PathBytes() []byte {
	t := r.target
	if len(t) == 0 || t[0] != '/' {
		if string(t) == "*" {
			return t
		}
		i := bytes.Index(t, []byte("://"))
		if i < 0 {
			return nil
		}
		t = t[i+3:]
		j := bytes.IndexAny(t, "/?#")
		if j < 0 || t[j] != '/' {
			return rootPath
		}
		t = t[j:]
	}
	if i := bytes.IndexAny(t, "?#"); i >= 0 {
		t = t[:i]
	}
	return t
}

var rootPath = []byte("/")

// HasBody reports whether a body follows the head.
func (r *Request) HasBody() bool { return r.Chunked || r.ContentLength > 0 }
