package parity

import (
	"strings"
)

// How a list is compared (rule list-order).
type listMode int

const (
	ordered listMode = iota // order is meaning: args, command, ordered objects by index
	keyed                   // entries identified by a key: containers by name...
	set                     // order means nothing: tolerations, NetworkPolicy rules...
)

type listRule struct {
	mode      listMode
	key       func(map[string]any) string
	keyFields []string // fields the key is made of, dropped from the entry
	summary   func(map[string]any) string
}

// summarize is the one line an entry on one side only is reported with.
func (r listRule) summarize(cv any) string {
	m, _ := cv.(map[string]any)
	if r.summary != nil {
		return r.summary(m)
	}
	if m == nil {
		return ""
	}
	return canonical(m)
}

func byField(f string) listRule {
	return listRule{mode: keyed, keyFields: []string{f}, key: func(m map[string]any) string {
		return scalarOr(m[f], "")
	}}
}

func scalarOr(v any, def string) string {
	switch v.(type) {
	case nil, map[string]any, []any:
		return def
	}
	if s := scalar(v); s != "" {
		return s
	}
	return def
}

// portKey keys a port by number and protocol: "8080-TCP".
func portKey(numberField string) listRule {
	return listRule{mode: keyed, keyFields: []string{numberField, "protocol"}, key: func(m map[string]any) string {
		n := scalarOr(m[numberField], "")
		if n == "" {
			return ""
		}
		return n + "-" + scalarOr(m["protocol"], "TCP")
	}}
}

var (
	containersRule = listRule{mode: keyed, keyFields: []string{"name"},
		key: func(m map[string]any) string { return scalarOr(m["name"], "") },
		summary: func(m map[string]any) string {
			if img, ok := m["image"].(string); ok {
				return img
			}
			return "(no image)"
		}}
	envRule = listRule{mode: keyed, keyFields: []string{"name"},
		key:     func(m map[string]any) string { return scalarOr(m["name"], "") },
		summary: envSummary}
	envFromRule = listRule{mode: keyed, keyFields: []string{"configMapRef", "secretRef", "prefix"},
		key: func(m map[string]any) string {
			k := ""
			for _, ref := range []string{"configMapRef", "secretRef"} {
				if r, ok := m[ref].(map[string]any); ok {
					k = ref + ":" + scalarOr(r["name"], "")
				}
			}
			if k == "" {
				return ""
			}
			if p := scalarOr(m["prefix"], ""); p != "" {
				k += ":" + p
			}
			return k
		},
		summary: func(m map[string]any) string { return "" }}
	claimTemplateRule = listRule{mode: keyed, keyFields: []string{"metadata.name"},
		key: func(m map[string]any) string {
			meta, _ := m["metadata"].(map[string]any)
			return scalarOr(meta["name"], "")
		}}
	setRule = listRule{mode: set}
)

// envSummary is an env var in one line: its literal value, or where it
// comes from. Secret refs name the Secret and key, never a value.
func envSummary(m map[string]any) string {
	if v, ok := m["value"].(string); ok {
		return v
	}
	vf, _ := m["valueFrom"].(map[string]any)
	ref := func(kind string) (string, bool) {
		r, ok := vf[kind].(map[string]any)
		if !ok {
			return "", false
		}
		return scalarOr(r["name"], "?") + ", key " + scalarOr(r["key"], "?"), true
	}
	if s, ok := ref("secretKeyRef"); ok {
		return "from Secret " + s
	}
	if s, ok := ref("configMapKeyRef"); ok {
		return "from ConfigMap " + s
	}
	if r, ok := vf["fieldRef"].(map[string]any); ok {
		return "from field " + scalarOr(r["fieldPath"], "?")
	}
	if r, ok := vf["resourceFieldRef"].(map[string]any); ok {
		return "from resource " + scalarOr(r["resource"], "?")
	}
	return ""
}

// containerFields are the lists of containers in a pod spec.
func containerField(s string) bool {
	return s == "containers" || s == "initContainers" || s == "ephemeralContainers"
}

// listRuleFor says how the list at path of an object of kind is compared.
// A list not named here keeps its order.
func listRuleFor(kind string, path []string) listRule {
	n := len(path)
	field := path[n-1]
	parent := ""
	if n >= 2 {
		parent = path[n-2]
	}
	switch field {
	case "containers", "initContainers", "ephemeralContainers":
		return containersRule
	case "env":
		return envRule
	case "envFrom":
		return envFromRule
	case "volumes", "imagePullSecrets", "resourceClaims":
		return byField("name")
	case "volumeMounts":
		return byField("mountPath")
	case "volumeDevices":
		return byField("devicePath")
	case "hostAliases":
		return byField("ip")
	case "resizePolicy":
		return byField("resourceName")
	case "items":
		if parent == "configMap" || parent == "secret" || parent == "downwardAPI" {
			return byField("path")
		}
	case "volumeClaimTemplates":
		return claimTemplateRule
	case "ports":
		switch {
		case kind == "Service" && n == 2:
			return portKey("port")
		case n >= 3 && containerField(path[n-3]):
			return portKey("containerPort")
		case kind == "NetworkPolicy":
			return setRule
		}
	case "rules":
		if kind == "Ingress" && n == 2 {
			r := byField("host")
			return r
		}
	case "paths":
		if kind == "Ingress" {
			return byField("path")
		}
	case "ingress", "egress", "from", "to", "policyTypes", "except":
		if kind == "NetworkPolicy" {
			return setRule
		}
	case "tls", "hosts":
		if kind == "Ingress" {
			return setRule
		}
	case "metrics", "policies":
		if kind == "HorizontalPodAutoscaler" {
			return setRule
		}
	case "tolerations", "topologySpreadConstraints", "readinessGates", "matchExpressions", "nodeSelectorTerms",
		"requiredDuringSchedulingIgnoredDuringExecution", "preferredDuringSchedulingIgnoredDuringExecution",
		"finalizers", "accessModes", "add", "drop", "values", "matchLabelKeys", "mismatchLabelKeys",
		"imageDigests", "kubeletVersions", "kernelVersions", "osImages", "containerRuntimeVersions":
		return setRule
	}
	return listRule{}
}

// secretSegment says whether a path segment means the value comes from a
// Secret: an env var's secretKeyRef, an envFrom's secretRef, a secret
// volume.
func secretSegment(s string) bool {
	return s == "secretKeyRef" || s == "secretRef" || s == "secret" || strings.HasPrefix(s, "secretRef:")
}

// setMember is the path segment of a set's member while it is normalized
// (defaults match it); flattened, a member's segment is its memberID.
const setMember = "@"
