package proxy

// Header blocks as the session reads them (h2read.go): what a client may
// not send in one, and what ends its stream or its connection.

import (
	"bytes"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// answer reads frames until stream id is answered with a head, reset, or
// the connection goes away, and says which.
func (h *rawH2) answer(id uint32) string {
	h.t.Helper()
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("stream %d: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.fr.WriteSettingsAck()
			}
		case *http2.GoAwayFrame:
			return "GOAWAY " + f.ErrCode.String()
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return f.PseudoValue("status")
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "RST_STREAM " + f.ErrCode.String()
			}
		}
	}
}

// block encodes fields (name, value pairs) with the connection's encoder,
// as they are, valid or not.
func (h *rawH2) block(kv ...string) []byte {
	h.buf.Reset()
	for i := 0; i < len(kv); i += 2 {
		h.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(h.buf.Bytes())
}

// TestH2HeaderBlockStreamErrors: a header block with a field HTTP/2 does
// not allow resets its stream alone. The block is decoded all the same, so
// the connection's HPACK state stays in step and the next request on it,
// encoded against that state, is routed as usual.
func TestH2HeaderBlockStreamErrors(t *testing.T) {
	h := newH2Harness(t)
	c := dialRaw(t, h.addr)
	raw := newRawH2(t, c, c)
	req := []string{":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/"}
	cases := []struct {
		name   string
		fields []string
	}{
		{"upper-case field name", append(req, "X-Detour-Session", "alice")},
		{"pseudo-header after a regular field", []string{":method", "GET", "x-detour-session", "alice", ":path", "/", ":scheme", "http"}},
		{"unknown pseudo-header", append(req, ":tenant", "alice")},
		{"pseudo-header twice", append(req, ":path", "/other")},
		{"request and response pseudo-headers", append(req, ":status", "200")},
		{"NUL in a value", append(req, "x-detour-session", "ali\x00ce")},
		{"newline in a value", append(req, "x-note", "a\r\nx-detour-session: alice")},
		{"space in a name", append(req, "x detour", "alice")},
	}
	for i, tc := range cases {
		id := uint32(1 + 4*i)
		raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: raw.block(tc.fields...), EndHeaders: true, EndStream: true})
		if got := raw.answer(id); got != "RST_STREAM PROTOCOL_ERROR" {
			t.Errorf("%s: %s, want RST_STREAM PROTOCOL_ERROR", tc.name, got)
		}
		raw.request(id+2, "GET", "/", "x-detour-session", "alice")
		if got := raw.responses(1)[id+2]; got == nil || got.status != "200" || got.body != "alice" {
			t.Fatalf("after %s: the next request got %+v, want 200 from alice", tc.name, got)
		}
	}
	// The session refused them itself: none reached a backend.
	h.rec.waitCount(t, event{"alice", OutcomeMatched}, len(cases))
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	if len(h.rec.events) != len(cases) {
		t.Fatalf("%d requests forwarded, want %d: %v", len(h.rec.events), len(cases), h.rec.events)
	}
}

// TestH2HeaderBlockShapes: padding, a priority, CONTINUATION frames and a
// priority that names the stream itself.
func TestH2HeaderBlockShapes(t *testing.T) {
	h := newH2Harness(t)
	c := dialRaw(t, h.addr)
	raw := newRawH2(t, c, c)

	b := raw.headers("GET", "/", "x-detour-session", "bob")
	raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b, EndHeaders: true, EndStream: true,
		PadLength: 200, Priority: http2.PriorityParam{StreamDep: 0, Weight: 7}})
	if got := raw.responses(1)[1]; got == nil || got.body != "bob" {
		t.Fatalf("padded HEADERS with a priority: %+v, want bob", got)
	}

	b = raw.headers("GET", "/", "x-detour-session", "alice", "x-pad", strings.Repeat("p", 100))
	raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: b[:5], EndStream: true})
	raw.fr.WriteContinuation(3, false, b[5:40])
	raw.fr.WriteContinuation(3, false, nil)
	raw.fr.WriteContinuation(3, true, b[40:])
	if got := raw.responses(1)[3]; got == nil || got.body != "alice" {
		t.Fatalf("a block over four frames: %+v, want alice", got)
	}

	b = raw.headers("GET", "/")
	raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: b, EndHeaders: true, EndStream: true,
		Priority: http2.PriorityParam{StreamDep: 5, Weight: 1}})
	if got := raw.answer(5); got != "RST_STREAM PROTOCOL_ERROR" {
		t.Fatalf("a stream that depends on itself: %s, want RST_STREAM PROTOCOL_ERROR", got)
	}
	raw.request(7, "GET", "/")
	if got := raw.responses(1)[7]; got == nil || got.body != "app" {
		t.Fatalf("after it: %+v, want app", got)
	}
}

