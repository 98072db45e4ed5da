package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"k8s.io/client-go/util/workqueue"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/store"
)

// WatchingStore is a store that reports every change to its intercepts,
// whoever made it. The Kubernetes store (pkg/store/kube) is one: there an
// intercept may be created, edited or deleted with kubectl, and Run applies
// such changes exactly as if they had come through the gRPC API.
type WatchingStore interface {
	store.Store
	Watch(ctx context.Context) (<-chan store.Event, error)
}

// Backoff of a key whose store read failed: doubling from syncRetryBase
// up to syncRetryMax, per key. The cap is far below the workqueue default's
// 1000 s, so that an intercept changed during an API server outage is
// applied within half a minute of its return.
const (
	syncRetryBase = 5 * time.Millisecond
	syncRetryMax  = 30 * time.Second
)

// runWatch follows the store's changes until ctx ends. Events are taken as
// keys to read again (level-triggered), not as states to apply: the store
// is read under mu, after any write of this controller has finished, so the
// echo of our own write, or a stale event overtaken by a later write, finds
// the store equal to memory and changes nothing. Keys go through a typed
// rate-limited workqueue with one worker, as in a Kubernetes controller:
// keys are read in the order they changed, a key that changes again while
// it waits is read once, and one whose read fails is retried with a
// backoff of its own.
func (s *Server) runWatch(ctx context.Context, w WatchingStore) error {
	events, err := w.Watch(ctx)
	if err != nil {
		return fmt.Errorf("watch intercepts: %w", err)
	}
	s.log.Info("following intercept changes made outside the controller")
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](syncRetryBase, syncRetryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "intercept_changes"})
	worker := make(chan struct{})
	go func() {
		defer close(worker)
		for s.syncNext(ctx, queue) {
		}
	}()
	defer func() { queue.ShutDown(); <-worker }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("watch intercepts: the store stopped reporting changes")
			}
			queue.Add(keyOf(ev.Intercept.GetNamespace(), ev.Intercept.GetName()))
		}
	}
}

// syncNext reads the next changed key from the store; false once the queue
// is shut down.
func (s *Server) syncNext(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string]) bool {
	k, quit := queue.Get()
	if quit {
		return false
	}
	defer queue.Done(k)
	ns, name, _ := strings.Cut(k, "/")
	if err := s.syncKey(ctx, ns, name); err != nil {
		if ctx.Err() == nil {
			s.log.Warn("read changed intercept; retrying", "intercept", k, "failures", queue.NumRequeues(k)+1, "err", err)
		}
		queue.AddRateLimited(k)
		return true
	}
	queue.Forget(k)
	return true
}

// syncKey brings one intercept in memory up to what the store holds.
func (s *Server) syncKey(ctx context.Context, ns, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	latest, err := s.store.Get(ctx, ns, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		latest = nil
	case err != nil:
		return err
	}
	s.applyExternalLocked(keyOf(ns, name), latest)
	return nil
}

// applyExternalLocked makes memory agree with latest, the intercept as the
// store now holds it (nil: gone). A version that is invalid or overlaps
// another intercept is refused: the last accepted version, if any, stays in
// force, and the refused one is retried when something it may depend on
// changes (another intercept goes, the inventory changes).
func (s *Server) applyExternalLocked(k string, latest *detourv1.Intercept) {
	cur, have := s.intercepts[k]
	if latest == nil {
		delete(s.rejected, k)
		s.metrics.refusedIntercepts.Set(float64(len(s.rejected)))
		if !have {
			return
		}
		delete(s.intercepts, k)
		s.dropReportsLocked(k)
		s.metrics.activeIntercepts.Set(float64(len(s.intercepts)))
		s.log.Info("intercept deleted outside the controller", "intercept", k)
		s.publishLocked(detourv1.WatchInterceptsResponse_TYPE_DELETED, cur)
		s.reconcileLocked()
		s.leaseMoved()
		s.retryRejectedLocked()
		return
	}
	if have && sameStored(cur, latest) {
		// Our own write coming back, or a write that changed nothing we
		// keep: nothing to do, and no refusal left standing.
		s.dropRejectedLocked(k)
		return
	}
	if !s.admitLocked(k, latest) {
		return
	}
	if have {
		s.log.Info("intercept changed outside the controller", "intercept", k)
		s.publishLocked(detourv1.WatchInterceptsResponse_TYPE_UPDATED, latest)
	} else {
		s.log.Info("intercept created outside the controller", "intercept", k,
			"service", latest.GetSpec().GetServiceName(), "port", latest.GetSpec().GetPort())
		s.publishLocked(detourv1.WatchInterceptsResponse_TYPE_CREATED, latest)
	}
	s.reconcileLocked()
	s.leaseMoved()
}

