package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/protobuf/proto"
	"k8s.io/client-go/tools/cache"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/store"
)

// Watch reports every change to the intercepts of all namespaces, whoever
// made it (this Store, another controller, kubectl), until ctx ends or the
// Store is closed; then the channel is closed. It returns once the Store's
// informer has synced, so the intercepts that exist by then have been or are
// being sent as Added.
//
// Status writes that leave the gRPC form unchanged (node reports,
// conditions) send nothing, so a controller that writes status does not wake
// itself. Events wait for the reader: an informer buffers them without
// bound, so the reader should not stall for long.
func (s *Store) Watch(ctx context.Context) (<-chan store.Event, error) {
	informer, _, err := s.sharedInformer()
	if err != nil {
		return nil, fmt.Errorf("watch intercepts: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	events := make(chan store.Event)
	// Every send holds mu, so that none is under way (or starts) when
	// events is closed; ctx ends first, which frees a send that waits.
	var mu sync.Mutex
	stopped := false
	send := func(t store.EventType, obj any) {
		ic, ok := convert(obj)
		if !ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		select {
		case events <- store.Event{Type: t, Intercept: ic}:
		case <-ctx.Done():
		}
	}
	reg, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { send(store.Added, obj) },
		UpdateFunc: func(oldObj, newObj any) {
			o, okOld := convert(oldObj)
			n, okNew := convert(newObj)
			if okOld && okNew && proto.Equal(o, n) {
				return
			}
			send(store.Updated, newObj)
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj // missed the delete itself: this is the last state seen
			}
			send(store.Deleted, obj)
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch intercepts: %w", err)
	}

	s.watchers.Add(1)
	go func() {
		defer s.watchers.Done()
		select {
		case <-ctx.Done():
		case <-s.closed:
			cancel()
		}
		_ = informer.RemoveEventHandler(reg)
		mu.Lock()
		stopped = true
		close(events)
		mu.Unlock()
	}()

	if err := s.waitSynced(ctx, informer); err != nil {
		cancel()
		return nil, fmt.Errorf("watch intercepts: %w", err)
	}
	return events, nil
}

// convert turns an informer's object into the gRPC form. It never changes
// obj, which belongs to the cache.
func convert(obj any) (*detourv1.Intercept, bool) {
	r, ok := obj.(*v1alpha1.Intercept)
	if !ok {
		slog.Warn("watch intercepts: unexpected object", "type", fmt.Sprintf("%T", obj))
		return nil, false
	}
	ic, err := r.ToProto()
	if err != nil {
		// The schema refuses what ToProto refuses, so this is an object
		// from before a schema change.
		slog.Warn("watch intercepts: skipped an intercept", "intercept", r.Namespace+"/"+r.Name, "err", err)
		return nil, false
	}
	return ic, true
}