// TestH2HeaderListTooLarge: header fields over the SETTINGS_MAX_HEADER_LIST_SIZE
// the session announced are answered 431, as an HTTP/1 head over its
// bound is, and the connection goes on.
func TestH2HeaderListTooLarge(t *testing.T) {
	h := newH2Harness(t)
	c := dialRaw(t, h.addr)
	raw := newRawH2(t, c, c)
	big := strings.Repeat("v", 15000)
	fields := []string{":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/", "x-detour-session", "alice"}
	for range 80 { // 80 × 15 KB: over 1 MiB
		fields = append(fields, "x-big", big)
	}
	raw.buf.Reset()
	for i := 0; i < len(fields); i += 2 {
		// Never indexed: the session's table must not fill with them.
		raw.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1], Sensitive: i > 8})
	}
	writeBlock(raw.fr, 1, true, raw.buf.Bytes())
	if got := raw.answer(1); got != "431" {
		t.Fatalf("a header list over 1 MiB: %s, want 431", got)
	}
	raw.request(3, "GET", "/", "x-detour-session", "alice")
	if got := raw.responses(1)[3]; got == nil || got.body != "alice" {
		t.Fatalf("the next request: %+v, want alice", got)
	}
}

// TestH2HeaderBlockConnectionErrors: what breaks the framing of header
// blocks, or their compression, ends the connection with a GOAWAY that
// says why.
func TestH2HeaderBlockConnectionErrors(t *testing.T) {
	h := newH2Harness(t)
	for _, tc := range []struct {
		name string
		send func(raw *rawH2)
		want http2.ErrCode
	}{
		{"CONTINUATION without HEADERS", func(raw *rawH2) {
			raw.fr.WriteContinuation(1, true, raw.headers("GET", "/"))
		}, http2.ErrCodeProtocol},
		{"another frame inside a block", func(raw *rawH2) {
			raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: raw.headers("GET", "/")})
			raw.fr.WritePing(false, [8]byte{})
		}, http2.ErrCodeProtocol},
		{"CONTINUATION of another stream", func(raw *rawH2) {
			b := raw.headers("GET", "/")
			raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:2]})
			raw.fr.WriteContinuation(3, true, b[2:])
		}, http2.ErrCodeProtocol},
		{"HEADERS on stream 0", func(raw *rawH2) {
			raw.fr.WriteRawFrame(http2.FrameHeaders, 0x4, 0, raw.headers("GET", "/"))
		}, http2.ErrCodeProtocol},
		{"padding longer than the frame", func(raw *rawH2) {
			raw.fr.WriteRawFrame(http2.FrameHeaders, 0x4|0x8, 1, append([]byte{200}, raw.headers("GET", "/")...))
		}, http2.ErrCodeProtocol},
		{"a priority cut short", func(raw *rawH2) {
			raw.fr.WriteRawFrame(http2.FrameHeaders, 0x4|0x20, 1, []byte{0, 0})
		}, http2.ErrCodeFrameSize},
		{"an index past the table", func(raw *rawH2) {
			raw.fr.WriteRawFrame(http2.FrameHeaders, 0x4, 1, []byte{0xff, 0x7f})
		}, http2.ErrCodeCompression},
		{"a block that ends inside a field", func(raw *rawH2) {
			b := raw.headers("GET", "/", "x-detour-session", "alice")
			raw.fr.WriteRawFrame(http2.FrameHeaders, 0x4, 1, b[:len(b)-2])
		}, http2.ErrCodeCompression},
		{"endless CONTINUATION", func(raw *rawH2) {
			raw.buf.Reset()
			raw.enc.WriteField(hpack.HeaderField{Name: "x-big", Value: strings.Repeat("v", 15000), Sensitive: true})
			one := bytes.Clone(raw.buf.Bytes())
			raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: raw.headers("GET", "/")})
			for range 200 { // 3 MB encoded
				if raw.fr.WriteContinuation(1, false, one) != nil {
					return // the session closed the connection
				}
			}
		}, http2.ErrCodeEnhanceYourCalm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, h.addr)
			raw := newRawH2(t, c, c)
			go tc.send(raw)
			raw.wantGoAway(tc.want)
		})
	}
}

// TestH2UpstreamHeadTooLarge: a response head over the bound the session
// announced to the backend is answered 502, as a backend that cannot be
// understood is; the next response on the same connections is forwarded.
func TestH2UpstreamHeadTooLarge(t *testing.T) {
	var n atomic.Int32
	back := serveRawH2(t, func(c net.Conn, fr *http2.Framer, h *http2.MetaHeadersFrame) bool {
		b := status200()
		if n.Add(1) == 1 {
			// Never indexed, as status200: the connection's HPACK
			// state stays empty, so a fresh encoder will do.
			var big bytes.Buffer
			enc := hpack.NewEncoder(&big)
			for range 80 {
				enc.WriteField(hpack.HeaderField{Name: "x-big", Value: strings.Repeat("v", 15000), Sensitive: true})
			}
			b = append(b, big.Bytes()...)
		}
		writeBlock(fr, h.StreamID, true, b)
		return true
	})
	_, addr, _ := startProxy(t, Config{App: back})
	c := dialRaw(t, addr)
	raw := newRawH2(t, c, c)
	raw.request(1, "GET", "/")
	if got := raw.answer(1); got != "502" {
		t.Fatalf("a response head over 1 MiB: %s, want 502", got)
	}
	raw.request(3, "GET", "/")
	if got := raw.answer(3); got != "200" {
		t.Fatalf("the next response: %s, want 200", got)
	}
}