// admitLocked validates ic as CreateIntercept does, against the inventory
// and every other intercept, and on success stores it in memory. On failure
// it records the refusal and reports false.
func (s *Server) admitLocked(k string, ic *detourv1.Intercept) bool {
	reason, why := s.checkExternalLocked(ic)
	if reason != "" {
		prev, seen := s.rejected[k]
		s.rejected[k] = &rejection{ic: ic, reason: reason, why: why}
		s.metrics.refusedIntercepts.Set(float64(len(s.rejected)))
		if !seen || !proto.Equal(prev.ic, ic) || prev.why != why {
			s.metrics.externalRefusals.WithLabelValues(reason).Inc()
			s.log.Warn("intercept refused; not applied", "intercept", k, "reason", reason, "err", why)
			s.statusChangedLocked(k)
		}
		return false
	}
	s.dropRejectedLocked(k)
	s.intercepts[k] = ic
	s.metrics.activeIntercepts.Set(float64(len(s.intercepts)))
	s.statusChangedLocked(k)
	return true
}

func (s *Server) dropRejectedLocked(k string) {
	if _, ok := s.rejected[k]; ok {
		delete(s.rejected, k)
		s.metrics.refusedIntercepts.Set(float64(len(s.rejected)))
		s.statusChangedLocked(k)
	}
}

// checkExternalLocked returns why ic may not be applied ("" if it may): the
// result label ("invalid" or "conflict") and the message.
func (s *Server) checkExternalLocked(ic *detourv1.Intercept) (string, string) {
	if ns, sns := ic.GetNamespace(), ic.GetSpec().GetServiceNamespace(); ns != sns {
		return "invalid", fmt.Sprintf("intercept namespace %q differs from the service's namespace %q", ns, sns)
	}
	inv, err := s.inv.Get()
	if err != nil {
		return "invalid", fmt.Sprintf("inventory unavailable: %v", err)
	}
	conds, err := validateSpec(ic, inv)
	if err != nil {
		return "invalid", err.Error()
	}
	if err := s.checkOverlapLocked(ic, conds); err != nil {
		return "conflict", err.Error()
	}
	return "", ""
}

// retryRejectedLocked tries the refused intercepts again, oldest first, so
// that when two overlap the one made first wins.
func (s *Server) retryRejectedLocked() {
	if len(s.rejected) == 0 {
		return
	}
	pending := make([]*detourv1.Intercept, 0, len(s.rejected))
	for _, r := range s.rejected {
		pending = append(pending, r.ic)
	}
	sortByAge(pending)
	changed := false
	for _, ic := range pending {
		k := keyOf(ic.GetNamespace(), ic.GetName())
		_, had := s.intercepts[k]
		if !s.admitLocked(k, ic) {
			continue
		}
		changed = true
		s.log.Info("refused intercept now accepted", "intercept", k)
		t := detourv1.WatchInterceptsResponse_TYPE_CREATED
		if had {
			t = detourv1.WatchInterceptsResponse_TYPE_UPDATED
		}
		s.publishLocked(t, ic)
	}
	if changed {
		s.reconcileLocked()
		s.leaseMoved()
	}
}

// admitLoadedLocked is New's intake for a watching store, whose intercepts
// may have been written by hand: each is checked as an external change,
// oldest first.
func (s *Server) admitLoadedLocked(all []*detourv1.Intercept) {
	all = slices.Clone(all)
	sortByAge(all)
	for _, ic := range all {
		s.admitLocked(keyOf(ic.GetNamespace(), ic.GetName()), ic)
	}
}

// rejection is an intercept version the controller refused to apply.
type rejection struct {
	ic     *detourv1.Intercept
	reason string // result label: invalid or conflict
	why    string
}

// sameStored reports whether two intercepts agree on everything the store
// keeps faithfully: the spec, and the lease to the second (the Kubernetes
// store keeps times in whole seconds). created_at is ignored: the API server
// sets its own.
func sameStored(a, b *detourv1.Intercept) bool {
	if !proto.Equal(a.GetSpec(), b.GetSpec()) {
		return false
	}
	ea, eb := a.GetExpiresAt(), b.GetExpiresAt()
	if ea == nil || eb == nil {
		return ea == eb
	}
	return ea.GetSeconds() == eb.GetSeconds()
}

func sortByAge(ics []*detourv1.Intercept) {
	slices.SortStableFunc(ics, func(a, b *detourv1.Intercept) int {
		if c := a.GetCreatedAt().AsTime().Compare(b.GetCreatedAt().AsTime()); c != 0 {
			return c
		}
		return strings.Compare(keyOf(a.GetNamespace(), a.GetName()), keyOf(b.GetNamespace(), b.GetName()))
	})
}
