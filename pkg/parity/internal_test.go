package parity

import "testing"

func TestSubstituteNamespace(t *testing.T) {
	const p = nsPlaceholder
	tests := []struct{ in, ns, want string }{
		{"orders.staging.svc", "staging", "orders." + p + ".svc"},
		{"http://orders.staging.svc.cluster.local:8080/x", "staging", "http://orders." + p + ".svc.cluster.local:8080/x"},
		{"staging", "staging", p},
		{"web-staging", "staging", "web-" + p},
		{"stagingdb", "staging", "stagingdb"}, // part of a longer name
		{"prestaging.svc", "staging", "prestaging.svc"},
		{"staging2", "staging", "staging2"},
		{"a staging b staging", "staging", "a " + p + " b " + p},
		{"team-a", "team-a", p},
		{"team-ab", "team-a", "team-ab"},
		{"", "x", ""},
	}
	for _, tt := range tests {
		if got := substituteNamespace(tt.in, tt.ns); got != tt.want {
			t.Errorf("substituteNamespace(%q, %q) = %q, want %q", tt.in, tt.ns, got, tt.want)
		}
	}
}

func TestDefaultPullPolicy(t *testing.T) {
	for img, want := range map[string]string{
		"nginx":                       "Always",
		"nginx:latest":                "Always",
		"nginx:1.27":                  "IfNotPresent",
		"registry:5000/app":           "Always",
		"registry:5000/app:v2":        "IfNotPresent",
		"app@sha256:0123456789abcdef": "IfNotPresent",
	} {
		if got := defaultPullPolicy(img); got != want {
			t.Errorf("defaultPullPolicy(%q) = %s, want %s", img, got, want)
		}
	}
}

func TestCategorize(t *testing.T) {
	const c = "/spec/template/spec/containers/app"
	tests := []struct {
		kind, path, summary string
		want                Category
	}{
		{"Deployment", "", "", CategoryPresence},
		{"Deployment", c, "app:1", CategoryPresence},
		{"Deployment", "/spec/template/spec/initContainers/init", "", CategoryPresence},
		{"Deployment", c + "/image", "", CategoryImage},
		{"Deployment", c + "/resources/limits/cpu", "", CategoryResources},
		{"Deployment", c + "/livenessProbe/periodSeconds", "", CategoryProbes},
		{"Deployment", c + "/ports/80-TCP", "", CategoryNetwork},
		{"Deployment", c + "/env/A/value", "", CategoryConfig},
		{"Deployment", c + "/env/A/valueFrom/secretKeyRef/name", "", CategorySecret},
		{"Deployment", c + "/env/A", "from Secret db, key pw", CategorySecret},
		{"Deployment", c + "/envFrom/secretRef:x", "", CategorySecret},
		{"Deployment", "/spec/template/spec/volumes/v", `{"secret":{"secretName":"x"}}`, CategorySecret},
		{"Deployment", "/spec/template/spec/volumes/v/secret/secretName", "", CategorySecret},
		{"Deployment", "/spec/replicas", "", CategoryReplicas},
		{"Deployment", "/runtime/containers/app/imageDigests", "", CategoryImage},
		{"Deployment", "/runtime/containers/app/restarts", "", CategoryRuntime},
		{"CronJob", "/spec/jobTemplate/spec/template/spec/containers/app/image", "", CategoryImage},
		{"ConfigMap", "/data/x", "", CategoryConfig},
		{"Secret", "/data/x", "", CategorySecret},
		{"Secret", "/metadata/labels/x", "", CategoryConfig},
		{"Service", "/spec/ports/80-TCP/targetPort", "", CategoryNetwork},
		{"NetworkPolicy", "/spec/ingress/abcd1234", "", CategoryNetwork},
		{"HorizontalPodAutoscaler", "/spec/maxReplicas", "", CategoryReplicas},
		{"PodDisruptionBudget", "/spec/minAvailable", "", CategoryReplicas},
		{NodesKind, "/kernelVersions", "", CategoryRuntime},
	}
	for _, tt := range tests {
		if got := categorize(tt.kind, tt.path, tt.summary); got != tt.want {
			t.Errorf("categorize(%s, %s, %q) = %s, want %s", tt.kind, tt.path, tt.summary, got, tt.want)
		}
	}
}
