// Package http1 parses HTTP/1.x message heads straight from a connection's
// read buffer and forwards bodies byte for byte.
//
// The proxy needs only what routing and framing require: method, path, a few
// headers, and where the message ends. Everything else is left in the
// caller's buffer and forwarded unchanged, which is what lets a hop cost
// little more than a blind copy (see docs on the data path). Parsing is
// strict where leniency would let a client and an upstream disagree about
// where a message ends (request smuggling): such input is an error and the
// caller closes the connection.
package http1

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"github.com/detourdev/detour/pkg/redirect/match"
)

// MaxHeadBytes bounds a message head (start line, header fields and the
// empty line). A head that does not end within it is not parsed: the proxy
// passes such a connection through or rejects the request, and buffers of
// this size are all it ever needs to hold a head.
const MaxHeadBytes = 64 << 10

var (
	// ErrIncomplete means the buffer holds the start of a plausible head
	// but not its end yet: read more and parse again.
	ErrIncomplete = errors.New("http1: incomplete head")
	// ErrHeadTooLarge means no head ended within MaxHeadBytes.
	ErrHeadTooLarge = errors.New("http1: head larger than MaxHeadBytes")
	// ErrNotHTTP1 means the bytes cannot be the start of an HTTP/1.x
	// message (TLS, the HTTP/2 preface, another protocol).
	ErrNotHTTP1 = errors.New("http1: not an HTTP/1.x message")
)

// ParseError describes malformed input.
type ParseError struct {
	Reason string
}

func (e *ParseError) Error() string { return "http1: malformed head: " + e.Reason }

func malformed(format string, args ...any) error {
	return &ParseError{Reason: fmt.Sprintf(format, args...)}
}

type field struct {
	name, value []byte
}

// headEnd returns the length of the head in b, including the empty line that
// ends it, or -1. Bare LF line endings are tolerated as RFC 9112 allows.
func headEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
	}
}

// nextLine splits the first line off b, without its line ending.
func nextLine(b []byte) (line, rest []byte, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil, malformed("unterminated line")
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, malformed("bare CR in line")
	}
	return line, rest, nil
}

// headers is the part common to requests and responses.
type headers struct {
	fields []field
	// ContentLength is the declared body length, -1 when absent.
	ContentLength int64
	// Chunked is true when the final transfer coding is chunked.
	Chunked bool
	// KeepAlive is true when the connection may carry another message
	// after this one, as far as this message says.
	KeepAlive bool
	// Minor is the minor version: 0 or 1 for HTTP/1.0 or HTTP/1.1.
	Minor int

	te          bool // Transfer-Encoding present
	connClose   bool
	connKeep    bool
	connUpgrade bool
	upgrade     bool // Upgrade header present
	expect100   bool
}

// Header returns the values of the named field joined with ", " and whether
// it is present; name is compared case-insensitively.
func (h *headers) Header(name string) (string, bool) {
	v, n := h.HeaderBytes(name)
	switch n {
	case 0:
		return "", false
	case 1:
		return string(v), true
	}
	var out []byte
	found := false
	for i := range h.fields {
		f := &h.fields[i]
		if !equalFold(f.name, name) {
			continue
		}
		if found {
			out = append(out, ", "...)
		}
		found = true
		out = append(out, f.value...)
	}
	return string(out), true
}

// HeaderBytes returns the value of the named field without copying it when
// the field occurs once, and how often it occurs: 0, 1, or 2 for twice or
// more (then value is nil and Header gives the values joined). value aliases
// the parsed buffer and is valid only as long as it is. It implements
// match.RawRequest, which lets a matcher compare values without allocating.
func (h *headers) HeaderBytes(name string) (value []byte, n int) {
	for i := range h.fields {
		f := &h.fields[i]
		if !equalFold(f.name, name) {
			continue
		}
		if n == 1 {
			return nil, 2
		}
		value, n = f.value, 1
	}
	return value, n
}

