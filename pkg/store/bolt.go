package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// interceptsBucket holds one key per intercept, "namespace\x00name", whose value
// is the protobuf encoding of detourv1.Intercept. Protobuf rather than JSON so
// that fields added to the API later read back from an old file unchanged.
var interceptsBucket = []byte("intercepts")

// Bolt is a Store in one bbolt file.
type Bolt struct {
	db *bolt.DB
}

var _ Store = (*Bolt)(nil)

// Open opens or creates the store file at path, creating its directory.
// bbolt locks the file, so a second controller on the same file fails after
// a short wait instead of corrupting it.
func Open(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(interceptsBucket)
		return err
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Bolt{db: db}, nil
}

// key separates namespace and name with NUL, which sorts below every
// character a name can have, so a cursor walks namespace by namespace
// ("default" before "default-x") and then by name.
func key(namespace, name string) []byte { return []byte(namespace + "\x00" + name) }

// keyString is a key for messages.
func keyString(k []byte) string { return string(bytes.Replace(k, []byte{0}, []byte{'/'}, 1)) }

func encode(ic *detourv1.Intercept) ([]byte, error) {
	if ic.GetNamespace() == "" || ic.GetName() == "" {
		return nil, errors.New("intercept needs a namespace and a name")
	}
	if strings.ContainsRune(ic.GetNamespace(), 0) || strings.ContainsRune(ic.GetName(), 0) {
		return nil, errors.New("intercept namespace or name contains NUL") // the key separator
	}
	return proto.Marshal(ic)
}

func decode(k, v []byte) (*detourv1.Intercept, error) {
	ic := &detourv1.Intercept{}
	if err := proto.Unmarshal(v, ic); err != nil {
		return nil, fmt.Errorf("decode intercept %s: %w", keyString(k), err)
	}
	return ic, nil
}

// Create implements Store.
func (b *Bolt) Create(_ context.Context, ic *detourv1.Intercept) error {
	v, err := encode(ic)
	if err != nil {
		return err
	}
	k := key(ic.GetNamespace(), ic.GetName())
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(interceptsBucket)
		if bk.Get(k) != nil {
			return fmt.Errorf("intercept %s: %w", keyString(k), ErrExists)
		}
		return bk.Put(k, v)
	})
}

// Get implements Store.
func (b *Bolt) Get(_ context.Context, namespace, name string) (*detourv1.Intercept, error) {
	var ic *detourv1.Intercept
	k := key(namespace, name)
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(interceptsBucket).Get(k)
		if v == nil {
			return fmt.Errorf("intercept %s: %w", keyString(k), ErrNotFound)
		}
		var err error
		ic, err = decode(k, v) // proto.Unmarshal copies, so v may go with tx
		return err
	})
	return ic, err
}

// List implements Store; the key order is the order the interface promises.
func (b *Bolt) List(_ context.Context, namespace string) ([]*detourv1.Intercept, error) {
	var prefix []byte
	if namespace != "" {
		prefix = []byte(namespace + "\x00")
	}
	var out []*detourv1.Intercept
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(interceptsBucket).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			ic, err := decode(k, v)
			if err != nil {
				return err
			}
			out = append(out, ic)
		}
		return nil
	})
	return out, err
}

// Update implements Store.
func (b *Bolt) Update(_ context.Context, ic *detourv1.Intercept) error {
	v, err := encode(ic)
	if err != nil {
		return err
	}
	k := key(ic.GetNamespace(), ic.GetName())
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(interceptsBucket)
		if bk.Get(k) == nil {
			return fmt.Errorf("intercept %s: %w", keyString(k), ErrNotFound)
		}
		return bk.Put(k, v)
	})
}

// Delete implements Store.
func (b *Bolt) Delete(_ context.Context, namespace, name string) error {
	k := key(namespace, name)
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(interceptsBucket)
		if bk.Get(k) == nil {
			return fmt.Errorf("intercept %s: %w", keyString(k), ErrNotFound)
		}
		return bk.Delete(k)
	})
}

// Close implements Store.
func (b *Bolt) Close() error {
	// bbolt's Close is already safe to call twice.
	return b.db.Close()
}
