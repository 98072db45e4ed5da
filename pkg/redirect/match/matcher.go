package match

import (
	"fmt"
	"regexp"
	"strings"
)

// The names behind a session key (docs/architecture.md, "Names").
const (
	SessionHeader = "x-detour-session"
	SessionMember = "detour-session"
	BaggageHeader = "baggage"
)

// Matcher is a compiled, immutable set of ANDed conditions; safe for
// concurrent use.
type Matcher struct {
	conds []compiled
}

type compiled struct {
	kind  Kind
	name  string // lower-cased header name or baggage key
	value string
	re    *regexp.Regexp
}

// Compile validates conds and prepares them for matching; header names are
// lower-cased once here so matching does no case folding of its own.
func Compile(conds []Condition) (*Matcher, error) {
	if err := Validate(conds); err != nil {
		return nil, err
	}
	m := &Matcher{conds: make([]compiled, 0, len(conds))}
	for _, c := range conds {
		cc := compiled{kind: c.Kind, name: c.Name, value: c.Value}
		switch c.Kind {
		case HeaderExact, HeaderPrefix, HeaderRegex:
			cc.name = strings.ToLower(c.Name)
		}
		if c.Kind == HeaderRegex {
			re, err := regexp.Compile(c.Value)
			if err != nil {
				return nil, fmt.Errorf("compile %q: %w", c.Value, err)
			}
			cc.re = re
		}
		m.conds = append(m.conds, cc)
	}
	return m, nil
}

// Conditions returns the conditions m was compiled from, header names lower
// case: for compiling them again elsewhere (the kernel fast path).
func (m *Matcher) Conditions() []Condition {
	out := make([]Condition, len(m.conds))
	for i, c := range m.conds {
		out[i] = Condition{Kind: c.kind, Name: c.name, Value: c.value}
	}
	return out
}

// Match reports whether r satisfies every condition. Conditions are tested
// in the order given, so putting the most selective first is cheapest.
func (m *Matcher) Match(r Request) bool {
	rr, _ := r.(RawRequest)
	for i := range m.conds {
		if !m.conds[i].match(r, rr) {
			return false
		}
	}
	return true
}

func (c *compiled) match(r Request, rr RawRequest) bool {
	if rr != nil {
		if ok, decided := c.matchRaw(rr); decided {
			return ok
		}
	}
	switch c.kind {
	case Session:
		k, ok := SessionKey(r)
		return ok && k == c.value
	case HeaderExact:
		v, ok := r.Header(c.name)
		return ok && v == c.value
	case HeaderPrefix:
		v, ok := r.Header(c.name)
		return ok && strings.HasPrefix(v, c.value)
	case HeaderRegex:
		v, ok := r.Header(c.name)
		return ok && c.re.MatchString(v)
	case Baggage:
		b, ok := r.Header(BaggageHeader)
		if !ok {
			return false
		}
		v, ok := BaggageMember(b, c.name)
		return ok && v == c.value
	case PathExact:
		return r.Path() == c.value
	case PathPrefix:
		return strings.HasPrefix(r.Path(), c.value)
	case Method:
		return r.Method() == c.value
	}
	return false
}

// matchRaw is match on the request's own bytes, without copying them. It
// does not decide (decided is false) when a header it needs occurs more than
// once, whose values then compare joined with ", " as Header gives them, nor
// for a method, which Method gives without allocating.
func (c *compiled) matchRaw(r RawRequest) (ok, decided bool) {
	switch c.kind {
	case Session:
		v, n := r.HeaderBytes(SessionHeader)
		if n > 0 {
			return n == 1 && equal(v, c.value), n == 1
		}
		return c.baggageIs(r, SessionMember)
	case HeaderExact:
		v, n := r.HeaderBytes(c.name)
		return n == 1 && equal(v, c.value), n < 2
	case HeaderPrefix:
		v, n := r.HeaderBytes(c.name)
		return n == 1 && len(v) >= len(c.value) && equal(v[:len(c.value)], c.value), n < 2
	case HeaderRegex:
		v, n := r.HeaderBytes(c.name)
		return n == 1 && c.re.Match(v), n < 2
	case Baggage:
		return c.baggageIs(r, c.name)
	case PathExact:
		return equal(r.PathBytes(), c.value), true
	case PathPrefix:
		p := r.PathBytes()
		return len(p) >= len(c.value) && equal(p[:len(c.value)], c.value), true
	}
	return false, false
}

// baggageIs tells whether baggage member key decodes to c.value, when the
// request has at most one baggage field.
func (c *compiled) baggageIs(r RawRequest, key string) (ok, decided bool) {
	b, n := r.HeaderBytes(BaggageHeader)
	if n != 1 {
		return false, n == 0
	}
	v, found := baggageRaw(b, key)
	return found && decodedEqual(v, c.value), true
}

