package parity

import (
	"path"
	"strings"
)

// Paths are JSON pointers (RFC 6901): "/"-separated segments, with "~" and
// "/" inside a segment written "~0" and "~1". A list entry's segment is its
// key (a container's name, "8080-TCP" for a port), a set member's the first
// eight hex digits of a hash of its value.

// escapeSegment writes one segment of a pointer.
func escapeSegment(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// SplitPath splits a pointer into its escaped segments; "" and "/" have
// none.
func SplitPath(p string) []string {
	p = strings.TrimPrefix(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// MatchPath says whether pattern matches p or one of its ancestors:
// patterns are pointers whose segments may be globs (path.Match: *, ?,
// [...]) and "**", which matches any number of segments. Both are written
// escaped.
func MatchPath(pattern, p string) bool {
	return matchSegments(SplitPath(pattern), SplitPath(p), true)
}

// matchSegments matches pattern against path; with prefix, pattern may
// match an ancestor of path.
func matchSegments(pat, segs []string, prefix bool) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(segs); i++ {
				if matchSegments(pat[1:], segs[i:], prefix) {
					return true
				}
			}
			return false
		}
		if len(segs) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], segs[0]); !ok {
			return false
		}
		pat, segs = pat[1:], segs[1:]
	}
	return prefix || len(segs) == 0
}

// ValidPattern checks a path pattern's globs.
func ValidPattern(pattern string) error {
	for _, s := range SplitPath(pattern) {
		if _, err := path.Match(s, ""); err != nil {
			return err
		}
	}
	return nil
}

func unescapeSegment(s string) string {
	if !strings.Contains(s, "~") {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
}
