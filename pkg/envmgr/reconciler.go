package envmgr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/workqueue"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/controller"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/store"
)

// Intercepts is the controller's side of the intercepts an environment owns
// (controller.Server).
type Intercepts interface {
	ApplyOwned(ctx context.Context, ic *detourv1.Intercept) error
	DeleteOwned(ctx context.Context, namespace, name string, owner *detourv1.Owner) error
	Owned(namespace string, owner *detourv1.Owner) []controller.OwnedIntercept
	SubscribeOwned(fn func(namespace, kind, owner string))
}

// Events tells users what happened to an environment where they look
// (`kubectl describe`, Kubernetes Events); nil logs only.
type Events interface {
	Event(env *v1alpha1.Environment, warning bool, reason, message string)
}

// Config is what a Reconciler depends on.
type Config struct {
	Store      store.Environments // required
	Workloads  Workloads          // required
	Intercepts Intercepts         // required
	Inventory  inventory.Source   // required: the services over the baseline
	// Data makes data sources (database branches, seed jobs); nil: an
	// environment with data entries fails, saying so.
	Data Data
	// Parity keeps a Ready environment's status.parity (its differences
	// from its baseline, pkg/parity/environment.Refresh): the summary, and
	// how soon to look again; nil: none (the lab).
	Parity     func(ctx context.Context, env *v1alpha1.Environment, now time.Time) (*v1alpha1.EnvironmentParity, time.Duration, error)
	Limits     Limits
	Events     Events
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Poll is how soon an environment that is not Ready is looked at again
	// without a change to wake it (pods becoming ready in the lab, where
	// nothing announces it); 250 ms when zero.
	Poll time.Duration
	// Resync looks at every environment this often, whatever happened;
	// 30 s when zero.
	Resync time.Duration
}

// Reconciler makes each environment's forks and routes match its spec,
// reports progress in its status, and removes everything at the end of its
// TTL or when it is deleted. Every step is idempotent and re-derived from
// what exists, so it carries on after a crash at any line.
type Reconciler struct {
	cfg   Config
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[string]
	m     *metrics

	mu     sync.Mutex
	phases map[string]v1alpha1.EnvironmentPhase // env key → last phase, for the metrics
	ready  map[string]bool                      // env keys whose time to Ready was observed
}

// NewReconciler checks cfg.
func NewReconciler(cfg Config) (*Reconciler, error) {
	if cfg.Store == nil || cfg.Workloads == nil || cfg.Intercepts == nil || cfg.Inventory == nil {
		return nil, errors.New("envmgr: Store, Workloads, Intercepts and Inventory are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Poll == 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Reconciler{
		cfg: cfg, log: cfg.Logger, m: m,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedMaxOfRateLimiter(
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 30*time.Second),
			),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "environments"}),
		phases: map[string]v1alpha1.EnvironmentPhase{},
		ready:  map[string]bool{},
	}, nil
}

// Run reconciles until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	if err := r.cfg.Store.SubscribeEnvironments(ctx, func(ns, name string) { r.queue.Add(ns + "/" + name) }); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("environments: subscribe: %w", err)
	}
	r.cfg.Intercepts.SubscribeOwned(func(ns, kind, owner string) {
		if kind == "Environment" {
			r.queue.Add(ns + "/" + owner)
		}
	})
	var wg sync.WaitGroup
	// Deferred in this order: the queue shuts down first, which ends the
	// workers' Get, then they are waited for.
	defer wg.Wait()
	defer r.queue.ShutDown()
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r.next(ctx) {
			}
		}()
	}
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	r.enqueueAll(ctx)
	// The inventory's changes reach us through the controller: it replans
	// its intercepts on each, and every change of an environment's routes
	// is announced by SubscribeOwned. (Its Changed channel has one reader,
	// the controller.)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
			r.enqueueAll(ctx)
		}
	}
}

func (r *Reconciler) enqueueAll(ctx context.Context) {
	envs, err := r.cfg.Store.ListEnvironments(ctx, "")
	if err != nil {
		r.log.Warn("list environments", "err", err)
		return
	}
	for _, e := range envs {
		r.queue.Add(e.Namespace + "/" + e.Name)
	}
}

func (r *Reconciler) next(ctx context.Context) bool {
	key, quit := r.queue.Get()
	if quit {
		return false
	}
	defer r.queue.Done(key)
	ns, name, _ := strings.Cut(key, "/")
	after, err := r.Reconcile(ctx, ns, name)
	switch {
	case errors.Is(err, errRetry):
		r.log.Debug("environment changed while reconciled; again", "environment", key)
		r.queue.AddRateLimited(key)
	case err != nil && ctx.Err() == nil:
		r.log.Warn("environment reconcile failed; retrying", "environment", key, "err", err)
		r.queue.AddRateLimited(key)
	case err == nil:
		r.queue.Forget(key)
		if after > 0 {
			r.queue.AddAfter(key, after)
		}
	}
	return true
}

