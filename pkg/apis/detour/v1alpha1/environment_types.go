package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Environment is an ephemeral environment: a few workloads of its namespace
// (the baseline) forked with changes, everything else shared. Requests that
// carry its key reach the forks; the forks' own connections to each other's
// services go fork to fork; it all goes away when the TTL ends or the
// Environment is deleted. It lives in the baseline namespace, where its
// forks, their ConfigMaps, Secrets and neighbours are. docs/architecture.md
// ("Environments") says how it is built.
//
// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=env,categories=detour
// +kubebuilder:printcolumn:name="Key",type=string,JSONPath=`.status.key`
// +kubebuilder:printcolumn:name="Forks",type=string,JSONPath=`.status.forkSummary`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.status.expiresAt`
// +kubebuilder:printcolumn:name="Differences",type=integer,JSONPath=`.status.parity.differences`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule=`size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')`,message="name must be a DNS-1123 label of at most 40 characters: forks are named <workload>-<environment>"
type Environment struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec EnvironmentSpec `json:"spec"`
	// +optional
	Status EnvironmentStatus `json:"status,omitempty"`
}

// EnvironmentSpec is what CI or a developer asks for. It mirrors the gRPC
// API's EnvironmentSpec (api/detour/v1) field for field, except that the
// namespace is the Environment's own.
//
// +kubebuilder:validation:XValidation:rule="self.forks.all(f, self.forks.exists_one(g, g.workload.kind == f.workload.kind && g.workload.name == f.workload.name))",message="a workload is forked at most once"
// +kubebuilder:validation:XValidation:rule="!has(self.ttl) || duration(self.ttl) > duration('0s')",message="ttl must be positive"
type EnvironmentSpec struct {
	// Key is the session key that selects the environment: requests with
	// header x-detour-session: KEY, or baggage member detour-session=KEY.
	// Absent: the Environment's name.
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern="^[-!#$%&'*+.^_|~0-9A-Za-z\\x60]+$"
	Key string `json:"key,omitempty"`

	// Forks are the workloads copied, with changes, for this environment.
	//
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	Forks []Fork `json:"forks"`

	// Data are the data sources the environment gets of its own (database
	// branches, seed jobs). The environment is Ready only once they are.
	//
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	Data []DataSource `json:"data,omitempty"`

	// TTL is how long the environment lives after it is created or last
	// renewed. Absent: the controller's default (--env-default-ttl); the
	// controller refuses more than its maximum (--env-max-ttl).
	//
	// +optional
	TTL *metav1.Duration `json:"ttl,omitempty"`

	// Source is what CI knows about the change under test; shown, never
	// acted on.
	//
	// +optional
	Source *EnvironmentSource `json:"source,omitempty"`
}

// WorkloadKind is a kind of workload that can be forked.
//
// +kubebuilder:validation:Enum=Deployment;StatefulSet
type WorkloadKind string

// The workload kinds.
const (
	WorkloadDeployment  WorkloadKind = "Deployment"
	WorkloadStatefulSet WorkloadKind = "StatefulSet"
)

// WorkloadRef names a workload of the environment's namespace.
type WorkloadRef struct {
	// Kind of the workload.
	//
	// +kubebuilder:default=Deployment
	Kind WorkloadKind `json:"kind,omitempty"`
	// Name of the workload.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
}

// Fork is one forked workload: a copy of its pod template with overrides,
// named <workload>-<environment>.
type Fork struct {
	// Workload is the baseline workload copied; it is never modified.
	Workload WorkloadRef `json:"workload"`

	// Images replaces containers' images, by container name.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(i, self.exists_one(j, j.container == i.container))",message="one image per container"
	Images []ImageOverride `json:"images,omitempty"`

	// Env sets or removes environment variables, in order.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=128
	Env []EnvOverride `json:"env,omitempty"`

	// Commands replaces containers' command and arguments, by container name.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(i, self.exists_one(j, j.container == i.container))",message="one command per container"
	Commands []CommandOverride `json:"commands,omitempty"`

	// Replicas of the fork. Absent: 1, whatever the baseline runs.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Replicas *int32 `json:"replicas,omitempty"`

	// Patch is a strategic-merge patch applied to the fork's pod template
	// (spec.template of the workload) after the other overrides.
	//
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:validation:Type=object
	Patch *runtime.RawExtension `json:"patch,omitempty"`
}

