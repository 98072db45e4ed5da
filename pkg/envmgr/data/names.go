package data

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// BranchName is the name of what an environment's data entry makes (the
// branch's workload, Service and Secret; a seed job):
// <entry>-<environment>, shortened as envmgr.ForkName shortens a fork's
// name, so that it is a DNS-1123 label. Validate keeps it from meeting a
// fork's name.
func BranchName(entry, env string) string {
	return label(entry + "-" + env)
}

// JobName is the name of a branch's restore Job.
func JobName(entry, env string) string {
	return label(entry + "-" + env + "-restore")
}

// label shortens s to a DNS-1123 label: past 63 characters, the first 52,
// '-' and 10 hex digits of its SHA-256.
func label(s string) string {
	const maxName = 63
	if len(s) <= maxName {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	head := s[:maxName-11]
	for len(head) > 0 && head[len(head)-1] == '-' {
		head = head[:len(head)-1]
	}
	return fmt.Sprintf("%s-%s", head, hex.EncodeToString(sum[:])[:10])
}
