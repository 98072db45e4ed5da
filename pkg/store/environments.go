package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// ErrConflict: the object changed since the caller read it (its
// resourceVersion moved); read again and retry.
var ErrConflict = errors.New("changed since it was read")

// Environments holds Environments in their API form, with the API server's
// rules wherever they live: Create sets uid, creationTimestamp, generation
// and resourceVersion; Update and UpdateStatus refuse a stale
// resourceVersion (ErrConflict) and write only the spec and metadata, or
// only the status; a spec change bumps the generation; Delete of an object
// with finalizers only sets its deletionTimestamp, and the object goes when
// an Update removes the last finalizer. In a cluster the Environment custom
// resources are behind it (pkg/store/kube), in the lab a bbolt bucket
// (Bolt.Environments). Everything returned is a copy.
type Environments interface {
	CreateEnvironment(ctx context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error)
	GetEnvironment(ctx context.Context, namespace, name string) (*v1alpha1.Environment, error)
	// ListEnvironments lists one namespace, or all for "", sorted by
	// namespace then name.
	ListEnvironments(ctx context.Context, namespace string) ([]*v1alpha1.Environment, error)
	UpdateEnvironment(ctx context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error)
	UpdateEnvironmentStatus(ctx context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error)
	DeleteEnvironment(ctx context.Context, namespace, name string) error
	// SubscribeEnvironments calls fn with the namespace and name of every
	// environment that changes from now on, whoever changed it, until ctx
	// ends. fn must not block.
	SubscribeEnvironments(ctx context.Context, fn func(namespace, name string)) error
}

// environmentsBucket holds one key per environment ("namespace\x00name"),
// whose value is the JSON of v1alpha1.Environment: the API form, so that
// the lab keeps exactly what a cluster would.
var environmentsBucket = []byte("environments")

// revisionKey (in environmentsBucket's sibling metaBucket) counts writes,
// for resourceVersion.
var (
	metaBucket  = []byte("meta")
	revisionKey = []byte("environments-revision")
)

// BoltEnvironments is Environments in the Bolt store's file.
type BoltEnvironments struct {
	db  *bolt.DB
	now func() time.Time

	mu   sync.Mutex
	subs map[int]func(namespace, name string)
	next int
}

var _ Environments = (*BoltEnvironments)(nil)

// NewBoltEnvironments keeps environments in b's file, beside its
// intercepts. Make one per Bolt: subscribers hear of the writes made
// through the same value.
func NewBoltEnvironments(b *Bolt) *BoltEnvironments {
	return &BoltEnvironments{db: b.db, now: time.Now, subs: map[int]func(string, string){}}
}

func (s *BoltEnvironments) notify(namespace, name string) {
	s.mu.Lock()
	fns := make([]func(string, string), 0, len(s.subs))
	for _, fn := range s.subs {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(namespace, name)
	}
}

// SubscribeEnvironments implements Environments.
func (s *BoltEnvironments) SubscribeEnvironments(ctx context.Context, fn func(namespace, name string)) error {
	s.mu.Lock()
	id := s.next
	s.next++
	s.subs[id] = fn
	s.mu.Unlock()
	context.AfterFunc(ctx, func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	})
	return nil
}

// update runs fn in a write transaction with the bucket and the next
// revision.
func (s *BoltEnvironments) update(fn func(bk *bolt.Bucket, rev string) error) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(environmentsBucket)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		n, _ := strconv.ParseUint(string(meta.Get(revisionKey)), 10, 64)
		rev := strconv.FormatUint(n+1, 10)
		if err := meta.Put(revisionKey, []byte(rev)); err != nil {
			return err
		}
		return fn(bk, rev)
	})
}

func envKey(namespace, name string) ([]byte, error) {
	if namespace == "" || name == "" {
		return nil, errors.New("environment needs a namespace and a name")
	}
	if bytes.IndexByte([]byte(namespace+name), 0) >= 0 {
		return nil, errors.New("environment namespace or name contains NUL")
	}
	return key(namespace, name), nil
}

func getEnv(bk *bolt.Bucket, k []byte) (*v1alpha1.Environment, error) {
	v := bk.Get(k)
	if v == nil {
		return nil, fmt.Errorf("environment %s: %w", keyString(k), ErrNotFound)
	}
	env := &v1alpha1.Environment{}
	if err := json.Unmarshal(v, env); err != nil {
		return nil, fmt.Errorf("decode environment %s: %w", keyString(k), err)
	}
	return env, nil
}

func putEnv(bk *bolt.Bucket, k []byte, env *v1alpha1.Environment) error {
	v, err := json.Marshal(env)
	if err != nil {
		return err
	}
	return bk.Put(k, v)
}

