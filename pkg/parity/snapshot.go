package parity

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"

	"sigs.k8s.io/yaml"
)

// Snapshot file identity: a file says what it is, so a manifest is never
// read as a snapshot by mistake, and a later format can be told apart.
const (
	SnapshotAPIVersion = "parity.detour.dev/v1alpha1"
	SnapshotKind       = "ParitySnapshot"
)

// Snapshot is one side, normalized: what Diff compares, and what
// `detour parity snapshot` writes.
type Snapshot struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Source says where the side was read from, for the report.
	Source string `json:"source"`
	// Namespace is the side's namespace ("" when manifests name none): its
	// name inside values is not a difference (rule namespace-name).
	Namespace string `json:"namespace,omitempty"`
	// SecretValues says whether and how Secret values can be compared.
	SecretValues SecretValues `json:"secretValues"`
	// Unread are kinds the side could not read (forbidden): they are not
	// compared on either side.
	Unread []string `json:"unread,omitempty"`
	// Skipped counts objects of kinds parity does not compare, by kind.
	Skipped map[string]int `json:"skipped,omitempty"`
	// Runtime says whether what runs was read (--runtime).
	Runtime bool     `json:"runtime,omitempty"`
	Objects []Object `json:"objects"`
}

// SecretValues says how a snapshot's Secret values are kept.
type SecretValues struct {
	// Fingerprint is FingerprintHMAC, or FingerprintNone: keys only.
	Fingerprint string `json:"fingerprint"`
	// KeyID names the HMAC key (an HMAC of a fixed text under it): values
	// of two snapshots compare only when their key ids are equal.
	KeyID string `json:"keyID,omitempty"`
}

// Object is one object's fields, flattened.
type Object struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Fields maps a path (JSON-pointer-like, list entries by key) to a
	// value. Secret values are fingerprints or UnknownSecretValue.
	Fields map[string]string `json:"fields,omitempty"`
	// Elements are the keyed list entries (a container, an env var, a
	// port...) with a one-line summary: an entry on one side only is one
	// difference, not one per field below it.
	Elements map[string]string `json:"elements,omitempty"`
}

// Key is the object's kind and name.
func (o *Object) Key() ObjectKey { return ObjectKey{Kind: o.Kind, Name: o.Name} }

func (s *Snapshot) sortObjects() {
	sort.Slice(s.Objects, func(i, j int) bool { return s.Objects[i].Key().less(s.Objects[j].Key()) })
}

// WriteSnapshot writes s as YAML.
func WriteSnapshot(w io.Writer, s *Snapshot) error {
	j, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	_, err = w.Write(y)
	return err
}

// IsSnapshot says whether b is a snapshot file (and not manifests): its
// first document has apiVersion and kind of one.
func IsSnapshot(b []byte) bool {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(firstDocument(b), &head); err != nil {
		return false
	}
	return head.Kind == SnapshotKind
}

// firstDocument cuts b at the first document separator after content.
func firstDocument(b []byte) []byte {
	for _, sep := range [][]byte{[]byte("\n---\n"), []byte("\n---\r\n")} {
		if i := bytes.Index(b, sep); i >= 0 {
			if len(bytes.TrimSpace(b[:i])) > 0 {
				return b[:i]
			}
		}
	}
	return b
}

// ReadSnapshot parses a snapshot file, refusing unknown fields and other
// versions.
func ReadSnapshot(b []byte) (*Snapshot, error) {
	var s Snapshot
	if err := yaml.UnmarshalStrict(b, &s); err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	if s.Kind != SnapshotKind {
		return nil, fmt.Errorf("read snapshot: kind %q, want %s", s.Kind, SnapshotKind)
	}
	if s.APIVersion != SnapshotAPIVersion {
		return nil, fmt.Errorf("read snapshot: apiVersion %q, want %s (take it again with this detour)", s.APIVersion, SnapshotAPIVersion)
	}
	switch s.SecretValues.Fingerprint {
	case FingerprintHMAC, FingerprintNone:
	default:
		return nil, fmt.Errorf("read snapshot: secretValues.fingerprint %q, want %s or %s", s.SecretValues.Fingerprint, FingerprintHMAC, FingerprintNone)
	}
	seen := map[ObjectKey]bool{}
	for i := range s.Objects {
		o := &s.Objects[i]
		if o.Kind == "" || o.Name == "" {
			return nil, fmt.Errorf("read snapshot: object %d has no kind or name", i)
		}
		if seen[o.Key()] {
			return nil, fmt.Errorf("read snapshot: %s appears twice", o.Key())
		}
		seen[o.Key()] = true
	}
	s.sortObjects()
	return &s, nil
}
