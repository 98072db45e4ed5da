package match

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"
)

// Describe renders conds in the short form the CLI shows, e.g.
// "session=alice & path-prefix=/api".
func Describe(conds []Condition) string {
	parts := make([]string, len(conds))
	for i, c := range conds {
		parts[i] = describeOne(c)
	}
	return strings.Join(parts, " & ")
}

func describeOne(c Condition) string {
	switch c.Kind {
	case HeaderExact, HeaderPrefix, HeaderRegex, Baggage:
		return fmt.Sprintf("%s:%s=%s", c.Kind, c.Name, c.Value)
	}
	return fmt.Sprintf("%s=%s", c.Kind, c.Value)
}

// verdict of comparing two conditions.
type verdict int

const (
	compatible verdict = iota // some request satisfies both (proven)
	disjoint                  // no request satisfies both (proven)
	unknown                   // neither could be proven
)

// Overlap reports whether some request could be selected by both a and b,
// so that registering b next to a must be refused. It proves disjointness
// pair by pair: one contradictory pair of conditions (on the same field)
// makes the two sets disjoint. Where no pair can be proven either way (two
// regular expressions, say) it answers true, because wrongly refusing an
// intercept is a nuisance while wrongly accepting one sends a colleague's
// requests to the wrong pod.
func Overlap(a, b []Condition) (bool, string) {
	all := make([]Condition, 0, len(a)+len(b))
	all = append(append(all, a...), b...)
	for _, c := range all {
		if err := validateOne(c); err != nil {
			return true, fmt.Sprintf("may overlap: invalid condition %s: %v", describeOne(c), err)
		}
	}
	var undecided []string
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			switch v, why := compare(all[i], all[j]); v {
			case disjoint:
				return false, why
			case unknown:
				undecided = append(undecided, why)
			}
		}
	}
	if len(undecided) > 0 {
		return true, "may overlap: cannot prove " + undecided[0] + " conditions disjoint"
	}
	return true, "both match " + Describe(dedupe(all))
}

func dedupe(cs []Condition) []Condition {
	var out []Condition
	seen := map[Condition]bool{}
	for _, c := range cs {
		k := c
		switch c.Kind {
		case HeaderExact, HeaderPrefix, HeaderRegex:
			k.Name = strings.ToLower(k.Name)
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, c)
		}
	}
	return out
}

func isHeader(k Kind) bool { return k == HeaderExact || k == HeaderPrefix || k == HeaderRegex }

// compare decides whether x and y can hold on one request. Conditions on
// different fields are always compatible: fields vary independently.
func compare(x, y Condition) (verdict, string) {
	// Order so that the switch below sees each combination once.
	if rank(x.Kind) > rank(y.Kind) {
		x, y = y, x
	}
	switch {
	case x.Kind == Method && y.Kind == Method:
		if x.Value != y.Value {
			return disjoint, fmt.Sprintf("methods differ (%s, %s)", x.Value, y.Value)
		}
		return compatible, ""
	case isPath(x.Kind) && isPath(y.Kind):
		return compareStrings(strCond(x), strCond(y), "path")
	case x.Kind == Session && y.Kind == Session:
		if x.Value != y.Value {
			return disjoint, fmt.Sprintf("session keys differ (%s, %s)", x.Value, y.Value)
		}
		return compatible, ""
	case x.Kind == Session && isHeader(y.Kind) && strings.EqualFold(y.Name, SessionHeader):
		// A header condition needs x-detour-session present, and then that
		// header alone is the session key: it must equal the session value.
		v, why := compareStrings(strCond(x), strCond(y), "session")
		if v == disjoint {
			why = fmt.Sprintf("session %s never satisfies %s", x.Value, describeOne(y))
		}
		return v, why
	case x.Kind == Session:
		// Against baggage conditions: the key can come from the header,
		// leaving the baggage free, so nothing excludes the pair.
		return compatible, ""
	case isHeader(x.Kind) && isHeader(y.Kind) && strings.EqualFold(x.Name, y.Name):
		v, why := compareStrings(strCond(x), strCond(y), "header "+strings.ToLower(x.Name))
		if v == unknown {
			k1, k2 := string(x.Kind), string(y.Kind)
			if k1 > k2 {
				k1, k2 = k2, k1
			}
			why = k1 + " and " + k2
			if k1 == k2 {
				why = k1
			}
		}
		return v, why
	case x.Kind == Baggage && y.Kind == Baggage && x.Name == y.Name:
		if x.Value != y.Value {
			return disjoint, fmt.Sprintf("baggage %s differs (%s, %s)", x.Name, x.Value, y.Value)
		}
		return compatible, ""
	case isHeader(x.Kind) && y.Kind == Baggage && strings.EqualFold(x.Name, BaggageHeader):
		// The raw baggage header decides every member. An exact value can
		// be decoded; a prefix or pattern cannot be reasoned about here.
		if x.Kind != HeaderExact {
			return unknown, string(x.Kind) + " on baggage and baggage"
		}
		v, ok := BaggageMember(x.Value, y.Name)
		if !ok || v != y.Value {
			return disjoint, fmt.Sprintf("%s never has baggage member %s=%s", describeOne(x), y.Name, y.Value)
		}
		return compatible, ""
	}
	return compatible, ""
}

