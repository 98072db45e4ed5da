package store_test

import (
	"path/filepath"
	"testing"

	"github.com/detourdev/detour/pkg/store"
	"github.com/detourdev/detour/pkg/store/storetest"
)

func TestBoltEnvironments(t *testing.T) {
	storetest.RunEnvironments(t, func(t *testing.T) (store.Environments, [2]string) {
		b, err := store.Open(filepath.Join(t.TempDir(), "controller.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return store.NewBoltEnvironments(b), [2]string{"a", "b"}
	})
}
