package match_test

import (
	"fmt"

	"github.com/detourdev/detour/pkg/redirect/http1"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// An intercept's conditions are compiled once and then tested against each
// request head the router parses; every condition must hold.
func ExampleCompile() {
	m, err := match.Compile([]match.Condition{
		{Kind: match.Session, Value: "alice"},
		{Kind: match.PathPrefix, Value: "/api/"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, head := range []string{
		"GET /api/orders?page=2 HTTP/1.1\r\nHost: shop\r\nX-Detour-Session: alice\r\n\r\n",
		"GET /api/orders HTTP/1.1\r\nHost: shop\r\nBaggage: user=7, detour-session=alice\r\n\r\n",
		"GET /api/orders HTTP/1.1\r\nHost: shop\r\nX-Detour-Session: bob\r\n\r\n",
		"GET /index.html HTTP/1.1\r\nHost: shop\r\nX-Detour-Session: alice\r\n\r\n",
	} {
		r, _, err := http1.ParseRequest([]byte(head))
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(r.Target(), m.Match(r))
	}
	// Output:
	// /api/orders?page=2 true
	// /api/orders true
	// /api/orders false
	// /index.html false
}

// Validate explains, in words a user can act on, why a set of conditions
// cannot be an intercept's.
func ExampleValidate() {
	fmt.Println(match.Validate(nil))
	fmt.Println(match.Validate([]match.Condition{{Kind: match.PathPrefix, Value: "api"}}))
	fmt.Println(match.Validate([]match.Condition{{Kind: match.HeaderExact, Name: "x-tenant", Value: "acme"}}))
	// Output:
	// no conditions: an intercept needs at least one
	// condition 1 (path-prefix): path "api" does not start with /
	// <nil>
}

// Before it accepts a new intercept on a service port, the controller asks
// whether any request could be selected by both it and an existing one.
func ExampleOverlap() {
	alice := []match.Condition{{Kind: match.Session, Value: "alice"}}
	bob := []match.Condition{{Kind: match.Session, Value: "bob"}}
	api := []match.Condition{{Kind: match.PathPrefix, Value: "/api/"}}

	overlap, why := match.Overlap(alice, bob)
	fmt.Println("alice and bob:", overlap, why)
	overlap, why = match.Overlap(alice, api)
	fmt.Println("alice and /api/:", overlap, why)
	// Output:
	// alice and bob: false session keys differ (alice, bob)
	// alice and /api/: true both match session=alice & path-prefix=/api/
}

// ParseFlag reads the CLI's condition flags; Describe prints conditions
// back in the same short form.
func ExampleParseFlag() {
	var conds []match.Condition
	for _, f := range []struct {
		kind  match.Kind
		value string
	}{
		{match.HeaderExact, "x-tenant=acme"},
		{match.Method, "POST"},
	} {
		c, err := match.ParseFlag(f.kind, f.value)
		if err != nil {
			fmt.Println(err)
			return
		}
		conds = append(conds, c)
	}
	fmt.Println(match.Describe(conds))

	_, err := match.ParseFlag(match.HeaderExact, "x-tenant")
	fmt.Println(err)
	// Output:
	// header:x-tenant=acme & method=POST
	// header: "x-tenant": want NAME=VALUE
}

// The session key travels in its own header or, through services that
// propagate only W3C baggage, as a baggage member.
func ExampleSessionKey() {
	r, _, err := http1.ParseRequest([]byte("GET / HTTP/1.1\r\nHost: shop\r\nbaggage: user=7, detour-session=alice\r\n\r\n"))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(match.SessionKey(r))
	// Output:
	// alice true
}

// BaggageMember reads one member of a W3C baggage header, skipping its
// properties and decoding its value.
func ExampleBaggageMember() {
	for _, header := range []string{
		"user=7;ttl=30, detour-session=alice%20w",
		"user=7",
	} {
		v, ok := match.BaggageMember(header, "detour-session")
		fmt.Printf("%q %v\n", v, ok)
	}
	// Output:
	// "alice w" true
	// "" false
}