func rank(k Kind) int {
	switch k {
	case Session:
		return 0
	case HeaderExact, HeaderPrefix, HeaderRegex:
		return 1
	case Baggage:
		return 2
	}
	return 3
}

func isPath(k Kind) bool { return k == PathExact || k == PathPrefix }

// sc is a constraint on one string-valued field.
type sc struct {
	op    byte // '=' exact, '^' prefix, '~' regexp
	value string
}

func strCond(c Condition) sc {
	switch c.Kind {
	case Session, HeaderExact, PathExact:
		return sc{'=', c.Value}
	case HeaderPrefix, PathPrefix:
		return sc{'^', c.Value}
	}
	return sc{'~', c.Value}
}

func prefixCompat(a, b string) bool { return strings.HasPrefix(a, b) || strings.HasPrefix(b, a) }

// compareStrings decides two constraints on the same string field.
func compareStrings(x, y sc, field string) (verdict, string) {
	if x.op > y.op { // '=' < '^' < '~'
		x, y = y, x
	}
	no := func() (verdict, string) {
		return disjoint, fmt.Sprintf("%s cannot be both %s and %s", field, show(x), show(y))
	}
	switch {
	case x.op == '=' && y.op == '=':
		if x.value != y.value {
			return no()
		}
	case x.op == '=' && y.op == '^':
		if !strings.HasPrefix(x.value, y.value) {
			return no()
		}
	case x.op == '=' && y.op == '~':
		if !regexp.MustCompile(y.value).MatchString(x.value) {
			return no()
		}
	case x.op == '^' && y.op == '^':
		if !prefixCompat(x.value, y.value) {
			return no()
		}
	case x.op == '^' && y.op == '~':
		return prefixVsRegexp(x.value, y.value, no)
	default:
		return regexpVsRegexp(x.value, y.value, no)
	}
	return compatible, ""
}

func show(c sc) string {
	switch c.op {
	case '=':
		return fmt.Sprintf("%q", c.value)
	case '^':
		return fmt.Sprintf("prefixed %q", c.value)
	}
	return fmt.Sprintf("matching /%s/", c.value)
}

// reShape is what can be known cheaply about a regexp's set of matches.
type reShape struct {
	anchored bool   // every match starts at the beginning of the value
	lit      string // when anchored: every matching value starts with lit
	// exact: the value must equal lit (^lit$); prefix: any value starting
	// with lit matches (^lit); contains: any value containing lit (lit).
	exact, prefix, contains bool
}

// shape inspects the syntax tree rather than trusting
// regexp.LiteralPrefix, which describes where a match begins, not whether
// the value must begin there (an unanchored "abc" matches "xxabc").
func shape(expr string) reShape {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return reShape{}
	}
	re = re.Simplify()
	subs := []*syntax.Regexp{re}
	if re.Op == syntax.OpConcat {
		subs = re.Sub
	}
	var s reShape
	i := 0
	if len(subs) > 0 && subs[0].Op == syntax.OpBeginText {
		s.anchored = true
		i = 1
	}
	var lit strings.Builder
	for ; i < len(subs) && subs[i].Op == syntax.OpLiteral && subs[i].Flags&syntax.FoldCase == 0; i++ {
		lit.WriteString(string(subs[i].Rune))
	}
	rest := subs[i:]
	switch {
	case s.anchored:
		s.lit = lit.String()
		s.prefix = len(rest) == 0
		s.exact = len(rest) == 1 && rest[0].Op == syntax.OpEndText
	case len(rest) == 0 && lit.Len() > 0:
		s.contains, s.lit = true, lit.String()
	}
	return s
}

func prefixVsRegexp(p, expr string, no func() (verdict, string)) (verdict, string) {
	s := shape(expr)
	re := regexp.MustCompile(expr)
	switch {
	case s.exact:
		if !strings.HasPrefix(s.lit, p) {
			return no()
		}
		return compatible, ""
	case s.prefix:
		if !prefixCompat(s.lit, p) {
			return no()
		}
		return compatible, ""
	case s.contains:
		return compatible, "" // p followed by the literal
	case s.anchored && !prefixCompat(s.lit, p):
		return no()
	}
	// Try the obvious witnesses before giving up.
	for _, w := range []string{p, p + s.lit, longer(p, s.lit)} {
		if strings.HasPrefix(w, p) && re.MatchString(w) {
			return compatible, ""
		}
	}
	return unknown, ""
}

func regexpVsRegexp(e1, e2 string, no func() (verdict, string)) (verdict, string) {
	s1, s2 := shape(e1), shape(e2)
	r1, r2 := regexp.MustCompile(e1), regexp.MustCompile(e2)
	switch {
	case s1.exact:
		if !r2.MatchString(s1.lit) {
			return no()
		}
		return compatible, ""
	case s2.exact:
		if !r1.MatchString(s2.lit) {
			return no()
		}
		return compatible, ""
	case s1.anchored && s2.anchored && !prefixCompat(s1.lit, s2.lit):
		return no()
	}
	for _, w := range []string{longer(s1.lit, s2.lit), s1.lit + s2.lit, s2.lit + s1.lit, ""} {
		if r1.MatchString(w) && r2.MatchString(w) {
			return compatible, ""
		}
	}
	return unknown, ""
}

func longer(a, b string) string {
	if len(a) >= len(b) {
		return a
	}
	return b
}
