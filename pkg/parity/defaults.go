package parity

import (
	"strings"
)

// fieldDefault is a value the API server fills in when a field is absent
// (rule server-defaults): a manifest that leaves it out and a live object
// that has it say the same thing. Only the defaults of the kinds compared
// are listed; the envtest test in pkg/parity/live applies manifests and
// diffs them against what the API server stored, so a missing one shows.
type fieldDefault struct {
	kinds   []string // nil: every kind
	pattern []string // raw segments; "*" one segment (a glob), "**" any number
	value   string   // the default, as cleaned; unused when is is set
	// is decides when the default depends on the rest of the object;
	// parent is the raw map holding the field.
	is func(v any, parent map[string]any) bool
}

var (
	podKinds  = []string{"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job"}
	jobKinds  = []string{"Job", "CronJob"}
	pod       = "**/template/spec/"
	container = "**/template/spec/*ontainers/*/"
)

func d(kinds []string, pattern, value string) fieldDefault {
	return fieldDefault{kinds: kinds, pattern: strings.Split(pattern, "/"), value: value}
}

func dFunc(kinds []string, pattern string, is func(v any, parent map[string]any) bool) fieldDefault {
	return fieldDefault{kinds: kinds, pattern: strings.Split(pattern, "/"), is: is}
}

func kinds(k ...string) []string { return k }

var fieldDefaults = []fieldDefault{
	d(kinds("Deployment", "StatefulSet"), "spec/replicas", "1"),
	d(kinds("Deployment", "StatefulSet", "DaemonSet"), "spec/revisionHistoryLimit", "10"),
	d(kinds("Deployment"), "spec/progressDeadlineSeconds", "600"),
	d(kinds("Deployment"), "spec/strategy/type", "RollingUpdate"),
	d(kinds("Deployment"), "spec/strategy/rollingUpdate/maxUnavailable", "25%"),
	d(kinds("Deployment"), "spec/strategy/rollingUpdate/maxSurge", "25%"),
	d(kinds("StatefulSet"), "spec/podManagementPolicy", "OrderedReady"),
	d(kinds("StatefulSet", "DaemonSet"), "spec/updateStrategy/type", "RollingUpdate"),
	d(kinds("StatefulSet"), "spec/updateStrategy/rollingUpdate/partition", "0"),
	d(kinds("StatefulSet"), "spec/persistentVolumeClaimRetentionPolicy/whenDeleted", "Retain"),
	d(kinds("StatefulSet"), "spec/persistentVolumeClaimRetentionPolicy/whenScaled", "Retain"),
	d(kinds("StatefulSet"), "spec/volumeClaimTemplates/*/spec/volumeMode", "Filesystem"),
	d(kinds("DaemonSet"), "spec/updateStrategy/rollingUpdate/maxUnavailable", "1"),
	d(kinds("DaemonSet"), "spec/updateStrategy/rollingUpdate/maxSurge", "0"),

	d(kinds("CronJob"), "spec/concurrencyPolicy", "Allow"),
	d(kinds("CronJob"), "spec/suspend", "false"),
	d(kinds("CronJob"), "spec/successfulJobsHistoryLimit", "3"),
	d(kinds("CronJob"), "spec/failedJobsHistoryLimit", "1"),
	d(jobKinds, "**/spec/backoffLimit", "6"),
	d(jobKinds, "**/spec/completionMode", "NonIndexed"),
	d(jobKinds, "**/spec/suspend", "false"),
	d(jobKinds, "**/spec/parallelism", "1"),
	d(jobKinds, "**/spec/podReplacementPolicy", "TerminatingOrFailed"),
	d(jobKinds, "**/spec/manualSelector", "false"),
	// completions is 1 only when parallelism is not set either.
	dFunc(jobKinds, "**/spec/completions", func(v any, parent map[string]any) bool {
		p := scalarOr(parent["parallelism"], "1")
		return v == "1" && p == "1"
	}),

	d(podKinds, pod+"restartPolicy", "Always"),
	d(podKinds, pod+"terminationGracePeriodSeconds", "30"),
	d(podKinds, pod+"dnsPolicy", "ClusterFirst"),
	d(podKinds, pod+"schedulerName", "default-scheduler"),
	d(podKinds, pod+"enableServiceLinks", "true"),
	// serviceAccount is the deprecated name of serviceAccountName: the API
	// server copies one into the other.
	dFunc(podKinds, pod+"serviceAccount", func(v any, parent map[string]any) bool {
		return v == scalarOr(parent["serviceAccountName"], "")
	}),
	d(podKinds, container+"terminationMessagePath", "/dev/termination-log"),
	d(podKinds, container+"terminationMessagePolicy", "File"),
	dFunc(podKinds, container+"imagePullPolicy", func(v any, parent map[string]any) bool {
		img, _ := parent["image"].(string)
		return v == defaultPullPolicy(img)
	}),
	d(podKinds, container+"ports/*/protocol", "TCP"),
	d(podKinds, container+"*Probe/timeoutSeconds", "1"),
	d(podKinds, container+"*Probe/periodSeconds", "10"),
	d(podKinds, container+"*Probe/successThreshold", "1"),
	d(podKinds, container+"*Probe/failureThreshold", "3"),
	d(podKinds, container+"*Probe/httpGet/scheme", "HTTP"),
	d(podKinds, container+"lifecycle/*/httpGet/scheme", "HTTP"),
	d(podKinds, pod+"volumes/*/*/defaultMode", "420"),
	d(podKinds, "**/fieldRef/apiVersion", "v1"),

	d(kinds("Service"), "spec/type", "ClusterIP"),
	d(kinds("Service"), "spec/sessionAffinity", "None"),
	d(kinds("Service"), "spec/ipFamilyPolicy", "SingleStack"),
	d(kinds("Service"), "spec/ipFamilies", `["IPv4"]`),
	d(kinds("Service"), "spec/internalTrafficPolicy", "Cluster"),
	d(kinds("Service"), "spec/externalTrafficPolicy", "Cluster"),
	d(kinds("Service"), "spec/allocateLoadBalancerNodePorts", "true"),
	d(kinds("Service"), "spec/sessionAffinityConfig/clientIP/timeoutSeconds", "10800"),
	d(kinds("Service"), "spec/ports/*/protocol", "TCP"),
	// targetPort is the port when not set.
	dFunc(kinds("Service"), "spec/ports/*/targetPort", func(v any, parent map[string]any) bool {
		return v == scalarOr(parent["port"], "")
	}),

	// policyTypes is Ingress, and Egress too when there are egress rules.
	dFunc(kinds("NetworkPolicy"), "spec/policyTypes", func(v any, parent map[string]any) bool {
		want := `["Ingress"]`
		if eg, _ := parent["egress"].([]any); len(eg) > 0 {
			want = `["Egress","Ingress"]`
		}
		return valueText(v) == want
	}),
	d(kinds("NetworkPolicy"), "**/ports/"+setMember+"/protocol", "TCP"),

	d(kinds("HorizontalPodAutoscaler"), "spec/minReplicas", "1"),
	// No metrics means 80% average CPU utilization.
	d(kinds("HorizontalPodAutoscaler"), "spec/metrics",
		`[{"resource":{"name":"cpu","target":{"averageUtilization":"80","type":"Utilization"}},"type":"Resource"}]`),

	d(kinds("Secret"), "type", "Opaque"),
}

