package match

import (
	"fmt"
	"regexp"
	"strings"
)

// The names behind a session key (DESIGN.md, "Names").
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

// Match reports whether r satisfies every condition. Conditions are tested
// in the order given, so putting the most selective first is cheapest.
func (m *Matcher) Match(r Request) bool {
	for i := range m.conds {
		if !m.conds[i].match(r) {
			return false
		}
	}
	return true
}

func (c *compiled) match(r Request) bool {
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
	for header != "" {
		var member string
		if i := strings.IndexByte(header, ','); i >= 0 {
			member, header = header[:i], header[i+1:]
		} else {
			member, header = header, ""
		}
		k, v, ok := parseMember(member)
		if !ok || k != key {
			continue
		}
		if d, ok := percentDecode(v); ok {
			return d, true
		}
	}
	return "", false
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
func parseMember(m string) (key, value string, ok bool) {
	if i := strings.IndexByte(m, ';'); i >= 0 {
		m = m[:i]
	}
	k, v, found := strings.Cut(m, "=")
	if !found {
		return "", "", false
	}
	k, v = trimOWS(k), trimOWS(v)
	if !IsToken(k) {
		return "", "", false
	}
	for i := 0; i < len(v); i++ {
		if !isBaggageOctet(v[i]) {
			return "", "", false
		}
	}
	return k, v, true
}

// isBaggageOctet is W3C baggage-octet: printable ASCII without space, DQUOTE,
// comma, semicolon and backslash.
func isBaggageOctet(c byte) bool {
	return c == 0x21 || c >= 0x23 && c <= 0x2b || c >= 0x2d && c <= 0x3a ||
		c >= 0x3c && c <= 0x5b || c >= 0x5d && c <= 0x7e
}

func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
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
