package envmgr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/controller"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/store"
)

// InterceptLister lists the intercepts of a namespace (controller.Server),
// so that an environment's key is not taken from a developer.
type InterceptLister interface {
	ListIntercepts(context.Context, *detourv1.ListInterceptsRequest) (*detourv1.ListInterceptsResponse, error)
}

// APIConfig is what the API depends on.
type APIConfig struct {
	Store      store.Environments // required
	Workloads  Workloads          // required
	Intercepts InterceptLister    // required
	Limits     Limits
	Logger     *slog.Logger
	Now        func() time.Time
}

// API serves the environment calls of ControlService: it checks what it is
// asked for and stores it; the Reconciler does the rest. An Environment
// made with kubectl skips it and meets the same checks in the Reconciler
// (and the CRD's schema), so the two behave alike.
type API struct{ cfg APIConfig }

var _ controller.EnvironmentService = (*API)(nil)

// NewAPI checks cfg.
func NewAPI(cfg APIConfig) (*API, error) {
	if cfg.Store == nil || cfg.Workloads == nil || cfg.Intercepts == nil {
		return nil, errors.New("envmgr: Store, Workloads and Intercepts are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &API{cfg: cfg}, nil
}

func orDefault(ns string) string {
	if ns == "" {
		return inventory.NamespaceDefault
	}
	return ns
}

// storeError turns a store error into the gRPC code a client can act on.
func storeError(err error, what string) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s not found", what)
	case errors.Is(err, store.ErrExists):
		return status.Errorf(codes.AlreadyExists, "%s already exists", what)
	case errors.Is(err, store.ErrConflict):
		return status.Errorf(codes.Aborted, "%s changed meanwhile; try again", what)
	}
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

// CreateEnvironment implements controller.EnvironmentService.
func (a *API) CreateEnvironment(ctx context.Context, req *detourv1.CreateEnvironmentRequest) (*detourv1.CreateEnvironmentResponse, error) {
	in := req.GetEnvironment()
	env, err := v1alpha1.EnvironmentFromProto(in)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	env.Namespace = orDefault(env.Namespace)
	// What the controller sets is not the caller's to give.
	env.ObjectMeta = metav1.ObjectMeta{Namespace: env.Namespace, Name: env.Name}
	env.Status = v1alpha1.EnvironmentStatus{}
	if err := Validate(env, a.cfg.Limits); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	what := fmt.Sprintf("environment %s/%s", env.Namespace, env.Name)
	if err := a.keyFree(ctx, env); err != nil {
		return nil, err
	}
	for i := range env.Spec.Forks {
		f := &env.Spec.Forks[i]
		b, err := a.cfg.Workloads.Baseline(ctx, env.Namespace, f.Workload)
		switch {
		case errors.Is(err, ErrWorkloadNotFound):
			return nil, status.Errorf(codes.NotFound, "%s %s not found in namespace %s", f.Workload.Kind, f.Workload.Name, env.Namespace)
		case IsRefusal(err):
			return nil, status.Error(codes.InvalidArgument, err.Error())
		case err != nil:
			return nil, status.Errorf(codes.Unavailable, "read %s %s: %v", f.Workload.Kind, f.Workload.Name, err)
		}
		p, err := RenderFork(env, f, b, nil)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if err := a.cfg.Workloads.Check(b, p); err != nil {
			return nil, status.Error(codes.InvalidArgument, strings.TrimSuffix(err.Error(), ": "+ErrUnsupported.Error()))
		}
	}
	created, err := a.cfg.Store.CreateEnvironment(ctx, env)
	if err != nil {
		return nil, storeError(err, what)
	}
	// The deadline is set at once, so the caller sees it.
	created.Status.Phase = v1alpha1.EnvironmentPending
	exp := metav1.NewTime(created.CreationTimestamp.Add(a.cfg.Limits.TTL(created)))
	created.Status.ExpiresAt = &exp
	created.Status.Key = Key(created)
	created.Status.ForkSummary = forkSummary(created)
	if updated, err := a.cfg.Store.UpdateEnvironmentStatus(ctx, created); err == nil {
		created = updated
	}
	a.cfg.Logger.Info("environment created", "environment", env.Namespace+"/"+env.Name, "forks", forkSummary(env))
	return &detourv1.CreateEnvironmentResponse{Environment: v1alpha1.EnvironmentToProto(created)}, nil
}

// keyFree refuses a key that another environment of the namespace, or a
// developer's session intercept there, already uses: requests with it
// would go two ways.
func (a *API) keyFree(ctx context.Context, env *v1alpha1.Environment) error {
	key := Key(env)
	envs, err := a.cfg.Store.ListEnvironments(ctx, env.Namespace)
	if err != nil {
		return status.Errorf(codes.Internal, "list environments: %v", err)
	}
	for _, o := range envs {
		if o.Name != env.Name && Key(o) == key {
			return status.Errorf(codes.AlreadyExists, "key %q is already used by environment %s/%s", key, o.Namespace, o.Name)
		}
	}
	ics, err := a.cfg.Intercepts.ListIntercepts(ctx, &detourv1.ListInterceptsRequest{Namespace: env.Namespace})
	if err != nil {
		return err
	}
	for _, ic := range ics.GetIntercepts() {
		if ic.GetOwner() != nil {
			continue // an environment's own, which the check above covers
		}
		for _, c := range ic.GetSpec().GetMatch() {
			if c.GetKind() == detourv1.Condition_KIND_SESSION && c.GetValue() == key {
				return status.Errorf(codes.AlreadyExists, "key %q is already used by intercept %s/%s", key, ic.GetNamespace(), ic.GetName())
			}
		}
	}
	return nil
}

// GetEnvironment implements controller.EnvironmentService.
func (a *API) GetEnvironment(ctx context.Context, req *detourv1.GetEnvironmentRequest) (*detourv1.GetEnvironmentResponse, error) {
	ns := orDefault(req.GetNamespace())
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "no environment name given")
	}
	env, err := a.cfg.Store.GetEnvironment(ctx, ns, req.GetName())
	if err != nil {
		return nil, storeError(err, fmt.Sprintf("environment %s/%s", ns, req.GetName()))
	}
	return &detourv1.GetEnvironmentResponse{Environment: v1alpha1.EnvironmentToProto(env)}, nil
}

