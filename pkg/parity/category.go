package parity

import "strings"

// categorize says what a difference at path of an object of kind is
// about. summary is a list entry's summary ("" for a field).
func categorize(kind, path, summary string) Category {
	segs := SplitPath(path)
	if kind == NodesKind {
		return CategoryRuntime
	}
	if len(segs) == 0 {
		return CategoryPresence
	}
	if segs[0] == "runtime" {
		if segs[len(segs)-1] == "imageDigests" {
			return CategoryImage
		}
		return CategoryRuntime
	}
	switch kind {
	case "Secret":
		if segs[0] == "metadata" {
			return CategoryConfig
		}
		return CategorySecret
	case "ConfigMap":
		return CategoryConfig
	case "Service", "Ingress", "NetworkPolicy":
		return CategoryNetwork
	case "HorizontalPodAutoscaler", "PodDisruptionBudget":
		return CategoryReplicas
	}
	if len(segs) == 2 && segs[0] == "spec" && segs[1] == "replicas" {
		return CategoryReplicas
	}
	for i, s := range segs {
		if !containerField(s) || i+1 >= len(segs) {
			continue
		}
		if i+2 == len(segs) {
			return CategoryPresence
		}
		switch segs[i+2] {
		case "image":
			return CategoryImage
		case "resources":
			return CategoryResources
		case "livenessProbe", "readinessProbe", "startupProbe":
			return CategoryProbes
		case "ports":
			return CategoryNetwork
		}
		break
	}
	for _, s := range segs {
		if secretSegment(s) {
			return CategorySecret
		}
	}
	if strings.HasPrefix(summary, "from Secret ") || strings.HasPrefix(summary, `{"secret":`) {
		return CategorySecret
	}
	return CategoryConfig
}