// TestH2EmptyContinuationIsCutOff: CONTINUATION frames that carry nothing
// count against the block's bound by their headers, so they cannot keep a
// block open for ever.
func TestH2EmptyContinuationIsCutOff(t *testing.T) {
	h := newH2Harness(t)
	c := dialRaw(t, h.addr)
	raw := newRawH2(t, c, c)
	// The frames are written from another goroutine, whole frames per
	// Write, with a Framer of its own: answer writes on raw.fr (SETTINGS
	// acknowledgements) meanwhile.
	var head, last bytes.Buffer
	http2.NewFramer(&head, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: raw.headers("GET", "/"), EndStream: true})
	http2.NewFramer(&last, nil).WriteContinuation(1, true, nil)
	go func() {
		if _, err := c.Write(head.Bytes()); err != nil {
			return
		}
		empty := bytes.Repeat([]byte{0, 0, 0, byte(http2.FrameContinuation), 0, 0, 0, 0, 1}, 1000)
		for range 400 { // 3.6 MB of frame headers
			if _, err := c.Write(empty); err != nil {
				return
			}
		}
		c.Write(last.Bytes())
	}()
	if got := raw.answer(1); got != "GOAWAY ENHANCE_YOUR_CALM" {
		t.Fatalf("400,000 empty CONTINUATION frames: %s, want GOAWAY ENHANCE_YOUR_CALM", got)
	}
}

// TestH2RepeatedFieldJoinedOnce: a request may repeat a long field value
// for one byte each (an index into the HPACK table); the matcher's view
// joins the values in one allocation, not one per repeat.
func TestH2RepeatedFieldJoinedOnce(t *testing.T) {
	head := h2Head{{Name: ":method", Value: "GET"}, {Name: ":path", Value: "/"}}
	v := strings.Repeat("a", 4000)
	for range 250 {
		head = append(head, hpack.HeaderField{Name: "baggage", Value: v})
	}
	got, ok := head.Header("Baggage")
	if !ok || len(got) != 250*4000+249*2 || !strings.HasPrefix(got, v+", "+v) || !strings.HasSuffix(got, v) {
		t.Fatalf("joined %d bytes (%v), want %d", len(got), ok, 250*4000+249*2)
	}
	if n := testing.AllocsPerRun(5, func() { head.Header("baggage") }); n > 1 {
		t.Fatalf("%v allocations to join 250 values, want 1", n)
	}
	if got, ok := head.Header("x-none"); ok || got != "" {
		t.Fatalf("a missing field: %q, %v", got, ok)
	}
}

// TestH2BlockBufferReleased: once a block was handled its fields are let
// go, and a connection keeps no large buffer from one large block; past
// the header list's bound, fields the table does not keep cost nothing.
func TestH2BlockBufferReleased(t *testing.T) {
	var r h2Blocks
	r.init()
	var enc bytes.Buffer
	e := hpack.NewEncoder(&enc)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}, {"a", ""}} {
		e.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	b := bytes.Clone(enc.Bytes())
	for range 5000 {
		b = append(b, 0x80|62) // "a" again, from the table
	}
	got, err := r.frame(http2.FrameHeaders, flagEndHeaders|flagEndStream, 1, b)
	if err != nil || len(got.fields) != 5005 {
		t.Fatalf("a block of 5,005 fields: %v fields, %v", got, err)
	}
	r.release()
	if cap(r.block.fields) > h2KeepFields {
		t.Fatalf("after it, the connection keeps room for %d fields", cap(r.block.fields))
	}

	// Over the bound: 80 fields of 15,000 bytes, never indexed.
	enc.Reset()
	e.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
	big := hpack.HeaderField{Name: "x-big", Value: strings.Repeat("v", 15000), Sensitive: true}
	_, err = r.frame(http2.FrameHeaders, 0, 3, bytes.Clone(enc.Bytes()))
	for i := 0; i < 80 && err == nil; i++ {
		enc.Reset()
		e.WriteField(big)
		_, err = r.frame(http2.FrameContinuation, 0, 3, bytes.Clone(enc.Bytes()))
	}
	if err != nil || !r.block.tooBig || len(r.block.fields) != 0 || cap(r.block.fields) > h2KeepFields {
		t.Fatalf("over the bound: err %v, tooBig %v, %d fields kept (room for %d)", err, r.block.tooBig, len(r.block.fields), cap(r.block.fields))
	}
	enc.Reset()
	e.WriteField(big)
	more := bytes.Clone(enc.Bytes())
	if n := testing.AllocsPerRun(20, func() { r.frame(http2.FrameContinuation, 0, 3, more) }); n > 0 {
		t.Fatalf("%v allocations per field decoded past the bound, want 0", n)
	}
	if got, err = r.frame(http2.FrameContinuation, flagEndHeaders, 3, nil); err != nil || !got.tooBig {
		t.Fatalf("the block's end: %+v, %v", got, err)
	}
}
