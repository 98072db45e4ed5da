package parity

import (
	"fmt"
	"sort"
	"strings"
)

// DiffOptions tune Diff.
type DiffOptions struct {
	// Policy marks differences expected or ignored and sets severities;
	// nil is the defaults.
	Policy *Policy
	// KeepNoise turns compare-time noise rules off: namespace-name,
	// name-hash, and server-defaults' reporting of a one-sided field
	// against the default (give the same names to Normalize).
	KeepNoise []string
}

// Diff compares two snapshots. It is pure: the same snapshots and policy
// give the same report, byte for byte once encoded.
func Diff(left, right *Snapshot, o DiffOptions) (*Report, error) {
	rules, err := newRuleSet(o.KeepNoise)
	if err != nil {
		return nil, err
	}
	d := &differ{
		l:      side{snap: left, name: "left"},
		r:      side{snap: right, name: "right"},
		policy: o.Policy,
		rules:  rules,
		rep: &Report{
			APIVersion:  ReportAPIVersion,
			Kind:        ReportKind,
			Left:        SideInfo{Source: left.Source, Namespace: left.Namespace},
			Right:       SideInfo{Source: right.Source, Namespace: right.Namespace},
			FailOn:      o.Policy.failOn(),
			Differences: []Difference{},
			Notes:       []string{},
		},
	}
	if rules.on(RuleNamespaceName) && left.Namespace != "" && right.Namespace != "" && left.Namespace != right.Namespace {
		d.l.ns, d.r.ns = left.Namespace, right.Namespace
	}
	if rules.on(RuleNameHash) {
		d.l.hashed, d.r.hashed = hashedNames(left), hashedNames(right)
	}
	d.prepare()
	d.objects()
	d.finish()
	return d.rep, nil
}

type differ struct {
	l, r   side
	policy *Policy
	rules  ruleSet
	rep    *Report
	// skip are kinds one side could not read.
	skip map[string]bool
	// runtime says both sides read what runs; otherwise runtime fields
	// are not compared.
	runtime bool
	// secretValues says the Secret values of the two sides compare.
	secretValues bool
	// secretsUncompared is set when a Secret value could not be compared.
	secretsUncompared bool
}

// prepare decides what the two sides can be compared on, with a note for
// each thing that cannot.
func (d *differ) prepare() {
	d.skip = map[string]bool{}
	for _, s := range []*side{&d.l, &d.r} {
		for _, k := range s.snap.Unread {
			d.skip[k] = true
			d.note("%s objects of the %s side could not be read (forbidden): %s not compared", k, s.name, k)
		}
		if len(s.snap.Skipped) > 0 {
			var parts []string
			for _, k := range sortedKeys(s.snap.Skipped) {
				parts = append(parts, fmt.Sprintf("%d %s", s.snap.Skipped[k], k))
			}
			d.note("not compared (kinds parity does not compare), %s side: %s", s.name, strings.Join(parts, ", "))
		}
	}
	d.runtime = d.l.snap.Runtime && d.r.snap.Runtime
	if d.l.snap.Runtime != d.r.snap.Runtime {
		d.note("what runs (--runtime) was read on one side only: it is compared only between two live sides")
	}
	lv, rv := d.l.snap.SecretValues, d.r.snap.SecretValues
	d.secretValues = lv.Fingerprint == FingerprintHMAC && rv.Fingerprint == FingerprintHMAC && lv.KeyID == rv.KeyID
}

func (d *differ) note(format string, a ...any) {
	d.rep.Notes = append(d.rep.Notes, fmt.Sprintf(format, a...))
}

// compared says whether an object of this kind takes part.
func (d *differ) compared(o *Object) bool {
	if d.skip[o.Kind] {
		return false
	}
	return o.Kind != NodesKind || d.runtime
}

