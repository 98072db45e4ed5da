package parity

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Options say how Normalize reads one side.
type Options struct {
	// Source says where the objects came from, for the report.
	Source string
	// Namespace is the side's namespace; "" takes the one namespace the
	// objects name, if they name exactly one.
	Namespace string
	// Fingerprint turns Secret values into HMACs; nil keeps keys only.
	Fingerprint *Fingerprinter
	// Runtime says the objects carry what runs (see pkg/parity/live).
	Runtime bool
	// Unread are kinds the side could not read.
	Unread []string
	// KeepNoise turns noise rules off, by name (tests, and finding out
	// why something is not reported).
	KeepNoise []string
}

// Normalize turns the objects of one side, as decoded from JSON or YAML
// (map[string]any, []any, strings, numbers, bools), into a Snapshot. The
// objects are not changed. An error names the object, never a value.
func Normalize(objs []map[string]any, o Options) (*Snapshot, error) {
	rules, err := newRuleSet(o.KeepNoise)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{
		APIVersion:   SnapshotAPIVersion,
		Kind:         SnapshotKind,
		Source:       o.Source,
		Namespace:    o.Namespace,
		SecretValues: SecretValues{Fingerprint: FingerprintNone},
		Runtime:      o.Runtime,
		Objects:      []Object{},
	}
	if o.Fingerprint != nil {
		s.SecretValues = SecretValues{Fingerprint: FingerprintHMAC, KeyID: o.Fingerprint.KeyID()}
	}
	if len(o.Unread) > 0 {
		s.Unread = append([]string(nil), o.Unread...)
		sort.Strings(s.Unread)
	}
	if s.Namespace == "" {
		s.Namespace = soleNamespace(objs)
	}
	n := &normalizer{rules: rules, fp: o.Fingerprint}
	seen := map[ObjectKey]bool{}
	for i, raw := range objs {
		kind, _ := raw["kind"].(string)
		meta, _ := raw["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		if kind == "" {
			return nil, fmt.Errorf("object %d has no kind", i+1)
		}
		if !comparedKind(kind) {
			if s.Skipped == nil {
				s.Skipped = map[string]int{}
			}
			s.Skipped[kind]++
			continue
		}
		if name == "" {
			return nil, fmt.Errorf("a %s (object %d) has no metadata.name: parity matches objects by name", kind, i+1)
		}
		key := ObjectKey{Kind: kind, Name: name}
		if rules.on(RuleGeneratedObjects) && generatedObject(kind, name, raw, meta) {
			continue
		}
		if rules.on(RuleEnvironmentForks) && environmentFork(kind, meta) {
			continue
		}
		if seen[key] {
			return nil, fmt.Errorf("%s appears twice", key)
		}
		seen[key] = true
		obj, err := n.object(kind, name, raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		s.Objects = append(s.Objects, obj)
	}
	if rules.on(RuleHPAReplicas) {
		hpaReplicas(s)
	}
	s.sortObjects()
	return s, nil
}

// soleNamespace is the namespace every namespaced object names, or "".
func soleNamespace(objs []map[string]any) string {
	ns := ""
	for _, raw := range objs {
		meta, _ := raw["metadata"].(map[string]any)
		n, _ := meta["namespace"].(string)
		if n == "" {
			continue
		}
		if ns != "" && n != ns {
			return ""
		}
		ns = n
	}
	return ns
}

// generatedObject says whether the cluster made the object (rule
// generated-objects): it exists on a live side only, and says nothing about
// what was deployed.
func generatedObject(kind, name string, raw, meta map[string]any) bool {
	switch kind {
	case "ConfigMap":
		return name == "kube-root-ca.crt"
	case "Secret":
		t, _ := raw["type"].(string)
		return t == "helm.sh/release.v1" || t == "kubernetes.io/service-account-token"
	case "Job":
		owners, _ := meta["ownerReferences"].([]any)
		for _, o := range owners {
			if om, ok := o.(map[string]any); ok && om["kind"] == "CronJob" {
				return true
			}
		}
	}
	return false
}

// EnvironmentLabel marks the workloads an environment made (its forks),
// as v1alpha1.LabelEnvironment: pkg/parity does not import the API types.
const EnvironmentLabel = "detour.dev/environment"

// environmentFork says whether a workload is an environment's fork (rule
// environment-forks).
func environmentFork(kind string, meta map[string]any) bool {
	if kind != "Deployment" && kind != "StatefulSet" {
		return false
	}
	labels, _ := meta["labels"].(map[string]any)
	_, ok := labels[EnvironmentLabel]
	return ok
}

// hpaReplicas replaces the replicas of each workload an HPA scales by the
// HPA's range (rule hpa-replicas): the count of the moment is the HPA's
// doing, its bounds are what was declared.
func hpaReplicas(s *Snapshot) {
	idx := map[ObjectKey]int{}
	for i := range s.Objects {
		idx[s.Objects[i].Key()] = i
	}
	for _, o := range s.Objects {
		if o.Kind != "HorizontalPodAutoscaler" {
			continue
		}
		target := ObjectKey{Kind: o.Fields["/spec/scaleTargetRef/kind"], Name: o.Fields["/spec/scaleTargetRef/name"]}
		i, ok := idx[target]
		if !ok {
			continue
		}
		lo := o.Fields["/spec/minReplicas"]
		if lo == "" {
			lo = "1"
		}
		hi := o.Fields["/spec/maxReplicas"]
		s.Objects[i].Fields["/spec/replicas"] = lo + ".." + hi + " (HPA)"
	}
}

type normalizer struct {
	rules ruleSet
	fp    *Fingerprinter
}

// object normalizes one object: noise out, lists keyed, then flattened.
func (n *normalizer) object(kind, name string, raw map[string]any) (Object, error) {
	top := make(map[string]any, len(raw))
	for k, v := range raw {
		if k != "apiVersion" && k != "kind" {
			top[k] = v
		}
	}
	switch kind {
	case "Secret":
		if err := n.secretData(top); err != nil {
			return Object{}, err
		}
	case "ConfigMap":
		binaryDigests(top)
	}
	c := &cleaner{kind: kind, rules: n.rules}
	o := Object{Kind: kind, Name: name, Fields: map[string]string{}, Elements: map[string]string{}}
	if cleaned := c.clean(nil, top, nil); cleaned != nil {
		flatten("", cleaned, &o)
	}
	return o, nil
}

// secretData replaces a Secret's data and stringData by one map of
// fingerprints (or UnknownSecretValue), as the API server merges them.
// Errors name keys, never values.
func (n *normalizer) secretData(top map[string]any) error {
	sum := func(b []byte) string {
		if n.fp == nil {
			return UnknownSecretValue
		}
		return n.fp.Sum(b)
	}
	data := map[string]any{}
	if d, ok := top["data"].(map[string]any); ok {
		for k, v := range d {
			if v == nil {
				continue
			}
			s, ok := v.(string)
			if !ok {
				return fmt.Errorf("data key %q is not a string", k)
			}
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return fmt.Errorf("data key %q is not base64", k)
			}
			data[k] = sum(b)
		}
	} else if top["data"] != nil {
		return fmt.Errorf("data is not a map")
	}
	if sd, ok := top["stringData"].(map[string]any); ok {
		for k, v := range sd {
			if v != nil {
				data[k] = sum([]byte(scalar(v)))
			}
		}
	} else if top["stringData"] != nil {
		return fmt.Errorf("stringData is not a map")
	}
	delete(top, "stringData")
	top["data"] = data
	// The annotation holds the data as applied: never kept, whatever the
	// noise rules say.
	if meta, ok := top["metadata"].(map[string]any); ok {
		if ann, ok := meta["annotations"].(map[string]any); ok {
			if _, has := ann[lastAppliedAnnotation]; has {
				m := copyMap(meta)
				a := copyMap(ann)
				delete(a, lastAppliedAnnotation)
				m["annotations"] = a
				top["metadata"] = m
			}
		}
	}
	return nil
}

