package proxy

// Reading request heads: how long a head may take, how many connections
// may wait for one, and what happens to a connection whose head cannot be
// routed (docs/architecture.md, "Data path on a node", step 2).
//
// The first bytes decide the protocol within FirstByteTimeout, so a
// protocol whose server speaks first is never held longer. Once an HTTP/1
// request has begun, its head may take up to HeadTimeout from its first
// byte, as a server's own header timeout allows (net/http's
// ReadHeaderTimeout, nginx's client_header_timeout: 60 s; Node's
// headersTimeout), so a client on a slow link keeps its session. A head
// still arriving after FirstByteTimeout holds a place among SlowHeads; with
// none free, or at HeadTimeout, the head is not waited for. Every head the
// proxy cannot route (not HTTP/1, malformed, over http1.MaxHeadBytes, too
// slow) is handled by one rule, in every position on the connection: the
// rest of the connection goes to the app untouched, the bytes read so far
// first, so the app answers it as it would without the proxy, and it is
// counted by Reason.

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/detourdev/detour/pkg/redirect/http1"
)

// DefaultHeadTimeout is Config.HeadTimeout's default: no shorter than the
// header timeouts of common servers, which the app behind the proxy would
// otherwise have granted.
const DefaultHeadTimeout = 10 * time.Second

// DefaultMaxSlowHeads is how many connections may wait for a head beyond
// FirstByteTimeout when Config.SlowHeads is nil. Each holds its buffers, a
// read buffer of http1.MaxHeadBytes and a 16 KiB write buffer: 512 of them
// hold 40 MiB.
const DefaultMaxSlowHeads = 512

// Reason is why a connection, or the rest of one, went to the app untouched.
type Reason string

const (
	ReasonNotHTTP       Reason = "not_http"        // neither HTTP/1 nor the HTTP/2 preface (TLS, another protocol)
	ReasonNoRequest     Reason = "no_request"      // no byte within FirstByteTimeout (a protocol where the server speaks first)
	ReasonMalformed     Reason = "malformed_head"  // a head that does not parse, or ends before its empty line
	ReasonHeadTooLarge  Reason = "head_too_large"  // no head ended within http1.MaxHeadBytes
	ReasonHeadTimeout   Reason = "head_timeout"    // the head had not ended HeadTimeout after its first byte
	ReasonSlowHeadsFull Reason = "slow_heads_full" // the head had not ended within FirstByteTimeout and SlowHeads was full
)

// Reasons are all the reasons, for metrics that show every one from the
// start.
var Reasons = []Reason{ReasonNotHTTP, ReasonNoRequest, ReasonMalformed, ReasonHeadTooLarge, ReasonHeadTimeout, ReasonSlowHeadsFull}

// Why a head was not waited for any longer.
var (
	errNoRequest     = errors.New("no request within the first-byte timeout")
	errHeadTimeout   = errors.New("request head not complete within the head timeout")
	errSlowHeadsFull = errors.New("request head not complete within the first-byte timeout, and too many connections wait for one")
)

// reasonOf is the Reason for an error that ended the wait for a head.
func reasonOf(err error) Reason {
	var pe *http1.ParseError
	switch {
	case errors.Is(err, errNoRequest):
		return ReasonNoRequest
	case errors.Is(err, errHeadTimeout):
		return ReasonHeadTimeout
	case errors.Is(err, errSlowHeadsFull):
		return ReasonSlowHeadsFull
	case errors.Is(err, http1.ErrHeadTooLarge):
		return ReasonHeadTooLarge
	case errors.Is(err, http1.ErrNotHTTP1):
		return ReasonNotHTTP
	case errors.As(err, &pe), errors.Is(err, io.ErrUnexpectedEOF):
		return ReasonMalformed
	}
	return ReasonMalformed
}

// gone reports whether err ended the wait for a head because the
// connection itself ended: the client left between requests, reset it, or
// the proxy closed it. There is nobody to pass the rest to.
func gone(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) && !ne.Timeout()
}

