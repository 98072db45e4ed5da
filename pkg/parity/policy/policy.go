// Package policy reads parity policy files (.detour/parity.yaml): which
// differences are ignored, which are expected and why, the severity of each
// category, and the severity that fails. The YAML is walked node by node
// so that every error, an unknown key first of all, names its line.
package policy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/detourdev/detour/pkg/parity"
)

// DefaultFile is read when --policy is not given and it exists.
const DefaultFile = ".detour/parity.yaml"

// Identity a policy file may state; both are optional.
const (
	APIVersion = "parity.detour.dev/v1"
	Kind       = "ParityPolicy"
)

// MaxSize bounds a policy file.
const MaxSize = 1 << 20

// Error is a policy error at a line.
type Error struct {
	File string
	Line int // 0 when the error is about the file as a whole
	Msg  string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return e.File + ": " + e.Msg
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// Load reads and parses a policy file.
func Load(file string) (*parity.Policy, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", file, err)
	}
	return Parse(b, file)
}

// Parse parses a policy; name is the file's name for errors and for the
// rules' Origin.
func Parse(data []byte, name string) (*parity.Policy, error) {
	if len(data) > MaxSize {
		return nil, &Error{File: name, Msg: fmt.Sprintf("over %d KiB", MaxSize>>10)}
	}
	p := &parser{file: name}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &parity.Policy{}, nil // an empty file: the defaults
		}
		return nil, p.syntax(err)
	}
	var second yaml.Node
	if err := dec.Decode(&second); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, p.syntax(err)
		}
		return nil, p.errorf(&second, "a policy file holds one YAML document")
	}
	pol := &parity.Policy{}
	if err := p.policy(&doc, pol); err != nil {
		return nil, err
	}
	return pol, nil
}

type parser struct{ file string }

func (p *parser) errorf(n *yaml.Node, format string, a ...any) error {
	return &Error{File: p.file, Line: n.Line, Msg: fmt.Sprintf(format, a...)}
}

// syntax turns yaml's error ("yaml: line 3: ...") into an Error.
func (p *parser) syntax(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if _, e := fmt.Sscanf(msg, "line %d:", &line); e == nil {
		if i := strings.Index(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
	}
	return &Error{File: p.file, Line: line, Msg: "not valid YAML: " + msg}
}

func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// fields walks a mapping, refusing unknown and repeated keys.
func (p *parser) fields(n *yaml.Node, what string, known []string, each func(key string, k, v *yaml.Node) error) error {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		return p.errorf(n, "%s: want a mapping of %s", what, strings.Join(known, ", "))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return p.errorf(k, "%s: a key must be a plain name", what)
		}
		if seen[k.Value] {
			return p.errorf(k, "%s: %q is given twice", what, k.Value)
		}
		seen[k.Value] = true
		if !contains(known, k.Value) {
			return p.errorf(k, "unknown key %q in %s (want %s)", k.Value, what, strings.Join(known, ", "))
		}
		if err := each(k.Value, k, v); err != nil {
			return err
		}
	}
	return nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func (p *parser) str(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", p.errorf(n, "%s: want a string", what)
	}
	return n.Value, nil
}

func (p *parser) policy(doc *yaml.Node, pol *parity.Policy) error {
	root := doc
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil
		}
		root = doc.Content[0]
	}
	if r := resolve(root); r.Kind == yaml.ScalarNode && r.Tag == "!!null" {
		return nil
	}
	known := []string{"apiVersion", "kind", "failOn", "severity", "ignore", "expected"}
	return p.fields(root, "the policy", known, func(key string, k, v *yaml.Node) error {
		switch key {
		case "apiVersion":
			s, err := p.str(v, key)
			if err == nil && s != APIVersion {
				err = p.errorf(v, "apiVersion %q, want %s", s, APIVersion)
			}
			return err
		case "kind":
			s, err := p.str(v, key)
			if err == nil && s != Kind {
				err = p.errorf(v, "kind %q, want %s", s, Kind)
			}
			return err
		case "failOn":
			s, err := p.str(v, key)
			if err != nil {
				return err
			}
			sev, err := parity.ParseSeverity(s, true)
			if err != nil {
				return p.errorf(v, "failOn: %v", err)
			}
			pol.FailOn = sev
		case "severity":
			return p.severities(v, pol)
		case "ignore":
			rules, err := p.rules(v, key, false)
			pol.Ignore = rules
			return err
		case "expected":
			rules, err := p.rules(v, key, true)
			pol.Expected = rules
			return err
		}
		return nil
	})
}

func (p *parser) severities(n *yaml.Node, pol *parity.Policy) error {
	if resolve(n).Tag == "!!null" {
		return nil
	}
	known := make([]string, len(parity.Categories))
	for i, c := range parity.Categories {
		known[i] = string(c)
	}
	pol.Severity = map[parity.Category]parity.Severity{}
	return p.fields(n, "severity", known, func(key string, k, v *yaml.Node) error {
		s, err := p.str(v, "severity of "+key)
		if err != nil {
			return err
		}
		sev, err := parity.ParseSeverity(s, false)
		if err != nil {
			return p.errorf(v, "severity of %s: %v", key, err)
		}
		pol.Severity[parity.Category(key)] = sev
		return nil
	})
}

func (p *parser) rules(n *yaml.Node, what string, needReason bool) ([]parity.Rule, error) {
	n = resolve(n)
	if n.Tag == "!!null" {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, p.errorf(n, "%s: want a list of rules", what)
	}
	var out []parity.Rule
	for _, item := range n.Content {
		r, err := p.rule(resolve(item), what, needReason)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (p *parser) rule(n *yaml.Node, what string, needReason bool) (parity.Rule, error) {
	r := parity.Rule{Origin: fmt.Sprintf("%s:%d", p.file, n.Line)}
	known := []string{"kind", "name", "path", "category", "reason"}
	err := p.fields(n, "a rule of "+what, known, func(key string, k, v *yaml.Node) error {
		s, err := p.str(v, key)
		if err != nil {
			return err
		}
		switch key {
		case "kind", "name":
			if _, err := path.Match(s, ""); err != nil {
				return p.errorf(v, "%s: bad pattern %q", key, s)
			}
			if key == "kind" {
				r.Kind = s
			} else {
				r.Name = s
			}
		case "path":
			if s != "" && !strings.HasPrefix(s, "/") {
				return p.errorf(v, "path %q: want a path starting with / (e.g. /spec/replicas)", s)
			}
			if err := parity.ValidPattern(s); err != nil {
				return p.errorf(v, "path: bad pattern %q", s)
			}
			r.Path = s
		case "category":
			c, err := parity.ParseCategory(s)
			if err != nil {
				return p.errorf(v, "%v", err)
			}
			r.Category = c
		case "reason":
			r.Reason = strings.TrimSpace(s)
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	if r.Kind == "" && r.Name == "" && r.Path == "" && r.Category == "" {
		return r, p.errorf(n, "a rule of %s with no kind, name, path or category would match every difference", what)
	}
	if needReason && r.Reason == "" {
		return r, p.errorf(n, "an expected difference needs a reason")
	}
	return r, nil
}
