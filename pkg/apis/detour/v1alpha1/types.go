package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Intercept sends some of the requests (or, with l4, all the connections)
// that reach one port of a shared Service to a developer's own pod. It lives
// in the Service's namespace, where RBAC on intercepts.detour.dev decides who
// may intercept what.
//
// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=icpt,categories=detour
// +kubebuilder:printcolumn:name="Service",type=string,JSONPath=`.spec.service.name`
// +kubebuilder:printcolumn:name="Port",type=integer,JSONPath=`.spec.service.port`
// +kubebuilder:printcolumn:name="Match",type=string,JSONPath=`.status.matchSummary`,description="What the intercept selects, as the controller last described it"
// +kubebuilder:printcolumn:name="Destination",type=string,JSONPath=`.spec.destination`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.status.expiresAt`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule=`size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')`,message="name must be a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
type Intercept struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec InterceptSpec `json:"spec"`
	// +optional
	Status InterceptStatus `json:"status,omitempty"`
}

// InterceptSpec is what a developer asks for. It mirrors the gRPC API's
// InterceptSpec (api/detour/v1) field for field, except that the Service's
// namespace is the Intercept's own.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.l4) && self.l4) || !has(self.match) || size(self.match) == 0",message="an l4 intercept takes whole connections and reads no request: give no match conditions"
// +kubebuilder:validation:XValidation:rule="(has(self.l4) && self.l4) || (has(self.match) && size(self.match) > 0)",message="match needs at least one condition (or set l4 to take whole connections)"
// +kubebuilder:validation:XValidation:rule="!has(self.ttl) || duration(self.ttl) >= duration('0s')",message="ttl must not be negative"
// +kubebuilder:validation:XValidation:rule="has(self.destination) != has(self.destinationPods)",message="give exactly one of destination and destinationPods"
type InterceptSpec struct {
	// Service is the intercepted Service, in the intercept's namespace, and
	// one of its ports.
	Service ServiceRef `json:"service"`

	// Match lists the conditions a request must all meet to be detoured.
	// At least one, unless l4 is set; then none.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Match []Condition `json:"match,omitempty"`

	// Destination is where selected requests go: HOST:PORT, with HOST a pod
	// name (in the intercept's namespace), NAMESPACE/POD, or an IP address
	// (an IPv6 one in brackets). Exactly one of destination and
	// destinationPods is given.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=330
	// +kubebuilder:validation:Pattern=`^(\[[0-9A-Fa-f:.]+\]|([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$`
	Destination string `json:"destination,omitempty"`

	// DestinationPods, instead of destination: the ready pods of the
	// intercept's namespace with these labels, taking turns (an
	// environment's fork).
	//
	// +optional
	DestinationPods *PodSelector `json:"destinationPods,omitempty"`

	// TTL is the lease: the intercept expires this long after it is
	// created or last renewed. Absent or zero: it does not expire.
	//
	// +optional
	TTL *metav1.Duration `json:"ttl,omitempty"`

	// L4 detours every connection to the port, reading no request: match
	// must then be empty. Settled flows are spliced in the kernel.
	//
	// +optional
	L4 bool `json:"l4,omitempty"`

	// Sources restricts the intercept to connections from some pods.
	// Absent or empty: connections from anywhere.
	//
	// +optional
	Sources *Sources `json:"sources,omitempty"`
}

// ServiceRef names a Service of the intercept's namespace and one of its
// ports.
type ServiceRef struct {
	// Name of the Service.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// Port is the Service's port (not the pods' targetPort).
	//
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
}

// ConditionKind names one sort of condition; the names are those of
// pkg/redirect/match.Kind.
//
// +kubebuilder:validation:Enum=session;header;header-prefix;header-regex;baggage;path;path-prefix;method
type ConditionKind string

// The condition kinds.
const (
	// ConditionSession matches the session key: header x-detour-session if
	// present, else baggage member detour-session. Value is the key.
	ConditionSession      ConditionKind = "session"
	ConditionHeaderExact  ConditionKind = "header"        // header Name equals Value
	ConditionHeaderPrefix ConditionKind = "header-prefix" // header Name starts with Value
	ConditionHeaderRegex  ConditionKind = "header-regex"  // header Name matches regexp Value
	ConditionBaggage      ConditionKind = "baggage"       // baggage member Name has value Value
	ConditionPathExact    ConditionKind = "path"          // request path equals Value
	ConditionPathPrefix   ConditionKind = "path-prefix"   // request path starts with Value
	ConditionMethod       ConditionKind = "method"        // request method equals Value
)