// binaryDigests replaces a ConfigMap's binary values by their SHA-256 and
// size: comparable, and printable.
func binaryDigests(top map[string]any) {
	bd, ok := top["binaryData"].(map[string]any)
	if !ok {
		return
	}
	out := make(map[string]any, len(bd))
	for k, v := range bd {
		s, _ := v.(string)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			b = []byte(s)
		}
		h := sha256.Sum256(b)
		out[k] = fmt.Sprintf("sha256:%s (%d bytes)", hex.EncodeToString(h[:8]), len(b))
	}
	top["binaryData"] = out
}

func copyMap(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

const lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// Labels and annotations that controllers and tools write.
var (
	revisionAnnotations = []string{"deployment.kubernetes.io/revision", "deprecated.daemonset.template.generation"}
	timeAnnotations     = []string{"kubectl.kubernetes.io/restartedAt"}
	toolAnnotations     = []string{"meta.helm.sh/release-name", "meta.helm.sh/release-namespace", "argocd.argoproj.io/tracking-id"}
	toolLabels          = []string{"kustomize.toolkit.fluxcd.io/name", "kustomize.toolkit.fluxcd.io/namespace",
		"helm.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/namespace"}
	generatedLabels = []string{"pod-template-hash", "controller-revision-hash", "controller-uid", "job-name",
		"batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name", "statefulset.kubernetes.io/pod-name"}
)

// The normalized forms of lists, before flattening.
type (
	// keyedList is a list whose entries are identified by a key.
	keyedList struct {
		elems     map[string]any // key → the entry without its key fields (nil: nothing else)
		summaries map[string]string
	}
	// objectSet is a list of objects whose order means nothing: each
	// member in canonical JSON, sorted, without duplicates.
	objectSet []string
	// scalarList is a list of scalars: sorted when order means nothing.
	scalarList []string
	// emptyList is [] kept (rule empty-values off).
	emptyList struct{}
)

// cleaner normalizes the values of one object.
type cleaner struct {
	kind  string
	rules ruleSet
}

// clean returns v normalized, or nil when nothing of it is left. Scalars
// become strings. path is the raw segments from the object's root.
func (c *cleaner) clean(path []string, v any, parent map[string]any) any {
	switch x := v.(type) {
	case nil:
		if c.rules.on(RuleEmptyValues) {
			return nil
		}
		return "null"
	case map[string]any:
		return c.cleanMap(path, x)
	case []any:
		return c.cleanList(path, x)
	}
	s := scalar(v)
	if c.rules.on(RuleQuantities) && quantityPath(path) {
		if q, err := resource.ParseQuantity(s); err == nil {
			s = canonicalQuantity(q)
		}
	}
	if s == "" && c.rules.on(RuleEmptyValues) && len(path) > 0 && path[0] == "spec" {
		return nil
	}
	return s
}

func (c *cleaner) cleanMap(path []string, m map[string]any) any {
	if n := len(path); n > 0 && path[n-1] == "metadata" {
		m = c.stripMeta(path, m)
	}
	_, hasSpec := m["spec"]
	_, hasMeta := m["metadata"]
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k == "status" && (len(path) == 0 || hasSpec && hasMeta) && c.rules.on(RuleStatus) {
			continue
		}
		if c.generated(path, k, v) {
			continue
		}
		child := appendPath(path, k)
		cv := c.clean(child, v, m)
		if cv == nil {
			continue
		}
		if c.rules.on(RuleServerDefaults) && isDefault(c.kind, child, cv, m) {
			continue
		}
		out[k] = cv
	}
	if len(out) == 0 && c.rules.on(RuleEmptyValues) {
		return nil
	}
	return out
}

