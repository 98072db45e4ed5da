package proxy

// Frames as the HTTP/2 forwarder (h2.go) reads them. Header blocks
// (HEADERS and CONTINUATION) are read here and decoded into a slice the
// connection keeps, without a frame or a field list allocated per block:
// they are most of what a small request costs the session
// (docs/performance.md, "HTTP/2 by forwarding frames"). Every other frame
// type is read by x/net's Framer, which never sees a header block.

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Block is a header block as decoded: a request or response head, or
// trailers. Its fields belong to the connection it came from and are
// valid until the block has been handled (the reader then releases them).
type h2Block struct {
	StreamID uint32
	end      bool // END_STREAM
	fields   []hpack.HeaderField
	// tooBig: the fields exceeded h2MaxHeaderList and were not kept.
	tooBig bool
}

func (b *h2Block) StreamEnded() bool { return b.end }

// h2Blocks is a connection's header-block reader; its reader goroutine's
// alone.
type h2Blocks struct {
	dec     *hpack.Decoder
	block   h2Block
	open    bool  // a block waits for CONTINUATION
	coded   int   // encoded bytes of the block so far
	size    int   // decoded size so far, as SETTINGS_MAX_HEADER_LIST_SIZE counts it
	regular bool  // a regular field was seen: no pseudo-header may follow
	bad     error // the first field the block may not carry
}

func (r *h2Blocks) init() {
	r.dec = hpack.NewDecoder(4096, r.emit)
	r.dec.SetMaxStringLength(h2MaxHeaderList)
}

func (r *h2Blocks) emit(f hpack.HeaderField) {
	if r.size += int(f.Size()); r.size > h2MaxHeaderList {
		// The rest is decoded for the HPACK state only: no strings for
		// fields it does not index.
		r.block.tooBig = true
		r.dec.SetEmitEnabled(false)
		r.release()
		return
	}
	if r.bad == nil {
		switch {
		case f.IsPseudo() && r.regular:
			r.bad = fmt.Errorf("pseudo-header %q after a regular field", f.Name)
		case !f.IsPseudo() && !validFieldName(f.Name):
			r.bad = fmt.Errorf("invalid field name %q", f.Name)
		case !httpguts.ValidHeaderFieldValue(f.Value):
			r.bad = fmt.Errorf("invalid value of field %q", f.Name)
		}
	}
	r.regular = r.regular || !f.IsPseudo()
	r.block.fields = append(r.block.fields, f)
}

// h2KeepFields is the most fields a connection's block buffer keeps
// between blocks: one large block must not hold its memory for the
// connection's life.
const h2KeepFields = 64

// release lets go of the fields of the block just handled.
func (r *h2Blocks) release() {
	clear(r.block.fields) // their strings
	if cap(r.block.fields) > h2KeepFields {
		r.block.fields = nil
	} else {
		r.block.fields = r.block.fields[:0]
	}
}

// validFieldName: a token in lower case, as RFC 9113 8.2 wants on the wire.
func validFieldName(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c >= 'A' && c <= 'Z' || !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return true
}

// h2MaxBlockBytes bounds the size of a header block's frames, their
// 9-byte headers included: endless CONTINUATION frames, empty or decoding
// to nothing, must end the connection.
const h2MaxBlockBytes = 2 * h2MaxHeaderList

// Frame header flags of header blocks (RFC 9113 6.2).
const (
	flagEndStream  = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

var errCompression = http2.ConnectionError(http2.ErrCodeCompression)

// readFrame returns the next frame of x: a complete header block, or any
// other frame as the Framer reads it. A block that breaks a rule for its
// stream alone comes back as an http2.StreamError, once its fields were
// decoded (the connection's HPACK state needs every block).
func (x *h2conn) readFrame() (http2.Frame, *h2Block, error) {
	for {
		h, err := x.br.Peek(9)
		if err != nil {
			return nil, nil, err
		}
		n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		t, flags := http2.FrameType(h[3]), h[4]
		id := binary.BigEndian.Uint32(h[5:]) & (1<<31 - 1)
		if t != http2.FrameHeaders && t != http2.FrameContinuation {
			if x.blocks.open {
				return nil, nil, http2.ConnectionError(http2.ErrCodeProtocol)
			}
			f, err := x.fr.ReadFrame()
			return f, nil, err
		}
		if n > h2DefaultFrame {
			return nil, nil, http2.ErrFrameTooLarge
		}
		p, err := x.br.Peek(9 + n)
		if err != nil {
			return nil, nil, err
		}
		p = p[9:]
		b, err := x.blocks.frame(t, flags, id, p)
		x.br.Discard(9 + n)
		if b != nil || err != nil {
			return nil, b, err
		}
	}
}

// frame takes one HEADERS or CONTINUATION frame's payload; it returns the
// block once it is complete.
func (r *h2Blocks) frame(t http2.FrameType, flags byte, id uint32, p []byte) (*h2Block, error) {
	protocol := http2.ConnectionError(http2.ErrCodeProtocol)
	if t == http2.FrameContinuation {
		if !r.open || id != r.block.StreamID {
			return nil, protocol
		}
	} else {
		if r.open || id == 0 {
			return nil, protocol
		}
		pad := 0
		if flags&flagPadded != 0 {
			if len(p) < 1 {
				return nil, http2.ConnectionError(http2.ErrCodeFrameSize)
			}
			pad, p = int(p[0]), p[1:]
		}
		selfDep := false
		if flags&flagPriority != 0 {
			if len(p) < 5 {
				return nil, http2.ConnectionError(http2.ErrCodeFrameSize)
			}
			selfDep = binary.BigEndian.Uint32(p)&(1<<31-1) == id
			p = p[5:]
		}
		if pad > len(p) {
			return nil, protocol
		}
		p = p[:len(p)-pad]
		r.release()
		r.block = h2Block{StreamID: id, end: flags&flagEndStream != 0, fields: r.block.fields}
		r.open, r.coded, r.size, r.regular, r.bad = true, 0, 0, false, nil
		r.dec.SetEmitEnabled(true)
		if selfDep {
			r.bad = errors.New("a stream that depends on itself")
		}
	}
	if r.coded += 9 + len(p); r.coded > h2MaxBlockBytes {
		return nil, http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	if _, err := r.dec.Write(p); err != nil {
		return nil, errCompression
	}
	if flags&flagEndHeaders == 0 {
		return nil, nil
	}
	r.open = false
	if err := r.dec.Close(); err != nil {
		return nil, errCompression
	}
	if r.bad == nil && !r.block.tooBig {
		r.bad = checkPseudos(r.block.fields)
	}
	if r.bad != nil {
		return nil, http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: r.bad}
	}
	return &r.block, nil
}

// checkPseudos: only known pseudo-headers, each once, and those of a
// request and a response not mixed.
func checkPseudos(fields []hpack.HeaderField) error {
	var req, res bool
	for i, f := range fields {
		if !f.IsPseudo() {
			break
		}
		switch f.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			req = true
		case ":status":
			res = true
		default:
			return fmt.Errorf("unknown pseudo-header %q", f.Name)
		}
		for _, g := range fields[:i] {
			if g.Name == f.Name {
				return fmt.Errorf("pseudo-header %q twice", f.Name)
			}
		}
	}
	if req && res {
		return errors.New("request and response pseudo-headers mixed")
	}
	return nil
}