// Fields calls fn for each header field in order; the slices alias the
// parsed buffer and are valid only as long as it is.
func (h *headers) Fields(fn func(name, value []byte)) {
	for _, f := range h.fields {
		fn(f.name, f.value)
	}
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if lower(b[i]) != lower(s[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func (h *headers) reset() {
	*h = headers{fields: h.fields[:0], ContentLength: -1}
}

// parseFields parses header lines up to and including the empty line.
func (h *headers) parseFields(b []byte) error {
	for {
		line, rest, err := nextLine(b)
		if err != nil {
			return err
		}
		b = rest
		if len(line) == 0 {
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return malformed("obsolete line folding")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return malformed("header line without name and colon")
		}
		name := line[:colon]
		for _, c := range name {
			if !match.IsTokenChar(c) {
				return malformed("invalid character %q in header name %q", c, name)
			}
		}
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if c < 0x20 && c != '\t' || c == 0x7f {
				return malformed("control character in value of %q", name)
			}
		}
		h.fields = append(h.fields, field{name: name, value: value})
		if err := h.interpret(name, value); err != nil {
			return err
		}
	}
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// interpret records what the fields that govern framing and the connection
// say, as each one is seen.
func (h *headers) interpret(name, value []byte) error {
	switch {
	case equalFold(name, "content-length"):
		return h.contentLength(value)
	case equalFold(name, "transfer-encoding"):
		h.te = true
		var err error
		eachElement(value, func(e []byte) {
			if err != nil {
				return
			}
			if h.Chunked {
				// chunked must be the final coding, and only once.
				err = malformed("transfer coding after chunked")
				return
			}
			h.Chunked = codingIs(e, "chunked")
		})
		return err
	case equalFold(name, "connection"):
		eachElement(value, func(e []byte) {
			switch {
			case equalFold(e, "close"):
				h.connClose = true
			case equalFold(e, "keep-alive"):
				h.connKeep = true
			case equalFold(e, "upgrade"):
				h.connUpgrade = true
			}
		})
	case equalFold(name, "upgrade"):
		h.upgrade = len(value) > 0
	case equalFold(name, "expect"):
		h.expect100 = equalFold(value, "100-continue")
	}
	return nil
}

// codingIs compares a transfer-coding element, ignoring its parameters.
func codingIs(e []byte, name string) bool {
	if i := bytes.IndexByte(e, ';'); i >= 0 {
		e = trimOWS(e[:i])
	}
	return equalFold(e, name)
}

// eachElement calls fn for each non-empty element of a comma-separated list.
func eachElement(v []byte, fn func([]byte)) {
	for len(v) > 0 {
		var e []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			e, v = v[:i], v[i+1:]
		} else {
			e, v = v, nil
		}
		if e = trimOWS(e); len(e) > 0 {
			fn(e)
		}
	}
}

// contentLength accepts repeated identical values ("5, 5" or two fields) as
// RFC 9110 8.6 allows, and rejects anything else: two parties reading
// different lengths is how requests are smuggled.
func (h *headers) contentLength(v []byte) error {
	var err error
	empty := true
	eachElement(v, func(e []byte) {
		empty = false
		if err != nil {
			return
		}
		n, perr := parseDecimal(e)
		if perr != nil {
			err = perr
			return
		}
		if h.ContentLength >= 0 && h.ContentLength != n {
			err = malformed("conflicting Content-Length values %d and %d", h.ContentLength, n)
			return
		}
		h.ContentLength = n
	})
	if empty && err == nil {
		return malformed("empty Content-Length")
	}
	return err
}

func parseDecimal(b []byte) (int64, error) {
	if len(b) == 0 || len(b) > 18 {
		return 0, malformed("invalid Content-Length %q", b)
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, malformed("invalid Content-Length %q", b)
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// finish applies the rules that need every field.
func (h *headers) finish() error {
	if h.te {
		if h.Minor == 0 {
			// RFC 9112 6.1: HTTP/1.0 has no transfer codings; framing
			// is faulty.
			return malformed("Transfer-Encoding in an HTTP/1.0 message")
		}
		if h.ContentLength >= 0 {
			return malformed("both Content-Length and Transfer-Encoding")
		}
	}
	if h.Minor >= 1 {
		h.KeepAlive = !h.connClose
	} else {
		h.KeepAlive = h.connKeep && !h.connClose
	}
	return nil
}

func parseVersion(b []byte) (int, bool) {
	if len(b) != 8 || string(b[:7]) != "HTTP/1." || b[7] < '0' || b[7] > '9' {
		return 0, false
	}
	return int(b[7] - '0'), true
}

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
	if len(line) == 0 {
		return 0, malformed("empty request line")
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return 0, ErrNotHTTP1
	}
	r.method = line[:sp1]
	for _, c := range r.method {
		if !match.IsTokenChar(c) {
			return 0, ErrNotHTTP1
		}
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return 0, malformed("request line %q: want METHOD TARGET VERSION", clip(line))
	}
	r.target = line[sp1+1 : sp1+1+sp2]
	for _, c := range r.target {
		if c <= ' ' || c == 0x7f {
			return 0, malformed("invalid character %q in request target", c)
		}
	}
	minor, ok := parseVersion(line[sp1+1+sp2+1:])
	if !ok {
		return 0, ErrNotHTTP1 // includes "PRI * HTTP/2.0", the h2 preface
	}
	r.Minor = minor
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

func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
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

// Response is a parsed response head.
type Response struct {
	headers
	// Status is the three-digit status code.
	Status int
	// Framing tells how the body, if any, is delimited.
	Framing Framing
}

// Framing is how a message body is delimited.
type Framing int

const (
	NoBody      Framing = iota // nothing follows the head
	FixedLength                // ContentLength bytes follow
	Chunked                    // a chunked body follows
	UntilClose                 // the body runs until the connection closes
	Tunnel                     // 101 or a 2xx to CONNECT: another protocol follows
)

func (f Framing) String() string {
	switch f {
	case NoBody:
		return "none"
	case FixedLength:
		return "fixed"
	case Chunked:
		return "chunked"
	case UntilClose:
		return "until-close"
	case Tunnel:
		return "tunnel"
	}
	return "Framing(" + strconv.Itoa(int(f)) + ")"
}

// Interim reports whether this is a 1xx response other than 101: the final
// response for the same request follows it.
func (r *Response) Interim() bool { return r.Status >= 100 && r.Status < 200 && r.Status != 101 }

// ParseResponse parses the response head at the start of b; reqMethod is
// the method of the request it answers, which decides whether a body
// follows. See Response.Parse.
func ParseResponse(b []byte, reqMethod string) (*Response, int, error) {
	r := new(Response)
	n, err := r.Parse(b, reqMethod)
	if err != nil {
		return nil, 0, err
	}
	return r, n, nil
}

// Parse is ParseResponse reusing r's storage.
func (r *Response) Parse(b []byte, reqMethod string) (int, error) {
	r.headers.reset()
	r.Status, r.Framing = 0, NoBody

	end := headEnd(b)
	if end < 0 || end > MaxHeadBytes {
		if len(b) >= 5 && string(b[:5]) != "HTTP/" || len(b) < 5 && string(b) != "HTTP/"[:len(b)] {
			return 0, ErrNotHTTP1
		}
		if len(b) >= MaxHeadBytes {
			return 0, ErrHeadTooLarge
		}
		return 0, ErrIncomplete
	}
	line, rest, err := nextLine(b[:end])
	if err != nil {
		return 0, err
	}
	// "HTTP/1.1 200 OK"; the reason phrase may be empty, and some servers
	// omit the space before it.
	if len(line) < 12 || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		if len(line) < 5 || string(line[:5]) != "HTTP/" {
			return 0, ErrNotHTTP1
		}
		return 0, malformed("status line %q", clip(line))
	}
	minor, ok := parseVersion(line[:8])
	if !ok {
		return 0, ErrNotHTTP1
	}
	r.Minor = minor
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0, malformed("status code %q", line[9:12])
		}
	}
	r.Status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	if r.Status < 100 {
		return 0, malformed("status code %d", r.Status)
	}
	if err := r.parseFields(rest); err != nil {
		return 0, err
	}
	if err := r.finish(); err != nil {
		return 0, err
	}
	// RFC 9112 6.3, in order.
	switch {
	case r.Status == 101 || reqMethod == "CONNECT" && r.Status/100 == 2:
		r.Framing = Tunnel
		r.KeepAlive = false
	case reqMethod == "HEAD" || r.Status/100 == 1 || r.Status == 204 || r.Status == 304:
		r.Framing = NoBody
	case r.Chunked:
		r.Framing = Chunked
	case r.te:
		r.Framing, r.KeepAlive = UntilClose, false
	case r.ContentLength >= 0:
		r.Framing = FixedLength
		if r.ContentLength == 0 {
			r.Framing = NoBody
		}
	default:
		r.Framing, r.KeepAlive = UntilClose, false
	}
	return end, nil
}
