package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// leaseName is the leader-election Lease of the controller's namespace.
const leaseName = "detour-controller"

// The lease timings client-go's own controllers use: a dead leader is
// replaced within LeaseDuration, a leader that cannot renew for
// RenewDeadline steps down, and candidates try every RetryPeriod.
const (
	defaultLeaseDuration = 15 * time.Second
	defaultRenewDeadline = 10 * time.Second
	defaultRetryPeriod   = 2 * time.Second
)

// errLostLeadership ends a replica that stopped leading while it meant to
// go on: the kubelet restarts it as a candidate, the standard client-go
// pattern, rather than one process trying to unwind and lead again.
var errLostLeadership = errors.New("lost the leader-election lease")

// elect waits to hold the Lease, then serves until ctx ends or the lease is
// lost. Until it leads it touches neither the store nor --listen, and
// /readyz says "not the leader". The lease is released (ReleaseOnCancel)
// only once serving has stopped, so two leaders never act at once because
// of a clean shutdown, and the next one takes over within a retry period.
func elect(ctx context.Context, d *deps) error {
	o, log := d.o, d.log
	id, err := o.identity()
	if err != nil {
		return err
	}
	ns := o.namespace()
	// A client of its own, so that renewals never queue behind the
	// store's and the inventory's requests in a shared rate limiter.
	cs, err := kubernetes.NewForConfig(rest.AddUserAgent(rest.CopyConfig(d.kube.config), "detour-controller-leader-election"))
	if err != nil {
		return fmt.Errorf("leader election client: %w", err)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: ns, Name: leaseName},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	// The elector outlives ctx: on a signal the leader first stops
	// serving, then cancels this to release the lease.
	electCtx, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElecting()
	leading := make(chan context.Context)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            leaseName,
		LeaseDuration:   orDefault(o.leaseDuration, defaultLeaseDuration),
		RenewDeadline:   orDefault(o.renewDeadline, defaultRenewDeadline),
		RetryPeriod:     orDefault(o.retryPeriod, defaultRetryPeriod),
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			// Serving happens in elect's own goroutine, which can then
			// release the lease after it, not beside it.
			OnStartedLeading: func(lctx context.Context) {
				select {
				case leading <- lctx:
				case <-electCtx.Done():
				}
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(holder string) {
				log.Info("leader elected", "leader", holder, "self", holder == id, "lease", ns+"/"+leaseName)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	electorDone := make(chan struct{})
	go func() { defer close(electorDone); elector.Run(electCtx) }()
	defer func() { stopElecting(); <-electorDone }()

	d.ready.set("not the leader")
	log.Info("waiting to lead", "id", id, "lease", ns+"/"+leaseName)
	var lctx context.Context
	select {
	case <-ctx.Done():
		return nil
	case <-electorDone:
		return errors.New("leader election ended before this replica led")
	case lctx = <-leading:
	}
	log.Info("leading: starting to serve", "id", id)
	serveCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(lctx, cancel)
	defer stop()
	err = serve(serveCtx, d)
	lost := ctx.Err() == nil && lctx.Err() != nil
	if lost {
		log.Error("lost the lease: stopping", "id", id)
	}
	switch {
	case err != nil:
		return err
	case lost:
		return errLostLeadership
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