// isTimeout reports whether a read ended at its deadline; errors.Is, not
// errors.As, so that a head read costs no allocation.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// SlowHeads counts the connections waiting for the rest of a request head
// beyond FirstByteTimeout, and caps them, so slow clients cannot hold
// unbounded buffers and goroutines. One SlowHeads may be shared by several
// proxies (the agent shares one between all its ports); it is safe for
// concurrent use.
type SlowHeads struct {
	max int64
	n   atomic.Int64
}

// NewSlowHeads returns a cap of max connections; 0 lets none wait beyond
// FirstByteTimeout.
func NewSlowHeads(max int) *SlowHeads { return &SlowHeads{max: int64(max)} }

// Waiting is the number of connections waiting for a head now.
func (s *SlowHeads) Waiting() int { return int(s.n.Load()) }

// Max is the cap.
func (s *SlowHeads) Max() int { return int(s.max) }

func (s *SlowHeads) acquire() bool {
	if s.n.Add(1) > s.max {
		s.n.Add(-1)
		return false
	}
	return true
}

func (s *SlowHeads) release() { s.n.Add(-1) }

// readRequestHead reads until a complete request head is buffered and
// returns its length. The head's first byte (for a connection's first
// request, the connection) came at start: the head has until
// start+FirstByteTimeout, then, if some of it has come and a place among
// the slow heads is free, until start+HeadTimeout. A read deadline it set
// is left set (cl.deadline): the caller clears it with clearDeadline, after
// looking for the HTTP/2 preface.
func (cl *client) readRequestHead(start time.Time) (int, error) {
	p, br := cl.p, cl.bufs.r
	var scan http1.RequestScan
	// A keep-alive request's head has mostly arrived whole with its first
	// byte: then no deadline is set and cleared for it.
	if buf, _ := br.Peek(br.Buffered()); scan.Ready(buf) {
		if n, err := cl.req.Parse(buf); !errors.Is(err, http1.ErrIncomplete) {
			return n, err
		}
	}
	cl.deadline = true
	cl.c.SetReadDeadline(start.Add(p.cfg.FirstByteTimeout))
	n, err := readScanned(br, cl.req.Parse, &scan)
	if !isTimeout(err) {
		return n, err
	}
	if br.Buffered() == 0 {
		return 0, errNoRequest
	}
	if p.cfg.HeadTimeout <= p.cfg.FirstByteTimeout {
		return 0, errHeadTimeout
	}
	if !p.slow.acquire() {
		return 0, errSlowHeadsFull
	}
	defer p.slow.release()
	cl.c.SetReadDeadline(start.Add(p.cfg.HeadTimeout))
	n, err = readScanned(br, cl.req.Parse, &scan)
	if isTimeout(err) {
		return 0, errHeadTimeout
	}
	return n, err
}

// clearDeadline clears the read deadline readRequestHead set, if it did.
func (cl *client) clearDeadline() {
	if cl.deadline {
		cl.deadline = false
		cl.c.SetReadDeadline(time.Time{})
	}
}

// readScanned is readHead for request heads: it parses only when scan says
// the bytes so far may parse to more than http1.ErrIncomplete, so a head
// arriving a few bytes at a time costs about one look at each byte.
func readScanned(br *bufio.Reader, parse func([]byte) (int, error), scan *http1.RequestScan) (int, error) {
	for {
		buf, _ := br.Peek(br.Buffered())
		if scan.Ready(buf) {
			n, err := parse(buf)
			if !errors.Is(err, http1.ErrIncomplete) {
				return n, err
			}
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if errors.Is(err, io.EOF) && br.Buffered() > 0 {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
}

// awaitRequest waits, for as long as the client keeps the connection idle,
// for the first byte of its next request, whose head then has the same
// bounds as the first's. It reports false when the connection is to end:
// the client left, or a drain closed it between requests.
func (cl *client) awaitRequest() bool {
	if !cl.enterIdle() {
		return false // draining: closed between requests
	}
	_, err := cl.bufs.r.Peek(1)
	if cl.leaveIdle() {
		// A drain ended the wait. A request that had begun to arrive is
		// served (the last); else the connection ends.
		return cl.bufs.r.Buffered() > 0
	}
	return err == nil
}