// ImageOverride sets one container's image.
type ImageOverride struct {
	// Container is the container's name (init containers included);
	// absent: the workload's only container.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Container string `json:"container,omitempty"`
	// Image is the image reference.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image"`
}

// EnvOverride sets (upsert) or removes (delete) one environment variable,
// in one container or, without container, in all of them.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.delete) && self.delete) || (!has(self.value) && !has(self.valueFrom))",message="a deleted variable takes no value"
// +kubebuilder:validation:XValidation:rule="!(has(self.value) && has(self.valueFrom))",message="value and valueFrom are exclusive"
type EnvOverride struct {
	// Container is the container's name; absent: every container.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Container string `json:"container,omitempty"`
	// Name of the variable.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z][-._a-zA-Z0-9]*$`
	Name string `json:"name"`
	// Value is the literal value.
	//
	// +optional
	Value *string `json:"value,omitempty"`
	// ValueFrom takes the value from a ConfigMap, Secret or field, as a
	// container's env does.
	//
	// +optional
	ValueFrom *corev1.EnvVarSource `json:"valueFrom,omitempty"`
	// Delete removes the variable.
	//
	// +optional
	Delete bool `json:"delete,omitempty"`
}

// CommandOverride replaces one container's command and arguments.
type CommandOverride struct {
	// Container is the container's name; absent: the workload's only
	// container.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Container string `json:"container,omitempty"`
	// Command replaces the container's command (entrypoint).
	//
	// +optional
	// +listType=atomic
	Command []string `json:"command,omitempty"`
	// Args replaces the container's arguments.
	//
	// +optional
	// +listType=atomic
	Args []string `json:"args,omitempty"`
}

// DataSource is one data source of the environment's own. Its kinds are
// described in docs/architecture.md ("Environment data").
//
// +kubebuilder:validation:XValidation:rule="self.kind != 'postgres-branch' || (has(self.postgresBranch) && !has(self.job))",message="a postgres-branch entry takes postgresBranch, and no job"
// +kubebuilder:validation:XValidation:rule="self.kind != 'job' || (has(self.job) && !has(self.postgresBranch))",message="a job entry takes job, and no postgresBranch"
type DataSource struct {
	// Name names the entry; forks and seed jobs refer to it.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=40
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
	// Kind of data source: postgres-branch (a database of the
	// environment's own, filled from a snapshot of the baseline's) or job
	// (a seed job run once the forks are up).
	//
	// +kubebuilder:validation:Enum=postgres-branch;job
	Kind string `json:"kind"`
	// PostgresBranch is the branch, for kind postgres-branch.
	//
	// +optional
	PostgresBranch *PostgresBranch `json:"postgresBranch,omitempty"`
	// Job is the seed job, for kind job.
	//
	// +optional
	Job *DataJob `json:"job,omitempty"`
}

// The kinds of data source.
const (
	DataPostgresBranch = "postgres-branch"
	DataJobKind        = "job"
)

