// Package apiconv converts between the wire types of the Detour API
// (api/detour/v1) and the types the data path works with, so that neither
// side has to import the other's representation.
package apiconv

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// kinds is the one table both directions use, so they cannot drift apart.
var kinds = []struct {
	api   detourv1.Condition_Kind
	match match.Kind
}{
	{detourv1.Condition_KIND_SESSION, match.Session},
	{detourv1.Condition_KIND_HEADER_EXACT, match.HeaderExact},
	{detourv1.Condition_KIND_HEADER_PREFIX, match.HeaderPrefix},
	{detourv1.Condition_KIND_HEADER_REGEX, match.HeaderRegex},
	{detourv1.Condition_KIND_BAGGAGE, match.Baggage},
	{detourv1.Condition_KIND_PATH_EXACT, match.PathExact},
	{detourv1.Condition_KIND_PATH_PREFIX, match.PathPrefix},
	{detourv1.Condition_KIND_METHOD, match.Method},
}

// KindFromProto maps an API condition kind to the matcher's kind.
func KindFromProto(k detourv1.Condition_Kind) (match.Kind, error) {
	for _, e := range kinds {
		if e.api == k {
			return e.match, nil
		}
	}
	return "", fmt.Errorf("unknown condition kind %v", k)
}

// KindToProto maps a matcher kind to the API's.
func KindToProto(k match.Kind) (detourv1.Condition_Kind, error) {
	for _, e := range kinds {
		if e.match == k {
			return e.api, nil
		}
	}
	return detourv1.Condition_KIND_UNSPECIFIED, fmt.Errorf("unknown condition kind %q", k)
}

// ConditionFromProto converts one API condition.
func ConditionFromProto(c *detourv1.Condition) (match.Condition, error) {
	if c == nil {
		return match.Condition{}, fmt.Errorf("empty condition")
	}
	k, err := KindFromProto(c.GetKind())
	if err != nil {
		return match.Condition{}, err
	}
	return match.Condition{Kind: k, Name: c.GetName(), Value: c.GetValue()}, nil
}

// ConditionToProto converts one matcher condition.
func ConditionToProto(c match.Condition) (*detourv1.Condition, error) {
	k, err := KindToProto(c.Kind)
	if err != nil {
		return nil, err
	}
	return &detourv1.Condition{Kind: k, Name: c.Name, Value: c.Value}, nil
}

// ConditionsFromProto converts a list, naming the position of the first bad one.
func ConditionsFromProto(cs []*detourv1.Condition) ([]match.Condition, error) {
	out := make([]match.Condition, 0, len(cs))
	for i, c := range cs {
		mc, err := ConditionFromProto(c)
		if err != nil {
			return nil, fmt.Errorf("condition %d: %w", i+1, err)
		}
		out = append(out, mc)
	}
	return out, nil
}

// ConditionsToProto converts a list, naming the position of the first bad one.
func ConditionsToProto(cs []match.Condition) ([]*detourv1.Condition, error) {
	out := make([]*detourv1.Condition, 0, len(cs))
	for i, c := range cs {
		ac, err := ConditionToProto(c)
		if err != nil {
			return nil, fmt.Errorf("condition %d: %w", i+1, err)
		}
		out = append(out, ac)
	}
	return out, nil
}

// DescribeSpec is the human form of what an intercept selects, as the CLI
// takes it: its request conditions (or "l4") and its source filter.
func DescribeSpec(spec *detourv1.InterceptSpec) string {
	var parts []string
	if spec.GetL4() {
		parts = append(parts, "l4")
	} else if conds, err := ConditionsFromProto(spec.GetMatch()); err != nil {
		parts = append(parts, "("+err.Error()+")")
	} else {
		parts = append(parts, match.Describe(conds))
	}
	for _, p := range spec.GetSourcePods() {
		parts = append(parts, "from-pod="+p)
	}
	for _, ns := range spec.GetSourceNamespaces() {
		parts = append(parts, "from-namespace="+ns)
	}
	if sel := spec.GetSourceSelector(); len(sel) > 0 {
		keys := slices.Sorted(maps.Keys(sel))
		for _, k := range keys {
			parts = append(parts, "from-label="+k+"="+sel[k])
		}
	}
	return strings.Join(parts, " & ")
}

// DescribeDestination is where an intercept sends, as the CLI shows it:
// HOST:PORT, or pods by label ("pods app=x:8080"; port "-" for the
// service's target port).
func DescribeDestination(spec *detourv1.InterceptSpec) string {
	dp := spec.GetDestinationPods()
	if dp == nil {
		return spec.GetDestination()
	}
	keys := slices.Sorted(maps.Keys(dp.GetLabels()))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + dp.GetLabels()[k]
	}
	port := "-"
	if dp.GetPort() != 0 {
		port = fmt.Sprint(dp.GetPort())
	}
	return "pods " + strings.Join(parts, ",") + ":" + port
}
