package match

import (
	"strings"
	"testing"
)

// req is a Request built from literal fields.
type req struct {
	method, path string
	headers      map[string][]string // lower-case names
}

func (r req) Method() string { return r.method }
func (r req) Path() string   { return r.path }
func (r req) Header(name string) (string, bool) {
	v, ok := r.headers[strings.ToLower(name)]
	return strings.Join(v, ", "), ok
}

// rawReq is req seen through RawRequest, as the HTTP/1 parser offers it.
type rawReq struct{ req }

func (r rawReq) PathBytes() []byte { return []byte(r.path) }
func (r rawReq) HeaderBytes(name string) ([]byte, int) {
	switch v := r.headers[strings.ToLower(name)]; len(v) {
	case 0:
		return nil, 0
	case 1:
		return []byte(v[0]), 1
	}
	return nil, 2
}

func h(kv ...string) map[string][]string {
	m := map[string][]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = append(m[kv[i]], kv[i+1])
	}
	return m
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		conds []Condition
		err   string // substring; "" means valid
	}{
		{"empty", nil, "no conditions"},
		{"session", []Condition{{Kind: Session, Value: "alice"}}, ""},
		{"session empty", []Condition{{Kind: Session}}, "empty session key"},
		{"session spaces", []Condition{{Kind: Session, Value: " a"}}, "whitespace"},
		{"unknown kind", []Condition{{Kind: "cookie", Value: "x"}}, "unknown kind"},
		{"missing kind", []Condition{{Value: "x"}}, "missing kind"},
		{"header", []Condition{{Kind: HeaderExact, Name: "X-Team", Value: "blue"}}, ""},
		{"header no name", []Condition{{Kind: HeaderExact, Value: "blue"}}, "empty header name"},
		{"header bad name", []Condition{{Kind: HeaderPrefix, Name: "x team", Value: "b"}}, "not a token"},
		{"header no value", []Condition{{Kind: HeaderExact, Name: "x"}}, "empty value"},
		{"regex ok", []Condition{{Kind: HeaderRegex, Name: "x", Value: "^a.*"}}, ""},
		{"regex bad", []Condition{{Kind: HeaderRegex, Name: "x", Value: "(a"}}, "invalid regexp"},
		{"baggage", []Condition{{Kind: Baggage, Name: "k", Value: "v"}}, ""},
		{"baggage no name", []Condition{{Kind: Baggage, Value: "v"}}, "empty baggage member name"},
		{"baggage bad name", []Condition{{Kind: Baggage, Name: "a=b", Value: "v"}}, "not a token"},
		{"path", []Condition{{Kind: PathExact, Value: "/x"}}, ""},
		{"path relative", []Condition{{Kind: PathPrefix, Value: "api"}}, "does not start with /"},
		{"path query", []Condition{{Kind: PathExact, Value: "/a?b"}}, "never appears"},
		{"method", []Condition{{Kind: Method, Value: "POST"}}, ""},
		{"method bad", []Condition{{Kind: Method, Value: "PO ST"}}, "not a token"},
		{"method empty", []Condition{{Kind: Method}}, "empty method"},
		{"second bad", []Condition{{Kind: Method, Value: "GET"}, {Kind: PathExact, Value: "x"}}, "condition 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.conds)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		conds []Condition
		req   req
		want  bool
	}{
		{"session header", []Condition{{Kind: Session, Value: "alice"}}, req{headers: h("x-detour-session", "alice")}, true},
		{"session other", []Condition{{Kind: Session, Value: "alice"}}, req{headers: h("x-detour-session", "bob")}, false},
		{"session baggage", []Condition{{Kind: Session, Value: "alice"}}, req{headers: h("baggage", "a=1, detour-session = alice ;p=q")}, true},
		{"session baggage encoded", []Condition{{Kind: Session, Value: "al ice"}}, req{headers: h("baggage", "detour-session=al%20ice")}, true},
		{"header wins over baggage", []Condition{{Kind: Session, Value: "alice"}}, req{headers: h("x-detour-session", "bob", "baggage", "detour-session=alice")}, false},
		{"empty header wins too", []Condition{{Kind: Session, Value: "alice"}}, req{headers: h("x-detour-session", "", "baggage", "detour-session=alice")}, false},
		{"two headers", []Condition{{Kind: Session, Value: "alice"}}, req{headers: h("x-detour-session", "alice", "x-detour-session", "bob")}, false},
		{"no session", []Condition{{Kind: Session, Value: "alice"}}, req{}, false},
		{"header exact", []Condition{{Kind: HeaderExact, Name: "X-Team", Value: "blue"}}, req{headers: h("x-team", "blue")}, true},
		{"header combined", []Condition{{Kind: HeaderExact, Name: "x-team", Value: "blue, red"}}, req{headers: h("x-team", "blue", "x-team", "red")}, true},
		{"header absent", []Condition{{Kind: HeaderPrefix, Name: "x-team", Value: "b"}}, req{}, false},
		{"header prefix", []Condition{{Kind: HeaderPrefix, Name: "x-b", Value: "ab"}}, req{headers: h("x-b", "abc")}, true},
		{"header regex", []Condition{{Kind: HeaderRegex, Name: "x", Value: "^a.*z$"}}, req{headers: h("x", "abcz")}, true},
		{"header regex no", []Condition{{Kind: HeaderRegex, Name: "x", Value: "^a.*z$"}}, req{headers: h("x", "abc")}, false},
		{"baggage member", []Condition{{Kind: Baggage, Name: "k", Value: "v"}}, req{headers: h("baggage", "j=1,k=v")}, true},
		{"baggage across headers", []Condition{{Kind: Baggage, Name: "k", Value: "v"}}, req{headers: h("baggage", "j=1", "baggage", "k=v")}, true},
		{"baggage first wins", []Condition{{Kind: Baggage, Name: "k", Value: "w"}}, req{headers: h("baggage", "k=v,k=w")}, false},
		{"session baggage across headers", []Condition{{Kind: Session, Value: "alice"}}, req{headers: h("baggage", "a=1", "baggage", "detour-session=alice")}, true},
		{"session baggage bad encoding skipped", []Condition{{Kind: Session, Value: "alice"}}, req{headers: h("baggage", "detour-session=%zz,detour-session=alice")}, true},
		{"header prefix combined", []Condition{{Kind: HeaderPrefix, Name: "x-b", Value: "ab, c"}}, req{headers: h("x-b", "ab", "x-b", "cd")}, true},
		{"header prefix longer than value", []Condition{{Kind: HeaderPrefix, Name: "x-b", Value: "abcd"}}, req{headers: h("x-b", "abc")}, false},
		{"header regex combined", []Condition{{Kind: HeaderRegex, Name: "x", Value: "^a, b$"}}, req{headers: h("x", "a", "x", "b")}, true},
		{"baggage encoded", []Condition{{Kind: Baggage, Name: "k", Value: "A,"}}, req{headers: h("baggage", "k=%41%2c")}, true},
		{"baggage encoded longer", []Condition{{Kind: Baggage, Name: "k", Value: "A"}}, req{headers: h("baggage", "k=%41%2c")}, false},
		{"baggage absent", []Condition{{Kind: Baggage, Name: "k", Value: "v"}}, req{}, false},
		{"path", []Condition{{Kind: PathExact, Value: "/x"}}, req{path: "/x"}, true},
		{"path empty", []Condition{{Kind: PathExact, Value: "/x"}}, req{}, false},
		{"path prefix", []Condition{{Kind: PathPrefix, Value: "/api"}}, req{path: "/api/v1"}, true},
		{"path prefix no", []Condition{{Kind: PathPrefix, Value: "/api"}}, req{path: "/ap"}, false},
		{"method", []Condition{{Kind: Method, Value: "POST"}}, req{method: "POST"}, true},
		{"method case", []Condition{{Kind: Method, Value: "POST"}}, req{method: "post"}, false},
		{"and", []Condition{{Kind: Method, Value: "GET"}, {Kind: Session, Value: "a"}}, req{method: "GET", headers: h("x-detour-session", "a")}, true},
		{"and fails", []Condition{{Kind: Method, Value: "GET"}, {Kind: Session, Value: "a"}}, req{method: "PUT", headers: h("x-detour-session", "a")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Compile(tc.conds)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Match(tc.req); got != tc.want {
				t.Fatalf("Match = %v, want %v", got, tc.want)
			}
			if got := m.Match(rawReq{tc.req}); got != tc.want {
				t.Fatalf("Match through RawRequest = %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := Compile(nil); err == nil {
		t.Fatal("Compile(nil) succeeded")
	}
}

func TestBaggageMember(t *testing.T) {
	for _, tc := range []struct {
		header, key, want string
		ok                bool
	}{
		{"k=v", "k", "v", true},
		{" k = v ", "k", "v", true},
		{"a=1,k=v;prop;p2=x,b=2", "k", "v", true},
		{"k=%41%2c", "k", "A,", true},
		{"k=%4", "k", "", false},
		{"k=%zz,k=ok", "k", "ok", true},
		{"k v", "k", "", false},
		{"k=a b", "k", "", false},
		{"=v,k=w", "k", "w", true},
		{"", "k", "", false},
		{"kk=v", "k", "", false},
		{"k=", "k", "", true},
	} {
		got, ok := BaggageMember(tc.header, tc.key)
		if got != tc.want || ok != tc.ok {
			t.Errorf("BaggageMember(%q, %q) = %q, %v; want %q, %v", tc.header, tc.key, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzBaggage(f *testing.F) {
	for _, s := range []string{"k=v", "a=1, detour-session=al%20ice;p", "k=%zz,k=ok", ",,=;", "x=%", "k=v;a=b;c, l = w "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		all := ParseBaggage(header)
		for k, v := range all {
			got, ok := BaggageMember(header, k)
			if !ok || got != v {
				t.Fatalf("BaggageMember(%q, %q) = %q, %v; ParseBaggage says %q", header, k, got, ok, v)
			}
			if !IsToken(k) {
				t.Fatalf("key %q is not a token", k)
			}
		}
		if v, ok := BaggageMember(header, SessionMember); ok != (all[SessionMember] == v && ok) {
			t.Fatalf("disagreement on %q", SessionMember)
		}
		if _, present := all[SessionMember]; !present {
			if _, ok := BaggageMember(header, SessionMember); ok {
				t.Fatalf("BaggageMember found %q, ParseBaggage did not", SessionMember)
			}
		}
	})
}

func TestDescribe(t *testing.T) {
	got := Describe([]Condition{
		{Kind: Session, Value: "alice"},
		{Kind: HeaderExact, Name: "x-team", Value: "blue"},
		{Kind: HeaderPrefix, Name: "x-b", Value: "ab"},
		{Kind: HeaderRegex, Name: "x", Value: "^a.*"},
		{Kind: Baggage, Name: "k", Value: "v"},
		{Kind: PathExact, Value: "/x"},
		{Kind: PathPrefix, Value: "/api"},
		{Kind: Method, Value: "POST"},
	})
	want := "session=alice & header:x-team=blue & header-prefix:x-b=ab & header-regex:x=^a.* & baggage:k=v & path=/x & path-prefix=/api & method=POST"
	if got != want {
		t.Fatalf("Describe = %q\nwant %q", got, want)
	}
}

func TestParseFlag(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		in   string
		want Condition
		err  bool
	}{
		{Session, "alice", Condition{Kind: Session, Value: "alice"}, false},
		{HeaderExact, "x-team=blue", Condition{Kind: HeaderExact, Name: "x-team", Value: "blue"}, false},
		{HeaderRegex, "x=a=b", Condition{Kind: HeaderRegex, Name: "x", Value: "a=b"}, false},
		{Baggage, "k=v", Condition{Kind: Baggage, Name: "k", Value: "v"}, false},
		{HeaderExact, "x-team", Condition{}, true},
		{PathPrefix, "/api", Condition{Kind: PathPrefix, Value: "/api"}, false},
		{PathPrefix, "api", Condition{}, true},
		{Method, "GET", Condition{Kind: Method, Value: "GET"}, false},
		{"bogus", "x", Condition{}, true},
	} {
		got, err := ParseFlag(tc.kind, tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseFlag(%s, %q) = %+v, %v; want %+v, error %v", tc.kind, tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestOverlap(t *testing.T) {
	s := func(v string) Condition { return Condition{Kind: Session, Value: v} }
	he := func(n, v string) Condition { return Condition{Kind: HeaderExact, Name: n, Value: v} }
	hp := func(n, v string) Condition { return Condition{Kind: HeaderPrefix, Name: n, Value: v} }
	hr := func(n, v string) Condition { return Condition{Kind: HeaderRegex, Name: n, Value: v} }
	bg := func(n, v string) Condition { return Condition{Kind: Baggage, Name: n, Value: v} }
	pe := func(v string) Condition { return Condition{Kind: PathExact, Value: v} }
	pp := func(v string) Condition { return Condition{Kind: PathPrefix, Value: v} }
	me := func(v string) Condition { return Condition{Kind: Method, Value: v} }
	type C = []Condition
	for _, tc := range []struct {
		name   string
		a, b   C
		want   bool
		reason string // substring
	}{
		{"same session", C{s("alice")}, C{s("alice")}, true, "both match session=alice"},
		{"different sessions", C{s("alice")}, C{s("bob")}, false, "session keys differ"},
		{"different sessions, other fields equal", C{s("alice"), pe("/x")}, C{s("bob"), pe("/x")}, false, ""},
		{"different fields", C{s("alice")}, C{pe("/x")}, true, "path=/x"},
		{"methods", C{me("GET")}, C{me("POST")}, false, "methods differ"},
		{"paths exact", C{pe("/a")}, C{pe("/b")}, false, ""},
		{"path prefixes disjoint", C{pp("/api")}, C{pp("/web")}, false, ""},
		{"path prefixes nested", C{pp("/api")}, C{pp("/api/v1")}, true, ""},
		{"path exact in prefix", C{pe("/api/x")}, C{pp("/api")}, true, ""},
		{"path exact outside prefix", C{pe("/x")}, C{pp("/api")}, false, ""},
		{"header exact", C{he("x-team", "blue")}, C{he("X-Team", "red")}, false, ""},
		{"header exact same", C{he("x-team", "blue")}, C{he("X-Team", "blue")}, true, ""},
		{"header different names", C{he("x-a", "1")}, C{he("x-b", "2")}, true, ""},
		{"header prefix vs exact", C{hp("x", "ab")}, C{he("x", "abc")}, true, ""},
		{"header prefix vs exact no", C{hp("x", "ab")}, C{he("x", "b")}, false, ""},
		{"header exact vs regex", C{he("x", "abc")}, C{hr("x", "^b")}, false, ""},
		{"header exact vs regex yes", C{he("x", "abc")}, C{hr("x", "c$")}, true, ""},
		{"regex vs regex", C{hr("x", "a+")}, C{hr("x", "[0-9]+b")}, true, "may overlap: cannot prove header-regex conditions disjoint"},
		{"anchored literal regexes", C{hr("x", "^ab.*")}, C{hr("x", "^cd")}, false, ""},
		{"regex vs prefix anchored disjoint", C{hp("x", "ab")}, C{hr("x", "^cd")}, false, ""},
		{"regex vs prefix unanchored literal", C{hp("x", "ab")}, C{hr("x", "cd")}, true, ""},
		{"regex vs prefix undecidable", C{hp("x", "ab")}, C{hr("x", "^a[0-9]+$")}, true, "may overlap"},
		{"session vs header on session", C{s("alice")}, C{he("x-detour-session", "bob")}, false, ""},
		{"session vs same header", C{s("alice")}, C{he("X-Detour-Session", "alice")}, true, ""},
		{"session vs session header prefix", C{s("alice")}, C{hp("x-detour-session", "al")}, true, ""},
		{"session vs session header regex", C{s("alice")}, C{hr("x-detour-session", "^b")}, false, ""},
		{"session vs baggage member", C{s("alice")}, C{bg("detour-session", "bob")}, true, ""},
		{"baggage values", C{bg("k", "v")}, C{bg("k", "w")}, false, ""},
		{"baggage keys", C{bg("k", "v")}, C{bg("j", "w")}, true, ""},
		{"baggage raw exact", C{he("baggage", "k=v")}, C{bg("k", "w")}, false, ""},
		{"baggage raw prefix", C{hp("baggage", "k=v")}, C{bg("k", "w")}, true, "may overlap"},
		{"session plus baggage vs header", C{s("alice")}, C{bg("detour-session", "bob"), he("x-detour-session", "carol")}, false, ""},
		{"contradiction inside one", C{pe("/a"), pe("/b")}, C{s("x")}, false, ""},
		{"invalid", C{hr("x", "(")}, C{s("x")}, true, "may overlap: invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, swap := range []bool{false, true} {
				a, b := tc.a, tc.b
				if swap {
					a, b = b, a
				}
				got, why := Overlap(a, b)
				if got != tc.want {
					t.Fatalf("Overlap(%s, %s) = %v (%s), want %v", Describe(a), Describe(b), got, why, tc.want)
				}
				if !strings.Contains(why, tc.reason) || why == "" {
					t.Fatalf("reason %q, want it to contain %q", why, tc.reason)
				}
			}
		})
	}
}

// TestOverlapSound checks Overlap against Match on sample requests: when
// Overlap says two sets are disjoint, no sample may match both.
func TestOverlapSound(t *testing.T) {
	sets := [][]Condition{
		{{Kind: Session, Value: "alice"}},
		{{Kind: Session, Value: "bob"}},
		{{Kind: HeaderExact, Name: "x-detour-session", Value: "alice"}},
		{{Kind: HeaderPrefix, Name: "x-detour-session", Value: "al"}},
		{{Kind: Baggage, Name: "detour-session", Value: "alice"}},
		{{Kind: Baggage, Name: "detour-session", Value: "bob"}, {Kind: HeaderExact, Name: "x-detour-session", Value: "bob"}},
		{{Kind: HeaderRegex, Name: "x-detour-session", Value: "^a"}},
		{{Kind: PathPrefix, Value: "/api"}, {Kind: Method, Value: "GET"}},
		{{Kind: PathExact, Value: "/api/x"}},
		{{Kind: HeaderExact, Name: "baggage", Value: "detour-session=alice"}},
	}
	var reqs []req
	for _, sess := range []string{"", "alice", "bob", "al"} {
		for _, bag := range []string{"", "detour-session=alice", "detour-session=bob"} {
			for _, path := range []string{"/", "/api/x"} {
				r := req{method: "GET", path: path, headers: map[string][]string{}}
				if sess != "" {
					r.headers["x-detour-session"] = []string{sess}
				}
				if bag != "" {
					r.headers["baggage"] = []string{bag}
				}
				reqs = append(reqs, r)
			}
		}
	}
	for _, a := range sets {
		for _, b := range sets {
			ov, why := Overlap(a, b)
			if ov {
				continue
			}
			ma, mb := mustCompile(t, a), mustCompile(t, b)
			for _, r := range reqs {
				if ma.Match(r) && mb.Match(r) {
					t.Errorf("Overlap(%s, %s) = false (%s), but %+v matches both", Describe(a), Describe(b), why, r)
				}
			}
		}
	}
}

func mustCompile(t *testing.T, c []Condition) *Matcher {
	t.Helper()
	m, err := Compile(c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// baggageMemberBefore is BaggageMember as it was before baggageRaw, kept to
// check that matching on bytes did not change what a member is.
func baggageMemberBefore(header, key string) (string, bool) {
	for header != "" {
		var member string
		if i := strings.IndexByte(header, ','); i >= 0 {
			member, header = header[:i], header[i+1:]
		} else {
			member, header = header, ""
		}
		if i := strings.IndexByte(member, ';'); i >= 0 {
			member = member[:i]
		}
		k, v, found := strings.Cut(member, "=")
		if !found {
			continue
		}
		k, v = strings.Trim(k, " \t"), strings.Trim(v, " \t")
		if !IsToken(k) || k != key {
			continue
		}
		ok := true
		for i := 0; i < len(v); i++ {
			ok = ok && isBaggageOctet(v[i])
		}
		if !ok {
			continue
		}
		if d, ok := percentDecode(v); ok {
			return d, true
		}
	}
	return "", false
}

func FuzzBaggageRaw(f *testing.F) {
	for _, s := range []string{"k=v", "a=1, k = al%20ice;p", "k=%zz,k=ok", ",,=;", "k=%", "k=%4", "k=v;a=b;c, k = w ", "\tk\t=\tv%41\t"} {
		f.Add(s, "k", "v")
	}
	f.Fuzz(func(t *testing.T, header, key, want string) {
		before, okBefore := baggageMemberBefore(header, key)
		got, ok := BaggageMember(header, key)
		if got != before || ok != okBefore {
			t.Fatalf("BaggageMember(%q, %q) = %q, %v; before %q, %v", header, key, got, ok, before, okBefore)
		}
		raw, ok := baggageRaw([]byte(header), key)
		if ok != okBefore {
			t.Fatalf("baggageRaw(%q, %q) found %v, before %v", header, key, ok, okBefore)
		}
		if ok && decodedEqual(raw, want) != (before == want) {
			t.Fatalf("decodedEqual(%q, %q) = %v, decoded is %q", raw, want, !(before == want), before)
		}
		if ok && !decodedEqual(raw, before) {
			t.Fatalf("decodedEqual(%q, %q) = false", raw, before)
		}
		m, err := Compile([]Condition{{Kind: Baggage, Name: key, Value: want}})
		if err != nil {
			return
		}
		r := req{headers: h("baggage", header)}
		if a, b := m.Match(r), m.Match(rawReq{r}); a != b || a != (okBefore && before == want) {
			t.Fatalf("baggage %q=%q in %q: Match %v, through RawRequest %v, before %v", key, want, header, a, b, okBefore && before == want)
		}
	})
}
