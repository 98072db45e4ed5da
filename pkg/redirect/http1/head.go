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

// parseVersion reads "HTTP/1.x" and returns x.
func parseVersion(b []byte) (int, bool) {
	if len(b) != 8 || string(b[:7]) != "HTTP/1." || b[7] < '0' || b[7] > '9' {
		return 0, false
	}
	return int(b[7] - '0'), true
}

// clip shortens b to what an error message quotes.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}
