// Package leader runs a process's cluster-wide work only while it holds a
// Kubernetes Lease. Replicas of the controller share one Lease; whatever
// must happen once per cluster (serving the control plane today, more
// reconcilers later) is a function passed to Run, and every such function
// runs under the same lease, started when this replica leads and stopped
// before it lets go. See docs/architecture.md, "Kubernetes mode".
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// The lease timings client-go's own controllers use: a dead leader is
// replaced within LeaseDuration, a leader that cannot renew for
// RenewDeadline steps down, and candidates try every RetryPeriod.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// ErrLost ends a replica that stopped leading while it meant to go on: the
// caller should exit and let the kubelet restart it as a candidate, the
// standard client-go pattern, rather than one process trying to unwind and
// lead again.
var ErrLost = errors.New("lost the leader-election lease")

// Config names the Lease and this replica's place in it.
type Config struct {
	// RESTConfig reaches the API server. Run makes a client of its own
	// from it, so that renewals never queue behind the other requests of
	// the process in a shared client-side rate limiter.
	RESTConfig *rest.Config
	// Namespace and Name are the Lease's.
	Namespace, Name string
	// Identity is this replica's name in the Lease (its pod's name).
	Identity string
	// Lease timings; the Default ones when zero.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Run waits to hold the Lease, then runs every fn at once, each with a
// context that ends when ctx ends, when the lease is lost, or when another
// fn fails; it returns once all of them have returned. Until it leads it
// runs nothing. The lease is released (ReleaseOnCancel) only after every fn
// has returned, so two leaders never act at once because of a clean
// shutdown, and the next one takes over within a retry period.
//
// Run returns nil when ctx ended (before or while leading), the first error
// of a fn, or ErrLost when the lease was lost while ctx went on.
func Run(ctx context.Context, cfg Config, fns ...func(ctx context.Context) error) error {
	if cfg.RESTConfig == nil || cfg.Namespace == "" || cfg.Name == "" || cfg.Identity == "" {
		return errors.New("leader election: RESTConfig, Namespace, Name and Identity are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cs, err := kubernetes.NewForConfig(rest.AddUserAgent(rest.CopyConfig(cfg.RESTConfig), cfg.Name+"-leader-election"))
	if err != nil {
		return fmt.Errorf("leader election client: %w", err)
	}
	lease := cfg.Namespace + "/" + cfg.Name
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.Name},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	// The elector outlives ctx: on a signal the leader first stops its
	// work, then cancels this to release the lease.
	electCtx, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElecting()
	leading := make(chan context.Context)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            cfg.Name,
		LeaseDuration:   orDefault(cfg.LeaseDuration, DefaultLeaseDuration),
		RenewDeadline:   orDefault(cfg.RenewDeadline, DefaultRenewDeadline),
		RetryPeriod:     orDefault(cfg.RetryPeriod, DefaultRetryPeriod),
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			// The work runs in Run's own goroutine, which can then
			// release the lease after it, not beside it.
			OnStartedLeading: func(lctx context.Context) {
				select {
				case leading <- lctx:
				case <-electCtx.Done():
				}
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(holder string) {
				log.Info("leader elected", "leader", holder, "self", holder == cfg.Identity, "lease", lease)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	electorDone := make(chan struct{})
	go func() { defer close(electorDone); elector.Run(electCtx) }()
	defer func() { stopElecting(); <-electorDone }()

	log.Info("waiting to lead", "id", cfg.Identity, "lease", lease)
	var lctx context.Context
	select {
	case <-ctx.Done():
		return nil
	case <-electorDone:
		return errors.New("leader election ended before this replica led")
	case lctx = <-leading:
	}
	log.Info("leading: starting", "id", cfg.Identity, "lease", lease)
	workCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(lctx, cancel)
	defer stop()
	g, gctx := errgroup.WithContext(workCtx)
	for _, fn := range fns {
		g.Go(func() error { return fn(gctx) })
	}
	err = g.Wait()
	lost := ctx.Err() == nil && lctx.Err() != nil
	if lost {
		log.Error("lost the lease: stopping", "id", cfg.Identity, "lease", lease)
	}
	switch {
	case err != nil:
		return err
	case lost:
		return ErrLost
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