// PostgresBranch is a PostgreSQL database of the environment's own: the
// baseline's database workload started again (same image and settings, its
// own storage and password), filled from a logical snapshot of the
// baseline's database taken when the environment is made, then anonymised,
// before any fork sees it.
//
// +kubebuilder:validation:XValidation:rule="!has(self.filters) || size(self.filters) == 0 || (has(self.mode) && self.mode == 'filtered')",message="filters need mode filtered"
// +kubebuilder:validation:XValidation:rule="!has(self.mode) || self.mode != 'filtered' || (has(self.filters) && size(self.filters) > 0)",message="mode filtered needs at least one filter"
type PostgresBranch struct {
	// Workload is the baseline's database workload; the branch is a copy
	// of its pod template. It is never modified.
	Workload WorkloadRef `json:"workload"`
	// Container is the database container of the workload (its image also
	// runs the snapshot); absent: its only container, or its first.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Container string `json:"container,omitempty"`
	// Service is the baseline database's Service, which the snapshot is
	// taken through; absent: the workload's name.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Service string `json:"service,omitempty"`
	// Port is the Service's port; absent: 5432.
	//
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
	// Database is the database branched; absent: the credentials Secret's
	// databaseKey, else the user's name.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z_][a-z0-9_$]*$`
	Database string `json:"database,omitempty"`
	// Credentials is the baseline's Secret the snapshot is taken with. Its
	// values are never shown; the branch gets a password of its own.
	Credentials PostgresCredentials `json:"credentials"`
	// Mode is what the branch gets: schema (tables, no rows), all (every
	// row), or filtered (every row, except for the filtered tables only
	// the rows their filter selects). Absent: all.
	//
	// +optional
	Mode BranchMode `json:"mode,omitempty"`
	// Filters select the rows of some tables, for mode filtered.
	//
	// +optional
	// +listType=map
	// +listMapKey=table
	// +kubebuilder:validation:MaxItems=64
	Filters []RowFilter `json:"filters,omitempty"`
	// Anonymize is an SQL script run in the branch after the restore and
	// before any fork starts (in one transaction; an error fails the
	// branch).
	//
	// +optional
	Anonymize *SQLScript `json:"anonymize,omitempty"`
	// Env are the variables that carry the branch's connection into the
	// forks, in place of the baseline's variables of the same names.
	// Absent: DATABASE_URL with the URL.
	//
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	Env []ConnectionEnv `json:"env,omitempty"`
	// Forks names the forked workloads that get Env; absent: every fork.
	//
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	Forks []string `json:"forks,omitempty"`
	// Storage is where the branch keeps its data; absent: an emptyDir.
	//
	// +optional
	Storage *BranchStorage `json:"storage,omitempty"`
}

// PostgresCredentials names the baseline's Secret and the keys of its user,
// password and (optionally) database.
type PostgresCredentials struct {
	// Secret is the Secret's name (in the lab, the file
	// secrets/NAMESPACE/NAME/KEY under the lab's state directory).
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Secret string `json:"secret"`
	// UserKey is the key holding the user name; absent: username.
	//
	// +optional
	UserKey string `json:"userKey,omitempty"`
	// PasswordKey is the key holding the password; absent: password.
	//
	// +optional
	PasswordKey string `json:"passwordKey,omitempty"`
	// DatabaseKey is the key holding the database's name, if any.
	//
	// +optional
	DatabaseKey string `json:"databaseKey,omitempty"`
}

// BranchMode is what a branch gets of the baseline's rows.
//
// +kubebuilder:validation:Enum=schema;all;filtered
type BranchMode string

// The branch modes.
const (
	BranchSchema   BranchMode = "schema"
	BranchAll      BranchMode = "all"
	BranchFiltered BranchMode = "filtered"
)

// RowFilter selects the rows of one table that the branch gets.
type RowFilter struct {
	// Table is [SCHEMA.]TABLE, lower-case SQL identifiers (the schema
	// defaults to public). Anything else is refused, never interpolated.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=127
	// +kubebuilder:validation:Pattern=`^([a-z_][a-z0-9_$]*\.)?[a-z_][a-z0-9_$]*$`
	Table string `json:"table"`
	// Where is an SQL condition on the table's rows, e.g. created_at >
	// now() - interval '7 days'. It is run in a read-only transaction of
	// the baseline; one statement, no comments.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	Where string `json:"where"`
}