// generated says whether field k of the map at path is one the cluster
// assigns (rules allocated and generated-labels).
func (c *cleaner) generated(path []string, k string, v any) bool {
	switch {
	case c.kind == "Service" && len(path) == 1 && path[0] == "spec" && c.rules.on(RuleAllocated):
		switch k {
		case "clusterIP":
			return v != "None"
		case "clusterIPs":
			return true // the API server's copy of clusterIP (and its IPv6 twin)
		case "healthCheckNodePort":
			return true
		}
	case c.kind == "Service" && len(path) == 3 && path[0] == "spec" && path[1] == "ports" && k == "nodePort" && c.rules.on(RuleAllocated):
		return true
	case c.kind == "Job" && len(path) == 1 && path[0] == "spec" && k == "selector" && c.rules.on(RuleGeneratedLabels):
		// The API server makes a Job's selector from its uid unless
		// manualSelector is set.
		sel, _ := v.(map[string]any)
		ml, _ := sel["matchLabels"].(map[string]any)
		_, a := ml["controller-uid"]
		_, b := ml["batch.kubernetes.io/controller-uid"]
		return a || b
	}
	return false
}

// stripMeta removes from a metadata map what the noise rules say is noise.
func (c *cleaner) stripMeta(path []string, m map[string]any) map[string]any {
	out := copyMap(m)
	if len(path) == 1 { // the object's own: name and namespace are the match key
		delete(out, "name")
		delete(out, "namespace")
	}
	drop := func(rule string, keys ...string) {
		if c.rules.on(rule) {
			for _, k := range keys {
				delete(out, k)
			}
		}
	}
	drop(RuleManagedFields, "managedFields")
	drop(RuleIDs, "uid", "resourceVersion", "generation", "selfLink", "generateName")
	drop(RuleTimestamps, "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds")
	drop(RuleOwnerReferences, "ownerReferences")
	if ann, ok := out["annotations"].(map[string]any); ok {
		a := copyMap(ann)
		if c.rules.on(RuleLastApplied) || c.kind == "Secret" {
			delete(a, lastAppliedAnnotation)
		}
		if c.rules.on(RuleRevisions) {
			for _, k := range revisionAnnotations {
				delete(a, k)
			}
		}
		if c.rules.on(RuleTimestamps) {
			for _, k := range timeAnnotations {
				delete(a, k)
			}
		}
		if c.rules.on(RuleToolMetadata) {
			for _, k := range toolAnnotations {
				delete(a, k)
			}
		}
		out["annotations"] = a
	}
	if lab, ok := out["labels"].(map[string]any); ok {
		l := copyMap(lab)
		if c.rules.on(RuleGeneratedLabels) {
			for _, k := range generatedLabels {
				delete(l, k)
			}
		}
		if c.rules.on(RuleToolMetadata) {
			for _, k := range toolLabels {
				delete(l, k)
			}
		}
		out["labels"] = l
	}
	return out
}