// Condition is one test on a request.
//
// +kubebuilder:validation:XValidation:rule="!(self.kind in ['header', 'header-prefix', 'header-regex', 'baggage']) || has(self.name)",message="header and baggage conditions need a name"
// +kubebuilder:validation:XValidation:rule="self.kind in ['header', 'header-prefix', 'header-regex', 'baggage'] || !has(self.name)",message="session, path, path-prefix and method conditions take no name"
// +kubebuilder:validation:XValidation:rule="!(self.kind in ['path', 'path-prefix']) || (self.value.startsWith('/') && !self.value.matches('[?# ]'))",message="a path starts with / and has no '?', '#' or space"
// +kubebuilder:validation:XValidation:rule=`self.kind != 'method' || self.value.matches("^[-!#$%&'*+.^_|~0-9A-Za-z\\x60]+$")`,message="a method is a token"
// +kubebuilder:validation:XValidation:rule="!(self.kind in ['session', 'header', 'header-prefix']) || self.value == self.value.trim()",message="the value has leading or trailing whitespace and could never match"
// +kubebuilder:validation:XValidation:rule="self.kind == 'header-regex' || !self.value.matches('[\\\\x00-\\\\x08\\\\x0a-\\\\x1f\\\\x7f]')",message="the value has control characters"
type Condition struct {
	Kind ConditionKind `json:"kind"`

	// Name is the header's name for the header kinds, the baggage member's
	// key for baggage; the other kinds take none.
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern="^[-!#$%&'*+.^_|~0-9A-Za-z\\x60]+$"
	Name string `json:"name,omitempty"`

	// Value is what the request must carry (a regular expression for
	// header-regex).
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	Value string `json:"value"`
}

// PodSelector chooses pods by label, and a port on them.
type PodSelector struct {
	// Labels a pod must all have.
	//
	// +kubebuilder:validation:MinProperties=1
	// +kubebuilder:validation:MaxProperties=16
	Labels map[string]string `json:"labels"`
	// Port on the pods; absent takes the Service's target port.
	//
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
}

// Sources names the pods whose connections an intercept admits: a pod
// passes if it is listed, if its namespace is, or if it has the selector's
// labels.
type Sources struct {
	// Pods, each POD (in the intercept's namespace) or NAMESPACE/POD.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=317
	// +kubebuilder:validation:items:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Pods []string `json:"pods,omitempty"`

	// Namespaces whose pods are all admitted.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespaces []string `json:"namespaces,omitempty"`

	// Selector admits the pods of the intercept's namespace with all these
	// labels (an environment's pods).
	//
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	Selector map[string]string `json:"selector,omitempty"`
}

// InterceptState is where an intercept is in its life.
//
// +kubebuilder:validation:Enum=Pending;Active;Expired;Failed
type InterceptState string

// The states.
const (
	// InterceptPending: accepted, steering not yet in place on every node
	// that runs a pod of the Service.
	InterceptPending InterceptState = "Pending"
	// InterceptActive: steering is in place on every such node.
	InterceptActive InterceptState = "Active"
	// InterceptExpired: the lease ran out; steering is removed.
	InterceptExpired InterceptState = "Expired"
	// InterceptFailed: refused (invalid, overlapping, or its Service or
	// destination pod is missing); the Accepted condition says why.
	InterceptFailed InterceptState = "Failed"
)

// Condition types of an Intercept's status.
const (
	// InterceptConditionAccepted is True when the controller validated the
	// spec and found no overlap with another intercept.
	InterceptConditionAccepted = "Accepted"
	// InterceptConditionReady is True when steering is attached on every
	// node that runs a pod of the Service.
	InterceptConditionReady = "Ready"
)

// InterceptStatus is what the controller observed, written through the
// status subresource.
type InterceptStatus struct {
	// ObservedGeneration is the metadata.generation the status describes.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// State sums up the conditions.
	//
	// +optional
	State InterceptState `json:"state,omitempty"`

	// MatchSummary is the human form of what the intercept selects, as the
	// CLI prints it (for example `session=alice & from-pod=web-1`), for
	// kubectl's Match column: a printer column can show one JSON path only.
	// The controller fills it from the spec (InterceptSpec.MatchSummary).
	//
	// +optional
	MatchSummary string `json:"matchSummary,omitempty"`

	// ExpiresAt is when the lease runs out; absent when there is no lease.
	//
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// Nodes holds each node's report, as its agent last sent it.
	//
	// +optional
	// +listType=map
	// +listMapKey=node
	Nodes []InterceptNodeStatus `json:"nodes,omitempty"`

	// Conditions: Accepted and Ready.
	//
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// InterceptNodeStatus is one intercept's counters on one node.
type InterceptNodeStatus struct {
	// Node is the node's name.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// SteeringAttached is true when steering is in place on every targeted
	// pod port of the node.
	//
	// +optional
	SteeringAttached bool `json:"steeringAttached,omitempty"`
	// Matched counts the requests (or, with l4, connections) detoured.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	Matched int64 `json:"matched,omitempty"`
	// Fallbacks counts the requests that went to the original app because
	// the destination could not be reached.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	Fallbacks int64 `json:"fallbacks,omitempty"`
	// SteeredConnections counts the connections the kernel handed to the
	// agent for this intercept's ports.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	SteeredConnections int64 `json:"steeredConnections,omitempty"`
	// Error is the agent's last problem applying the intercept, if any.
	//
	// +optional
	Error string `json:"error,omitempty"`
}

// InterceptList is a list of Intercepts.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
type InterceptList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Intercept `json:"items"`
}