// objects matches the objects of the two sides, by kind and name, then by
// name with each side's namespace substituted, and compares each pair.
func (d *differ) objects() {
	lobjs, robjs := d.usable(d.l.snap), d.usable(d.r.snap)
	d.rep.Left.Objects, d.rep.Right.Objects = len(lobjs), len(robjs)
	rIdx := make(map[ObjectKey]*Object, len(robjs))
	for _, o := range robjs {
		rIdx[o.Key()] = o
	}
	matched := map[*Object]bool{}
	var lonely []*Object
	for _, lo := range lobjs {
		if ro, ok := rIdx[lo.Key()]; ok {
			matched[ro] = true
			d.compareObject(lo, ro)
			continue
		}
		lonely = append(lonely, lo)
	}
	// Second pass: names that differ only by the namespace's name.
	bySubst := map[ObjectKey]*Object{}
	for _, ro := range robjs { // sorted: the first of two that read the same pairs
		k := ObjectKey{Kind: ro.Kind, Name: d.r.subst(ro.Name)}
		if _, taken := bySubst[k]; !matched[ro] && !taken {
			bySubst[k] = ro
		}
	}
	for _, lo := range lonely {
		k := ObjectKey{Kind: lo.Kind, Name: d.l.subst(lo.Name)}
		if ro, ok := bySubst[k]; ok && (d.l.substituting() || d.r.substituting()) && !matched[ro] {
			matched[ro] = true
			d.compareObject(lo, ro)
			continue
		}
		p := Present
		d.add(Difference{Kind: lo.Kind, Name: lo.Name, Category: CategoryPresence, Change: OnlyLeft, Left: &p})
	}
	for _, ro := range robjs {
		if !matched[ro] {
			p := Present
			d.add(Difference{Kind: ro.Kind, Name: ro.Name, Category: CategoryPresence, Change: OnlyRight, Right: &p})
		}
	}
}

func (d *differ) usable(s *Snapshot) []*Object {
	out := make([]*Object, 0, len(s.Objects))
	for i := range s.Objects {
		if o := &s.Objects[i]; d.compared(o) {
			out = append(out, o)
		}
	}
	return out
}

// pairing is the paths of two maps matched up: raw first, then with the
// namespace substituted.
type pairing struct {
	both              [][2]string // left path, right path
	onlyLeft, onlyRgt []string
}

func (d *differ) pair(lm, rm map[string]string) pairing {
	var p pairing
	for lp := range lm {
		if _, ok := rm[lp]; ok {
			p.both = append(p.both, [2]string{lp, lp})
		} else {
			p.onlyLeft = append(p.onlyLeft, lp)
		}
	}
	for rp := range rm {
		if _, ok := lm[rp]; !ok {
			p.onlyRgt = append(p.onlyRgt, rp)
		}
	}
	if len(p.onlyLeft) == 0 || len(p.onlyRgt) == 0 || !(d.l.substituting() || d.r.substituting()) {
		return p
	}
	// In name order, so that two right paths that read the same once
	// substituted (an old and a new generated ConfigMap) pair the same
	// way every run; the one left over stays on its side.
	sort.Strings(p.onlyLeft)
	sort.Strings(p.onlyRgt)
	bySubst := map[string][]string{}
	for _, rp := range p.onlyRgt {
		k := d.r.subst(rp)
		bySubst[k] = append(bySubst[k], rp)
	}
	used := map[string]bool{}
	var lrest []string
	for _, lp := range p.onlyLeft {
		k := d.l.subst(lp)
		if c := bySubst[k]; len(c) > 0 {
			p.both = append(p.both, [2]string{lp, c[0]})
			used[c[0]] = true
			bySubst[k] = c[1:]
			continue
		}
		lrest = append(lrest, lp)
	}
	var rrest []string
	for _, rp := range p.onlyRgt {
		if !used[rp] {
			rrest = append(rrest, rp)
		}
	}
	p.onlyLeft, p.onlyRgt = lrest, rrest
	return p
}

// compareObject adds the differences between two objects matched by name.
func (d *differ) compareObject(lo, ro *Object) {
	base := Difference{Kind: lo.Kind, Name: lo.Name}
	if ro.Name != lo.Name {
		base.RightName = ro.Name
	}
	// List entries on one side only: one difference each, and nothing
	// for the fields below them.
	gone := map[string]bool{}
	ep := d.pair(d.filter(lo.Elements), d.filter(ro.Elements))
	for _, lp := range ep.onlyLeft {
		gone["L"+lp] = true
	}
	for _, rp := range ep.onlyRgt {
		gone["R"+rp] = true
	}
	under := func(prefix, p string) bool {
		for i := len(p) - 1; i > 0; i-- {
			if p[i] == '/' && gone[prefix+p[:i]] {
				return true
			}
		}
		return false
	}
	for _, lp := range ep.onlyLeft {
		if !under("L", lp) {
			d.addElement(base, lp, lo, OnlyLeft)
		}
	}
	for _, rp := range ep.onlyRgt {
		if !under("R", rp) {
			d.addElement(base, rp, ro, OnlyRight)
		}
	}
	secret := lo.Kind == "Secret"
	fp := d.pair(d.filter(lo.Fields), d.filter(ro.Fields))
	for _, pr := range fp.both {
		lv, rv := lo.Fields[pr[0]], ro.Fields[pr[1]]
		if secret && secretPath(pr[0]) {
			if lv == UnknownSecretValue || rv == UnknownSecretValue || !d.secretValues {
				d.secretsUncompared = true
				continue
			}
			if lv != rv {
				l, r := SecretDiffers, SecretDiffers
				d.addField(base, pr[0], Changed, &l, &r)
			}
			continue
		}
		if lv == rv || d.l.subst(lv) == d.r.subst(rv) {
			continue
		}
		d.addField(base, pr[0], Changed, &lv, &rv)
	}
	for _, lp := range fp.onlyLeft {
		if under("L", lp) {
			continue
		}
		v := lo.Fields[lp]
		if secret && secretPath(lp) {
			v = SecretSet
		}
		if def, ok := d.defaulted(lo.Kind, lp); ok {
			d.addField(base, lp, Changed, &v, &def)
			continue
		}
		d.addField(base, lp, OnlyLeft, &v, nil)
	}
	for _, rp := range fp.onlyRgt {
		if under("R", rp) {
			continue
		}
		v := ro.Fields[rp]
		if secret && secretPath(rp) {
			v = SecretSet
		}
		if def, ok := d.defaulted(ro.Kind, rp); ok {
			d.addField(base, rp, Changed, &def, &v)
			continue
		}
		d.addField(base, rp, OnlyRight, nil, &v)
	}
}

