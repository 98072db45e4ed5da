package match

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// firstByScan is what Index.First must always answer: the first matcher,
// in order, that admit allows and that selects r.
func firstByScan(ms []*Matcher, r Request, admit func(int) bool) int {
	for i, m := range ms {
		if m != nil && (admit == nil || admit(i)) && m.Match(r) {
			return i
		}
	}
	return -1
}

func compileAll(t testing.TB, conds ...Condition) *Matcher {
	t.Helper()
	m, err := Compile(conds)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestIndexFirstWins(t *testing.T) {
	// Overlapping matchers (the controller refuses them between owners,
	// but one owner's may overlap): the first in order still wins, whether
	// it is filed under a value or scanned.
	ms := []*Matcher{
		compileAll(t, Condition{Kind: PathPrefix, Value: "/a"}),
		compileAll(t, Condition{Kind: Session, Value: "alice"}),
		compileAll(t, Condition{Kind: Session, Value: "alice"}, Condition{Kind: Method, Value: "GET"}),
		nil, // an L4 route's place
		compileAll(t, Condition{Kind: HeaderExact, Name: "X-Team", Value: "blue"}),
		compileAll(t, Condition{Kind: Baggage, Name: "env", Value: "pr 1"}),
		compileAll(t, Condition{Kind: HeaderRegex, Name: "x-team", Value: "^bl"}),
	}
	x := NewIndex(ms)
	for _, tc := range []struct {
		name  string
		r     req
		admit func(int) bool
		want  int
	}{
		{"nothing", req{method: "GET", path: "/"}, nil, -1},
		{"scanned first", req{method: "GET", path: "/a", headers: h(SessionHeader, "alice")}, nil, 0},
		{"session", req{method: "GET", path: "/b", headers: h(SessionHeader, "alice")}, nil, 1},
		{"session not admitted", req{method: "GET", path: "/b", headers: h(SessionHeader, "alice")}, func(i int) bool { return i != 1 }, 2},
		{"session from baggage", req{method: "POST", path: "/", headers: h(BaggageHeader, "detour-session=alice")}, nil, 1},
		{"header case", req{method: "GET", path: "/", headers: h("x-team", "blue")}, nil, 4},
		{"regex after exact", req{method: "GET", path: "/", headers: h("x-team", "blue")}, func(i int) bool { return i != 4 }, 6},
		{"baggage decoded", req{method: "GET", path: "/", headers: h(BaggageHeader, "a=1, env=pr%201")}, nil, 5},
		{"header twice", req{method: "GET", path: "/", headers: h("x-team", "blue", "x-team", "green")}, nil, 6},
		{"session header twice", req{method: "GET", path: "/", headers: h(SessionHeader, "alice", SessionHeader, "alice")}, nil, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []Request{tc.r, rawReq{tc.r}} {
				if got := x.First(r, tc.admit); got != tc.want {
					t.Errorf("%T: First = %d, want %d", r, got, tc.want)
				}
				if got := firstByScan(ms, r, tc.admit); got != tc.want {
					t.Errorf("%T: the scan says %d, want %d (the test is wrong)", r, got, tc.want)
				}
			}
		})
	}
}

// TestIndexAgreesWithScan throws random matchers and random requests at
// the index and compares with the plain scan.
func TestIndexAgreesWithScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	values := []string{"alice", "bob", "carol", "a%20b", "a b", "x"}
	names := []string{"x-team", "x-env", "x-detour-session"}
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	randCond := func() Condition {
		switch rng.IntN(8) {
		case 0:
			return Condition{Kind: Session, Value: pick(values[:3])}
		case 1:
			return Condition{Kind: HeaderExact, Name: pick(names), Value: pick(values)}
		case 2:
			return Condition{Kind: HeaderPrefix, Name: pick(names), Value: pick(values)[:1]}
		case 3:
			return Condition{Kind: HeaderRegex, Name: pick(names), Value: "^" + pick(values)[:1]}
		case 4:
			return Condition{Kind: Baggage, Name: pick([]string{"env", "detour-session"}), Value: pick(values)}
		case 5:
			return Condition{Kind: PathPrefix, Value: pick([]string{"/a", "/b"})}
		case 6:
			return Condition{Kind: PathExact, Value: pick([]string{"/a", "/b"})}
		}
		return Condition{Kind: Method, Value: pick([]string{"GET", "POST"})}
	}
	randReq := func() req {
		r := req{method: pick([]string{"GET", "POST"}), path: pick([]string{"/", "/a", "/b/c"}), headers: map[string][]string{}}
		for range rng.IntN(4) {
			n := pick(append(names, BaggageHeader))
			v := pick(values)
			if n == BaggageHeader {
				v = fmt.Sprintf("%s=%s", pick([]string{"env", "detour-session"}), pick([]string{"alice", "a%20b", "x", "bob"}))
			}
			r.headers[n] = append(r.headers[n], v)
		}
		return r
	}
	for trial := range 300 {
		ms := make([]*Matcher, 1+rng.IntN(12))
		for i := range ms {
			if rng.IntN(10) == 0 {
				continue // nil, as an L4 route's
			}
			conds := make([]Condition, 1+rng.IntN(3))
			for j := range conds {
				conds[j] = randCond()
			}
			m, err := Compile(conds)
			if err != nil {
				t.Fatalf("trial %d: %v", trial, err)
			}
			ms[i] = m
		}
		x := NewIndex(ms)
		skip := rng.IntN(len(ms) + 1)
		admit := func(i int) bool { return i != skip }
		for range 50 {
			r := randReq()
			for _, rq := range []Request{r, rawReq{r}} {
				want := firstByScan(ms, rq, admit)
				if got := x.First(rq, admit); got != want {
					t.Fatalf("trial %d: %+v (%T): First = %d, the scan %d", trial, r, rq, got, want)
				}
			}
		}
	}
}

// BenchmarkIndex is one request against a port with n session intercepts:
// the cost must not grow with n.
func BenchmarkIndex(b *testing.B) {
	for _, n := range []int{1, 10, 1000} {
		ms := make([]*Matcher, n)
		for i := range ms {
			ms[i] = compileAll(b, Condition{Kind: Session, Value: fmt.Sprintf("user-%04d", i)})
		}
		x := NewIndex(ms)
		r := rawReq{req{method: "GET", path: "/", headers: h(SessionHeader, fmt.Sprintf("user-%04d", n-1))}}
		for _, mode := range []string{"index", "scan"} {
			b.Run(fmt.Sprintf("%s/%d", mode, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var got int
					if mode == "index" {
						got = x.First(r, nil)
					} else {
						got = firstByScan(ms, r, nil)
					}
					if got != n-1 {
						b.Fatal(got)
					}
				}
			})
		}
	}
}
