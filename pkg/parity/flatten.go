package parity

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// canonical writes a cleaned value as compact JSON with sorted keys: the
// identity of a set member.
func canonical(v any) string {
	var b strings.Builder
	writeCanonical(&b, v)
	return b.String()
}

func writeCanonical(b *strings.Builder, v any) {
	switch x := v.(type) {
	case nil:
		b.WriteString("{}")
	case string:
		q, _ := json.Marshal(x)
		b.Write(q)
	case map[string]any:
		writeCanonicalMap(b, x)
	case *keyedList:
		writeCanonicalMap(b, x.elems)
	case objectSet:
		b.WriteByte('[')
		for i, m := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(m)
		}
		b.WriteByte(']')
	case scalarList:
		q, _ := json.Marshal([]string(x))
		b.Write(q)
	case emptyList:
		b.WriteString("[]")
	}
}

func writeCanonicalMap(b *strings.Builder, m map[string]any) {
	b.WriteByte('{')
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b.WriteByte(',')
		}
		q, _ := json.Marshal(k)
		b.Write(q)
		b.WriteByte(':')
		writeCanonical(b, m[k])
	}
	b.WriteByte('}')
}

// flatten writes a cleaned value's leaves into o under prefix.
func flatten(prefix string, v any, o *Object) {
	switch x := v.(type) {
	case string:
		o.Fields[prefix] = x
	case map[string]any:
		if len(x) == 0 {
			o.Fields[prefix] = "{}"
		}
		for k, e := range x {
			flatten(prefix+"/"+escapeSegment(k), e, o)
		}
	case *keyedList:
		for k, e := range x.elems {
			p := prefix + "/" + escapeSegment(k)
			o.Elements[p] = x.summaries[k]
			if e != nil {
				flatten(p, e, o)
			}
		}
	case objectSet:
		for _, m := range x {
			o.Fields[prefix+"/"+memberID(m)] = m
		}
	case scalarList:
		q, _ := json.Marshal([]string(x))
		o.Fields[prefix] = string(q)
	case emptyList:
		o.Fields[prefix] = "[]"
	}
}

// memberID is a set member's path segment: short, and the same on both
// sides for the same member.
func memberID(canon string) string {
	h := sha256.Sum256([]byte(canon))
	return hex.EncodeToString(h[:4])
}
