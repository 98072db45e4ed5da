// Package environment compares an environment with what it forks: it reads
// the environment's namespace once, takes the baseline (the namespace
// without any environment's forks) and the environment as it runs (its
// forks in place of the workloads they fork, parity.Overlay), and diffs
// the two. `detour parity diff ... env/NAME` reads a side through Resolver;
// the environments reconciler keeps Summary in an Environment's
// status.parity. See docs/parity.md, "Environments".
package environment

import (
	"context"
	"fmt"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/live"
	"github.com/detourdev/detour/pkg/parity/source"
)

// The variables every fork's containers get (envmgr.EnvVarEnvironment and
// envmgr.EnvVarSession; envmgr imports this package, so they are written
// again here, and a test holds the two together).
const (
	envVarEnvironment = "DETOUR_ENV"
	envVarSession     = "DETOUR_SESSION"
)

// ForkPaths are the fields of a fork that the view of its environment
// takes from the workload it forks: what the environments reconciler
// writes to keep a fork a separate object (its labels and annotations, a
// selector and pod labels no baseline Service selects, the variables that
// name its environment, a StatefulSet fork's claim policy), not what the
// environment changes.
var ForkPaths = []string{
	"/metadata/labels",
	"/metadata/annotations",
	"/spec/selector",
	"/spec/paused",
	"/spec/template/metadata/labels",
	"/spec/template/spec/containers/*/env/" + envVarEnvironment,
	"/spec/template/spec/containers/*/env/" + envVarSession,
	"/spec/template/spec/initContainers/*/env/" + envVarEnvironment,
	"/spec/template/spec/initContainers/*/env/" + envVarSession,
	"/spec/persistentVolumeClaimRetentionPolicy",
	"/spec/volumeClaimTemplates/*/metadata/labels",
}

// forkedKinds are the kinds an environment forks.
var forkedKinds = map[string]bool{string(v1alpha1.WorkloadDeployment): true, string(v1alpha1.WorkloadStatefulSet): true}

// forkOf says what a workload with these labels is: a fork of env (and the
// workload it forks), another environment's fork (the zero key), or no
// fork at all.
func forkOf(kind string, lbls map[string]string, env string) (target parity.ObjectKey, isFork bool) {
	owner, ok := lbls[v1alpha1.LabelEnvironment]
	if !ok || !forkedKinds[kind] {
		return parity.ObjectKey{}, false
	}
	if of := lbls[v1alpha1.LabelForkOf]; owner == env && of != "" {
		return parity.ObjectKey{Kind: kind, Name: of}, true
	}
	return parity.ObjectKey{}, true
}

// Forks finds the forks among a namespace's objects as live.Read returns
// them: env's mapped to the workload each forks, other environments' to
// the zero key (dropped from every view). With env "", every fork maps to
// the zero key: the baseline.
func Forks(objs []map[string]any, env string) map[parity.ObjectKey]parity.ObjectKey {
	out := map[parity.ObjectKey]parity.ObjectKey{}
	for _, o := range objs {
		kind, _ := o["kind"].(string)
		md, _ := o["metadata"].(map[string]any)
		name, _ := md["name"].(string)
		raw, _ := md["labels"].(map[string]any)
		lbls := make(map[string]string, len(raw))
		for k, v := range raw {
			lbls[k], _ = v.(string)
		}
		if target, ok := forkOf(kind, lbls, env); ok {
			out[parity.ObjectKey{Kind: kind, Name: name}] = target
		}
	}
	return out
}

// baseline maps every fork to the zero key.
func baseline(forks map[parity.ObjectKey]parity.ObjectKey) map[parity.ObjectKey]parity.ObjectKey {
	out := make(map[parity.ObjectKey]parity.ObjectKey, len(forks))
	for k := range forks {
		out[k] = parity.ObjectKey{}
	}
	return out
}

// Sides reads env's namespace once and returns its baseline and env as it
// runs, both read with one fingerprint key, so Secret values compare.
func Sides(ctx context.Context, kube kubernetes.Interface, env *v1alpha1.Environment) (base, view *parity.Snapshot, err error) {
	res, err := live.Read(ctx, kube, env.Namespace, live.Options{})
	if err != nil {
		return nil, nil, err
	}
	fp, err := parity.NewRunFingerprinter()
	if err != nil {
		return nil, nil, err
	}
	snap, err := parity.Normalize(res.Objects, parity.Options{Source: env.Namespace, Namespace: env.Namespace, Fingerprint: fp, Unread: res.Unread,
		KeepNoise: []string{parity.RuleEnvironmentForks}}) // the forks are read, to stand in for what they fork
	if err != nil {
		return nil, nil, err
	}
	forks := Forks(res.Objects, env.Name)
	return parity.Overlay(snap, baseline(forks), env.Namespace),
		parity.Overlay(snap, forks, "env/"+env.Name, ForkPaths...), nil
}

// Policy is what Summary compares under: a fork runs its own replica count
// (spec.forks[].replicas, 1 by default) by design.
var Policy = &parity.Policy{Expected: []parity.Rule{{
	Path: "/spec/replicas", Category: parity.CategoryReplicas,
	Reason: "a fork runs its own replica count",
}}}

// Interval is how often an Environment's status.parity is taken again
// while nothing else changes.
const Interval = 10 * time.Minute

// Summary compares env with its baseline and sums it up for its status:
// counts by severity and category, and which fields differ, never a value.
// It reads the namespace with get and list only.
func Summary(ctx context.Context, kube kubernetes.Interface, env *v1alpha1.Environment) (*v1alpha1.EnvironmentParity, error) {
	base, view, err := Sides(ctx, kube, env)
	if err != nil {
		return nil, fmt.Errorf("parity of environment %s/%s: %w", env.Namespace, env.Name, err)
	}
	rep, err := parity.Diff(base, view, parity.DiffOptions{Policy: Policy})
	if err != nil {
		return nil, fmt.Errorf("parity of environment %s/%s: %w", env.Namespace, env.Name, err)
	}
	return summarize(rep, env.Generation, time.Now()), nil
}