// owner is the Owner of env's intercepts.
func owner(env *v1alpha1.Environment) *detourv1.Owner {
	return &detourv1.Owner{Kind: "Environment", Name: env.Name, Uid: string(env.UID)}
}

// Reconcile brings one environment a step closer to its spec and returns
// when to look again (0: when something changes).
func (r *Reconciler) Reconcile(ctx context.Context, namespace, name string) (time.Duration, error) {
	env, err := r.cfg.Store.GetEnvironment(ctx, namespace, name)
	if errors.Is(err, store.ErrNotFound) {
		// Gone without us (its resource deleted with the finalizer
		// removed by hand): take away what it left.
		return 0, r.cleanup(ctx, &v1alpha1.Environment{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}, false)
	}
	if err != nil {
		return 0, err
	}
	now := r.cfg.Now()
	if env.DeletionTimestamp != nil {
		return r.finalize(ctx, env, now)
	}
	if !slices.Contains(env.Finalizers, v1alpha1.EnvironmentFinalizer) {
		env.Finalizers = append(env.Finalizers, v1alpha1.EnvironmentFinalizer)
		_, err := r.cfg.Store.UpdateEnvironment(ctx, env)
		return 0, ignoreConflict(err)
	}
	obs := Observation{Now: now, ExpiresAt: r.expiresAt(env)}
	if !now.Before(obs.ExpiresAt) {
		// Say why it goes before it goes.
		if err := r.writeStatus(ctx, env, Status(env, obs)); err != nil {
			return 0, err
		}
		r.event(env, false, ReasonExpired, "the TTL ran out at "+obs.ExpiresAt.UTC().Format(time.RFC3339)+"; removing the environment")
		r.m.expired.Inc()
		if err := r.cfg.Store.DeleteEnvironment(ctx, namespace, name); err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, err
		}
		return 0, nil
	}

	r.provision(ctx, env, &obs)
	st := Status(env, obs)
	st.Parity = env.Status.Parity // Status builds the rest afresh
	var parityWait time.Duration
	if r.cfg.Parity != nil && st.Phase == v1alpha1.EnvironmentReady {
		p, next, err := r.cfg.Parity(ctx, env, now)
		if err != nil {
			r.log.Warn("environment parity", "environment", namespace+"/"+name, "err", err)
		}
		st.Parity, parityWait = p, next // on error p is the summary it had
	}
	if err := r.writeStatus(ctx, env, st); err != nil {
		return 0, err
	}
	r.observe(env, st, now)
	wait := obs.ExpiresAt.Sub(now)
	if st.Phase != v1alpha1.EnvironmentReady {
		wait = min(wait, r.cfg.Poll)
	}
	if parityWait > 0 {
		wait = min(wait, parityWait)
	}
	return max(wait, time.Millisecond), nil
}

// expiresAt is the environment's deadline: its status's, or its creation
// plus its TTL.
func (r *Reconciler) expiresAt(env *v1alpha1.Environment) time.Time {
	if env.Status.ExpiresAt != nil {
		return env.Status.ExpiresAt.Time
	}
	created := env.CreationTimestamp.Time
	if created.IsZero() {
		created = r.cfg.Now()
	}
	return created.Add(r.cfg.Limits.TTL(env))
}

