// Package store keeps the controller's intercepts across restarts. Store is
// the interface the controller codes against: in Kubernetes the Intercept
// custom resources sit behind it, in the lab a one-file bbolt database
// (Open). The types a store and the controller exchange beyond Store live
// here too, so that the controller depends on no store in particular:
// Event, what a store others write to reports of their changes, and
// Observed and StatusSource, the controller's view of an intercept that a
// store with a status to write (pkg/store/kube) reads.
package store

import (
	"context"
	"errors"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// Errors a Store returns, wrapped with the object's namespace/name; test
// with errors.Is.
var (
	ErrExists   = errors.New("already exists")
	ErrNotFound = errors.New("not found")
)

// Store holds intercepts keyed by namespace and name. Implementations are
// safe for concurrent use; they return copies, so callers may keep or modify
// what they get.
type Store interface {
	// Create stores a new intercept; ErrExists if one has its namespace/name.
	Create(ctx context.Context, ic *detourv1.Intercept) error
	// Get returns one intercept; ErrNotFound if there is none.
	Get(ctx context.Context, namespace, name string) (*detourv1.Intercept, error)
	// List returns the intercepts of one namespace, or of every namespace
	// when namespace is empty, sorted by namespace then name.
	List(ctx context.Context, namespace string) ([]*detourv1.Intercept, error)
	// Update replaces an existing intercept; ErrNotFound if there is none.
	Update(ctx context.Context, ic *detourv1.Intercept) error
	// Delete removes one intercept; ErrNotFound if there is none.
	Delete(ctx context.Context, namespace, name string) error
	// Close releases the store; it is idempotent.
	Close() error
}
