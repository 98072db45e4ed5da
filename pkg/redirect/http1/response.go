package http1

import "strconv"

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
