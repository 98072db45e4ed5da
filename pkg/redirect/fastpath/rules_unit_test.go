package fastpath

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/detourdev/detour/pkg/redirect/match"
)

func TestCompile(t *testing.T) {
	session := func(v string) []match.Condition { return []match.Condition{{Kind: match.Session, Value: v}} }
	header := func(name, v string) []match.Condition {
		return []match.Condition{{Kind: match.HeaderExact, Name: name, Value: v}}
	}
	path := func(v string) []match.Condition { return []match.Condition{{Kind: match.PathPrefix, Value: v}} }
	many := func(n int, conds func(i int) []match.Condition) []Route {
		var rs []Route
		for i := range n {
			rs = append(rs, Route{Intercept: fmt.Sprint(i), Conds: conds(i), Destination: "10.0.0.1:80"})
		}
		return rs
	}
	tests := []struct {
		name    string
		routes  []Route
		wantErr string // "" compiles
		check   func(t *testing.T, c *compiled)
	}{
		{name: "session and header filed by value, path scanned", routes: []Route{
			{Intercept: "a", Conds: session("alice"), Destination: "10.0.0.1:80"},
			{Intercept: "b", Conds: header("X-Dev", "bob"), Destination: "10.0.0.2:80"},
			{Intercept: "c", Conds: path("/v2/"), Destination: "10.0.0.3:80"},
		}, check: func(t *testing.T, c *compiled) {
			if len(c.index) != 2 || len(c.scan) != 1 || !c.session {
				t.Fatalf("index %d, scan %d, session %v", len(c.index), len(c.scan), c.session)
			}
			if c.names[0] != "x-dev" {
				t.Fatalf("names %q: want them lower case", c.names)
			}
			if _, ok := c.index[indexKey{kind: kSession, hash: fnv64("alice")}]; !ok {
				t.Fatal("alice's session not filed under its hash")
			}
		}},
		{name: "a second rule under the same key is scanned, behind the first", routes: []Route{
			{Intercept: "a", Conds: session("alice"), Destination: "10.0.0.1:80"},
			{Intercept: "b", Conds: append(session("alice"), match.Condition{Kind: match.Method, Value: "POST"}), Destination: "10.0.0.2:80"},
		}, check: func(t *testing.T, c *compiled) {
			if len(c.index) != 1 || len(c.scan) != 1 || c.rules[c.scan[0]].pos != 1 {
				t.Fatalf("index %d, scan %v", len(c.index), c.scan)
			}
		}},
		{name: "L4 routes are left out", routes: []Route{
			{Intercept: "l4", Destination: "10.0.0.1:80"},
			{Intercept: "a", Conds: session("alice"), Destination: "10.0.0.1:80"},
		}, check: func(t *testing.T, c *compiled) {
			if len(c.rules) != 1 || c.rules[0].pos != 1 {
				t.Fatalf("rules %+v", c.rules)
			}
		}},
		{name: "regex", routes: []Route{{Intercept: "r", Conds: []match.Condition{{Kind: match.HeaderRegex, Name: "x", Value: "a.*"}}}}, wantErr: "conditions"},
		{name: "baggage", routes: []Route{{Intercept: "b", Conds: []match.Condition{{Kind: match.Baggage, Name: "k", Value: "v"}}}}, wantErr: "conditions"},
		{name: "source filter", routes: []Route{{Intercept: "s", Conds: session("a"), Restricted: true}}, wantErr: "admits only some sources"},
		{name: "spread", routes: []Route{{Intercept: "s", Conds: session("a"), Spread: true}}, wantErr: "spreads"},
		{name: "too many conditions", routes: []Route{{Intercept: "c", Conds: []match.Condition{
			{Kind: match.Session, Value: "a"}, {Kind: match.Method, Value: "GET"}, {Kind: match.PathPrefix, Value: "/"},
			{Kind: match.HeaderExact, Name: "x", Value: "1"}, {Kind: match.HeaderExact, Name: "y", Value: "2"}}}}, wantErr: "more than 4 conditions"},
		{name: "long value", routes: []Route{{Intercept: "v", Conds: session(strings.Repeat("v", 65))}}, wantErr: "longer than 64"},
		{name: "long name", routes: []Route{{Intercept: "n", Conds: header(strings.Repeat("n", 33), "v")}}, wantErr: "longer than 32"},
		{name: "too many header names", routes: many(9, func(i int) []match.Condition { return header(fmt.Sprintf("x-%d", i), "v") }), wantErr: "more than 8 header fields"},
		{name: "too many scanned rules", routes: many(17, func(i int) []match.Condition { return path(fmt.Sprintf("/%d/", i)) }), wantErr: "more than 16 routes"},
		{name: "1000 sessions", routes: many(1000, func(i int) []match.Condition { return session(fmt.Sprint(i)) }), check: func(t *testing.T, c *compiled) {
			if len(c.index) != 1000 || len(c.scan) != 0 {
				t.Fatalf("index %d, scan %d", len(c.index), len(c.scan))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := compile(tt.routes)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrNotCompilable) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want ErrNotCompilable saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

// The program's hash of names and values is FNV-1a 64 (fp_hash).
func TestFNV64(t *testing.T) {
	if got := fnv64(""); got != 0xcbf29ce484222325 {
		t.Fatalf("fnv64(\"\") = %#x", got)
	}
	if got := fnv64("a"); got != 0xaf63dc4c8601ec8c {
		t.Fatalf("fnv64(\"a\") = %#x", got)
	}
}
