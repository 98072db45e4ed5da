package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/store"
)

// Environment returns a valid Environment forking one Deployment.
func Environment(namespace, name string) *v1alpha1.Environment {
	return &v1alpha1.Environment{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1alpha1.EnvironmentSpec{
			Forks: []v1alpha1.Fork{{Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "api"}}},
			TTL:   &metav1.Duration{Duration: time.Hour},
		},
	}
}

// RunEnvironments checks that an Environments store keeps the API server's
// rules: what Create sets, resourceVersion conflicts, generation, the
// status kept apart, deletion with finalizers, and change notifications.
// newStore returns a store and two namespaces that exist and hold no
// environment; the store may hold others elsewhere.
func RunEnvironments(t *testing.T, newStore func(t *testing.T) (store.Environments, [2]string)) {
	ctx := context.Background()
	// mine keeps the environments of the test's namespaces, in order.
	mine := func(all []*v1alpha1.Environment, ns [2]string) []*v1alpha1.Environment {
		var out []*v1alpha1.Environment
		for _, e := range all {
			if e.Namespace == ns[0] || e.Namespace == ns[1] {
				out = append(out, e)
			}
		}
		return out
	}

	t.Run("create get list", func(t *testing.T) {
		s, ns := newStore(t)
		created, err := s.CreateEnvironment(ctx, Environment(ns[1], "pr-2"))
		if err != nil {
			t.Fatal(err)
		}
		if created.UID == "" || created.CreationTimestamp.IsZero() || created.Generation != 1 || created.ResourceVersion == "" {
			t.Errorf("created: uid %q created %v generation %d rv %q", created.UID, created.CreationTimestamp, created.Generation, created.ResourceVersion)
		}
		if _, err := s.CreateEnvironment(ctx, Environment(ns[1], "pr-2")); !errors.Is(err, store.ErrExists) {
			t.Errorf("second create: %v, want ErrExists", err)
		}
		for _, e := range []*v1alpha1.Environment{Environment(ns[0], "pr-9"), Environment(ns[1], "pr-1")} {
			if _, err := s.CreateEnvironment(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.GetEnvironment(ctx, ns[1], "pr-2")
		if err != nil || got.UID != created.UID || got.Spec.Forks[0].Workload.Name != "api" || got.Spec.TTL.Duration != time.Hour {
			t.Errorf("get: %+v, %v", got, err)
		}
		if _, err := s.GetEnvironment(ctx, ns[1], "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get missing: %v, want ErrNotFound", err)
		}
		all, err := s.ListEnvironments(ctx, "")
		all = mine(all, ns)
		if err != nil || len(all) != 3 || all[0].Name != "pr-9" || all[1].Name != "pr-1" || all[2].Name != "pr-2" {
			t.Errorf("list all: %d, %v", len(all), err)
		}
		inB, err := s.ListEnvironments(ctx, ns[1])
		if err != nil || len(inB) != 2 {
			t.Errorf("list b: %d, %v", len(inB), err)
		}
	})

	t.Run("update and status", func(t *testing.T) {
		s, ns := newStore(t)
		e, err := s.CreateEnvironment(ctx, Environment(ns[0], "pr-1"))
		if err != nil {
			t.Fatal(err)
		}
		// Metadata alone keeps the generation.
		e.Finalizers = []string{v1alpha1.EnvironmentFinalizer}
		e.Status.Phase = v1alpha1.EnvironmentReady // ignored by Update
		e2, err := s.UpdateEnvironment(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if e2.Generation != 1 || len(e2.Finalizers) != 1 || e2.Status.Phase != "" || e2.ResourceVersion == e.ResourceVersion {
			t.Errorf("after a metadata update: generation %d finalizers %v phase %q rv %s→%s", e2.Generation, e2.Finalizers, e2.Status.Phase, e.ResourceVersion, e2.ResourceVersion)
		}
		// The old version conflicts.
		if _, err := s.UpdateEnvironment(ctx, e); !errors.Is(err, store.ErrConflict) {
			t.Errorf("update from a stale version: %v, want ErrConflict", err)
		}
		// A spec change bumps the generation.
		e2.Spec.TTL = &metav1.Duration{Duration: 2 * time.Hour}
		e3, err := s.UpdateEnvironment(ctx, e2)
		if err != nil || e3.Generation != 2 {
			t.Fatalf("after a spec update: generation %d, %v", e3.Generation, err)
		}
		// Status apart from spec.
		e3.Status = v1alpha1.EnvironmentStatus{Phase: v1alpha1.EnvironmentReady, Key: "pr-1"}
		e3.Spec.TTL = &metav1.Duration{Duration: time.Minute} // ignored by UpdateStatus
		e4, err := s.UpdateEnvironmentStatus(ctx, e3)
		if err != nil {
			t.Fatal(err)
		}
		if e4.Status.Phase != v1alpha1.EnvironmentReady || e4.Spec.TTL.Duration != 2*time.Hour || e4.Generation != 2 {
			t.Errorf("after a status update: phase %q ttl %v generation %d", e4.Status.Phase, e4.Spec.TTL.Duration, e4.Generation)
		}
		if _, err := s.UpdateEnvironmentStatus(ctx, e3); !errors.Is(err, store.ErrConflict) {
			t.Errorf("status update from a stale version: %v, want ErrConflict", err)
		}
		if _, err := s.UpdateEnvironment(ctx, Environment(ns[0], "nope")); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("update missing: %v, want ErrNotFound", err)
		}
	})

	t.Run("delete with and without finalizers", func(t *testing.T) {
		s, ns := newStore(t)
		if _, err := s.CreateEnvironment(ctx, Environment(ns[0], "plain")); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteEnvironment(ctx, ns[0], "plain"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetEnvironment(ctx, ns[0], "plain"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get after delete: %v, want ErrNotFound", err)
		}
		if err := s.DeleteEnvironment(ctx, ns[0], "plain"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("second delete: %v, want ErrNotFound", err)
		}
		held := Environment(ns[0], "held")
		held.Finalizers = []string{v1alpha1.EnvironmentFinalizer}
		if _, err := s.CreateEnvironment(ctx, held); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteEnvironment(ctx, ns[0], "held"); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetEnvironment(ctx, ns[0], "held")
		if err != nil || got.DeletionTimestamp == nil {
			t.Fatalf("a deleted environment with a finalizer: %+v, %v", got, err)
		}
		got.Finalizers = nil
		if _, err := s.UpdateEnvironment(ctx, got); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetEnvironment(ctx, ns[0], "held"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("after its last finalizer went: %v, want ErrNotFound", err)
		}
	})

	t.Run("subscribe", func(t *testing.T) {
		s, ns := newStore(t)
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var mu sync.Mutex
		seen := map[string]int{}
		if err := s.SubscribeEnvironments(sctx, func(n, name string) {
			mu.Lock()
			seen[n+"/"+name]++
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
		e, err := s.CreateEnvironment(ctx, Environment(ns[1], "pr-5"))
		if err != nil {
			t.Fatal(err)
		}
		e.Status.Phase = v1alpha1.EnvironmentPending
		if _, err := s.UpdateEnvironmentStatus(ctx, e); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteEnvironment(ctx, ns[1], "pr-5"); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if seen[ns[1]+"/pr-5"] == 0 {
				return errors.New("no change notification for pr-5")
			}
			return nil
		})
	})
}
