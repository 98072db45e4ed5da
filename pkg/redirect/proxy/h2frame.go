package proxy

// Frames as the HTTP/2 forwarder (h2.go) writes them: appended, in the wire
// format of RFC 9113 section 4, to the out buffer of the connection they go
// to, with the session's lock held. What a request looks like to the
// matcher is at the end.

import (
	"strings"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// appendFrame appends one frame whose payload is p.
func (x *h2conn) appendFrame(t http2.FrameType, flags http2.Flags, id uint32, p ...byte) {
	if x.failed {
		return
	}
	if len(x.out) > h2OutCap {
		// Only frames that need no credit can pile up so far (PING
		// and SETTINGS acknowledgements, resets): a peer that asks
		// for them and does not read is given up.
		x.s.giveUp(x)
		return
	}
	n := len(p)
	x.out = append(x.out, byte(n>>16), byte(n>>8), byte(n), byte(t), byte(flags),
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
	x.out = append(x.out, p...)
	x.s.queue(x)
}

func (x *h2conn) data(id uint32, end bool, p []byte) {
	var flags http2.Flags
	if end {
		flags = http2.FlagDataEndStream
	}
	x.appendFrame(http2.FrameData, flags, id, p...)
}

func (x *h2conn) rst(id uint32, code http2.ErrCode) {
	x.appendFrame(http2.FrameRSTStream, 0, id, be32(uint32(code))...)
}

func (x *h2conn) windowUpdate(id uint32, n int64) {
	x.appendFrame(http2.FrameWindowUpdate, 0, id, be32(uint32(n))...)
}

func (x *h2conn) pingAck(data [8]byte) {
	x.appendFrame(http2.FramePing, http2.FlagPingAck, 0, data[:]...)
}

func (x *h2conn) settings(ss ...http2.Setting) {
	p := make([]byte, 0, 6*len(ss))
	for _, s := range ss {
		p = append(p, byte(s.ID>>8), byte(s.ID))
		p = append(p, be32(s.Val)...)
	}
	x.appendFrame(http2.FrameSettings, 0, 0, p...)
}

func (x *h2conn) settingsAck() {
	x.appendFrame(http2.FrameSettings, http2.FlagSettingsAck, 0)
}

func (x *h2conn) goAway(last uint32, code http2.ErrCode) {
	x.appendFrame(http2.FrameGoAway, 0, 0, append(be32(last), be32(uint32(code))...)...)
}

// headers encodes fields with this connection's HPACK encoder and sends
// them as HEADERS and as many CONTINUATION frames as the peer's frame size
// needs. A header block must reach the peer in the order it was encoded,
// which the lock held by every caller ensures.
func (x *h2conn) headers(id uint32, end bool, fields []hpack.HeaderField) {
	if x.failed {
		return
	}
	x.hbuf = x.hbuf[:0]
	for _, f := range fields {
		x.enc.WriteField(f) // appends to hbuf: no error
	}
	block := x.hbuf
	if cap(x.hbuf) > 4*h2DefaultFrame {
		x.hbuf = nil // one large block must not stay for the connection's life
	}
	t, flags := http2.FrameHeaders, http2.Flags(0)
	if end {
		flags = http2.FlagHeadersEndStream
	}
	for {
		k := min(len(block), x.maxFrame)
		if k == len(block) {
			flags |= http2.FlagHeadersEndHeaders
		}
		x.appendFrame(t, flags, id, block[:k]...)
		block = block[k:]
		if len(block) == 0 {
			return
		}
		t, flags = http2.FrameContinuation, 0
	}
}

func be32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

// forwarded is fields without those that describe one connection rather
// than the message (RFC 9113 8.2.2), which a proxy must not pass on; TE
// stays only as "trailers", which gRPC requires. Usually there are none,
// and fields itself is returned.
func forwarded(fields []hpack.HeaderField) []hpack.HeaderField {
	i := 0
	for i < len(fields) && !connectionField(fields[i]) {
		i++
	}
	if i == len(fields) {
		return fields
	}
	out := append([]hpack.HeaderField(nil), fields[:i]...)
	for _, f := range fields[i:] {
		if connectionField(f) {
			if f.Name == "te" && hasToken(f.Value, "trailers") {
				out = append(out, hpack.HeaderField{Name: "te", Value: "trailers"})
			}
			continue
		}
		out = append(out, f)
	}
	return out
}

func connectionField(f hpack.HeaderField) bool {
	switch f.Name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade", "http2-settings":
		return true
	case "te":
		return f.Value != "trailers"
	}
	return false
}

// h2Head is what the matcher sees of an HTTP/2 request: its header block
// as decoded, pseudo-header fields first (the framer checks the order).
type h2Head []hpack.HeaderField

func (h h2Head) pseudo(name string) string {
	for _, f := range h {
		if !f.IsPseudo() {
			break
		}
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

func (h h2Head) Method() string { return h.pseudo(":method") }

// Path is the :path without its query, as for HTTP/1 (a gRPC method is
// "/package.Service/Method").
func (h h2Head) Path() string {
	p := h.pseudo(":path")
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if p == "" {
		return "/"
	}
	return p
}

// Header answers for :authority as "host", so a host rule works as in
// HTTP/1; gRPC metadata are ordinary header fields. Field names arrive in
// lower case (the framer refuses others).
func (h h2Head) Header(name string) (string, bool) {
	if strings.EqualFold(name, "host") {
		if a := h.pseudo(":authority"); a != "" {
			return a, true
		}
	}
	first, n, size := "", 0, 0
	for _, f := range h {
		if f.IsPseudo() || !strings.EqualFold(f.Name, name) {
			continue
		}
		if n == 0 {
			first = f.Value
		}
		n++
		size += len(f.Value)
	}
	if n <= 1 {
		return first, n == 1
	}
	// Joined once: HPACK can repeat a long value for a byte a time.
	var b strings.Builder
	b.Grow(size + 2*(n-1))
	sep := ""
	for _, f := range h {
		if f.IsPseudo() || !strings.EqualFold(f.Name, name) {
			continue
		}
		b.WriteString(sep)
		b.WriteString(f.Value)
		sep = ", "
	}
	return b.String(), true
}
