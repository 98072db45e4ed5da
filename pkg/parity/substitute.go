package parity

import (
	"regexp"
	"sort"
	"strings"
)

// Substitution (rules namespace-name and name-hash): what differs between
// two sides only because each names its own namespace, or because
// kustomize hashed a generated name, is set aside before comparing.

// side is one snapshot as the differ reads it.
type side struct {
	snap *Snapshot
	name string
	ns   string // substituted in values, keys and names; "" for none
	// hashed are the generated names (web-config-8h2k9c5fmt) and what
	// they are generated from (web-config), longest first.
	hashed []hashedName
}

type hashedName struct{ full, base string }

// substituting says whether subst changes anything on this side.
func (s *side) substituting() bool { return s.ns != "" || len(s.hashed) > 0 }

// subst writes v as it compares across sides: the namespace's name and
// generated names' hashes replaced by placeholders.
func (s *side) subst(v string) string {
	if s.ns != "" {
		v = substituteNamespace(v, s.ns)
	}
	for _, h := range s.hashed {
		if strings.Contains(v, h.full) {
			v = strings.ReplaceAll(v, h.full, h.base+hashPlaceholder)
		}
	}
	return v
}

// hashPlaceholder stands for a kustomize generator's hash suffix.
const hashPlaceholder = "-\x00hash\x00"

// kustomizeHash matches a name kustomize's configMapGenerator or
// secretGenerator made: a dash and ten characters of its hash alphabet
// (hex with 0, 1, 3, a, e written g, h, k, m, t).
var kustomizeHash = regexp.MustCompile(`^(.+)-[2456789bcdfghkmt]{10}$`)

// hashedNames finds a side's generated ConfigMaps and Secrets.
func hashedNames(s *Snapshot) []hashedName {
	var out []hashedName
	for _, o := range s.Objects {
		if o.Kind != "ConfigMap" && o.Kind != "Secret" {
			continue
		}
		if sub := kustomizeHash.FindStringSubmatch(o.Name); sub != nil {
			out = append(out, hashedName{full: o.Name, base: sub[1]})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if len(out[i].full) != len(out[j].full) {
			return len(out[i].full) > len(out[j].full)
		}
		return out[i].full < out[j].full
	})
	return out
}

// nsPlaceholder stands for a side's namespace in substituted text; it
// cannot occur in a Kubernetes name or in YAML text.
const nsPlaceholder = "\x00namespace\x00"

// substituteNamespace replaces each occurrence of ns in s that is not part
// of a longer name (neighbours are not letters or digits) by nsPlaceholder.
func substituteNamespace(s, ns string) string {
	if !strings.Contains(s, ns) {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, ns)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(ns)
		if (i == 0 || !alnum(s[i-1])) && (end == len(s) || !alnum(s[end])) {
			b.WriteString(s[:i])
			b.WriteString(nsPlaceholder)
		} else {
			b.WriteString(s[:end])
		}
		s = s[end:]
	}
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
