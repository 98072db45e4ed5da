package match

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Validate reports the first problem with conds, in words a user can act on.
// An intercept with no conditions would select every request and starve the
// original app, so an empty list is an error too.
func Validate(conds []Condition) error {
	if len(conds) == 0 {
		return errors.New("no conditions: an intercept needs at least one")
	}
	for i, c := range conds {
		if err := validateOne(c); err != nil {
			return fmt.Errorf("condition %d (%s): %w", i+1, c.Kind, err)
		}
	}
	return nil
}

func validateOne(c Condition) error {
	switch c.Kind {
	case Session:
		if c.Name != "" {
			return fmt.Errorf("name %q is not used by a session condition", c.Name)
		}
		return validateSessionValue(c.Value)
	case HeaderExact, HeaderPrefix, HeaderRegex:
		if c.Name == "" {
			return errors.New("empty header name")
		}
		if !IsToken(c.Name) {
			return fmt.Errorf("header name %q is not a token", c.Name)
		}
		if c.Value == "" {
			return errors.New("empty value")
		}
		if c.Kind == HeaderRegex {
			if _, err := regexp.Compile(c.Value); err != nil {
				return fmt.Errorf("invalid regexp: %w", err)
			}
			return nil
		}
		// Header values reach the matcher with surrounding whitespace
		// trimmed, so a value that needs it could never match.
		if strings.TrimSpace(c.Value) != c.Value {
			return fmt.Errorf("value %q has leading or trailing whitespace and could never match", c.Value)
		}
		if hasCTL(c.Value) {
			return fmt.Errorf("value %q has control characters", c.Value)
		}
		return nil
	case Baggage:
		if c.Name == "" {
			return errors.New("empty baggage member name")
		}
		if !IsToken(c.Name) {
			return fmt.Errorf("baggage member name %q is not a token", c.Name)
		}
		if c.Value == "" {
			return errors.New("empty value")
		}
		if hasCTL(c.Value) {
			return fmt.Errorf("value %q has control characters", c.Value)
		}
		return nil
	case PathExact, PathPrefix:
		if c.Name != "" {
			return fmt.Errorf("name %q is not used by a path condition", c.Name)
		}
		if !strings.HasPrefix(c.Value, "/") {
			return fmt.Errorf("path %q does not start with /", c.Value)
		}
		if strings.ContainsAny(c.Value, "?# ") || hasCTL(c.Value) {
			return fmt.Errorf("path %q has a character that never appears in a request path", c.Value)
		}
		return nil
	case Method:
		if c.Name != "" {
			return fmt.Errorf("name %q is not used by a method condition", c.Name)
		}
		if c.Value == "" {
			return errors.New("empty method")
		}
		if !IsToken(c.Value) {
			return fmt.Errorf("method %q is not a token", c.Value)
		}
		return nil
	case "":
		return errors.New("missing kind")
	default:
		return fmt.Errorf("unknown kind %q (want one of session, header, header-prefix, header-regex, baggage, path, path-prefix, method)", string(c.Kind))
	}
}

func validateSessionValue(v string) error {
	if v == "" {
		return errors.New("empty session key")
	}
	if strings.TrimSpace(v) != v {
		return fmt.Errorf("session key %q has leading or trailing whitespace and could never match", v)
	}
	if hasCTL(v) {
		return fmt.Errorf("session key %q has control characters", v)
	}
	return nil
}

func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return true
		}
	}
	return false
}

// IsToken reports whether s is an RFC 9110 token: the syntax of methods,
// header names and baggage keys.
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !IsTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// IsTokenChar reports whether c is an RFC 9110 tchar.
func IsTokenChar(c byte) bool {
	return tokenTable[c]
}

var tokenTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// ParseFlag turns a command-line value into a condition: "name=value" for
// header kinds and baggage, the plain value for the others.
func ParseFlag(kind Kind, s string) (Condition, error) {
	c := Condition{Kind: kind}
	switch kind {
	case HeaderExact, HeaderPrefix, HeaderRegex, Baggage:
		name, value, ok := strings.Cut(s, "=")
		if !ok {
			return Condition{}, fmt.Errorf("%s: %q: want NAME=VALUE", kind, s)
		}
		c.Name, c.Value = strings.TrimSpace(name), value
	default:
		c.Value = s
	}
	if err := validateOne(c); err != nil {
		return Condition{}, fmt.Errorf("%s: %w", kind, err)
	}
	return c, nil
}
