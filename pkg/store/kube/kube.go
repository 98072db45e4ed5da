// Package kube is a store.Store kept in Intercept custom resources
// (intercepts.detour.dev/v1alpha1): kubectl sees every intercept, RBAC on
// the resource decides who may make one, and a controller that restarts
// finds them all in the API server.
//
// The Store reads and writes the API server directly, not through a cache,
// so a Get after a Create always sees it. Watch runs a shared informer for
// a controller that must also react to intercepts made with kubectl.
package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/store"
)

// ErrConflict is returned, wrapped with the API server's own error, when an
// intercept changed between the Store reading it and writing it back: the
// write is not made, and the caller may read again and retry.
var ErrConflict = errors.New("changed by another writer since it was read")

// listPage bounds one List request, so that a cluster with many intercepts
// is read in pages instead of one large response.
const listPage = 500

// Store is a store.Store backed by Intercept resources.
type Store struct {
	client       versioned.Interface
	httpClient   *http.Client
	fieldManager string

	closeOnce sync.Once
	closed    chan struct{}  // closed by Close: stops every Watch
	watchers  sync.WaitGroup // running Watch informers

	// beforeUpdate runs between Update's read and its write; tests use it
	// to make another writer win the race.
	beforeUpdate func()
}

var _ store.Store = (*Store)(nil)

// New returns a Store that talks to the API server of cfg. fieldManager
// names the Store's writes in managedFields (kubectl shows it); it must not
// be empty. The Intercept CRD must be installed before the Store is used.
func New(cfg *rest.Config, fieldManager string) (*Store, error) {
	if cfg == nil {
		return nil, errors.New("kube store: no rest.Config")
	}
	if fieldManager == "" {
		return nil, errors.New("kube store: empty field manager")
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = fieldManager
	}
	// One http.Client of our own, so that Close can let its connections go.
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube store: %w", err)
	}
	cs, err := versioned.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, fmt.Errorf("kube store: %w", err)
	}
	return &Store{client: cs, httpClient: hc, fieldManager: fieldManager, closed: make(chan struct{})}, nil
}

// toResource converts the gRPC form, refusing what the API could not
// address before asking it.
func toResource(ic *detourv1.Intercept) (*v1alpha1.Intercept, error) {
	obj, err := v1alpha1.InterceptFromProto(ic)
	if err != nil {
		return nil, err
	}
	if obj.Namespace == "" || obj.Name == "" {
		return nil, errors.New("intercept needs a namespace and a name")
	}
	// The API server sets creationTimestamp itself and refuses a client's
	// resourceVersion on create.
	obj.CreationTimestamp = metav1.Time{}
	return obj, nil
}

