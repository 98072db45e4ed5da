package parity

import (
	"fmt"
	"sort"
	"strings"
)

// Category is what kind of difference a field is; severities are set per
// category.
type Category string

// The categories, as the policy file and the JSON report name them.
const (
	CategoryImage     Category = "image"     // container images, and running digests
	CategoryConfig    Category = "config"    // env literals, ConfigMaps, command, volumes, scheduling, labels...
	CategorySecret    Category = "secret"    // Secrets, and env or volumes fed by one
	CategoryResources Category = "resources" // requests and limits
	CategoryProbes    Category = "probes"    // liveness, readiness, startup
	CategoryNetwork   Category = "network"   // ports, Services, Ingress, NetworkPolicies
	CategoryReplicas  Category = "replicas"  // replicas, HPAs, PDBs
	CategoryPresence  Category = "presence"  // an object or a container on one side only
	CategoryRuntime   Category = "runtime"   // what runs (--runtime): restarts, pods, nodes
)

// Categories lists every category, in the order reports count them.
var Categories = []Category{CategoryPresence, CategoryImage, CategorySecret, CategoryConfig,
	CategoryResources, CategoryProbes, CategoryNetwork, CategoryReplicas, CategoryRuntime}

// ParseCategory checks a category name.
func ParseCategory(s string) (Category, error) {
	for _, c := range Categories {
		if string(c) == s {
			return c, nil
		}
	}
	return "", fmt.Errorf("unknown category %q (want %s)", s, joinCategories())
}

func joinCategories() string {
	names := make([]string, len(Categories))
	for i, c := range Categories {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// Severity ranks a difference. --fail-on names the lowest that fails.
type Severity string

// Severities, lowest first. SeverityNone is only a --fail-on value: nothing
// fails.
const (
	SeverityInfo   Severity = "info"
	SeverityLow    Severity = "low"
	SeverityMedium Severity = "medium"
	SeverityHigh   Severity = "high"
	SeverityNone   Severity = "none"
)

var severityRank = map[Severity]int{SeverityInfo: 1, SeverityLow: 2, SeverityMedium: 3, SeverityHigh: 4, SeverityNone: 5}

// ParseSeverity checks a severity name; none is accepted only when
// allowNone (for --fail-on).
func ParseSeverity(s string, allowNone bool) (Severity, error) {
	sev := Severity(s)
	if _, ok := severityRank[sev]; ok && (allowNone || sev != SeverityNone) {
		return sev, nil
	}
	want := "info, low, medium, high"
	if allowNone {
		want += " or none"
	}
	return "", fmt.Errorf("unknown severity %q (want %s)", s, want)
}

// AtLeast says whether s is at or above min.
func (s Severity) AtLeast(min Severity) bool { return severityRank[s] >= severityRank[min] }

// DefaultSeverities are the severities of a policy that sets none: what
// breaks production when it differs is high; counts and what runs are not.
var DefaultSeverities = map[Category]Severity{
	CategoryPresence:  SeverityHigh,
	CategoryImage:     SeverityHigh,
	CategorySecret:    SeverityHigh,
	CategoryConfig:    SeverityMedium,
	CategoryResources: SeverityMedium,
	CategoryProbes:    SeverityMedium,
	CategoryNetwork:   SeverityMedium,
	CategoryReplicas:  SeverityLow,
	CategoryRuntime:   SeverityInfo,
}

// DefaultFailOn is --fail-on when neither the flag nor the policy sets it.
const DefaultFailOn = SeverityLow

// Kinds compared, and where their fields live. Anything else in a manifest
// is counted as skipped; a live side lists only these.
var Kinds = []string{
	"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job",
	"ConfigMap", "Secret", "Service", "Ingress", "NetworkPolicy",
	"HorizontalPodAutoscaler", "PodDisruptionBudget",
}

// NodesKind is the synthetic object a live side with --runtime adds: the
// versions of the nodes its pods run on.
const NodesKind = "Nodes"

func comparedKind(k string) bool {
	if k == NodesKind {
		return true
	}
	for _, c := range Kinds {
		if c == k {
			return true
		}
	}
	return false
}

// ObjectKey names an object of one side: namespaces are the sides, so kind
// and name are enough.
type ObjectKey struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

func (k ObjectKey) String() string { return k.Kind + "/" + k.Name }

func (k ObjectKey) less(o ObjectKey) bool {
	if k.Kind != o.Kind {
		return k.Kind < o.Kind
	}
	return k.Name < o.Name
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