// SQLScript is an SQL script: from a ConfigMap in a cluster, from a file
// in the lab.
//
// +kubebuilder:validation:XValidation:rule="has(self.configMapKeyRef) != has(self.file)",message="give one of configMapKeyRef and file"
type SQLScript struct {
	// ConfigMapKeyRef is a key of a ConfigMap of the namespace.
	//
	// +optional
	ConfigMapKeyRef *corev1.ConfigMapKeySelector `json:"configMapKeyRef,omitempty"`
	// File is a path on the controller's machine (the lab).
	//
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	File string `json:"file,omitempty"`
}

// ConnectionEnv is one variable that carries part of a branch's connection.
type ConnectionEnv struct {
	// Name of the variable, e.g. DATABASE_URL or PGHOST.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z][-._a-zA-Z0-9]*$`
	Name string `json:"name"`
	// Part is what it holds; absent: url.
	//
	// +optional
	Part ConnectionPart `json:"part,omitempty"`
}

// ConnectionPart is a part of a branch's connection.
//
// +kubebuilder:validation:Enum=url;host;port;user;password;database
type ConnectionPart string

// The parts of a connection; each is a key of the branch's Secret.
const (
	// ConnectionURL: postgres://USER:PASSWORD@HOST:PORT/DATABASE.
	ConnectionURL      ConnectionPart = "url"
	ConnectionHost     ConnectionPart = "host"
	ConnectionPort     ConnectionPart = "port"
	ConnectionUser     ConnectionPart = "user"
	ConnectionPassword ConnectionPart = "password"
	ConnectionDatabase ConnectionPart = "database"
)

