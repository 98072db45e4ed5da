// Package match decides which intercept, if any, selects a request, and
// whether two intercepts could ever select the same request.
package match

// Kind names one sort of condition. Conditions of one intercept are ANDed.
type Kind string

// The condition kinds. Names of headers compare case-insensitively.
const (
	// Session matches the request's session key: the value of header
	// x-detour-session if present, else baggage member detour-session.
	// Value is the key; Name is unused.
	Session      Kind = "session"
	HeaderExact  Kind = "header"        // header Name equals Value
	HeaderPrefix Kind = "header-prefix" // header Name starts with Value
	HeaderRegex  Kind = "header-regex"  // header Name matches regexp Value
	Baggage      Kind = "baggage"       // W3C baggage member Name has value Value
	PathExact    Kind = "path"          // request path (without query) equals Value
	PathPrefix   Kind = "path-prefix"   // request path starts with Value
	Method       Kind = "method"        // request method equals Value
)

// Condition is one test on a request.
type Condition struct {
	Kind  Kind   `json:"kind"`
	Name  string `json:"name,omitempty"`
	Value string `json:"value"`
}

// Request is what a matcher can see of a request, whatever the protocol.
type Request interface {
	Method() string
	// Path is the request target's path, without the query string.
	Path() string
	// Header returns the field's values joined with ", " (RFC 9110 5.3) and
	// whether the field is present; name is compared case-insensitively.
	Header(name string) (string, bool)
}

// RawRequest is a Request that can also show its path and single header
// values as bytes it already holds, so a Matcher compares them without
// copying: on the data path every routed request is matched. Matching only
// reads the slices, and only during the call to Match.
type RawRequest interface {
	Request
	// PathBytes is Path as bytes.
	PathBytes() []byte
	// HeaderBytes returns the value of the named field (name compared
	// case-insensitively) when it occurs exactly once, and how often it
	// occurs: 0, 1, or 2 for twice or more, when value is not given and
	// the matcher asks Header for the values joined.
	HeaderBytes(name string) (value []byte, n int)
}
