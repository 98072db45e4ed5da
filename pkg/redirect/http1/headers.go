package http1

import (
	"bytes"

	"github.com/detourdev/detour/pkg/redirect/match"
)

// field is one header line, both parts aliasing the parsed buffer.
type field struct {
	name, value []byte
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
