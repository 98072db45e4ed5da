package envmgr

import (
	"context"
	"errors"

	corev1 "k8s.io/api/core/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// Errors a Workloads returns, wrapped with what was asked for; test with
// errors.Is. Both make the environment Failed until its spec changes.
var (
	// ErrWorkloadNotFound: the baseline has no such workload.
	ErrWorkloadNotFound = errors.New("workload not found")
	// ErrUnsupported: the runtime cannot fork this (a kind it does not
	// know; an override the lab cannot run, such as an image).
	ErrUnsupported = errors.New("not supported")
	// ErrNotOurs: an object with a fork's name exists and belongs to
	// something else; it is never taken over.
	ErrNotOurs = errors.New("exists and does not belong to the environment")
)

// ForkRef names a fork that exists.
type ForkRef struct {
	Kind v1alpha1.WorkloadKind
	Name string
}

// Workloads is where forks run: a cluster's Deployments and StatefulSets
// (package envmgr/cluster), or the lab's network namespaces (envmgr/labenv).
// Every method is idempotent, so a reconcile that stopped at any line can
// run again.
type Workloads interface {
	// Baseline finds a workload of the baseline namespace.
	Baseline(ctx context.Context, namespace string, ref v1alpha1.WorkloadRef) (*Baseline, error)
	// Check refuses, before anything is made, a fork this runtime cannot
	// run (ErrUnsupported: an image in the lab).
	Check(b *Baseline, p *ForkPlan) error
	// Apply makes the fork p of env, or brings an existing one to p.
	Apply(ctx context.Context, env *v1alpha1.Environment, b *Baseline, p *ForkPlan) error
	// Observe reports the fork's state; Exists is false when it is not
	// there (yet).
	Observe(ctx context.Context, p *ForkPlan) (ForkObservation, error)
	// Forks lists the forks of env that exist, whatever its spec says now.
	Forks(ctx context.Context, namespace, env string) ([]ForkRef, error)
	// Delete removes a fork with its pods and storage; a fork already gone
	// is not an error.
	Delete(ctx context.Context, namespace string, f ForkRef) error
}

// IsRefusal tells whether err means the environment's spec or baseline must
// change for it to succeed, rather than a retry.
func IsRefusal(err error) bool {
	return errors.Is(err, ErrWorkloadNotFound) || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrNotOurs)
}

// DataStage is what a Data runner may do now: seed jobs wait for the forks.
type DataStage struct {
	// ForksReady reports that every fork's pods were ready at the last
	// look (the ForksReady condition).
	ForksReady bool
}

// DataResult is a Data runner's progress.
type DataResult struct {
	// Observations, one per data entry of the spec.
	Observations []DataObservation
	// BranchesReady reports that every data source the forks depend on
	// (a database branch, anonymised) is ready: forks are not made before,
	// so that none sees data it must not.
	BranchesReady bool
	// ForkEnv is what each forked workload's containers get, by the
	// workload's name: a branch's connection (from the environment's
	// Secret), replacing the baseline's.
	ForkEnv map[string][]corev1.EnvVar
}

// Data makes an environment's data of its own: database branches before
// its forks start, seed jobs once they run (docs/architecture.md,
// "Environment data"). Every method is idempotent.
type Data interface {
	// Sync makes or advances the environment's data sources.
	Sync(ctx context.Context, env *v1alpha1.Environment, stage DataStage) (DataResult, error)
	// Cleanup removes every data source made for env, storage included;
	// what is already gone is not an error.
	Cleanup(ctx context.Context, env *v1alpha1.Environment) error
}