// CreateEnvironment implements Environments.
func (s *BoltEnvironments) CreateEnvironment(_ context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error) {
	k, err := envKey(env.Namespace, env.Name)
	if err != nil {
		return nil, fmt.Errorf("create environment: %w", err)
	}
	out := env.DeepCopy()
	err = s.update(func(bk *bolt.Bucket, rev string) error {
		if bk.Get(k) != nil {
			return fmt.Errorf("environment %s: %w", keyString(k), ErrExists)
		}
		out.UID = types.UID(uuid.NewString())
		out.CreationTimestamp = metav1.NewTime(s.now().Truncate(time.Second))
		out.DeletionTimestamp = nil
		out.Generation = 1
		out.ResourceVersion = rev
		out.TypeMeta = metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "Environment"}
		return putEnv(bk, k, out)
	})
	if err != nil {
		return nil, err
	}
	s.notify(out.Namespace, out.Name)
	return out.DeepCopy(), nil
}

// GetEnvironment implements Environments.
func (s *BoltEnvironments) GetEnvironment(_ context.Context, namespace, name string) (*v1alpha1.Environment, error) {
	k, err := envKey(namespace, name)
	if err != nil {
		return nil, err
	}
	var env *v1alpha1.Environment
	err = s.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(environmentsBucket)
		if bk == nil {
			return fmt.Errorf("environment %s/%s: %w", namespace, name, ErrNotFound)
		}
		env, err = getEnv(bk, k)
		return err
	})
	return env, err
}

// ListEnvironments implements Environments.
func (s *BoltEnvironments) ListEnvironments(_ context.Context, namespace string) ([]*v1alpha1.Environment, error) {
	var out []*v1alpha1.Environment
	err := s.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(environmentsBucket)
		if bk == nil {
			return nil
		}
		c := bk.Cursor()
		prefix := []byte(nil)
		if namespace != "" {
			prefix = []byte(namespace + "\x00")
		}
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			env, err := getEnv(bk, k)
			if err != nil {
				return err
			}
			out = append(out, env)
		}
		return nil
	})
	return out, err
}

// change reads the stored object, lets fn change it, and writes it back
// unless fn says it is gone.
func (s *BoltEnvironments) change(env *v1alpha1.Environment, fn func(cur *v1alpha1.Environment) (gone bool)) (*v1alpha1.Environment, error) {
	k, err := envKey(env.Namespace, env.Name)
	if err != nil {
		return nil, err
	}
	var out *v1alpha1.Environment
	err = s.update(func(bk *bolt.Bucket, rev string) error {
		cur, err := getEnv(bk, k)
		if err != nil {
			return err
		}
		if env.ResourceVersion != "" && env.ResourceVersion != cur.ResourceVersion {
			return fmt.Errorf("environment %s: %w", keyString(k), ErrConflict)
		}
		if fn(cur) {
			return bk.Delete(k)
		}
		cur.ResourceVersion = rev
		out = cur
		return putEnv(bk, k, cur)
	})
	if err != nil {
		return nil, err
	}
	s.notify(env.Namespace, env.Name)
	if out == nil {
		return nil, nil
	}
	return out.DeepCopy(), nil
}

// UpdateEnvironment implements Environments: spec, labels, annotations and
// finalizers. It returns nil, nil when removing the last finalizer of a
// deleted environment removed the environment.
func (s *BoltEnvironments) UpdateEnvironment(_ context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error) {
	return s.change(env, func(cur *v1alpha1.Environment) bool {
		if !equality.Semantic.DeepEqual(cur.Spec, env.Spec) {
			cur.Generation++
		}
		cur.Spec = *env.Spec.DeepCopy()
		cur.Labels, cur.Annotations = env.DeepCopy().Labels, env.DeepCopy().Annotations
		cur.Finalizers = append([]string(nil), env.Finalizers...)
		return cur.DeletionTimestamp != nil && len(cur.Finalizers) == 0
	})
}

// UpdateEnvironmentStatus implements Environments.
func (s *BoltEnvironments) UpdateEnvironmentStatus(_ context.Context, env *v1alpha1.Environment) (*v1alpha1.Environment, error) {
	return s.change(env, func(cur *v1alpha1.Environment) bool {
		cur.Status = *env.Status.DeepCopy()
		return false
	})
}

// DeleteEnvironment implements Environments.
func (s *BoltEnvironments) DeleteEnvironment(_ context.Context, namespace, name string) error {
	_, err := s.change(&v1alpha1.Environment{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}, func(cur *v1alpha1.Environment) bool {
		if len(cur.Finalizers) == 0 {
			return true
		}
		if cur.DeletionTimestamp == nil {
			t := metav1.NewTime(s.now().Truncate(time.Second))
			cur.DeletionTimestamp = &t
		}
		return false
	})
	return err
}