// summarize turns a report into the status field.
func summarize(rep *parity.Report, generation int64, now time.Time) *v1alpha1.EnvironmentParity {
	p := &v1alpha1.EnvironmentParity{
		Time:               metav1.NewTime(now.UTC().Truncate(time.Second)),
		ObservedGeneration: generation,
		Differences:        int32(rep.Summary.Unexpected),
		Expected:           int32(rep.Summary.Expected),
	}
	for s, n := range rep.Summary.BySeverity {
		if n > 0 {
			if p.BySeverity == nil {
				p.BySeverity = map[string]int32{}
			}
			p.BySeverity[string(s)] = int32(n)
		}
	}
	for c, n := range rep.Summary.ByCategory {
		if n > 0 {
			if p.ByCategory == nil {
				p.ByCategory = map[string]int32{}
			}
			p.ByCategory[string(c)] = int32(n)
		}
	}
	var ds []parity.Difference
	for _, d := range rep.Differences {
		if !d.Expected && !d.Ignored {
			ds = append(ds, d)
		}
	}
	// The most severe first; Diff's order (by object, then path) within.
	sort.SliceStable(ds, func(i, j int) bool {
		return ds[i].Severity != ds[j].Severity && ds[i].Severity.AtLeast(ds[j].Severity)
	})
	for _, d := range ds {
		if len(p.Fields) == v1alpha1.MaxParityFields {
			p.Truncated = true
			break
		}
		f := d.Object()
		if d.Path != "" {
			f += " " + d.Path
		}
		p.Fields = append(p.Fields, f)
	}
	return p
}

// Due says whether env's status.parity should be taken again at now: it
// has none, it is of another generation, or it is Interval old; else,
// how long until it is.
func Due(env *v1alpha1.Environment, now time.Time) (bool, time.Duration) {
	p := env.Status.Parity
	if p == nil || p.ObservedGeneration != env.Generation {
		return true, 0
	}
	next := p.Time.Add(Interval)
	if !now.Before(next) {
		return true, 0
	}
	return false, next.Sub(now)
}

// RetryInterval is how soon Refresh tries again after a comparison failed.
const RetryInterval = time.Minute

// Refresh is the environments reconciler's hook: the status.parity env
// should show at now, and how soon to call again. It compares only when
// Due; otherwise, and when the comparison fails (err says why), it returns
// the summary env already has, so a failure never drops it.
func Refresh(ctx context.Context, kube kubernetes.Interface, env *v1alpha1.Environment, now time.Time) (*v1alpha1.EnvironmentParity, time.Duration, error) {
	due, wait := Due(env, now)
	if !due {
		return env.Status.Parity, wait, nil
	}
	p, err := Summary(ctx, kube, env)
	if err != nil {
		return env.Status.Parity, RetryInterval, err
	}
	p.Time = metav1.NewTime(now.UTC().Truncate(time.Second)) // the reconciler's clock
	return p, Interval, nil
}

// Resolver reads env/NAME from a cluster: the Environment resource in
// Namespace, and the forks in its namespace by their labels. It only gets
// and lists.
type Resolver struct {
	Detour    versioned.Interface
	Kube      kubernetes.Interface
	Namespace string
}

var _ source.Environments = (*Resolver)(nil)

// Resolve implements source.Environments.
func (r *Resolver) Resolve(ctx context.Context, name string) (*source.EnvironmentView, error) {
	env, err := r.Detour.DetourV1alpha1().Environments(r.Namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("%w: no environment %s in namespace %s (-n names another)", source.ErrNotFound, name, r.Namespace)
	case err != nil:
		return nil, fmt.Errorf("environment %s in namespace %s: %w", name, r.Namespace, err)
	}
	sel := metav1.ListOptions{LabelSelector: v1alpha1.LabelEnvironment}
	forks := map[parity.ObjectKey]parity.ObjectKey{}
	add := func(kind string, objs []metav1.ObjectMeta) {
		for _, m := range objs {
			if target, ok := forkOf(kind, m.Labels, env.Name); ok {
				forks[parity.ObjectKey{Kind: kind, Name: m.Name}] = target
			}
		}
	}
	ds, err := r.Kube.AppsV1().Deployments(env.Namespace).List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("forks of environment %s: %w", name, err)
	}
	var metas []metav1.ObjectMeta
	for _, d := range ds.Items {
		metas = append(metas, d.ObjectMeta)
	}
	add(string(v1alpha1.WorkloadDeployment), metas)
	ss, err := r.Kube.AppsV1().StatefulSets(env.Namespace).List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("forks of environment %s: %w", name, err)
	}
	metas = metas[:0]
	for _, s := range ss.Items {
		metas = append(metas, s.ObjectMeta)
	}
	add(string(v1alpha1.WorkloadStatefulSet), metas)
	return &source.EnvironmentView{Namespace: env.Namespace, Forks: forks, Keep: ForkPaths}, nil
}

// Unavailable is the Environments of a CLI without a cluster (the lab):
// an environment's forks there are lab pods, not objects of a namespace.
type Unavailable struct{}

// Resolve implements source.Environments.
func (Unavailable) Resolve(context.Context, string) (*source.EnvironmentView, error) {
	return nil, fmt.Errorf("%w: in the lab an environment's forks are lab pods, not objects of a namespace parity can read; compare environments in a cluster",
		source.ErrNoEnvironments)
}