func (c *cleaner) cleanList(path []string, l []any) any {
	if len(l) == 0 {
		if c.rules.on(RuleEmptyValues) {
			return nil
		}
		return emptyList{}
	}
	rule := listRuleFor(c.kind, path)
	if !c.rules.on(RuleListOrder) {
		rule = listRule{}
	}
	switch rule.mode {
	case keyed:
		return c.keyed(path, l, rule)
	case set:
		if allScalars(l) {
			return c.scalars(path, l, true)
		}
		seen := map[string]bool{}
		var members objectSet
		for _, e := range l {
			canon := canonical(c.clean(appendPath(path, setMember), e, nil))
			if !seen[canon] {
				seen[canon] = true
				members = append(members, canon)
			}
		}
		sort.Strings(members)
		return members
	}
	if allScalars(l) {
		return c.scalars(path, l, false)
	}
	// An ordered list of objects: entries by index.
	out := make(map[string]any, len(l))
	for i, e := range l {
		k := strconv.Itoa(i)
		if cv := c.clean(appendPath(path, k), e, nil); cv != nil {
			out[k] = cv
		}
	}
	return out
}

func (c *cleaner) scalars(path []string, l []any, sorted bool) any {
	out := make(scalarList, 0, len(l))
	seen := map[string]bool{}
	for _, e := range l {
		s, _ := c.clean(appendPath(path, setMember), e, nil).(string)
		if sorted && seen[s] {
			continue
		}
		seen[s] = true
		out = append(out, s)
	}
	if sorted {
		sort.Strings(out)
	}
	return out
}

