package parity

import "path"

// Policy says which differences are noise to this team (Ignore), which are
// by design (Expected), how severe each category is, and from which
// severity a difference fails. pkg/parity/policy reads it from YAML.
type Policy struct {
	FailOn   Severity              `json:"failOn,omitempty"`
	Severity map[Category]Severity `json:"severity,omitempty"`
	Ignore   []Rule                `json:"ignore,omitempty"`
	Expected []Rule                `json:"expected,omitempty"`
}

// Rule selects differences. Empty fields match anything.
type Rule struct {
	// Kind and Name are globs (path.Match) on the object.
	Kind string `json:"kind,omitempty"`
	Name string `json:"name,omitempty"`
	// Path is a path pattern (see MatchPath): it matches the field and
	// everything below it.
	Path     string   `json:"path,omitempty"`
	Category Category `json:"category,omitempty"`
	Reason   string   `json:"reason,omitempty"`
	// Origin says where the rule was written ("policy.yaml:12").
	Origin string `json:"-"`
}

// Matches says whether r selects d.
func (r *Rule) Matches(d *Difference) bool {
	if r.Kind != "" && !globMatch(r.Kind, d.Kind) {
		return false
	}
	if r.Name != "" && !globMatch(r.Name, d.Name) && (d.RightName == "" || !globMatch(r.Name, d.RightName)) {
		return false
	}
	if r.Category != "" && r.Category != d.Category {
		return false
	}
	return r.Path == "" || MatchPath(r.Path, d.Path)
}

func globMatch(pattern, s string) bool {
	ok, _ := path.Match(pattern, s)
	return ok
}

// SeverityOf is the severity of category c under p (nil: the defaults).
func (p *Policy) SeverityOf(c Category) Severity {
	if p != nil {
		if s, ok := p.Severity[c]; ok {
			return s
		}
	}
	return DefaultSeverities[c]
}

// failOn is the policy's gate, or the default.
func (p *Policy) failOn() Severity {
	if p != nil && p.FailOn != "" {
		return p.FailOn
	}
	return DefaultFailOn
}

// apply marks d ignored or expected, first matching rule wins, ignore
// rules first.
func (p *Policy) apply(d *Difference) {
	if p == nil {
		return
	}
	for i := range p.Ignore {
		if r := &p.Ignore[i]; r.Matches(d) {
			d.Ignored, d.Reason = true, reasonOf(r, "ignored")
			return
		}
	}
	for i := range p.Expected {
		if r := &p.Expected[i]; r.Matches(d) {
			d.Expected, d.Reason = true, reasonOf(r, "expected")
			return
		}
	}
}

func reasonOf(r *Rule, what string) string {
	if r.Reason != "" {
		return r.Reason
	}
	if r.Origin != "" {
		return what + " by the rule at " + r.Origin
	}
	return what + " by policy"
}
