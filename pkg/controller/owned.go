package controller

import (
	"context"
	"errors"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/store"
)

// Intercepts made on a user's behalf (an environment's routes) carry an
// Owner. They go through the same checks as a user's, but only their owner
// changes or deletes them: a user's delete or renew is refused, and the
// owner puts back what someone else changed (see pkg/envmgr).

// OwnedIntercept is one intercept of an owner, as the owner sees it.
type OwnedIntercept struct {
	Name    string
	Spec    *detourv1.InterceptSpec
	State   v1alpha1.InterceptState
	Message string // why it is not Active, when it is not
}

// ApplyOwned makes the intercept ic, whose owner is set, exist as given:
// created, or replaced when its spec differs. An intercept of that name
// that another owner (or a user) made is left alone, and an overlap with
// another intercept is refused as for a user, naming the other
// (FailedPrecondition).
func (s *Server) ApplyOwned(ctx context.Context, in *detourv1.Intercept) error {
	if in.GetOwner().GetName() == "" || in.GetOwner().GetKind() == "" {
		return status.Error(codes.InvalidArgument, "an owned intercept needs its owner's kind and name")
	}
	ic, err := s.normalize(in)
	if err != nil {
		return err
	}
	ic.Spec.Ttl = nil // the owner's life is the intercept's
	k := keyOf(ic.GetNamespace(), ic.GetName())
	s.mu.Lock()
	cur, have := s.intercepts[k]
	s.mu.Unlock()
	if !have {
		err := s.createChecked(ctx, ic)
		if status.Code(err) == codes.AlreadyExists {
			return s.ApplyOwned(ctx, in) // made meanwhile: compare with it
		}
		return err
	}
	if !sameOwner(cur.GetOwner(), ic.GetOwner()) {
		return status.Errorf(codes.FailedPrecondition, "intercept %s exists and is not %s %s's", k,
			ic.GetOwner().GetKind(), ic.GetOwner().GetName())
	}
	if proto.Equal(cur.GetSpec(), ic.GetSpec()) && proto.Equal(cur.GetOwner(), ic.GetOwner()) {
		return nil
	}
	inv, err := s.inv.Get()
	if err != nil {
		return status.Errorf(codes.Unavailable, "inventory unavailable: %v", err)
	}
	conds, err := validateSpec(ic, inv)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOverlapLocked(ic, conds); err != nil {
		return err
	}
	ic.CreatedAt = cur.GetCreatedAt()
	if err := s.store.Update(ctx, ic); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return status.Errorf(codes.Aborted, "intercept %s went while being changed; apply again", k)
		}
		return status.Errorf(codes.Internal, "update intercept %s: %v", k, err)
	}
	s.intercepts[k] = ic
	s.dropRejectedLocked(k)
	s.log.Info("intercept changed by its owner", "intercept", k, "owner", ic.GetOwner().GetName())
	s.publishLocked(detourv1.WatchInterceptsResponse_TYPE_UPDATED, ic)
	s.reconcileLocked()
	return nil
}

// DeleteOwned removes an intercept of owner; one already gone is not an
// error, and one that is not owner's is left alone.
func (s *Server) DeleteOwned(ctx context.Context, namespace, name string, owner *detourv1.Owner) error {
	k := keyOf(namespace, name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if rej, ok := s.rejected[k]; ok && sameOwner(rej.ic.GetOwner(), owner) {
		// A refused version (say, edited with kubectl) goes from the
		// store too.
		if _, held := s.intercepts[k]; !held {
			if err := s.store.Delete(ctx, namespace, name); err != nil && !errors.Is(err, store.ErrNotFound) {
				return status.Errorf(codes.Internal, "delete intercept %s: %v", k, err)
			}
			s.dropRejectedLocked(k)
			return nil
		}
	}
	ic, ok := s.intercepts[k]
	if !ok || !sameOwner(ic.GetOwner(), owner) {
		return nil
	}
	return s.deleteLocked(ctx, k, ic)
}

// Owned lists the intercepts of one owner in a namespace (in force or
// refused), by name, with their states.
func (s *Server) Owned(namespace string, owner *detourv1.Owner) []OwnedIntercept {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []OwnedIntercept
	add := func(k string, ic *detourv1.Intercept) {
		if seen[k] || ic.GetNamespace() != namespace || !sameOwner(ic.GetOwner(), owner) {
			return
		}
		seen[k] = true
		o := OwnedIntercept{Name: ic.GetName(), Spec: ic.GetSpec()}
		if obs, ok := s.observedLocked(k); ok {
			o.State = obs.State
			for _, c := range obs.Conditions {
				if c.Status != "True" {
					o.Message = c.Message
					break
				}
			}
		}
		out = append(out, o)
	}
	for k, ic := range s.intercepts {
		add(k, ic)
	}
	for k, r := range s.rejected {
		add(k, r.ic)
	}
	slices.SortFunc(out, func(a, b OwnedIntercept) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// SubscribeOwned calls fn with the namespace, kind and name of an owner
// whenever one of its intercepts changes: made, changed, deleted (by
// anyone), or its status moved. fn is called with the server's lock held:
// it must not block or call the server.
func (s *Server) SubscribeOwned(fn func(namespace, kind, owner string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ownedSubs = append(s.ownedSubs, fn)
}

// ownedChangedLocked tells the subscribers about the owner of the
// intercept under k, if it has one.
func (s *Server) ownedChangedLocked(k string) {
	if ic, ok := s.intercepts[k]; ok {
		s.notifyOwnerLocked(ic)
	} else if r, ok := s.rejected[k]; ok {
		s.notifyOwnerLocked(r.ic)
	}
}

func (s *Server) notifyOwnerLocked(ic *detourv1.Intercept) {
	o := ic.GetOwner()
	if o == nil {
		return
	}
	for _, fn := range s.ownedSubs {
		fn(ic.GetNamespace(), o.GetKind(), o.GetName())
	}
}