func (c *cleaner) keyed(path []string, l []any, rule listRule) any {
	kl := &keyedList{elems: map[string]any{}, summaries: map[string]string{}}
	for i, e := range l {
		em, _ := e.(map[string]any)
		key := ""
		if em != nil {
			key = rule.key(em)
		}
		if key == "" {
			key = "#" + strconv.Itoa(i)
		}
		if _, dup := kl.elems[key]; dup {
			key += "#" + strconv.Itoa(i)
		}
		cv := c.clean(appendPath(path, key), e, nil)
		if m, ok := cv.(map[string]any); ok {
			for _, f := range rule.keyFields {
				deleteDotted(m, f)
			}
			if len(m) == 0 {
				cv = nil
			}
		}
		kl.elems[key] = cv
		kl.summaries[key] = rule.summarize(cv)
	}
	return kl
}

// deleteDotted deletes field f ("a.b" for a nested one) from m.
func deleteDotted(m map[string]any, f string) {
	head, rest, nested := strings.Cut(f, ".")
	if !nested {
		delete(m, f)
		return
	}
	if sub, ok := m[head].(map[string]any); ok {
		deleteDotted(sub, rest)
		if len(sub) == 0 {
			delete(m, head)
		}
	}
}

func allScalars(l []any) bool {
	for _, e := range l {
		switch e.(type) {
		case map[string]any, []any:
			return false
		}
	}
	return true
}

// appendPath returns path+seg without writing into path's array.
func appendPath(path []string, seg string) []string {
	return append(path[:len(path):len(path)], seg)
}

// quantityPath says whether the value at path is a resource quantity.
func quantityPath(path []string) bool {
	n := len(path)
	switch {
	case n >= 3 && path[n-3] == "resources" && (path[n-2] == "limits" || path[n-2] == "requests"):
		return true
	case n >= 2 && path[n-2] == "overhead":
		return true
	case n >= 1 && path[n-1] == "sizeLimit":
		return true
	case n >= 2 && path[n-2] == "target" && (path[n-1] == "averageValue" || path[n-1] == "value"):
		return true
	}
	return false
}

// canonicalQuantity writes a quantity one way whatever way it was
// written: 128974848, 123Mi and 0.1201171875Gi all read 123Mi; 0.1 and
// 100m read 100m. Whole multiples of 1024 take binary suffixes, anything
// else decimal ones.
func canonicalQuantity(q resource.Quantity) string {
	const limit = 1 << 50 // MilliValue stays exact below this
	if q.CmpInt64(limit) > 0 || q.CmpInt64(-limit) < 0 {
		return q.String()
	}
	milli := q.MilliValue()
	if resource.NewMilliQuantity(milli, resource.DecimalSI).Cmp(q) != 0 {
		return q.String() // finer than a milli
	}
	if milli%1000 != 0 {
		return resource.NewMilliQuantity(milli, resource.DecimalSI).String()
	}
	v := milli / 1000
	if v != 0 && v%1024 == 0 {
		return resource.NewQuantity(v, resource.BinarySI).String()
	}
	return resource.NewQuantity(v, resource.DecimalSI).String()
}

// scalar writes a decoded JSON or YAML scalar as text: numbers without a
// needless fraction, so 1, 1.0 and "1" read the same.
func scalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return strconv.FormatInt(i, 10)
		}
		if f, err := x.Float64(); err == nil {
			return formatFloat(f)
		}
		return string(x)
	case int:
		return strconv.Itoa(x)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return formatFloat(x)
	case float32:
		return formatFloat(float64(x))
	}
	return fmt.Sprint(v)
}

func formatFloat(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatInt(int64(f), 10)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}
