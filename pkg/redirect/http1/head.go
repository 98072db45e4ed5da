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

	"github.com/detourdev/detour/pkg/redirect/match"
)

// MaxHeadBytes bounds a message head (start line, header fields and the
// empty line). A head that does not end within it is not parsed: the proxy
// passes the rest of such a connection to the app, and buffers of this size
// are all it ever needs to hold a head.
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

// RequestScan follows a request head as it arrives, so that a connection
// reading it a few bytes at a time looks at each byte about once: Ready
// says whether Request.Parse of the bytes so far can give anything but
// ErrIncomplete. Without it a head dribbled in byte by byte is parsed whole
// at every byte, quadratic in its length, which lets a slow client burn the
// proxy's CPU. The zero value starts a head; Ready must be given the same
// buffer, grown, at every call.
type RequestScan struct {
	seen int // bytes looked at
	// settled: a token and a space began the request line, so the bytes
	// can no longer be ruled out as the start of a request before it
	// ends.
	settled bool
	// lineDone: the request line (the first line that is not empty) has
	// ended, and was judged then; content: the line being read, before
	// that, has a byte other than CR.
	lineDone, content bool
}

var (
	lfLF   = []byte("\n\n")
	lfCRLF = []byte("\n\r\n")
)

// Ready reports whether b, the bytes of the head read so far, may now
// parse to something other than ErrIncomplete: until the request line's
// first token is followed by a space, whenever a byte that is no token
// character arrives (it may rule HTTP/1 out, see plausibleRequestStart),
// or one after a CR; at every line end up to the end of the request line,
// which must then be an HTTP/1 one; then only once an empty line may have
// ended the head, or the head has reached MaxHeadBytes.
func (s *RequestScan) Ready(b []byte) bool {
	from := s.seen
	if from > len(b) {
		*s = RequestScan{} // not the buffer it was given before
		from = 0
	}
	s.seen = len(b)
	if len(b) >= MaxHeadBytes {
		return true
	}
	ready := false
	if !s.settled {
		for i := from; i < len(b); i++ {
			c := b[i]
			if c == ' ' && i > 0 && match.IsTokenChar(b[i-1]) {
				s.settled = true
				break
			}
			// A CR is judged with the byte after it: CR LF is an empty
			// line before the request, skipped; CR and anything else is
			// no request.
			if !match.IsTokenChar(c) || i > 0 && b[i-1] == '\r' {
				ready = true
			}
		}
	}
	if !s.lineDone {
		for i := from; i < len(b); i++ {
			if c := b[i]; c == '\n' {
				ready = true
				if s.content {
					s.lineDone = true
					break
				}
			} else if c != '\r' {
				s.content = true
			}
		}
	}
	// The empty line that ends a head, LF LF or LF CR LF, may straddle
	// the bytes looked at before.
	lo := max(0, from-2)
	return ready || bytes.Contains(b[lo:], lfLF) || bytes.Contains(b[lo:], lfCRLF)
}
