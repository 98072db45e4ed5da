package parity

import "fmt"

// Noise rules: each removes one kind of difference that is not drift. They
// are named so that docs/parity.md, the tests (one fixture pair per rule,
// compared with the rule on and off) and Options.KeepNoise agree.
const (
	RuleStatus           = "status"            // status is what runs, not what is declared
	RuleManagedFields    = "managed-fields"    // metadata.managedFields
	RuleIDs              = "ids"               // uid, resourceVersion, generation, selfLink, generateName
	RuleTimestamps       = "timestamps"        // creation and deletion times, a template's restartedAt
	RuleOwnerReferences  = "owner-references"  // metadata.ownerReferences
	RuleLastApplied      = "last-applied"      // kubectl's last-applied-configuration annotation
	RuleToolMetadata     = "tool-metadata"     // what Helm, Argo CD and Flux write to track what they applied
	RuleRevisions        = "revisions"         // revision annotations of Deployments and DaemonSets
	RuleGeneratedLabels  = "generated-labels"  // pod-template-hash, controller-revision-hash, a Job's controller-uid and its selector
	RuleAllocated        = "allocated"         // what the cluster assigns: cluster IPs, node ports
	RuleGeneratedObjects = "generated-objects" // objects the cluster makes: kube-root-ca.crt, a CronJob's Jobs, Helm release and token Secrets
	RuleEnvironmentForks = "environment-forks" // workloads an environment forked: they belong to env/NAME, not to the namespace
	RuleServerDefaults   = "server-defaults"   // a field at the API server's default equals the field absent
	RuleEmptyValues      = "empty-values"      // null, {}, [] and "" in a spec equal the field absent
	RuleListOrder        = "list-order"        // lists whose order means nothing are keyed or sorted
	RuleQuantities       = "quantities"        // 100m equals 0.1, 1Gi equals 1024Mi
	RuleHPAReplicas      = "hpa-replicas"      // a workload an HPA scales has the HPA's min..max as replicas
	RuleNamespaceName    = "namespace-name"    // each side's namespace name inside values, keys and names is the same reference
	RuleNameHash         = "name-hash"         // kustomize\'s hash suffix on generated ConfigMap and Secret names
)

// NoiseRule describes one rule.
type NoiseRule struct {
	Name string
	Doc  string
}

// NoiseRules lists every rule, in the order docs/parity.md gives them.
var NoiseRules = []NoiseRule{
	{RuleStatus, "status (what runs, not what is declared; --runtime compares what runs)"},
	{RuleManagedFields, "metadata.managedFields"},
	{RuleIDs, "uid, resourceVersion, generation, selfLink, generateName"},
	{RuleTimestamps, "creationTimestamp, deletionTimestamp, deletionGracePeriodSeconds, kubectl.kubernetes.io/restartedAt"},
	{RuleOwnerReferences, "metadata.ownerReferences"},
	{RuleLastApplied, "the kubectl.kubernetes.io/last-applied-configuration annotation (it holds a Secret's data too)"},
	{RuleToolMetadata, "what the tool that applied an object writes to track it: annotations meta.helm.sh/release-name and release-namespace, argocd.argoproj.io/tracking-id; labels kustomize.toolkit.fluxcd.io/name and namespace, helm.toolkit.fluxcd.io/name and namespace (helm template output, for one, has none of them)"},
	{RuleRevisions, "deployment.kubernetes.io/revision and deprecated.daemonset.template.generation annotations"},
	{RuleGeneratedLabels, "labels pod-template-hash, controller-revision-hash, controller-uid, job-name (and batch.kubernetes.io/ ones), and the selector the API server generates for a Job"},
	{RuleAllocated, "a Service's clusterIP (unless None), clusterIPs, nodePort and healthCheckNodePort"},
	{RuleGeneratedObjects, "ConfigMap kube-root-ca.crt, Jobs owned by a CronJob, Secrets of type helm.sh/release.v1 and kubernetes.io/service-account-token"},
	{RuleEnvironmentForks, "Deployments and StatefulSets labelled " + EnvironmentLabel + ": the forks of Detour's environments, which come and go with them; a side env/NAME shows them in place of what they fork"},
	{RuleServerDefaults, "a field at the value the API server defaults it to is the same as the field absent (a manifest against a live object)"},
	{RuleEmptyValues, "null, {}, [] and, in a spec, \"\" are the same as absent"},
	{RuleListOrder, "containers, env, ports, volumes, mounts... keyed by name; tolerations, NetworkPolicy rules and peers, HPA metrics... compared as sets"},
	{RuleQuantities, "resource quantities compared as quantities: 100m = 0.1, 1Gi = 1024Mi"},
	{RuleHPAReplicas, "a workload an HPA scales: replicas compared as the HPA's min..max, not the count of the moment"},
	{RuleNamespaceName, "each side's own namespace name inside values, keys and object names: orders.staging.svc = orders.prod.svc"},
	{RuleNameHash, "the hash suffix kustomize's generators give a ConfigMap or Secret (web-config-8h2k9c5fmt), in its name and in references to it: a generated object whose content changed is reported as changed, not as two objects"},
}

// ruleSet says which rules are on.
type ruleSet map[string]bool

func newRuleSet(keep []string) (ruleSet, error) {
	rs := ruleSet{}
	for _, r := range NoiseRules {
		rs[r.Name] = true
	}
	for _, k := range keep {
		if _, ok := rs[k]; !ok {
			return nil, fmt.Errorf("unknown noise rule %q", k)
		}
		rs[k] = false
	}
	return rs, nil
}

func (rs ruleSet) on(name string) bool { return rs[name] }