// provision makes the forks and routes and fills obs with their state. A
// problem that waiting does not cure goes to obs.Failure; others are left
// for the next look.
func (r *Reconciler) provision(ctx context.Context, env *v1alpha1.Environment, obs *Observation) {
	fail := func(reason, msg string) {
		if obs.Failure == nil {
			obs.Failure = &Failure{Reason: reason, Message: msg}
		}
	}
	if err := Validate(env, r.cfg.Limits); err != nil {
		fail(ReasonInvalid, err.Error())
		return
	}
	inv, err := r.cfg.Inventory.Get()
	if err != nil {
		fail(ReasonProvisioning, "inventory unavailable: "+err.Error())
		return
	}
	var services []inventory.Service
	for _, s := range inv.Services {
		if s.Namespace == env.Namespace {
			services = append(services, s)
		}
	}
	var baselines []*Baseline
	var plans []*ForkPlan
	for i := range env.Spec.Forks {
		f := &env.Spec.Forks[i]
		b, err := r.cfg.Workloads.Baseline(ctx, env.Namespace, f.Workload)
		if err != nil {
			reason := ReasonProvisioning
			if errors.Is(err, ErrWorkloadNotFound) {
				reason = ReasonWorkloadAbsent
			} else if IsRefusal(err) {
				reason = ReasonInvalid
			}
			fail(reason, err.Error())
			continue
		}
		p, err := RenderFork(env, f, b, services)
		if err != nil {
			fail(ReasonInvalid, err.Error())
			continue
		}
		baselines, plans = append(baselines, b), append(plans, p)
	}
	routes, warnings := PlanRoutes(env, baselines, services)
	obs.Warnings = warnings

	// Data first: forks are made only once the branches they use are
	// ready, with their connections.
	branchesReady := true
	if len(env.Spec.Data) > 0 {
		if r.cfg.Data == nil {
			fail(ReasonInvalid, "this controller runs no data sources (data entries need a cluster or the lab)")
			return
		}
		stage := DataStage{ForksReady: conditionTrue(env, v1alpha1.EnvironmentConditionForksReady)}
		res, err := r.cfg.Data.Sync(ctx, env, stage)
		if err != nil {
			r.log.Warn("data", "environment", env.Namespace+"/"+env.Name, "err", err)
		}
		obs.Data, branchesReady = res.Observations, res.BranchesReady
		for _, p := range plans {
			p.WithEnv(res.ForkEnv[p.Baseline.Name])
		}
	}
	wanted := map[string]bool{}
	for i, p := range plans {
		wanted[p.Name] = true
		if !branchesReady {
			continue
		}
		if err := r.cfg.Workloads.Apply(ctx, env, baselines[i], p); err != nil {
			if IsRefusal(err) {
				fail(ReasonForkFailed, err.Error())
			} else {
				r.log.Warn("apply fork", "environment", env.Namespace+"/"+env.Name, "fork", p.Name, "err", err)
			}
		}
	}
	// Forks the spec no longer has.
	if existing, err := r.cfg.Workloads.Forks(ctx, env.Namespace, env.Name); err == nil && obs.Failure == nil {
		for _, f := range existing {
			if !wanted[f.Name] {
				if err := r.cfg.Workloads.Delete(ctx, env.Namespace, f); err == nil {
					r.event(env, false, "ForkRemoved", "removed fork "+f.Name+": no longer in the spec")
				}
			}
		}
	}
	for _, p := range plans {
		o, err := r.cfg.Workloads.Observe(ctx, p)
		if err != nil {
			o = ForkObservation{Plan: p, Message: err.Error()}
		}
		obs.Forks = append(obs.Forks, o)
	}

	// Routes: applied at once. Until the fork has a ready pod the
	// intercept sends nothing (the controller leaves it out of the desired
	// state), which is waiting, not failing.
	own := owner(env)
	current := map[string]controller.OwnedIntercept{}
	for _, o := range r.cfg.Intercepts.Owned(env.Namespace, own) {
		current[o.Name] = o
	}
	refused := map[string]string{}
	keep := map[string]bool{}
	for _, rt := range routes {
		keep[rt.Intercept] = true
		if err := r.cfg.Intercepts.ApplyOwned(ctx, routeIntercept(env, rt)); err != nil {
			switch status.Code(err) {
			case codes.FailedPrecondition, codes.InvalidArgument, codes.AlreadyExists:
				refused[rt.Intercept] = status.Convert(err).Message()
			default:
				r.log.Warn("apply route", "environment", env.Namespace+"/"+env.Name, "intercept", rt.Intercept, "err", err)
			}
		}
	}
	for n := range current {
		if !keep[n] {
			if err := r.cfg.Intercepts.DeleteOwned(ctx, env.Namespace, n, own); err != nil {
				r.log.Warn("delete stale route", "intercept", n, "err", err)
			}
		}
	}
	now := map[string]controller.OwnedIntercept{}
	for _, o := range r.cfg.Intercepts.Owned(env.Namespace, own) {
		now[o.Name] = o
	}
	for _, rt := range routes {
		ro := RouteObservation{Route: rt}
		if msg, ok := refused[rt.Intercept]; ok {
			ro.State, ro.Message = v1alpha1.InterceptFailed, msg
		} else if o, ok := now[rt.Intercept]; ok {
			ro.State, ro.Message = o.State, o.Message
		}
		obs.Routes = append(obs.Routes, ro)
	}
}

// routeIntercept is the intercept a route is.
func routeIntercept(env *v1alpha1.Environment, rt Route) *detourv1.Intercept {
	spec := &detourv1.InterceptSpec{
		ServiceNamespace: rt.Namespace,
		ServiceName:      rt.Service,
		Port:             uint32(rt.Port),
		DestinationPods:  &detourv1.PodSelector{Labels: rt.ForkSelector},
	}
	switch rt.Kind {
	case v1alpha1.RouteSession:
		spec.Match = []*detourv1.Condition{{Kind: detourv1.Condition_KIND_SESSION, Value: rt.Key}}
	case v1alpha1.RouteForks:
		spec.L4 = true
		spec.SourceSelector = rt.Sources
	}
	return &detourv1.Intercept{Namespace: rt.Namespace, Name: rt.Intercept, Spec: spec, Owner: owner(env)}
}

