package fastpath

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strings"

	"github.com/detourdev/detour/pkg/redirect/match"
	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// Limits of what the program reads; bpf/fastpath/fastpath.c has the same.
const (
	maxNames    = 8  // header fields the rules of a port read
	maxScan     = 16 // rules of a port not filed under a value
	maxConds    = 4
	maxValue    = 64
	maxName     = 32
	maxSlots    = 256 // destinations of a port, the app included
	headMax     = 4096
	maxConns    = 16384
	maxSets     = 1024
	maxRules    = 16384
	maxCounters = 16384
)

// Condition kinds of the program (FP_K_*).
const (
	kSession uint8 = iota + 1
	kHeader
	kHeaderPrefix
	kPath
	kPathPrefix
	kMethod
)

// Route is what the kernel needs of one of a port's routes, in the order
// the proxy tries them.
type Route struct {
	Intercept string
	// Conds are the request route's conditions; nil for an L4 route,
	// which takes connections before any request and is left out.
	Conds []match.Condition
	// Destination is where the route's requests go.
	Destination string
	// Spread: the route spreads its requests over several destinations.
	Spread bool
	// Restricted: the route admits only some sources, which the program
	// does not see.
	Restricted bool
}

// ErrNotCompilable wraps why a port's routes cannot be routed in the
// kernel: its callers are then all served by the agent.
var ErrNotCompilable = errors.New("routes the kernel cannot decide")

// compiled is a port's routes as the program reads them.
type compiled struct {
	names   []string // header fields the rules read, lower case
	session bool     // some rule is filed under a session key
	rules   []rule   // in position order
	index   map[indexKey]int
	scan    []int // rules not filed under a value, in position order
}

type rule struct {
	pos       int
	intercept string
	dest      string
	conds     []cond
}

type cond struct {
	kind  uint8
	hdr   uint8 // the name's place in names
	value string
}

type indexKey struct {
	kind uint8 // kSession or kHeader
	hdr  uint8
	hash uint64
}

// fnv64 is FNV-1a 64, the program's hash of names and values.
func fnv64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// compile turns a port's routes into rules, filed as match.Index files
// them (session key, then exact header), or says why it cannot.
func compile(routes []Route) (*compiled, error) {
	c := &compiled{index: map[indexKey]int{}}
	nameOf := func(n string) (uint8, error) {
		n = strings.ToLower(n)
		for i, have := range c.names {
			if have == n {
				return uint8(i), nil
			}
		}
		if len(n) > maxName {
			return 0, fmt.Errorf("%w: header name %q is longer than %d bytes", ErrNotCompilable, n, maxName)
		}
		if len(c.names) == maxNames {
			return 0, fmt.Errorf("%w: the rules read more than %d header fields", ErrNotCompilable, maxNames)
		}
		c.names = append(c.names, n)
		return uint8(len(c.names) - 1), nil
	}
	for pos, rt := range routes {
		if rt.Conds == nil {
			continue
		}
		switch {
		case rt.Restricted:
			return nil, fmt.Errorf("%w: intercept %s admits only some sources", ErrNotCompilable, rt.Intercept)
		case rt.Spread:
			return nil, fmt.Errorf("%w: intercept %s spreads over several destinations", ErrNotCompilable, rt.Intercept)
		case len(rt.Conds) > maxConds:
			return nil, fmt.Errorf("%w: intercept %s has more than %d conditions", ErrNotCompilable, rt.Intercept, maxConds)
		}
		r := rule{pos: pos, intercept: rt.Intercept, dest: rt.Destination}
		for _, mc := range rt.Conds {
			if len(mc.Value) > maxValue {
				return nil, fmt.Errorf("%w: intercept %s: value %q is longer than %d bytes", ErrNotCompilable, rt.Intercept, mc.Value, maxValue)
			}
			k := cond{value: mc.Value}
			switch mc.Kind {
			case match.Session:
				k.kind = kSession
			case match.HeaderExact, match.HeaderPrefix:
				k.kind = kHeader
				if mc.Kind == match.HeaderPrefix {
					k.kind = kHeaderPrefix
				}
				h, err := nameOf(mc.Name)
				if err != nil {
					return nil, err
				}
				k.hdr = h
			case match.PathExact:
				k.kind = kPath
			case match.PathPrefix:
				k.kind = kPathPrefix
			case match.Method:
				k.kind = kMethod
			default:
				return nil, fmt.Errorf("%w: intercept %s: %s conditions", ErrNotCompilable, rt.Intercept, mc.Kind)
			}
			r.conds = append(r.conds, k)
		}
		c.rules = append(c.rules, r)
		i := len(c.rules) - 1
		if key, ok := filing(r); ok {
			if _, taken := c.index[key]; !taken {
				c.index[key] = i
				continue
			}
			// One owner's routes may overlap; the later one is
			// scanned, still behind the first by position.
		}
		if len(c.scan) == maxScan {
			return nil, fmt.Errorf("%w: more than %d routes of the port have no session or exact header condition", ErrNotCompilable, maxScan)
		}
		c.scan = append(c.scan, i)
	}
	// A session could come from baggage when the header is absent: the
	// program sends those requests to the agent, so it must know the set
	// reads sessions even if every session rule is scanned.
	for _, r := range c.rules {
		for _, k := range r.conds {
			if k.kind == kSession {
				c.session = true
			}
		}
	}
	return c, nil
}

// filing is where r is filed, as match.Index files it: its first session
// condition, else its first exact header condition.
func filing(r rule) (indexKey, bool) {
	for _, kind := range []uint8{kSession, kHeader} {
		for _, k := range r.conds {
			if k.kind == kind {
				key := indexKey{kind: kind, hash: fnv64(k.value)}
				if kind == kHeader {
					key.hdr = k.hdr
				}
				return key, true
			}
		}
	}
	return indexKey{}, false
}

// RoutesOf is what the kernel needs of a port's proxy routes, in their
// order.
func RoutesOf(rs []proxy.Route) []Route {
	out := make([]Route, len(rs))
	for i, r := range rs {
		out[i] = Route{Intercept: r.Intercept, Destination: r.Destination, Spread: len(r.Destinations) > 1, Restricted: r.Sources != nil}
		if !r.L4 && r.Matcher != nil {
			out[i].Conds = r.Matcher.Conditions()
		}
	}
	return out
}

// ForProxy gives a proxy the port's callers (proxy.Config.FastPath).
func ForProxy(p *Port) proxy.FastPath { return proxyPort{p} }

type proxyPort struct{ p *Port }

func (a proxyPort) Caller(c net.Conn) (proxy.FastCaller, error) {
	cn, err := a.p.Caller(c)
	if err != nil {
		return nil, err
	}
	return cn, nil
}
