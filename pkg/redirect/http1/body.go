package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// ErrMalformedChunk means a chunked body did not follow RFC 9112 7.1.
var ErrMalformedChunk = errors.New("http1: malformed chunked body")

// The forwarders below copy bytes as they are: the receiver sees the body
// exactly as the sender framed it, chunk extensions and trailers included.
// They move data straight from src's buffer to dst and flush dst whenever
// src has nothing buffered, just before they would block on a read: bytes
// are coalesced while they stream in, yet nothing waits in dst while the
// sender pauses (a server streaming events, a client awaiting 100 Continue).

// ForwardFixed copies exactly n bytes from src to dst. It returns
// io.ErrUnexpectedEOF when src ends first.
func ForwardFixed(dst *bufio.Writer, src *bufio.Reader, n int64) (int64, error) {
	var done int64
	for done < n {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return done, err
			}
			if _, err := src.Peek(1); err != nil {
				return done, eofIsUnexpected(err)
			}
		}
		k := src.Buffered()
		if rem := n - done; int64(k) > rem {
			k = int(rem)
		}
		p, _ := src.Peek(k)
		w, err := dst.Write(p)
		done += int64(w)
		if _, derr := src.Discard(w); derr != nil && err == nil {
			err = derr
		}
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// ForwardUntilEOF copies src to dst until src ends, for bodies delimited by
// the connection closing.
func ForwardUntilEOF(dst *bufio.Writer, src *bufio.Reader) (int64, error) {
	var done int64
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return done, err
			}
			if _, err := src.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					return done, nil
				}
				return done, err
			}
		}
		p, _ := src.Peek(src.Buffered())
		w, err := dst.Write(p)
		done += int64(w)
		src.Discard(w)
		if err != nil {
			return done, err
		}
	}
}

// maxChunkLine bounds a chunk-size line or trailer field, extensions
// included; longer is treated as an attack on the buffer.
const maxChunkLine = 8 << 10

// ForwardChunked copies one chunked body, through the last-chunk, trailer
// fields and the final CRLF, and returns where it ended: the next byte in
// src belongs to the next message. Sizes are parsed only to know how far
// to copy.
func ForwardChunked(dst *bufio.Writer, src *bufio.Reader) (int64, error) {
	var done int64
	for {
		line, err := readLine(dst, src)
		if err != nil {
			return done, err
		}
		size, err := chunkSize(line)
		if err != nil {
			return done, err
		}
		if _, err := dst.Write(line); err != nil {
			return done, err
		}
		done += int64(len(line))
		if size == 0 {
			break
		}
		n, err := ForwardFixed(dst, src, size)
		done += n
		if err != nil {
			return done, err
		}
		line, err = readLine(dst, src)
		if err != nil {
			return done, err
		}
		if !isEmptyLine(line) {
			return done, ErrMalformedChunk
		}
		if _, err := dst.Write(line); err != nil {
			return done, err
		}
		done += int64(len(line))
	}
	// Trailer section: fields until an empty line.
	for {
		line, err := readLine(dst, src)
		if err != nil {
			return done, err
		}
		if !isEmptyLine(line) && (line[0] == ' ' || line[0] == '\t') {
			return done, ErrMalformedChunk
		}
		if _, err := dst.Write(line); err != nil {
			return done, err
		}
		done += int64(len(line))
		if isEmptyLine(line) {
			return done, nil
		}
	}
}

// readLine returns the next line including its LF; the slice is valid until
// the next read from src.
func readLine(dst *bufio.Writer, src *bufio.Reader) ([]byte, error) {
	if buf, _ := src.Peek(src.Buffered()); bytes.IndexByte(buf, '\n') < 0 {
		if err := dst.Flush(); err != nil {
			return nil, err
		}
	}
	// bufio only returns whole lines up to its buffer size; a chunk line
	// is tiny, and anything longer than maxChunkLine is refused below.
	line, err := src.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, ErrMalformedChunk
		}
		return nil, eofIsUnexpected(err)
	}
	if len(line) > maxChunkLine {
		return nil, ErrMalformedChunk
	}
	return line, nil
}

func isEmptyLine(l []byte) bool {
	return len(l) == 1 || len(l) == 2 && l[0] == '\r'
}

// chunkSize parses "1a;ext=v\r\n". Extensions are checked only for
// characters that could confuse a line-based reader.
func chunkSize(line []byte) (int64, error) {
	l := line[:len(line)-1]
	if n := len(l); n > 0 && l[n-1] == '\r' {
		l = l[:n-1]
	}
	var size int64
	i := 0
	for ; i < len(l); i++ {
		v, ok := unhex(l[i])
		if !ok {
			break
		}
		if i >= 15 { // more than 60 bits: no honest body is that large
			return 0, ErrMalformedChunk
		}
		size = size<<4 | int64(v)
	}
	if i == 0 {
		return 0, ErrMalformedChunk
	}
	for _, c := range l[i:] {
		if c == '\r' || c == 0 || c == '\n' {
			return 0, ErrMalformedChunk
		}
	}
	if rest := trimOWS(l[i:]); len(rest) > 0 && rest[0] != ';' {
		return 0, ErrMalformedChunk
	}
	return size, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func eofIsUnexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
