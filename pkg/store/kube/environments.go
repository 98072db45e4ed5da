package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/generated/informers/externalversions"
	"github.com/detourdev/detour/pkg/store"
)

// Environments is store.Environments kept in Environment resources: the API
// server itself enforces the rules the interface states (generation,
// resourceVersion, finalizers), and kubectl sees and makes the same objects.
type Environments struct {
	client       versioned.Interface
	httpClient   *http.Client
	fieldManager string

	mu       sync.Mutex
	informer cache.SharedIndexInformer
	stop     chan struct{}
	closed   bool
}

var _ store.Environments = (*Environments)(nil)

// NewEnvironments returns Environments on the API server of cfg, writing as
// fieldManager. The Environment CRD must be installed.
func NewEnvironments(cfg *rest.Config, fieldManager string) (*Environments, error) {
	if cfg == nil || fieldManager == "" {
		return nil, errors.New("kube environments: a rest.Config and a field manager are required")
	}
	hc, cs, err := clientFor(cfg, fieldManager)
	if err != nil {
		return nil, fmt.Errorf("kube environments: %w", err)
	}
	return &Environments{client: cs, httpClient: hc, fieldManager: fieldManager, stop: make(chan struct{})}, nil
}

// Close stops the informer of SubscribeEnvironments and lets the
// connections go; it is idempotent.
func (e *Environments) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.closed {
		e.closed = true
		close(e.stop)
		e.httpClient.CloseIdleConnections()
	}
	return nil
}

func envError(err error, verb, ns, name string) error {
	key := ns + "/" + name
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("environment %s: %w", key, store.ErrNotFound)
	case apierrors.IsAlreadyExists(err):
		return fmt.Errorf("environment %s: %w", key, store.ErrExists)
	case apierrors.IsConflict(err):
		return fmt.Errorf("environment %s: %w: %w", key, store.ErrConflict, err)
	}
	return fmt.Errorf("%s environment %s: %w", verb, key, err)
}

// CreateEnvironment implements store.Environments; the spec meets the CRD's
// schema and CEL rules, whose messages name the field.
func (e *Environments) CreateEnvironment(ctx context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error) {
	obj := env.DeepCopy()
	obj.TypeMeta = metav1.TypeMeta{}
	obj.ResourceVersion, obj.UID, obj.CreationTimestamp, obj.DeletionTimestamp = "", "", metav1.Time{}, nil
	st := obj.Status
	out, err := e.client.DetourV1alpha1().Environments(obj.Namespace).Create(ctx, obj, metav1.CreateOptions{FieldManager: e.fieldManager})
	if err != nil {
		return nil, envError(err, "create", obj.Namespace, obj.Name)
	}
	if !equality.Semantic.DeepEqual(st, v1alpha1.EnvironmentStatus{}) {
		out.Status = st
		if out, err = e.client.DetourV1alpha1().Environments(obj.Namespace).UpdateStatus(ctx, out, metav1.UpdateOptions{FieldManager: e.fieldManager}); err != nil {
			return nil, envError(err, "create", obj.Namespace, obj.Name)
		}
	}
	return out, nil
}

// GetEnvironment implements store.Environments.
func (e *Environments) GetEnvironment(ctx context.Context, namespace, name string) (*v1alpha1.Environment, error) {
	out, err := e.client.DetourV1alpha1().Environments(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, envError(err, "get", namespace, name)
	}
	return out, nil
}

// ListEnvironments implements store.Environments.
func (e *Environments) ListEnvironments(ctx context.Context, namespace string) ([]*v1alpha1.Environment, error) {
	api := e.client.DetourV1alpha1().Environments(namespace)
	var out []*v1alpha1.Environment
	opts := metav1.ListOptions{Limit: listPage}
	for {
		l, err := api.List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list environments: %w", err)
		}
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
		if l.Continue == "" {
			break
		}
		opts.Continue = l.Continue
	}
	slices.SortFunc(out, func(a, b *v1alpha1.Environment) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

// UpdateEnvironment implements store.Environments. The API server removes
// a deleted object once its last finalizer goes; then it returns nil, nil.
func (e *Environments) UpdateEnvironment(ctx context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error) {
	obj := env.DeepCopy()
	out, err := e.client.DetourV1alpha1().Environments(obj.Namespace).Update(ctx, obj, metav1.UpdateOptions{FieldManager: e.fieldManager})
	if err != nil {
		return nil, envError(err, "update", obj.Namespace, obj.Name)
	}
	if out.DeletionTimestamp != nil && len(out.Finalizers) == 0 {
		return nil, nil
	}
	return out, nil
}

// UpdateEnvironmentStatus implements store.Environments.
func (e *Environments) UpdateEnvironmentStatus(ctx context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error) {
	obj := env.DeepCopy()
	out, err := e.client.DetourV1alpha1().Environments(obj.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{FieldManager: e.fieldManager})
	if err != nil {
		return nil, envError(err, "update status of", obj.Namespace, obj.Name)
	}
	return out, nil
}

// DeleteEnvironment implements store.Environments.
func (e *Environments) DeleteEnvironment(ctx context.Context, namespace, name string) error {
	if err := e.client.DetourV1alpha1().Environments(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return envError(err, "delete", namespace, name)
	}
	return nil
}

// SubscribeEnvironments implements store.Environments, with one shared
// informer over every namespace, started on first use.
func (e *Environments) SubscribeEnvironments(ctx context.Context, fn func(namespace, name string)) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return errors.New("kube environments: closed")
	}
	if e.informer == nil {
		f := externalversions.NewSharedInformerFactory(e.client, 0)
		e.informer = f.Detour().V1alpha1().Environments().Informer()
		go e.informer.Run(e.stop)
	}
	inf := e.informer
	e.mu.Unlock()
	key := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if m, ok := obj.(metav1.Object); ok {
			fn(m.GetNamespace(), m.GetName())
		}
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    key,
		UpdateFunc: func(_, n any) { key(n) },
		DeleteFunc: key,
	})
	if err != nil {
		return fmt.Errorf("subscribe environments: %w", err)
	}
	context.AfterFunc(ctx, func() { _ = inf.RemoveEventHandler(reg) })
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return fmt.Errorf("subscribe environments: %w", context.Cause(ctx))
	}
	return nil
}
