// Package check is the ParityCheck reconciler: for each ParityCheck
// resource it reads the two namespaces the check names (pkg/parity/live),
// compares them under the check's policy (parity.Diff), writes the report's
// summary and its differences, bounded and secret-safe, to the check's
// status, and exports the metrics detour_parity_differences and
// detour_parity_last_run_timestamp_seconds. Runs come every spec.interval,
// at once when the spec changes, and when the annotation RunAnnotation is
// given a new value. The controller runs it under its leader lease; see
// docs/parity.md, "ParityCheck".
package check

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	ac "github.com/detourdev/detour/pkg/generated/applyconfiguration/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	informers "github.com/detourdev/detour/pkg/generated/informers/externalversions"
	listers "github.com/detourdev/detour/pkg/generated/listers/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/live"
)

// RunAnnotation runs a check now when its value changes:
// kubectl annotate paritycheck NAME detour.dev/parity-run="$(date +%s)" --overwrite.
const RunAnnotation = "detour.dev/parity-run"

// Intervals.
const (
	// DefaultInterval is spec.interval when absent.
	DefaultInterval = 10 * time.Minute
	// MinInterval is the shortest interval (the schema refuses less).
	MinInterval = time.Minute
	// RetryInterval is how soon a run that could not compare is tried
	// again, at most (a namespace not made yet, a policy being fixed).
	RetryInterval = time.Minute
	// RunTimeout bounds one run: reading two namespaces and comparing.
	RunTimeout = 2 * time.Minute
)

// Config is what a Reconciler depends on.
type Config struct {
	// Kube reads the namespaces compared and the policy ConfigMaps.
	Kube kubernetes.Interface
	// Detour watches the ParityChecks and writes their status.
	Detour versioned.Interface
	// FieldManager names the status writes (server-side apply).
	FieldManager string
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Reconciler runs ParityChecks.
type Reconciler struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	queue workqueue.TypedRateLimitingInterface[string]

	mu   sync.Mutex
	last map[string]lastRun // by namespace/name: what this process last ran
}

// lastRun is what a check's last run in this process was made of (a new
// generation or run annotation makes the check due at once), and the
// status it wrote, which the cache may not have yet.
type lastRun struct {
	at         time.Time
	generation int64
	trigger    string
	status     v1alpha1.ParityCheckStatus
}

// New checks cfg and registers the metrics.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Kube == nil || cfg.Detour == nil || cfg.FieldManager == "" {
		return nil, errors.New("parity checks: Kube, Detour and FieldManager are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Reconciler{
		cfg: cfg, log: cfg.Logger, m: m,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "parity_checks"}),
		last: map[string]lastRun{},
	}, nil
}

// Run watches ParityChecks and runs them until ctx ends. It may be called
// once.
func (r *Reconciler) Run(ctx context.Context) error {
	defer r.queue.ShutDown()
	factory := informers.NewSharedInformerFactory(r.cfg.Detour, 0)
	inf := factory.Detour().V1alpha1().ParityChecks()
	informer, lister := inf.Informer(), inf.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			r.queue.Add(key)
		}
	}
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue,
		// Status writes are updates too: only a new spec or a new run
		// request matters.
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*v1alpha1.ParityCheck)
			n, ok2 := obj.(*v1alpha1.ParityCheck)
			if !ok1 || !ok2 || o.Generation != n.Generation || o.Annotations[RunAnnotation] != n.Annotations[RunAnnotation] {
				enqueue(obj)
			}
		},
		DeleteFunc: enqueue,
	})
	if err != nil {
		return fmt.Errorf("parity checks: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return nil // ctx ended
	}
	r.log.Info("running parity checks", "field_manager", r.cfg.FieldManager)
	var wg sync.WaitGroup
	defer wg.Wait()
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r.next(ctx, lister) {
			}
		}()
	}
	<-ctx.Done()
	r.queue.ShutDown()
	return nil
}

func (r *Reconciler) next(ctx context.Context, lister listers.ParityCheckLister) bool {
	key, quit := r.queue.Get()
	if quit {
		return false
	}
	defer r.queue.Done(key)
	after, err := r.Reconcile(ctx, lister, key)
	switch {
	case err != nil && ctx.Err() == nil:
		r.log.Warn("parity check failed; retrying", "check", key, "err", err)
		r.queue.AddRateLimited(key)
	case err == nil:
		r.queue.Forget(key)
		if after > 0 {
			r.queue.AddAfter(key, after)
		}
	}
	return true
}

