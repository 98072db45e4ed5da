package controller

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/store"
)

// flakyStore is a bolt store that reports the changes a test sends, as the
// Kubernetes store reports kubectl's, and whose reads fail while failures
// are left.
type flakyStore struct {
	*store.Bolt
	events   chan store.Event
	failures atomic.Int32 // reads still to fail
	gets     atomic.Int32 // reads made
}

var _ WatchingStore = (*flakyStore)(nil)

func (f *flakyStore) Watch(context.Context) (<-chan store.Event, error) { return f.events, nil }

func (f *flakyStore) Get(ctx context.Context, namespace, name string) (*detourv1.Intercept, error) {
	f.gets.Add(1)
	if f.failures.Add(-1) >= 0 {
		return nil, errors.New("the API server is unavailable")
	}
	return f.Bolt.Get(ctx, namespace, name)
}

// A change whose read fails is read again until the read succeeds, then
// not again.
func TestWatchRetriesFailedReads(t *testing.T) {
	bolt, err := store.Open(filepath.Join(t.TempDir(), "controller.db"))
	if err != nil {
		t.Fatal(err)
	}
	st := &flakyStore{Bolt: bolt, events: make(chan store.Event)}
	h := &harness{t: t, clock: newFakeClock(), inv: inventory.NewStaticSource(labInventory()), reg: prometheus.NewRegistry()}
	srv, err := New(ctx(t), Config{Store: st, Inventory: h.inv, Clock: h.clock, Registerer: h.reg})
	if err != nil {
		t.Fatal(err)
	}
	h.serve(srv, st.Close)
	t.Cleanup(h.stop)
	node := h.watchNode(t, "lab")
	if ev := node.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT || len(ev.GetAssignments()) != 0 {
		t.Fatalf("first event %v, want an empty snapshot", ev)
	}

	// Made behind the controller's back; its first three reads fail.
	ic := req("alice", "api-alice:8080", 0, session("alice")).GetIntercept()
	ic.Namespace = "default"
	if err := bolt.Create(ctx(t), ic); err != nil {
		t.Fatal(err)
	}
	st.failures.Store(3)
	st.events <- store.Event{Type: store.Added, Intercept: ic}
	wantUpsert(t, node.recv(t), "alice", "10.0.0.20:8080")
	if n := st.gets.Load(); n != 4 {
		t.Fatalf("%d reads, want 4: three that failed and one that did not", n)
	}

	// Deleted the same way; two reads fail.
	if err := bolt.Delete(ctx(t), "default", "alice"); err != nil {
		t.Fatal(err)
	}
	st.failures.Store(2)
	st.events <- store.Event{Type: store.Deleted, Intercept: ic}
	wantDelete(t, node.recv(t), "alice")
	if n := st.gets.Load(); n != 7 {
		t.Fatalf("%d reads, want 7", n)
	}
}