// defaultsByField indexes fieldDefaults by their last segment.
var defaultsByField = func() map[string][]fieldDefault {
	m := map[string][]fieldDefault{}
	for _, fd := range fieldDefaults {
		last := fd.pattern[len(fd.pattern)-1]
		m[last] = append(m[last], fd)
	}
	return m
}()

// isDefault says whether cleaned value v at path is the API server's
// default for it.
func isDefault(kind string, path []string, v any, parent map[string]any) bool {
	for _, fd := range defaultsByField[path[len(path)-1]] {
		if !hasKind(fd.kinds, kind) || !matchSegments(fd.pattern, path, false) {
			continue
		}
		if fd.is != nil {
			if fd.is(v, parent) {
				return true
			}
		} else if valueText(v) == fd.value {
			return true
		}
	}
	return false
}

func hasKind(ks []string, k string) bool {
	if ks == nil {
		return true
	}
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

// valueText is a cleaned value as one string: a scalar itself, anything
// else in canonical JSON.
func valueText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return canonical(v)
}

// defaultPullPolicy is the API server's imagePullPolicy for an image: Always
// for :latest or no tag, else IfNotPresent.
func defaultPullPolicy(image string) string {
	if strings.Contains(image, "@") {
		return "IfNotPresent"
	}
	name := image
	if i := strings.LastIndex(image, "/"); i >= 0 {
		name = image[i+1:]
	}
	tag := ""
	if i := strings.LastIndex(name, ":"); i >= 0 {
		tag = name[i+1:]
	}
	if tag == "" || tag == "latest" {
		return "Always"
	}
	return "IfNotPresent"
}

// literalDefault is the default of the field at a flattened path, when it
// does not depend on the rest of the object: a field present on one side
// only is then reported against the default the other side has.
func literalDefault(kind, path string) (string, bool) {
	segs := SplitPath(path)
	if len(segs) == 0 {
		return "", false
	}
	for i, s := range segs {
		segs[i] = unescapeSegment(s)
	}
	for _, fd := range defaultsByField[segs[len(segs)-1]] {
		if fd.is == nil && hasKind(fd.kinds, kind) && matchSegments(fd.pattern, segs, false) {
			return fd.value, true
		}
	}
	return "", false
}