// BranchStorage is where a branch keeps its data: an emptyDir (gone with
// its pod) or a PersistentVolumeClaim (gone with the branch).
//
// +kubebuilder:validation:XValidation:rule="self.type == 'pvc' || (!has(self.storageClassName) && !has(self.size))",message="storageClassName and size are for type pvc"
type BranchStorage struct {
	// Type of storage.
	//
	// +kubebuilder:default=emptyDir
	Type StorageType `json:"type,omitempty"`
	// StorageClassName of the claim; absent: the cluster's default class.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=253
	StorageClassName *string `json:"storageClassName,omitempty"`
	// Size of the claim; absent: 1Gi.
	//
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`
}

// StorageType is a kind of storage for a branch.
//
// +kubebuilder:validation:Enum=emptyDir;pvc
type StorageType string

// The storage types.
const (
	StorageEmptyDir StorageType = "emptyDir"
	StoragePVC      StorageType = "pvc"
)

// DataJob is a seed job: a container run once the environment's forks are
// up and before it is Ready, with the environment's name and key
// (DETOUR_ENV, DETOUR_SESSION) and each branch's connection in its
// environment. It must exit 0; otherwise the environment fails.
type DataJob struct {
	// Image of the job's container (a cluster; the lab runs commands).
	//
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`
	// Command replaces the image's entrypoint.
	//
	// +optional
	// +listType=atomic
	Command []string `json:"command,omitempty"`
	// Args are its arguments.
	//
	// +optional
	// +listType=atomic
	Args []string `json:"args,omitempty"`
	// Env is more of its environment.
	//
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Env []corev1.EnvVar `json:"env,omitempty"`
	// Timeout bounds the job's run; absent: 10 minutes.
	//
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// EnvironmentSource is what CI knows of the change the environment tests.
type EnvironmentSource struct {
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Repository string `json:"repository,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Branch string `json:"branch,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	PullRequest int64 `json:"pullRequest,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Commit string `json:"commit,omitempty"`
}

// EnvironmentPhase is where an environment is in its life.
//
// +kubebuilder:validation:Enum=Pending;Provisioning;Ready;Failed;Expiring;Deleting
type EnvironmentPhase string

// The phases, in the order an environment goes through them.
const (
	// EnvironmentPending: accepted, nothing made yet.
	EnvironmentPending EnvironmentPhase = "Pending"
	// EnvironmentProvisioning: forks, routes or data are being made.
	EnvironmentProvisioning EnvironmentPhase = "Provisioning"
	// EnvironmentReady: every fork's pods are ready, routes are in place
	// and data is loaded.
	EnvironmentReady EnvironmentPhase = "Ready"
	// EnvironmentFailed: something could not be made; the Ready condition
	// says what. Delete cleans it up fully.
	EnvironmentFailed EnvironmentPhase = "Failed"
	// EnvironmentExpiring: the TTL ran out; it is being removed.
	EnvironmentExpiring EnvironmentPhase = "Expiring"
	// EnvironmentDeleting: it was deleted; it is being removed.
	EnvironmentDeleting EnvironmentPhase = "Deleting"
)

// Condition types of an Environment's status.
const (
	// EnvironmentConditionForksReady is True when every fork's pods are ready.
	EnvironmentConditionForksReady = "ForksReady"
	// EnvironmentConditionRoutesReady is True when the environment's
	// intercepts are active.
	EnvironmentConditionRoutesReady = "RoutesReady"
	// EnvironmentConditionDataReady is True when every data source is loaded.
	EnvironmentConditionDataReady = "DataReady"
	// EnvironmentConditionReady sums the others up.
	EnvironmentConditionReady = "Ready"
)

// EnvironmentFinalizer holds an Environment until the controller has
// removed what ownerReferences cannot reach: its intercepts' steering and
// connect-time routes in the nodes' kernels.
const EnvironmentFinalizer = "detour.dev/environment-cleanup"

// Labels on everything an environment makes.
const (
	// LabelEnvironment names the environment that made an object (forks,
	// their pods, intercepts).
	LabelEnvironment = "detour.dev/environment"
	// LabelForkOf names the baseline workload a fork copies.
	LabelForkOf = "detour.dev/fork-of"
)

// EnvironmentStatus is what the controller observed.
type EnvironmentStatus struct {
	// ObservedGeneration is the metadata.generation the status describes.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Phase sums up the conditions.
	//
	// +optional
	Phase EnvironmentPhase `json:"phase,omitempty"`

	// Key is the session key in effect (spec.key, or the name).
	//
	// +optional
	Key string `json:"key,omitempty"`

	// ForkSummary lists the forked workloads for kubectl's Forks column,
	// e.g. "api, worker".
	//
	// +optional
	ForkSummary string `json:"forkSummary,omitempty"`

	// ExpiresAt is when the TTL runs out.
	//
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// Forks holds each fork's state.
	//
	// +optional
	// +listType=map
	// +listMapKey=name
	Forks []ForkStatus `json:"forks,omitempty"`

	// Routes are the intercepts the environment owns, and what each does.
	//
	// +optional
	// +listType=map
	// +listMapKey=intercept
	Routes []RouteStatus `json:"routes,omitempty"`

	// Data holds each data source's state.
	//
	// +optional
	// +listType=map
	// +listMapKey=name
	Data []DataStatus `json:"data,omitempty"`

	// Conditions: ForksReady, RoutesReady, DataReady, Ready.
	//
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// Parity is what the environment's forks change against the workloads
	// they fork, as `detour parity diff NAMESPACE env/NAME` reports it
	// (docs/parity.md, "Environments").
	//
	// +optional
	Parity *EnvironmentParity `json:"parity,omitempty"`
}

// MaxParityFields bounds EnvironmentParity.Fields.
const MaxParityFields = 32

// EnvironmentParity sums up how an environment differs from its baseline:
// counts, and which fields, never their values.
type EnvironmentParity struct {
	// Time is when the comparison was made.
	Time metav1.Time `json:"time"`
	// ObservedGeneration is the metadata.generation compared.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Differences counts the differences that are not by design.
	Differences int32 `json:"differences"`
	// Expected counts those by design (a fork's own replica count).
	//
	// +optional
	Expected int32 `json:"expected,omitempty"`
	// BySeverity and ByCategory count Differences.
	//
	// +optional
	BySeverity map[string]int32 `json:"bySeverity,omitempty"`
	// +optional
	ByCategory map[string]int32 `json:"byCategory,omitempty"`
	// Fields lists the differing fields as "KIND/NAME PATH", the most
	// severe first, at most MaxParityFields.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Fields []string `json:"fields,omitempty"`
	// Truncated says Fields does not hold them all.
	//
	// +optional
	Truncated bool `json:"truncated,omitempty"`
}

// ForkStatus is one fork's state.
type ForkStatus struct {
	// Name is the fork workload's name, <workload>-<environment>.
	Name string `json:"name"`
	// Workload is the baseline workload it copies.
	Workload WorkloadRef `json:"workload"`
	// Replicas the fork asks for.
	//
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// ReadyReplicas of the fork.
	//
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// Images of the fork's containers, container=image.
	//
	// +optional
	// +listType=atomic
	Images []string `json:"images,omitempty"`
	// Message says what the fork waits for or why it failed (an image
	// that cannot be pulled, a pod that crashes).
	//
	// +optional
	Message string `json:"message,omitempty"`
}

// DataPhase is where a data source is.
//
// +kubebuilder:validation:Enum=Pending;Starting;Snapshotting;Restoring;Anonymising;Seeding;Ready;Failed
type DataPhase string

// The data phases, in the order a data source goes through them.
const (
	// DataPending: waiting for something else (a seed job for the forks).
	DataPending DataPhase = "Pending"
	// DataStarting: the branch's database is starting.
	DataStarting DataPhase = "Starting"
	// DataSnapshotting: the baseline's database is being dumped.
	DataSnapshotting DataPhase = "Snapshotting"
	// DataRestoring: the snapshot is being restored into the branch.
	DataRestoring DataPhase = "Restoring"
	// DataAnonymising: the anonymising script runs in the branch.
	DataAnonymising DataPhase = "Anonymising"
	// DataSeeding: the seed job runs.
	DataSeeding DataPhase = "Seeding"
	// DataReady: loaded (a branch anonymised, a seed job done).
	DataReady DataPhase = "Ready"
	// DataFailed: it could not be made; the message says why.
	DataFailed DataPhase = "Failed"
)

// DataStatus is one data source's state.
type DataStatus struct {
	// Name of the data entry.
	Name string `json:"name"`
	// Kind of the data entry.
	Kind string `json:"kind"`
	// Phase is where it is.
	//
	// +optional
	Phase DataPhase `json:"phase,omitempty"`
	// Rows restored into the branch.
	//
	// +optional
	Rows int64 `json:"rows,omitempty"`
	// Bytes is the branch database's size once restored.
	//
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
	// Duration is how long it took to be Ready (or to fail), or has taken
	// so far.
	//
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`
	// Endpoint is the branch's address, host:port.
	//
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// Secret holds the branch's connection (keys url, host, port, user,
	// password, database).
	//
	// +optional
	Secret string `json:"secret,omitempty"`
	// Job is the Job (or lab pod) that does the work.
	//
	// +optional
	Job string `json:"job,omitempty"`
	// Message says what it waits for or why it failed.
	//
	// +optional
	Message string `json:"message,omitempty"`
}

// RouteKind is what one of an environment's intercepts does.
//
// +kubebuilder:validation:Enum=session;forks
type RouteKind string

// The route kinds.
const (
	// RouteSession: requests with the key reach the fork.
	RouteSession RouteKind = "session"
	// RouteForks: connections from the environment's fork pods reach the
	// fork, redirected at connect() where the caller's node can.
	RouteForks RouteKind = "forks"
)

// RouteStatus is one intercept the environment owns.
type RouteStatus struct {
	// Intercept is the intercept's name (in the environment's namespace).
	Intercept string `json:"intercept"`
	// Kind says what it routes.
	Kind RouteKind `json:"kind"`
	// Service and Port are the service port it intercepts.
	Service string `json:"service"`
	Port    int32  `json:"port"`
	// Fork is the fork workload it routes to.
	Fork string `json:"fork"`
	// State is the intercept's state (Pending, Active, Failed).
	//
	// +optional
	State InterceptState `json:"state,omitempty"`
}

// EnvironmentList is a list of Environments.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
type EnvironmentList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Environment `json:"items"`
}