// Reconcile runs the check key (namespace/name) if it is due, and returns
// when to look again. A check that is gone loses its metrics.
func (r *Reconciler) Reconcile(ctx context.Context, lister listers.ParityCheckLister, key string) (time.Duration, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, nil // not a key of ours; retrying cannot help
	}
	cached, err := lister.ParityChecks(ns).Get(name)
	if apierrors.IsNotFound(err) {
		r.forget(key)
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	interval := intervalOf(cached)
	now := r.cfg.Now()
	r.mu.Lock()
	last, ran := r.last[key]
	r.mu.Unlock()
	trigger := cached.Annotations[RunAnnotation]
	if ran && last.generation == cached.Generation && last.trigger == trigger {
		if next := last.at.Add(interval); now.Before(next) {
			return next.Sub(now), nil
		}
	}
	pc := cached.DeepCopy() // never change the cache's
	if ran {
		pc.Status = last.status
	}
	st, wait := r.run(ctx, pc, interval)
	_, err = r.cfg.Detour.DetourV1alpha1().ParityChecks(ns).ApplyStatus(ctx,
		ac.ParityCheck(name, ns).WithStatus(applyStatus(&st)),
		metav1.ApplyOptions{FieldManager: r.cfg.FieldManager, Force: true})
	if apierrors.IsNotFound(err) { // deleted while it ran
		r.forget(key)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("write status: %w", err)
	}
	r.mu.Lock()
	r.last[key] = lastRun{at: now, generation: pc.Generation, trigger: trigger, status: st}
	r.mu.Unlock()
	return wait, nil
}

// run compares the check's two namespaces and returns the status to write
// and when to run again.
func (r *Reconciler) run(ctx context.Context, pc *v1alpha1.ParityCheck, interval time.Duration) (v1alpha1.ParityCheckStatus, time.Duration) {
	key := pc.Namespace + "/" + pc.Name
	ctx, cancel := context.WithTimeout(ctx, RunTimeout)
	defer cancel()
	start := r.cfg.Now()
	fail := func(reason string, err error) (v1alpha1.ParityCheckStatus, time.Duration) {
		r.m.runs.WithLabelValues(resultError).Inc()
		r.log.Warn("parity check could not compare", "check", key, "reason", reason, "err", err)
		return failedStatus(&pc.Status, pc.Generation, reason, err.Error(), start), min(interval, RetryInterval)
	}
	pol, err := policyOf(ctx, r.cfg.Kube, pc)
	if errors.Is(err, errPolicy) {
		return fail(ReasonPolicyInvalid, err)
	}
	if err != nil {
		return fail(ReasonReadFailed, err)
	}
	// A key for this run only: Secret values of the two sides compare,
	// and nothing written can be checked against a guess later.
	fp, err := parity.NewRunFingerprinter()
	if err != nil {
		return fail(ReasonReadFailed, err)
	}
	var sides [2]*parity.Snapshot
	for i, ns := range []string{pc.Spec.Left, pc.Spec.Right} {
		s, err := live.Snapshot(ctx, r.cfg.Kube, ns, live.Options{Runtime: pc.Spec.Runtime}, parity.Options{Fingerprint: fp})
		if errors.Is(err, live.ErrNamespaceNotFound) {
			return fail(ReasonNamespaceNotFound, err)
		}
		if err != nil {
			return fail(ReasonReadFailed, err)
		}
		sides[i] = s
	}
	rep, err := parity.Diff(sides[0], sides[1], parity.DiffOptions{Policy: pol})
	if err != nil {
		return fail(ReasonReadFailed, err)
	}
	end := r.cfg.Now()
	r.m.observe(key, rep, pol, end)
	r.log.Info("parity check ran", "check", key, "result", rep.Summary.Result, "unexpected", rep.Summary.Unexpected,
		"failing", rep.Summary.Failing, "took", end.Sub(start).Round(time.Millisecond))
	return reportStatus(&pc.Status, pc.Generation, rep, end), interval
}

// forget drops a deleted check's metrics and memory.
func (r *Reconciler) forget(key string) {
	r.m.forget(key)
	r.mu.Lock()
	delete(r.last, key)
	r.mu.Unlock()
}

func intervalOf(pc *v1alpha1.ParityCheck) time.Duration {
	if pc.Spec.Interval == nil {
		return DefaultInterval
	}
	return max(pc.Spec.Interval.Duration, MinInterval)
}
