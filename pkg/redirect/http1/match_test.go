package http1

import (
	"testing"

	"github.com/detourdev/detour/pkg/redirect/match"
)

// matchCases are requests as the proxy sees them, each with an intercept's
// conditions: what a routed request costs to match.
var matchCases = []struct {
	name  string
	conds []match.Condition
	req   string
}{
	{"session", []match.Condition{{Kind: match.Session, Value: "alice"}},
		"GET /api/v1/items?limit=10 HTTP/1.1\r\nHost: payments.staging.svc\r\nUser-Agent: curl/8\r\nAccept: */*\r\nX-Detour-Session: alice\r\n\r\n"},
	{"session-miss", []match.Condition{{Kind: match.Session, Value: "alice"}},
		"GET /api/v1/items?limit=10 HTTP/1.1\r\nHost: payments.staging.svc\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"},
	{"session-baggage", []match.Condition{{Kind: match.Session, Value: "alice"}},
		"GET /api/v1/items HTTP/1.1\r\nHost: payments.staging.svc\r\nBaggage: a=1, detour-session=alice;p=q\r\n\r\n"},
	{"header", []match.Condition{{Kind: match.HeaderExact, Name: "X-Team", Value: "blue"}},
		"GET / HTTP/1.1\r\nHost: payments.staging.svc\r\nX-Team: blue\r\n\r\n"},
	{"header-prefix", []match.Condition{{Kind: match.HeaderPrefix, Name: "User-Agent", Value: "curl/"}},
		"GET / HTTP/1.1\r\nHost: payments.staging.svc\r\nUser-Agent: curl/8.5\r\n\r\n"},
	{"baggage", []match.Condition{{Kind: match.Baggage, Name: "tenant", Value: "acme"}},
		"GET / HTTP/1.1\r\nHost: payments.staging.svc\r\nBaggage: a=1,tenant=acme\r\n\r\n"},
	{"path-prefix", []match.Condition{{Kind: match.PathPrefix, Value: "/api/"}},
		"GET /api/v1/items?limit=10 HTTP/1.1\r\nHost: payments.staging.svc\r\n\r\n"},
	{"session-and-path", []match.Condition{{Kind: match.Session, Value: "alice"}, {Kind: match.PathExact, Value: "/api/v1/items"}},
		"GET /api/v1/items?limit=10 HTTP/1.1\r\nHost: payments.staging.svc\r\nX-Detour-Session: alice\r\n\r\n"},
}

// BenchmarkMatch is the routing decision of one request: a compiled
// matcher against a parsed head.
func BenchmarkMatch(b *testing.B) {
	for _, tc := range matchCases {
		b.Run(tc.name, func(b *testing.B) {
			m, err := match.Compile(tc.conds)
			if err != nil {
				b.Fatal(err)
			}
			var r Request
			if _, err := r.Parse([]byte(tc.req)); err != nil {
				b.Fatal(err)
			}
			want := m.Match(&r)
			b.ReportAllocs()
			for b.Loop() {
				if m.Match(&r) != want {
					b.Fatal("unstable")
				}
			}
		})
	}
}

// stringsOnly hides RawRequest, so a matcher takes its allocating path.
type stringsOnly struct{ r *Request }

func (s stringsOnly) Method() string                    { return s.r.Method() }
func (s stringsOnly) Path() string                      { return s.r.Path() }
func (s stringsOnly) Header(name string) (string, bool) { return s.r.Header(name) }

// rawConds exercise every condition matchRaw decides.
var rawConds = [][]match.Condition{
	{{Kind: match.Session, Value: "alice"}},
	{{Kind: match.Session, Value: "al ice"}},
	{{Kind: match.HeaderExact, Name: "x-team", Value: "blue"}},
	{{Kind: match.HeaderExact, Name: "x-team", Value: "blue, red"}},
	{{Kind: match.HeaderPrefix, Name: "X-Team", Value: "bl"}},
	{{Kind: match.HeaderRegex, Name: "x-team", Value: "^b.*e$"}},
	{{Kind: match.Baggage, Name: "tenant", Value: "acme"}},
	{{Kind: match.PathExact, Value: "/api"}},
	{{Kind: match.PathExact, Value: "/"}},
	{{Kind: match.PathPrefix, Value: "/api/"}},
	{{Kind: match.Method, Value: "POST"}},
}

// matchAgrees checks that matching on bytes decides as matching on strings.
func matchAgrees(t *testing.T, head string) {
	t.Helper()
	var r Request
	if _, err := r.Parse([]byte(head)); err != nil {
		return
	}
	if got, want := string(r.PathBytes()), r.Path(); got != want {
		t.Fatalf("PathBytes %q, Path %q", got, want)
	}
	for _, conds := range rawConds {
		m, err := match.Compile(conds)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := m.Match(&r), m.Match(stringsOnly{&r}); got != want {
			t.Fatalf("%v on %q: Match on bytes %v, on strings %v", conds, head, got, want)
		}
	}
}

var agreeHeads = []string{
	"GET /api HTTP/1.1\r\nX-Detour-Session: alice\r\n\r\n",
	"GET /api/x?q HTTP/1.1\r\nx-detour-session: alice\r\nX-Detour-Session: bob\r\n\r\n",
	"GET / HTTP/1.1\r\nBaggage: detour-session=al%20ice,tenant=acme\r\n\r\n",
	"GET / HTTP/1.1\r\nBaggage: a=1\r\nbaggage: tenant=acme, detour-session=alice\r\n\r\n",
	"GET / HTTP/1.1\r\nX-Team: blue\r\nx-team: red\r\n\r\n",
	"GET / HTTP/1.1\r\nX-Team: blue\r\n\r\n",
	"GET / HTTP/1.1\r\nX-Team: \r\nX-Detour-Session:\r\nBaggage: detour-session=alice\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\n\r\n",
	"GET http://h HTTP/1.1\r\n\r\n",
	"GET http://h/api?x HTTP/1.1\r\n\r\n",
	"CONNECT h:443 HTTP/1.1\r\n\r\n",
	"POST /api/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
}

func TestMatchOnBytesAgrees(t *testing.T) {
	for _, h := range agreeHeads {
		matchAgrees(t, h)
	}
	for _, tc := range matchCases {
		matchAgrees(t, tc.req)
	}
}

func FuzzMatchOnBytes(f *testing.F) {
	for _, h := range agreeHeads {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, head string) { matchAgrees(t, head) })
}

func TestHeaderBytes(t *testing.T) {
	r, _, err := ParseRequest([]byte("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nb: 3\r\nC:\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, value string
		n           int
	}{{"a", "1", 1}, {"B", "", 2}, {"c", "", 1}, {"d", "", 0}} {
		v, n := r.HeaderBytes(tc.name)
		if string(v) != tc.value || n != tc.n {
			t.Errorf("HeaderBytes(%q) = %q, %d; want %q, %d", tc.name, v, n, tc.value, tc.n)
		}
	}
}

// Routing a request on a session, header, baggage or path allocates nothing.
func TestMatchDoesNotAllocate(t *testing.T) {
	for _, tc := range matchCases {
		m, err := match.Compile(tc.conds)
		if err != nil {
			t.Fatal(err)
		}
		var r Request
		if _, err := r.Parse([]byte(tc.req)); err != nil {
			t.Fatal(err)
		}
		if a := testing.AllocsPerRun(100, func() { m.Match(&r) }); a != 0 {
			t.Errorf("%s: Match allocates %v times", tc.name, a)
		}
	}
}