// Create implements store.Store. The spec goes through the CRD's schema and
// CEL rules, so an invalid one fails with the API server's message, which
// names the field. created_at is ignored: the object's creationTimestamp is
// the server's clock. expires_at is written to status.expiresAt by a second
// request; if that fails the object is deleted again, so Create makes all or
// nothing.
func (s *Store) Create(ctx context.Context, ic *detourv1.Intercept) error {
	obj, err := toResource(ic)
	if err != nil {
		return fmt.Errorf("create intercept: %w", err)
	}
	key := obj.Namespace + "/" + obj.Name
	status := obj.Status
	api := s.client.DetourV1alpha1().Intercepts(obj.Namespace)
	created, err := api.Create(ctx, obj, metav1.CreateOptions{FieldManager: s.fieldManager})
	switch {
	case apierrors.IsAlreadyExists(err):
		return fmt.Errorf("intercept %s: %w", key, store.ErrExists)
	case err != nil:
		return fmt.Errorf("create intercept %s: %w", key, err)
	}
	if status.ExpiresAt == nil {
		return nil
	}
	// created is ours, not a cache's: it may be changed.
	created.Status.ExpiresAt = status.ExpiresAt
	if _, err := api.UpdateStatus(ctx, created, metav1.UpdateOptions{FieldManager: s.fieldManager}); err != nil {
		uid := created.UID
		derr := api.Delete(context.WithoutCancel(ctx), obj.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if derr != nil && !apierrors.IsNotFound(derr) {
			return fmt.Errorf("create intercept %s: set status.expiresAt: %w (and the half-made object could not be deleted: %w)", key, err, derr)
		}
		return fmt.Errorf("create intercept %s: set status.expiresAt: %w", key, err)
	}
	return nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, namespace, name string) (*detourv1.Intercept, error) {
	obj, err := s.client.DetourV1alpha1().Intercepts(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("intercept %s/%s: %w", namespace, name, store.ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("get intercept %s/%s: %w", namespace, name, err)
	}
	return obj.ToProto()
}

// List implements store.Store. The API server returns namespace then name
// order today, but does not promise it: List sorts.
func (s *Store) List(ctx context.Context, namespace string) ([]*detourv1.Intercept, error) {
	api := s.client.DetourV1alpha1().Intercepts(namespace)
	var out []*detourv1.Intercept
	opts := metav1.ListOptions{Limit: listPage}
	for {
		l, err := api.List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list intercepts: %w", err)
		}
		for i := range l.Items {
			p, err := l.Items[i].ToProto()
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		if l.Continue == "" {
			break
		}
		opts.Continue = l.Continue
	}
	slices.SortFunc(out, func(a, b *detourv1.Intercept) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	return out, nil
}

// Update implements store.Store: it reads the object, replaces its spec
// (and status.expiresAt, through the status subresource) and writes it back
// with the resourceVersion it read. If another writer changed the object in
// between, nothing is written and the error wraps ErrConflict. The rest of
// the status (conditions, node reports) is left as it is.
func (s *Store) Update(ctx context.Context, ic *detourv1.Intercept) error {
	want, err := toResource(ic)
	if err != nil {
		return fmt.Errorf("update intercept: %w", err)
	}
	key := want.Namespace + "/" + want.Name
	api := s.client.DetourV1alpha1().Intercepts(want.Namespace)
	cur, err := api.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("intercept %s: %w", key, store.ErrNotFound)
	case err != nil:
		return fmt.Errorf("update intercept %s: %w", key, err)
	}
	if s.beforeUpdate != nil {
		s.beforeUpdate()
	}
	// cur came from the API server for this call alone, but copy anyway:
	// the next reader of this code may switch Get to a lister.
	obj := cur.DeepCopy()
	obj.Spec = want.Spec
	updated, err := api.Update(ctx, obj, metav1.UpdateOptions{FieldManager: s.fieldManager})
	if err != nil {
		return updateError(key, err)
	}
	if equalTime(updated.Status.ExpiresAt, want.Status.ExpiresAt) {
		return nil
	}
	updated.Status.ExpiresAt = want.Status.ExpiresAt
	if _, err := api.UpdateStatus(ctx, updated, metav1.UpdateOptions{FieldManager: s.fieldManager}); err != nil {
		return updateError(key, fmt.Errorf("status.expiresAt: %w", err))
	}
	return nil
}

func updateError(key string, err error) error {
	switch {
	case apierrors.IsConflict(err):
		return fmt.Errorf("update intercept %s: %w: %w", key, ErrConflict, err)
	case apierrors.IsNotFound(err): // deleted between our read and our write
		return fmt.Errorf("intercept %s: %w", key, store.ErrNotFound)
	default:
		return fmt.Errorf("update intercept %s: %w", key, err)
	}
}

// equalTime compares at the second, the resolution metav1.Time keeps.
func equalTime(a, b *metav1.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Unix() == b.Unix()
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, namespace, name string) error {
	err := s.client.DetourV1alpha1().Intercepts(namespace).Delete(ctx, name, metav1.DeleteOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("intercept %s/%s: %w", namespace, name, store.ErrNotFound)
	case err != nil:
		return fmt.Errorf("delete intercept %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Close implements store.Store: it stops every Watch, waits for their
// informers to end, and lets the idle connections go. It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	s.watchers.Wait()
	s.httpClient.CloseIdleConnections()
	return nil
}
