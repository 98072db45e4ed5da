package store_test

import (
	"path/filepath"
	"testing"

	"github.com/detourdev/detour/pkg/store"
	"github.com/detourdev/detour/pkg/store/storetest"
)

// TestBolt runs the Store suite on a database file a test, in a directory
// that Open has to make.
func TestBolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) func() store.Store {
		path := filepath.Join(t.TempDir(), "sub", "c.db")
		return func() store.Store {
			s, err := store.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			return s
		}
	}, storetest.Options{})
}