// ListEnvironments implements controller.EnvironmentService.
func (a *API) ListEnvironments(ctx context.Context, req *detourv1.ListEnvironmentsRequest) (*detourv1.ListEnvironmentsResponse, error) {
	envs, err := a.cfg.Store.ListEnvironments(ctx, req.GetNamespace())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list environments: %v", err)
	}
	out := &detourv1.ListEnvironmentsResponse{}
	for _, e := range envs {
		out.Environments = append(out.Environments, v1alpha1.EnvironmentToProto(e))
	}
	return out, nil
}

// DeleteEnvironment implements controller.EnvironmentService.
func (a *API) DeleteEnvironment(ctx context.Context, req *detourv1.DeleteEnvironmentRequest) (*detourv1.DeleteEnvironmentResponse, error) {
	ns := orDefault(req.GetNamespace())
	what := fmt.Sprintf("environment %s/%s", ns, req.GetName())
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "no environment name given")
	}
	if err := a.cfg.Store.DeleteEnvironment(ctx, ns, req.GetName()); err != nil {
		return nil, storeError(err, what)
	}
	a.cfg.Logger.Info("environment deleted", "environment", ns+"/"+req.GetName())
	env, err := a.cfg.Store.GetEnvironment(ctx, ns, req.GetName())
	if errors.Is(err, store.ErrNotFound) {
		// Gone at once: it held nothing (no finalizer yet).
		return &detourv1.DeleteEnvironmentResponse{Environment: &detourv1.Environment{Namespace: ns, Name: req.GetName()}}, nil
	}
	if err != nil {
		return nil, storeError(err, what)
	}
	return &detourv1.DeleteEnvironmentResponse{Environment: v1alpha1.EnvironmentToProto(env)}, nil
}

