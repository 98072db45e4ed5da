package http1

import (
	"errors"
	"strings"
	"testing"
)

// A head dribbled in a byte at a time is parsed a few times, not at every
// byte.
func TestRequestScanParsesAFewTimesPerHead(t *testing.T) {
	head := "GET /a/long/path HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 90)+"\r\n", 160) +
		"X-Detour-Session: alice\r\n\r\n"
	var s RequestScan
	var r Request
	parses := 0
	for i := 1; i <= len(head); i++ {
		if !s.Ready([]byte(head[:i])) {
			continue
		}
		parses++
		n, err := r.Parse([]byte(head[:i]))
		if errors.Is(err, ErrIncomplete) {
			continue
		}
		if err != nil || n != len(head) || i != len(head) {
			t.Fatalf("after %d of %d bytes: n=%d err=%v", i, len(head), n, err)
		}
		if got, _ := r.Header("x-detour-session"); got != "alice" {
			t.Fatalf("session %q", got)
		}
	}
	if parses > 3 {
		t.Fatalf("a %d-byte head read a byte at a time was parsed %d times, want at most 3", len(head), parses)
	}
}

// Whatever the bytes and however they arrive, a buffer Ready says is not
// worth parsing parses to ErrIncomplete: the scan never hides a head, an
// error or a protocol that is not HTTP/1 from a reader that parses only
// when Ready, until a parse ends the head.
func FuzzRequestScan(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\nHost: x\n\n",
		"\r\nGE\x16T / HTTP/1.1\r\n\r\n",
		"G\rET / HTTP/1.1\r\n\r\n",
		" GET / HTTP/1.1\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"hello world\n",
		strings.Repeat("\r\n", 20) + "GET / HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, step uint8) {
		var s RequestScan
		var r Request
		k := int(step%7) + 1
		for i := 0; i <= len(b); i += k {
			_, err := r.Parse(b[:i])
			if s.Ready(b[:i]) {
				if !errors.Is(err, ErrIncomplete) {
					return // the reader is done with this head
				}
				continue
			}
			if !errors.Is(err, ErrIncomplete) {
				t.Fatalf("%q (in steps of %d): not ready after %d bytes, but parses to %v", b, k, i, err)
			}
		}
	})
}