// defaulted is the value a side without the field has: the API server's
// default (the field was dropped as one, rule server-defaults).
func (d *differ) defaulted(kind, path string) (string, bool) {
	if !d.rules.on(RuleServerDefaults) {
		return "", false
	}
	return literalDefault(kind, path)
}

// filter drops runtime fields unless both sides have them.
func (d *differ) filter(m map[string]string) map[string]string {
	if d.runtime {
		return m
	}
	for p := range m {
		if strings.HasPrefix(p, "/runtime/") {
			out := make(map[string]string, len(m))
			for k, v := range m {
				if !strings.HasPrefix(k, "/runtime/") {
					out[k] = v
				}
			}
			return out
		}
	}
	return m
}

func secretPath(p string) bool { return strings.HasPrefix(p, "/data/") }

func (d *differ) addField(base Difference, path string, ch Change, l, r *string) {
	base.Path, base.Change, base.Left, base.Right = path, ch, l, r
	base.Category = categorize(base.Kind, path, "")
	d.add(base)
}

func (d *differ) addElement(base Difference, path string, o *Object, ch Change) {
	v := o.Elements[path]
	if v == "" {
		v = Present
	}
	base.Path, base.Change = path, ch
	base.Category = categorize(base.Kind, path, v)
	if ch == OnlyLeft {
		base.Left = &v
	} else {
		base.Right = &v
	}
	d.add(base)
}

func (d *differ) add(diff Difference) {
	diff.Severity = d.policy.SeverityOf(diff.Category)
	d.policy.apply(&diff)
	d.rep.Differences = append(d.rep.Differences, diff)
}

// finish sorts the differences and counts them.
func (d *differ) finish() {
	if d.secretsUncompared {
		d.note("Secret values were compared by key only: %s", d.secretReason())
	}
	ds := d.rep.Differences
	sort.Slice(ds, func(i, j int) bool {
		if ds[i].Kind != ds[j].Kind {
			return ds[i].Kind < ds[j].Kind
		}
		if ds[i].Name != ds[j].Name {
			return ds[i].Name < ds[j].Name
		}
		return ds[i].Path < ds[j].Path
	})
	s := Summary{ByCategory: map[Category]int{}, BySeverity: map[Severity]int{}, Result: ResultPass}
	for i := range ds {
		x := &ds[i]
		s.Total++
		switch {
		case x.Ignored:
			s.Ignored++
		case x.Expected:
			s.Expected++
		default:
			s.Unexpected++
			s.ByCategory[x.Category]++
			s.BySeverity[x.Severity]++
			if x.Failing(d.rep.FailOn) {
				s.Failing++
			}
		}
	}
	if s.Failing > 0 {
		s.Result = ResultDrift
	}
	d.rep.Summary = s
}

func (d *differ) secretReason() string {
	lv, rv := d.l.snap.SecretValues, d.r.snap.SecretValues
	switch {
	case lv.Fingerprint != FingerprintHMAC && rv.Fingerprint != FingerprintHMAC:
		return "neither side kept them (snapshots keep keys only unless taken with --fingerprint-key)"
	case lv.Fingerprint != FingerprintHMAC:
		return "the left side kept keys only (a snapshot taken without --fingerprint-key)"
	case rv.Fingerprint != FingerprintHMAC:
		return "the right side kept keys only (a snapshot taken without --fingerprint-key)"
	}
	return "the two sides were fingerprinted with different keys (give both the same --fingerprint-key)"
}