// RenewEnvironment implements controller.EnvironmentService.
func (a *API) RenewEnvironment(ctx context.Context, req *detourv1.RenewEnvironmentRequest) (*detourv1.RenewEnvironmentResponse, error) {
	ns := orDefault(req.GetNamespace())
	what := fmt.Sprintf("environment %s/%s", ns, req.GetName())
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "no environment name given")
	}
	if t := req.GetTtl(); t != nil {
		if err := t.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "ttl: %v", err)
		}
	}
	for attempt := 0; ; attempt++ {
		env, err := a.cfg.Store.GetEnvironment(ctx, ns, req.GetName())
		if err != nil {
			return nil, storeError(err, what)
		}
		if env.DeletionTimestamp != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "%s is being removed", what)
		}
		ttl := req.GetTtl().AsDuration()
		if ttl == 0 {
			ttl = a.cfg.Limits.TTL(env)
		}
		if err := a.cfg.Limits.CheckTTL(ttl); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		exp := metav1.NewTime(a.cfg.Now().Add(ttl).Truncate(time.Second))
		env.Status.ExpiresAt = &exp
		updated, err := a.cfg.Store.UpdateEnvironmentStatus(ctx, env)
		if errors.Is(err, store.ErrConflict) && attempt < 10 {
			continue // the reconciler wrote status meanwhile
		}
		if err != nil {
			return nil, storeError(err, what)
		}
		a.cfg.Logger.Info("environment renewed", "environment", ns+"/"+req.GetName(), "expires", exp.Time)
		return &detourv1.RenewEnvironmentResponse{Environment: v1alpha1.EnvironmentToProto(updated)}, nil
	}
}

// watchBuffer is how many changes a slow watcher may lag before its watch
// ends; it then watches again.
const watchBuffer = 256

// WatchEnvironments implements controller.EnvironmentService.
func (a *API) WatchEnvironments(req *detourv1.WatchEnvironmentsRequest, stream grpc.ServerStreamingServer[detourv1.WatchEnvironmentsResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	ns, name := req.GetNamespace(), req.GetName()
	if name != "" {
		ns = orDefault(ns)
	}
	keys := make(chan [2]string, watchBuffer)
	overflow := make(chan struct{})
	var once sync.Once
	if err := a.cfg.Store.SubscribeEnvironments(ctx, func(n, m string) {
		if ns != "" && n != ns || name != "" && m != name {
			return
		}
		select {
		case keys <- [2]string{n, m}:
		default:
			once.Do(func() { close(overflow) })
		}
	}); err != nil {
		return status.Errorf(codes.Internal, "watch environments: %v", err)
	}
	existing, err := a.cfg.Store.ListEnvironments(ctx, ns)
	if err != nil {
		return status.Errorf(codes.Internal, "list environments: %v", err)
	}
	for _, e := range existing {
		if name != "" && e.Name != name {
			continue
		}
		if err := stream.Send(&detourv1.WatchEnvironmentsResponse{Type: detourv1.WatchEnvironmentsResponse_TYPE_EXISTING, Environment: v1alpha1.EnvironmentToProto(e)}); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-overflow:
			return status.Error(codes.ResourceExhausted, "environment watch fell behind; watch again")
		case k := <-keys:
			ev := &detourv1.WatchEnvironmentsResponse{Type: detourv1.WatchEnvironmentsResponse_TYPE_CHANGED}
			env, err := a.cfg.Store.GetEnvironment(ctx, k[0], k[1])
			switch {
			case errors.Is(err, store.ErrNotFound):
				ev.Type, ev.Environment = detourv1.WatchEnvironmentsResponse_TYPE_DELETED, &detourv1.Environment{Namespace: k[0], Name: k[1]}
			case err != nil:
				return status.Errorf(codes.Internal, "read environment %s/%s: %v", k[0], k[1], err)
			default:
				ev.Environment = v1alpha1.EnvironmentToProto(env)
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
