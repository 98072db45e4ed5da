// Package kube is a store.Store kept in Intercept custom resources
// (intercepts.detour.dev/v1alpha1): kubectl sees every intercept, RBAC on
// the resource decides who may make one, and a controller that restarts
// finds them all in the API server.
//
// The Store reads and writes the API server directly, not through a cache,
// so a Get after a Create always sees it. One shared informer, started on
// first use, serves Watch (for a controller that must also react to
// intercepts made with kubectl) and the StatusWriter (which compares with
// its cache before writing status).
package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/generated/informers/externalversions"
	listers "github.com/detourdev/detour/pkg/generated/listers/detour/v1alpha1"
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
	closed    chan struct{}  // closed by Close: stops every Watch and the informer
	watchers  sync.WaitGroup // running Watch goroutines

	mu       sync.Mutex // guards the informer's start
	factory  externalversions.SharedInformerFactory
	informer cache.SharedIndexInformer
	lister   listers.InterceptLister

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
	hc, cs, err := clientFor(cfg, fieldManager)
	if err != nil {
		return nil, fmt.Errorf("kube store: %w", err)
	}
	return &Store{client: cs, httpClient: hc, fieldManager: fieldManager, closed: make(chan struct{})}, nil
}

// clientFor is a clientset of Detour's resources on an http.Client of its
// own, so that closing a store can let its connections go; requests name
// fieldManager as their user agent unless cfg has one.
func clientFor(cfg *rest.Config, fieldManager string) (*http.Client, versioned.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = fieldManager
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, nil, err
	}
	cs, err := versioned.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, nil, err
	}
	return hc, cs, nil
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
// request (a patch of that field alone, see patchExpiry); if that fails the
// object is deleted again, so Create makes all or nothing.
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
	if err := s.patchExpiry(ctx, obj.Namespace, obj.Name, status.ExpiresAt); err != nil {
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

// Update implements store.Store: it reads the object, replaces its spec and
// writes it back with the resourceVersion it read. If another writer changed
// the spec in between, nothing is written and the error wraps ErrConflict;
// a change to the status alone (the StatusWriter's, every few seconds) is
// not a conflict: Update reads again and retries. A spec that is already as
// wanted (a renewal) is not written at all. status.expiresAt is then
// patched alone (see patchExpiry); the rest of the status is the
// StatusWriter's.
func (s *Store) Update(ctx context.Context, ic *detourv1.Intercept) error {
	want, err := toResource(ic)
	if err != nil {
		return fmt.Errorf("update intercept: %w", err)
	}
	key := want.Namespace + "/" + want.Name
	api := s.client.DetourV1alpha1().Intercepts(want.Namespace)
	var (
		cur      *v1alpha1.Intercept
		gen      int64 // the generation the last attempt read
		conflict error // why the last attempt failed
	)
	for attempt := 1; ; attempt++ {
		cur, err = api.Get(ctx, want.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("intercept %s: %w", key, store.ErrNotFound)
		case err != nil:
			return fmt.Errorf("update intercept %s: %w", key, err)
		}
		if equality.Semantic.DeepEqual(cur.Spec, want.Spec) {
			break
		}
		// The generation counts changes to the spec: while it stays, the
		// write that beat the last attempt was to the status (or the
		// metadata), and this one may go.
		if conflict != nil && cur.Generation != gen {
			return updateError(key, conflict)
		}
		gen = cur.Generation
		if s.beforeUpdate != nil {
			s.beforeUpdate()
		}
		// cur came from the API server for this call alone, but copy
		// anyway: the next reader of this code may switch Get to a lister.
		obj := cur.DeepCopy()
		obj.Spec = want.Spec
		updated, err := api.Update(ctx, obj, metav1.UpdateOptions{FieldManager: s.fieldManager})
		if err == nil {
			cur = updated
			break
		}
		if !apierrors.IsConflict(err) || attempt == updateAttempts {
			return updateError(key, err)
		}
		conflict = err
	}
	if equalTime(cur.Status.ExpiresAt, want.Status.ExpiresAt) {
		return nil
	}
	if err := s.patchExpiry(ctx, want.Namespace, want.Name, want.Status.ExpiresAt); err != nil {
		return updateError(key, fmt.Errorf("status.expiresAt: %w", err))
	}
	return nil
}

// updateAttempts bounds Update's retries after writes to the status.
const updateAttempts = 5

// patchExpiry sets status.expiresAt (nil removes it) with a merge patch of
// that one field and no resourceVersion: the StatusWriter writes the rest of
// the status as often as every two seconds, and a whole-status update,
// checked against the version read, would keep losing to it (a renewal
// failing for a node report) or overwrite it.
func (s *Store) patchExpiry(ctx context.Context, namespace, name string, at *metav1.Time) error {
	var v any // JSON null deletes the field
	if at != nil {
		v = at
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"expiresAt": v}})
	if err != nil {
		return err
	}
	_, err = s.client.DetourV1alpha1().Intercepts(namespace).Patch(ctx, name, types.MergePatchType, body,
		metav1.PatchOptions{FieldManager: s.fieldManager}, "status")
	return err
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

// Close implements store.Store: it stops every Watch and the informer,
// waits for them to end, and lets the idle connections go. It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		close(s.closed)
		f := s.factory
		s.mu.Unlock()
		s.watchers.Wait()
		if f != nil {
			f.Shutdown() // waits for the informer's goroutines
		}
	})
	s.httpClient.CloseIdleConnections()
	return nil
}

var errClosed = errors.New("store closed")

// sharedInformer returns the Store's informer on every intercept of every
// namespace, starting it on first use; Close stops it. Watch and the
// StatusWriter add their handlers to it, so the API server serves one watch.
func (s *Store) sharedInformer() (cache.SharedIndexInformer, listers.InterceptLister, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
		return nil, nil, errClosed
	default:
	}
	if s.factory == nil {
		s.factory = externalversions.NewSharedInformerFactory(s.client, 0)
		ifc := s.factory.Detour().V1alpha1().Intercepts()
		s.informer, s.lister = ifc.Informer(), ifc.Lister()
		s.factory.Start(s.closed)
	}
	return s.informer, s.lister, nil
}

// waitSynced waits until the informer's cache holds every intercept, or ctx
// ends, or the Store is closed.
func (s *Store) waitSynced(ctx context.Context, informer cache.SharedIndexInformer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		select {
		case <-s.closed:
			return errClosed
		default:
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("cache did not sync: %w", err)
		}
		return errors.New("cache did not sync")
	}
	return nil
}
