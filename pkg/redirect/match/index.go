package match

// Index finds the first of an ordered list of matchers that selects a
// request without trying every one: environments put one session intercept
// per environment on a shared service, so a port can have hundreds, and a
// request must not cost more for each (docs/performance.md, "Cost flat in
// intercept count").
//
// Each matcher is filed under the value of one of its conditions that names
// a value exactly: a session key, an exact header value, a baggage member's
// value, in that order of preference. A request is looked up by the values
// it carries for those, and only the matchers filed under them are tried,
// with the matchers that have no such condition (prefixes, regular
// expressions, paths, methods alone), which are scanned. Every candidate is
// still tried with its full Match, so the index only ever skips matchers
// that could not select the request, and the answer is the same as trying
// them all in order: the first one that selects it.
//
// An Index is immutable and safe for concurrent use.
type Index struct {
	ms      []*Matcher
	session map[string][]int
	// header and baggage: lower-cased field name (or member key), then
	// value, to the positions filed there; names lists their keys.
	header       map[string]map[string][]int
	headerNames  []string
	baggage      map[string]map[string][]int
	baggageNames []string
	scan         []int // positions filed under no value, ascending
}

// NewIndex indexes ms; a nil matcher never selects anything.
func NewIndex(ms []*Matcher) *Index {
	x := &Index{ms: ms}
	file := func(m map[string]map[string][]int, names *[]string, name, value string, i int) map[string]map[string][]int {
		if m == nil {
			m = map[string]map[string][]int{}
		}
		byValue, ok := m[name]
		if !ok {
			byValue = map[string][]int{}
			m[name] = byValue
			*names = append(*names, name)
		}
		byValue[value] = append(byValue[value], i)
		return m
	}
	for i, m := range ms {
		if m == nil {
			continue
		}
		c := m.indexable()
		switch {
		case c == nil:
			x.scan = append(x.scan, i)
		case c.kind == Session:
			if x.session == nil {
				x.session = map[string][]int{}
			}
			x.session[c.value] = append(x.session[c.value], i)
		case c.kind == HeaderExact:
			x.header = file(x.header, &x.headerNames, c.name, c.value, i)
		default: // Baggage
			x.baggage = file(x.baggage, &x.baggageNames, c.name, c.value, i)
		}
	}
	return x
}

// indexable is the condition m is filed under, nil for none.
func (m *Matcher) indexable() *compiled {
	for _, kind := range []Kind{Session, HeaderExact, Baggage} {
		for i := range m.conds {
			if m.conds[i].kind == kind {
				return &m.conds[i]
			}
		}
	}
	return nil
}

// Len is the number of positions, as given to NewIndex.
func (x *Index) Len() int { return len(x.ms) }

// First returns the position of the first matcher that selects r and that
// admit allows (nil admits all), or -1. admit is asked only about matchers
// that may select r.
func (x *Index) First(r Request, admit func(i int) bool) int {
	best := -1
	// try tries candidates in order, stopping at the first selecting one
	// or at one after the best found so far.
	try := func(cands []int) {
		for _, i := range cands {
			if best >= 0 && i >= best {
				return
			}
			if (admit == nil || admit(i)) && x.ms[i].Match(r) {
				best = i
				return
			}
		}
	}
	rr, _ := r.(RawRequest)
	if len(x.session) > 0 {
		if k, ok := sessionKeyOf(r, rr); ok {
			try(x.session[string(k)])
		}
	}
	for _, name := range x.headerNames {
		if v, ok := headerOf(r, rr, name); ok {
			try(x.header[name][string(v)])
		}
	}
	for _, key := range x.baggageNames {
		if v, ok := baggageOf(r, rr, key); ok {
			try(x.baggage[key][string(v)])
		}
	}
	try(x.scan)
	return best
}

// headerOf is the value Header gives, as bytes the request holds where it
// can (a field that occurs once): a map lookup with string(v) then copies
// nothing.
func headerOf(r Request, rr RawRequest, name string) ([]byte, bool) {
	if rr != nil {
		v, n := rr.HeaderBytes(name)
		switch n {
		case 0:
			return nil, false
		case 1:
			return v, true
		}
	}
	v, ok := r.Header(name)
	return []byte(v), ok
}

// baggageOf is BaggageMember of the request's baggage, decoded.
func baggageOf(r Request, rr RawRequest, key string) ([]byte, bool) {
	b, ok := headerOf(r, rr, BaggageHeader)
	if !ok {
		return nil, false
	}
	v, ok := baggageRaw(b, key)
	if !ok {
		return nil, false
	}
	if indexByte(v, '%') < 0 {
		return v, true
	}
	d, _ := percentDecode(string(v)) // baggageRaw checked the encoding
	return []byte(d), true
}

// sessionKeyOf is SessionKey, from the request's bytes where it can.
func sessionKeyOf(r Request, rr RawRequest) ([]byte, bool) {
	if v, ok := headerOf(r, rr, SessionHeader); ok {
		return v, true
	}
	return baggageOf(r, rr, SessionMember)
}