// finalize removes what the environment made, then lets it go.
func (r *Reconciler) finalize(ctx context.Context, env *v1alpha1.Environment, now time.Time) (time.Duration, error) {
	if env.Status.Phase != v1alpha1.EnvironmentDeleting && env.Status.Phase != v1alpha1.EnvironmentExpiring {
		st := Status(env, Observation{Now: now, Deleting: true, ExpiresAt: r.expiresAt(env)})
		if err := r.writeStatus(ctx, env, st); err != nil {
			return 0, err
		}
	}
	if !slices.Contains(env.Finalizers, v1alpha1.EnvironmentFinalizer) {
		return 0, nil
	}
	if err := r.cleanup(ctx, env, true); err != nil {
		return 0, err
	}
	// Everything is gone only when the forks are.
	if left, err := r.cfg.Workloads.Forks(ctx, env.Namespace, env.Name); err != nil {
		return 0, err
	} else if len(left) > 0 {
		return r.cfg.Poll, nil
	}
	env.Finalizers = slices.DeleteFunc(env.Finalizers, func(f string) bool { return f == v1alpha1.EnvironmentFinalizer })
	if _, err := r.cfg.Store.UpdateEnvironment(ctx, env); err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, ignoreConflict(err)
	}
	r.event(env, false, "Removed", "the environment's forks and routes are removed")
	r.log.Info("environment removed", "environment", env.Namespace+"/"+env.Name)
	r.forget(env)
	return 0, nil
}

// cleanup deletes env's routes and forks. The routes go first, so that no
// request is sent to a fork while it stops.
func (r *Reconciler) cleanup(ctx context.Context, env *v1alpha1.Environment, report bool) error {
	own := &detourv1.Owner{Kind: "Environment", Name: env.Name}
	for _, o := range r.cfg.Intercepts.Owned(env.Namespace, own) {
		if err := r.cfg.Intercepts.DeleteOwned(ctx, env.Namespace, o.Name, own); err != nil {
			return fmt.Errorf("delete route %s: %w", o.Name, err)
		}
		if report {
			r.event(env, false, "RouteRemoved", "removed intercept "+o.Name)
		}
	}
	forks, err := r.cfg.Workloads.Forks(ctx, env.Namespace, env.Name)
	if err != nil {
		return err
	}
	for _, f := range forks {
		if err := r.cfg.Workloads.Delete(ctx, env.Namespace, f); err != nil {
			return err
		}
		if report {
			r.event(env, false, "ForkRemoved", "removed fork "+f.Name)
		}
	}
	if r.cfg.Data != nil {
		if err := r.cfg.Data.Cleanup(ctx, env); err != nil {
			return fmt.Errorf("remove data: %w", err)
		}
	}
	return nil
}

// conditionTrue reports whether env's status has the condition, True.
func conditionTrue(env *v1alpha1.Environment, typ string) bool {
	for _, c := range env.Status.Conditions {
		if c.Type == typ {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}

// writeStatus writes st unless it is what env already shows.
func (r *Reconciler) writeStatus(ctx context.Context, env *v1alpha1.Environment, st v1alpha1.EnvironmentStatus) error {
	if equality.Semantic.DeepEqual(env.Status, st) {
		return nil
	}
	prev := env.Status.Phase
	env = env.DeepCopy()
	env.Status = st
	if _, err := r.cfg.Store.UpdateEnvironmentStatus(ctx, env); err != nil {
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			return errRetry
		}
		return err
	}
	if st.Phase != prev {
		r.log.Info("environment phase", "environment", env.Namespace+"/"+env.Name, "phase", st.Phase)
		if c := readyCondition(st); c != nil {
			r.event(env, st.Phase == v1alpha1.EnvironmentFailed, string(st.Phase), c.Message)
		}
	}
	return nil
}

// errRetry asks for another look soon: the object moved under us.
var errRetry = errors.New("the environment changed while being reconciled")

func ignoreConflict(err error) error {
	if errors.Is(err, store.ErrConflict) {
		return errRetry
	}
	return err
}

func readyCondition(st v1alpha1.EnvironmentStatus) *metav1.Condition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == v1alpha1.EnvironmentConditionReady {
			return &st.Conditions[i]
		}
	}
	return nil
}

func (r *Reconciler) event(env *v1alpha1.Environment, warning bool, reason, msg string) {
	lvl := slog.LevelInfo
	if warning {
		lvl = slog.LevelWarn
	}
	r.log.Log(context.Background(), lvl, msg, "environment", env.Namespace+"/"+env.Name, "reason", reason)
	if r.cfg.Events != nil {
		r.cfg.Events.Event(env, warning, reason, msg)
	}
}
