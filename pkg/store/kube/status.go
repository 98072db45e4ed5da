package kube

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	ac "github.com/detourdev/detour/pkg/generated/applyconfiguration/detour/v1alpha1"
	listers "github.com/detourdev/detour/pkg/generated/listers/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/store"
)

// DefaultStatusInterval is the least time between two status writes of one
// intercept: agents report every second, and a busy intercept's counters
// change with each report.
const DefaultStatusInterval = 2 * time.Second

// StatusOptions tunes a StatusWriter.
type StatusOptions struct {
	// FieldManager names the writes. It must differ from the Store's own,
	// which owns status.expiresAt: server-side apply then keeps each
	// writer to its fields.
	FieldManager string
	// Interval is the least time between two writes of one intercept's
	// status; DefaultStatusInterval when zero.
	Interval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Registerer gets detour_controller_status_writes_total; nil registers
	// nothing.
	Registerer prometheus.Registerer
}

// The results of a status write.
var statusResults = []string{"ok", "not_found", "error"}

// StatusWriter writes the status of Intercept resources from a
// store.StatusSource: Changed queues an intercept, and a worker compares the
// source's view with the informer's cache and applies the difference
// through the status subresource (server-side apply of the fields it owns:
// observedGeneration, state, matchSummary, nodes, conditions), at most once
// per Interval per intercept.
type StatusWriter struct {
	store    *Store
	manager  string
	interval time.Duration
	log      *slog.Logger
	writes   *prometheus.CounterVec
	now      func() time.Time

	// queue holds namespace/name keys. Changed may be called before Run:
	// the keys wait for it.
	queue workqueue.TypedRateLimitingInterface[string]

	mu        sync.Mutex
	lastWrite map[string]time.Time
}

// NewStatusWriter returns a writer of the Store's intercepts' status; Run
// starts it.
func (s *Store) NewStatusWriter(opts StatusOptions) (*StatusWriter, error) {
	if opts.FieldManager == "" || opts.FieldManager == s.fieldManager {
		return nil, fmt.Errorf("status writer: field manager %q: want one of its own, not empty or the Store's", opts.FieldManager)
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultStatusInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	writes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "detour", Subsystem: "controller", Name: "status_writes_total",
		Help: "Writes of Intercept resources' status by result (ok, not_found, error); unchanged status is not written.",
	}, []string{"result"})
	for _, r := range statusResults {
		writes.WithLabelValues(r)
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(writes); err != nil {
			return nil, fmt.Errorf("status writer metrics: %w", err)
		}
	}
	return &StatusWriter{
		store:    s,
		manager:  opts.FieldManager,
		interval: opts.Interval,
		log:      opts.Logger,
		writes:   writes,
		now:      time.Now,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "intercept_status"}),
		lastWrite: map[string]time.Time{},
	}, nil
}

// Changed says the status of namespace/name may have changed. It does not
// block, and costs nothing to call often: a key already waiting is not
// queued twice, and one written less than Interval ago waits out the rest.
func (w *StatusWriter) Changed(namespace, name string) {
	key := namespace + "/" + name
	w.queue.AddAfter(key, w.wait(key))
}

// wait is how long key must still wait for its next write.
func (w *StatusWriter) wait(key string) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	last, ok := w.lastWrite[key]
	if !ok {
		return 0
	}
	return last.Add(w.interval).Sub(w.now())
}

// Run writes status until ctx ends. It also queues every intercept the
// informer sees added or changed, so that a status edited by hand, or a
// write lost with a restart, is put right. Run may be called once.
func (w *StatusWriter) Run(ctx context.Context, src store.StatusSource) error {
	defer w.queue.ShutDown()
	informer, lister, err := w.store.sharedInformer()
	if err != nil {
		return fmt.Errorf("status writer: %w", err)
	}
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			w.queue.Add(key)
		}
	}
	reg, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	if err != nil {
		return fmt.Errorf("status writer: %w", err)
	}
	defer func() { _ = informer.RemoveEventHandler(reg) }()
	if err := w.store.waitSynced(ctx, informer); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("status writer: %w", err)
	}
	w.log.Info("writing intercept status", "field_manager", w.manager, "interval", w.interval)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for w.processNext(ctx, src, lister) {
		}
	}()
	select {
	case <-ctx.Done():
	case <-w.store.closed:
	}
	w.queue.ShutDown()
	<-done
	return nil
}

func (w *StatusWriter) processNext(ctx context.Context, src store.StatusSource, lister listers.InterceptLister) bool {
	key, quit := w.queue.Get()
	if quit {
		return false
	}
	defer w.queue.Done(key)
	retry, err := w.sync(ctx, key, src, lister)
	switch {
	case err != nil:
		w.log.Warn("write intercept status; retrying", "intercept", key, "err", err)
		w.queue.AddRateLimited(key)
	case retry > 0:
		w.queue.AddAfter(key, retry)
	default:
		w.queue.Forget(key)
	}
	return true
}

