package fastpath

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/detourdev/detour/pkg/redirect/match"
	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// TestPrivilegedHeadsAndRules checks the program's head scan and rule
// evaluation through real sockets (sk_msg programs have no test run):
// each request, on a connection the kernel was routing, must reach the
// pod the proxy would send it to, and be routed in the kernel, or be left
// to the agent for the reason given.
func TestPrivilegedHeadsAndRules(t *testing.T) {
	n := newTestNetOpts(t, netOpts{routes: func(t testing.TB) []proxy.Route {
		return []proxy.Route{
			sessionRoute(t, "alice", alice),
			sessionRoute(t, "bob", bob),
			route(t, "default/dev", bob, match.Condition{Kind: match.HeaderExact, Name: "X-Dev", Value: "carol"}),
			route(t, "default/pay", alice,
				match.Condition{Kind: match.HeaderPrefix, Name: "X-Team", Value: "pay"},
				match.Condition{Kind: match.Method, Value: "POST"}),
			route(t, "default/v2", bob, match.Condition{Kind: match.PathPrefix, Value: "/v2/"}),
			route(t, "default/exact", alice, match.Condition{Kind: match.PathExact, Value: "/exact"}),
		}
	}})
	kernel := func(s Stats) uint64 { return s.Routed }
	rules := func(s Stats) uint64 { return s.PassRules }
	head := func(s Stats) uint64 { return s.PassHead }
	framing := func(s Stats) uint64 { return s.PassFraming }
	cases := []struct {
		name, line, fields string
		want               string
		by                 func(Stats) uint64
		// userspace: the agent then hands the rest of the connection
		// to the app (a head it cannot route either, or HTTP/1.0).
		userspace bool
	}{
		{"exact header", "GET / HTTP/1.1", "X-Dev: carol\r\n", "bob", kernel, false},
		{"exact header, name's case and whitespace", "GET / HTTP/1.1", "x-DEV:   carol \t\r\n", "bob", kernel, false},
		{"exact header, other value", "GET / HTTP/1.1", "X-Dev: carolx\r\n", "app", kernel, false},
		{"exact header, longer than any rule's value", "GET / HTTP/1.1", "X-Dev: caroline-with-a-rather-long-value-that-no-rule-could-ever-hold-at-all\r\n", "app", kernel, false},
		{"prefix and method", "POST / HTTP/1.1", "X-Team: payments\r\nContent-Length: 0\r\n", "alice", kernel, false},
		{"prefix, other method", "GET / HTTP/1.1", "X-Team: payments\r\n", "app", kernel, false},
		{"path prefix with a query", "GET /v2/items?q=/exact HTTP/1.1", "", "bob", kernel, false},
		{"path prefix, shorter path", "GET /v2 HTTP/1.1", "", "app", kernel, false},
		{"exact path", "GET /exact HTTP/1.1", "", "alice", kernel, false},
		{"exact path, longer", "GET /exact/ HTTP/1.1", "", "app", kernel, false},
		{"session beats a later rule", "GET /v2/x HTTP/1.1", "X-Detour-Session: alice\r\n", "alice", kernel, false},
		{"session, no rule", "GET / HTTP/1.1", "X-Detour-Session: dave\r\n", "app", kernel, false},
		{"HEAD: a length and no body", "HEAD / HTTP/1.1", "X-Detour-Session: bob\r\n", "bob", kernel, false},
		{"a field a rule reads, twice", "GET / HTTP/1.1", "X-Dev: carol\r\nX-Dev: carol\r\n", "app", rules, false},
		{"session in baggage only", "GET / HTTP/1.1", "Baggage: detour-session=alice\r\n", "alice", rules, false},
		{"HTTP/1.0", "GET / HTTP/1.0", "Connection: keep-alive\r\n", "app", head, true},
		{"absolute form", "GET http://app/v2/x HTTP/1.1", "", "bob", head, false},
		{"obsolete line folding", "GET / HTTP/1.1", "X-Other: a\r\n b\r\n", "app", head, true},
		{"Connection", "GET / HTTP/1.1", "Connection: keep-alive\r\nX-Dev: carol\r\n", "bob", framing, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := n.dial(t)
			n.warm(t, c)
			before := n.stats(t)
			if _, err := io.WriteString(c.c, tc.line+"\r\nHost: app\r\nX-Want: 10\r\n"+tc.fields+"\r\n"); err != nil {
				t.Fatal(err)
			}
			method, _, _ := strings.Cut(tc.line, " ")
			resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.Header.Get("X-Pod"); got != tc.want {
				t.Fatalf("answered by %q, want %s", got, tc.want)
			}
			if method == "HEAD" && len(body) != 0 {
				t.Fatalf("%d bytes of body to a HEAD", len(body))
			}
			after := n.stats(t)
			if tc.by(after) != tc.by(before)+1 {
				t.Fatalf("counter moved by %d, want 1: %+v", tc.by(after)-tc.by(before), after)
			}
			if tc.userspace {
				return
			}
			// The connection goes on rightly.
			for _, key := range []string{"alice", ""} {
				got, err := c.exchange(key, 10, 100)
				if err != nil || got != who(key) {
					t.Fatalf("next request for %q: answered by %q, %v", key, got, err)
				}
			}
		})
	}
}