// SessionKey returns the request's one session key: header x-detour-session
// when present (even if empty, so a request can never carry two keys), else
// baggage member detour-session.
func SessionKey(r Request) (string, bool) {
	if v, ok := r.Header(SessionHeader); ok {
		return v, true
	}
	b, ok := r.Header(BaggageHeader)
	if !ok {
		return "", false
	}
	return BaggageMember(b, SessionMember)
}

// BaggageMember returns the percent-decoded value of member key in a W3C
// baggage header value (list-members "key=value;props" separated by commas,
// optional whitespace around each part). Malformed members are skipped, as
// the W3C spec allows; when a key repeats, the first well-formed member wins.
// It allocates only when the value needs decoding.
func BaggageMember(header, key string) (string, bool) {
	v, ok := baggageRaw(header, key)
	if !ok {
		return "", false
	}
	d, _ := percentDecode(v) // baggageRaw checked the encoding
	return d, true
}

// baggageRaw finds BaggageMember's member in a header value held as a string
// or as bytes, and returns its value still percent-encoded (the encoding is
// valid).
func baggageRaw[S ~string | ~[]byte](header S, key string) (S, bool) {
	for len(header) > 0 {
		member := header
		if i := indexByte(header, ','); i >= 0 {
			member, header = header[:i], header[i+1:]
		} else {
			header = header[len(header):]
		}
		k, v, ok := parseMember(member)
		if ok && equal(k, key) && validPercent(v) {
			return v, true
		}
	}
	return header[:0], false
}

// ParseBaggage returns every well-formed member of a baggage header value,
// first occurrence winning. It is the slow, complete form of BaggageMember,
// for tools and tests.
func ParseBaggage(header string) map[string]string {
	out := map[string]string{}
	for _, member := range strings.Split(header, ",") {
		k, v, ok := parseMember(member)
		if !ok {
			continue
		}
		if _, seen := out[k]; seen {
			continue
		}
		if d, ok := percentDecode(v); ok {
			out[k] = d
		}
	}
	return out
}

// parseMember splits "OWS key OWS = OWS value OWS *(; property)" and returns
// the raw (still encoded) value.
func parseMember[S ~string | ~[]byte](m S) (key, value S, ok bool) {
	if i := indexByte(m, ';'); i >= 0 {
		m = m[:i]
	}
	eq := indexByte(m, '=')
	if eq < 0 {
		return m[:0], m[:0], false
	}
	k, v := trimOWS(m[:eq]), trimOWS(m[eq+1:])
	if len(k) == 0 {
		return m[:0], m[:0], false
	}
	for i := 0; i < len(k); i++ {
		if !IsTokenChar(k[i]) {
			return m[:0], m[:0], false
		}
	}
	for i := 0; i < len(v); i++ {
		if !isBaggageOctet(v[i]) {
			return m[:0], m[:0], false
		}
	}
	return k, v, true
}

// indexByte is strings.IndexByte for a string or bytes.
func indexByte[S ~string | ~[]byte](s S, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// equal compares a string or bytes with a string, without converting.
func equal[S ~string | ~[]byte](s S, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != t[i] {
			return false
		}
	}
	return true
}

// isBaggageOctet is W3C baggage-octet: printable ASCII without space, DQUOTE,
// comma, semicolon and backslash.
func isBaggageOctet(c byte) bool {
	return c == 0x21 || c >= 0x23 && c <= 0x2b || c >= 0x2d && c <= 0x3a ||
		c >= 0x3c && c <= 0x5b || c >= 0x5d && c <= 0x7e
}

func trimOWS[S ~string | ~[]byte](s S) S {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// validPercent tells whether percentDecode would accept s.
func validPercent[S ~string | ~[]byte](s S) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			continue
		}
		if i+2 >= len(s) {
			return false
		}
		if _, ok := unhex(s[i+1]); !ok {
			return false
		}
		if _, ok := unhex(s[i+2]); !ok {
			return false
		}
		i += 2
	}
	return true
}

// decodedEqual tells whether s, validly percent-encoded, decodes to want;
// it decodes as it compares, so it never allocates.
func decodedEqual[S ~string | ~[]byte](s S, want string) bool {
	j := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' {
			hi, _ := unhex(s[i+1])
			lo, _ := unhex(s[i+2])
			c = hi<<4 | lo
			i += 2
		}
		if j == len(want) || want[j] != c {
			return false
		}
		j++
	}
	return j == len(want)
}

func percentDecode(s string) (string, bool) {
	if strings.IndexByte(s, '%') < 0 {
		return s, true
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", false
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return string(b), true
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