// sync writes key's status if it differs from the cache's, or says how long
// to wait when the last write was too recent.
func (w *StatusWriter) sync(ctx context.Context, key string, src store.StatusSource, lister listers.InterceptLister) (time.Duration, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, nil // not a key of ours; retrying cannot help
	}
	cached, err := lister.Intercepts(ns).Get(name)
	if apierrors.IsNotFound(err) {
		w.forget(key)
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	obs, ok := src.ObservedStatus(ns, name)
	if !ok {
		return 0, nil // the source calls Changed once it knows
	}
	if spec, err := cached.Spec.ToProto(ns); err != nil || !proto.Equal(spec, obs.Spec) {
		// The cache and the source are at different versions: whichever
		// is behind will call again (an informer event, Changed).
		return 0, nil
	}
	now := metav1.NewTime(w.now()).Rfc3339Copy()
	want := desiredStatus(cached, obs, now)
	if ownedEqual(&cached.Status, &want) {
		return 0, nil
	}
	if d := w.wait(key); d > 0 {
		return d, nil
	}
	_, err = w.store.client.DetourV1alpha1().Intercepts(ns).ApplyStatus(ctx,
		ac.Intercept(name, ns).WithStatus(applyConfig(&want)),
		metav1.ApplyOptions{FieldManager: w.manager, Force: true})
	switch {
	case apierrors.IsNotFound(err): // deleted since the cache saw it
		w.writes.WithLabelValues("not_found").Inc()
		w.forget(key)
		return 0, nil
	case err != nil:
		w.writes.WithLabelValues("error").Inc()
		return 0, fmt.Errorf("apply status: %w", err)
	}
	w.writes.WithLabelValues("ok").Inc()
	w.mu.Lock()
	w.lastWrite[key] = w.now()
	w.mu.Unlock()
	w.log.Debug("intercept status written", "intercept", key, "state", want.State)
	return 0, nil
}

func (w *StatusWriter) forget(key string) {
	w.mu.Lock()
	delete(w.lastWrite, key)
	w.mu.Unlock()
}

// desiredStatus is the status the writer owns for obj, from what the source
// observed. A condition keeps its transition time while its status stays.
// obj belongs to the cache and is only read.
func desiredStatus(obj *v1alpha1.Intercept, obs store.Observed, now metav1.Time) v1alpha1.InterceptStatus {
	st := v1alpha1.InterceptStatus{
		ObservedGeneration: obj.Generation,
		State:              obs.State,
		MatchSummary:       obj.Spec.MatchSummary(),
	}
	for _, n := range obs.Nodes {
		if n.GetNode() != "" { // the schema's list is keyed by node
			st.Nodes = append(st.Nodes, v1alpha1.NodeStatusFromProto(n))
		}
	}
	for _, c := range obs.Conditions {
		c.ObservedGeneration = obj.Generation
		c.LastTransitionTime = now
		if old := meta.FindStatusCondition(obj.Status.Conditions, c.Type); old != nil && old.Status == c.Status {
			c.LastTransitionTime = old.LastTransitionTime
		}
		c.Message = truncate(c.Message, maxMessage)
		st.Conditions = append(st.Conditions, c)
	}
	return st
}

// maxMessage keeps a condition's message well inside the schema's 32768.
const maxMessage = 4096

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// ownedEqual compares the fields the writer owns; expiresAt and conditions
// of other types belong to others.
func ownedEqual(cur, want *v1alpha1.InterceptStatus) bool {
	if cur.ObservedGeneration != want.ObservedGeneration || cur.State != want.State ||
		cur.MatchSummary != want.MatchSummary || !slices.Equal(cur.Nodes, want.Nodes) {
		return false
	}
	for _, c := range want.Conditions {
		old := meta.FindStatusCondition(cur.Conditions, c.Type)
		if old == nil || old.Status != c.Status || old.Reason != c.Reason || old.Message != c.Message ||
			old.ObservedGeneration != c.ObservedGeneration || !old.LastTransitionTime.Equal(&c.LastTransitionTime) {
			return false
		}
	}
	return true
}

// applyConfig turns the owned fields into an apply configuration. Zero
// counters and empty errors are left out, so a field the writer once set
// and no longer sets is removed.
func applyConfig(st *v1alpha1.InterceptStatus) *ac.InterceptStatusApplyConfiguration {
	out := ac.InterceptStatus().
		WithObservedGeneration(st.ObservedGeneration).
		WithMatchSummary(st.MatchSummary)
	if st.State != "" {
		out.WithState(st.State)
	}
	for _, n := range st.Nodes {
		nc := ac.InterceptNodeStatus().WithNode(n.Node)
		if n.SteeringAttached {
			nc.WithSteeringAttached(true)
		}
		if n.Matched != 0 {
			nc.WithMatched(n.Matched)
		}
		if n.Fallbacks != 0 {
			nc.WithFallbacks(n.Fallbacks)
		}
		if n.SteeredConnections != 0 {
			nc.WithSteeredConnections(n.SteeredConnections)
		}
		if n.Error != "" {
			nc.WithError(n.Error)
		}
		out.WithNodes(nc)
	}
	for _, c := range st.Conditions {
		out.WithConditions(metav1ac.Condition().
			WithType(c.Type).
			WithStatus(c.Status).
			WithReason(c.Reason).
			WithMessage(c.Message).
			WithObservedGeneration(c.ObservedGeneration).
			WithLastTransitionTime(c.LastTransitionTime))
	}
	return out
}
