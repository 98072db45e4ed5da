package envmgr

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// maxName is the longest name of an object the environment makes: a DNS-1123
// label, as pod names and Services' selectors need.
const maxName = 63

// ForkName is the name of an environment's fork of a workload:
// <workload>-<environment>, shortened with a hash when longer than a label.
func ForkName(workload, env string) string {
	return label(workload + "-" + env)
}

// InterceptName is the name of the intercept an environment owns for one
// service port: <environment>-<service>-<port> for the session route, with
// "-forks" for the route between forks.
func InterceptName(env, service string, port int32, kind v1alpha1.RouteKind) string {
	n := env + "-" + service + "-" + strconv.Itoa(int(port))
	if kind == v1alpha1.RouteForks {
		n += "-forks"
	}
	return label(n)
}

// label shortens s to a DNS-1123 label: past 63 characters, the first 52,
// '-' and 10 hex digits of its SHA-256, so two long names stay distinct.
func label(s string) string {
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

// forkLabelValue is the value a fork's pods carry for a label that a
// baseline Service selects on: the baseline's value with the environment's
// name appended, so that no baseline Service selects the fork while a human
// can still read where it comes from. Label values have the syntax of a
// DNS-1123 label, with '_' and '.' and upper case allowed too.
func forkLabelValue(value, env string) string {
	if value == "" {
		return label(env)
	}
	return label(value + "-" + env)
}
