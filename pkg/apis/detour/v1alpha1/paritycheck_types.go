package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ParityCheck makes the controller compare two namespaces of the cluster
// on an interval, as `detour parity diff LEFT RIGHT` does (docs/parity.md),
// and keep the last report's summary and differences in its status, so
// that drift shows in kubectl and in the detour_parity_differences metric.
// It lives in any namespace; the controller reads the two it names with
// get and list only. Secret values never reach the status: a difference
// of one reads "(differs)".
//
// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=pcheck,categories=detour
// +kubebuilder:printcolumn:name="Left",type=string,JSONPath=`.spec.left`
// +kubebuilder:printcolumn:name="Right",type=string,JSONPath=`.spec.right`
// +kubebuilder:printcolumn:name="Result",type=string,JSONPath=`.status.summary.result`
// +kubebuilder:printcolumn:name="Failing",type=integer,JSONPath=`.status.summary.failing`
// +kubebuilder:printcolumn:name="Last run",type=date,JSONPath=`.status.lastRunTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ParityCheck struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ParityCheckSpec `json:"spec"`
	// +optional
	Status ParityCheckStatus `json:"status,omitempty"`
}

// ParityCheckSpec says what to compare, how often, and under which policy.
//
// +kubebuilder:validation:XValidation:rule="self.left != self.right",message="left and right are the same namespace"
// +kubebuilder:validation:XValidation:rule="!(has(self.policy) && has(self.policyFrom))",message="policy and policyFrom are exclusive"
type ParityCheckSpec struct {
	// Left and Right are the namespaces compared, in this cluster.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Left string `json:"left"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Right string `json:"right"`

	// Interval between runs; 10m when absent, at least 1m.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="interval must be at least 1m"
	Interval *metav1.Duration `json:"interval,omitempty"`

	// Runtime compares what runs too: pods' image digests and restarts,
	// the nodes' versions.
	// +optional
	Runtime bool `json:"runtime,omitempty"`

	// Policy is the policy file's content (docs/parity.md, "Policy file").
	// +optional
	Policy *ParityPolicy `json:"policy,omitempty"`

	// PolicyFrom reads the policy file from a ConfigMap of the check's
	// namespace instead, as `detour parity diff --policy` reads it: the
	// same file can gate CI and the check. It is read at every run.
	// +optional
	PolicyFrom *ParityPolicySource `json:"policyFrom,omitempty"`
}

// ParityPolicySource names a policy file kept in a ConfigMap.
type ParityPolicySource struct {
	// ConfigMap is the ConfigMap's name, in the check's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	ConfigMap string `json:"configMap"`
	// Key holds the policy file; parity.yaml when absent.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// DefaultPolicyKey is the key of a policy ConfigMap when policyFrom names
// none.
const DefaultPolicyKey = "parity.yaml"

// ParitySeverity ranks a difference.
// +kubebuilder:validation:Enum=info;low;medium;high
type ParitySeverity string

// ParityFailOn is the lowest severity that fails, or none.
// +kubebuilder:validation:Enum=info;low;medium;high;none
type ParityFailOn string

// ParityCategory is what a difference is about.
// +kubebuilder:validation:Enum=presence;image;secret;config;resources;probes;network;replicas;runtime
type ParityCategory string

// ParityPolicy is a policy file, as a resource field.
type ParityPolicy struct {
	// FailOn is the lowest severity that fails; low when absent.
	// +optional
	FailOn ParityFailOn `json:"failOn,omitempty"`

	// Severity overrides the default severity of categories.
	// +optional
	Severity map[ParityCategory]ParitySeverity `json:"severity,omitempty"`

	// Ignore selects differences that are none for this team.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	Ignore []ParityRule `json:"ignore,omitempty"`

	// Expected selects differences by design; each needs a reason.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:XValidation:rule="self.all(r, has(r.reason) && size(r.reason) > 0)",message="an expected difference needs a reason"
	Expected []ParityRule `json:"expected,omitempty"`
}

// ParityRule selects differences; empty fields match anything, and at
// least one must be given.
//
// +kubebuilder:validation:XValidation:rule="has(self.kind) || has(self.name) || has(self.path) || has(self.category)",message="a rule with no kind, name, path or category would match every difference"
type ParityRule struct {
	// Kind and Name are globs on the object.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Kind string `json:"kind,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name,omitempty"`
	// Path is a JSON pointer whose segments may be globs, ** for any
	// number; it matches the field and everything below it.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^/`
	Path string `json:"path,omitempty"`
	// +optional
	Category ParityCategory `json:"category,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Reason string `json:"reason,omitempty"`
}

// Condition types of a ParityCheck's status.
const (
	// ParityConditionReady is True when the last run compared both sides.
	ParityConditionReady = "Ready"
	// ParityConditionDrift is True when the last run found unexpected
	// differences at or above failOn.
	ParityConditionDrift = "Drift"
)

// Bounds of a status, so that a large drift cannot grow the object past
// what etcd takes: at most MaxStatusDifferences differences (the failing
// ones first; Summary counts them all), values cut to MaxStatusValue bytes,
// at most MaxStatusNotes notes.
const (
	MaxStatusDifferences = 100
	MaxStatusValue       = 256
	MaxStatusNotes       = 20
)

// ParityCheckStatus is the last run, written through the status
// subresource.
type ParityCheckStatus struct {
	// ObservedGeneration is the metadata.generation the last run used.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// LastRunTime is when the last run ended.
	// +optional
	LastRunTime *metav1.Time `json:"lastRunTime,omitempty"`

	// Summary counts the last run's differences.
	// +optional
	Summary *ParitySummary `json:"summary,omitempty"`

	// Differences of the last run, at most MaxStatusDifferences.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=100
	Differences []ParityDifference `json:"differences,omitempty"`

	// Truncated says Differences does not hold them all.
	// +optional
	Truncated bool `json:"truncated,omitempty"`

	// Notes say what could not be compared, and why; at most
	// MaxStatusNotes.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=20
	Notes []string `json:"notes,omitempty"`

	// Conditions: Ready and Drift.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// ParitySummary is the report's summary (docs/parity.md, "JSON report").
type ParitySummary struct {
	Total      int32 `json:"total"`
	Unexpected int32 `json:"unexpected"`
	Expected   int32 `json:"expected"`
	Ignored    int32 `json:"ignored"`
	Failing    int32 `json:"failing"`
	// Result is pass or drift.
	// +kubebuilder:validation:Enum=pass;drift
	Result string `json:"result"`
	// +optional
	ByCategory map[string]int32 `json:"byCategory,omitempty"`
	// +optional
	BySeverity map[string]int32 `json:"bySeverity,omitempty"`
}

// ParityDifference is one difference, as in the JSON report.
type ParityDifference struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// +optional
	RightName string `json:"rightName,omitempty"`
	// +optional
	Path     string         `json:"path,omitempty"`
	Category ParityCategory `json:"category"`
	// +kubebuilder:validation:Enum=changed;only-left;only-right
	Change   string         `json:"change"`
	Severity ParitySeverity `json:"severity"`
	// Left and Right are the values, absent where a side lacks the field,
	// cut to MaxStatusValue bytes; a Secret's are "(set)" or "(differs)".
	// +optional
	Left *string `json:"left,omitempty"`
	// +optional
	Right *string `json:"right,omitempty"`
	// +optional
	Expected bool `json:"expected,omitempty"`
	// +optional
	Ignored bool `json:"ignored,omitempty"`
	// +optional
	Reason string `json:"reason,omitempty"`
}

// ParityCheckList is a list of ParityChecks.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
type ParityCheckList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ParityCheck `json:"items"`
}
