// Package storetest is the behaviour every store.Store keeps, as one suite
// that each implementation's tests run against storage of their own: bolt
// on a file, kube on an API server.
package storetest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/store"
)

// Storage makes the storage of one test and returns how to open a Store on
// it: each call opens another Store on the same data, as a restarted
// controller would. It closes the Stores when the test ends.
type Storage func(t *testing.T) (open func() store.Store)

// Options are where an implementation may differ from another.
type Options struct {
	// Shared: other tests write to the same storage (one API server for a
	// package), so a List of every namespace is checked on the namespaces
	// of the case at hand alone.
	Shared bool
	// ServerCreatedAt: created_at is the store's own (the API server's
	// creationTimestamp), not what Create was given, so it is checked to
	// be set rather than equal.
	ServerCreatedAt bool
}

// Namespaces are the namespaces the suite writes to besides "default", for
// storage that needs them made first.
func Namespaces() []string {
	return []string{"default-x", "team-a", "copies", "expiry", "restart"}
}

// Intercept is a valid intercept of ns/name, the same at every call.
func Intercept(ns, name string) *detourv1.Intercept {
	return &detourv1.Intercept{
		Namespace: ns,
		Name:      name,
		Spec: &detourv1.InterceptSpec{
			ServiceNamespace: ns,
			ServiceName:      "api",
			Port:             80,
			Match:            []*detourv1.Condition{{Kind: detourv1.Condition_KIND_SESSION, Value: name}},
			Destination:      "api-" + name + ":8080",
			Ttl:              durationpb.New(time.Minute),
		},
		CreatedAt: timestamppb.New(time.Unix(1700000000, 0)),
	}
}

// Names lists the intercepts as namespace/name.
func Names(ics []*detourv1.Intercept) []string {
	var out []string
	for _, i := range ics {
		out = append(out, i.GetNamespace()+"/"+i.GetName())
	}
	return out
}

// Check fails the test unless got is what the store keeps of want.
func (o Options) Check(t testing.TB, got, want *detourv1.Intercept) {
	t.Helper()
	if o.ServerCreatedAt {
		if got.GetCreatedAt() == nil {
			t.Errorf("%s/%s: no created_at", got.GetNamespace(), got.GetName())
		}
		got, want = proto.Clone(got).(*detourv1.Intercept), proto.Clone(want).(*detourv1.Intercept)
		got.CreatedAt, want.CreatedAt = nil, nil
	}
	if !proto.Equal(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

// Run runs the suite, a subtest a case.
func Run(t *testing.T, storage Storage, o Options) {
	t.Run("CRUD", func(t *testing.T) { testCRUD(t, storage(t), o) })
	t.Run("ReturnsCopies", func(t *testing.T) { testReturnsCopies(t, storage(t)) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, storage(t), o) })
	t.Run("Restart", func(t *testing.T) { testRestart(t, storage(t), o) })
}

// list is s.List(ns), but of the given namespaces alone when ns is every
// namespace and the storage is shared.
func (o Options) list(t *testing.T, s store.Store, ns string, of ...string) []*detourv1.Intercept {
	t.Helper()
	got, err := s.List(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	if ns != "" || !o.Shared {
		return got
	}
	var out []*detourv1.Intercept
	for _, i := range got {
		if slices.Contains(of, i.GetNamespace()) {
			out = append(out, i)
		}
	}
	return out
}

func testCRUD(t *testing.T, open func() store.Store, o Options) {
	ctx := context.Background()
	s := open()

	for _, x := range []*detourv1.Intercept{Intercept("default", "bob"), Intercept("default", "alice"), Intercept("team-a", "carol"), Intercept("default-x", "dave")} {
		if err := s.Create(ctx, x); err != nil {
			t.Fatalf("create %s: %v", x.GetName(), err)
		}
	}
	if err := s.Create(ctx, Intercept("default", "alice")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}

	// Sorted by namespace then name; "default" is a prefix of "default-x"
	// but not its namespace.
	tests := []struct {
		ns   string
		want []string
	}{
		{"", []string{"default/alice", "default/bob", "default-x/dave", "team-a/carol"}},
		{"default", []string{"default/alice", "default/bob"}},
		{"team-a", []string{"team-a/carol"}},
		{"nope", nil},
	}
	for _, tt := range tests {
		if g := Names(o.list(t, s, tt.ns, "default", "default-x", "team-a")); !slices.Equal(g, tt.want) {
			t.Errorf("List(%q) = %v, want %v", tt.ns, g, tt.want)
		}
	}

	got, err := s.Get(ctx, "default", "alice")
	if err != nil {
		t.Fatal(err)
	}
	o.Check(t, got, Intercept("default", "alice"))
	if _, err := s.Get(ctx, "default", "zed"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get missing: %v", err)
	}

	upd := Intercept("default", "alice")
	upd.Spec.Destination = "api-alice-2:9090"
	upd.ExpiresAt = timestamppb.New(time.Unix(1700000600, 0))
	if err := s.Update(ctx, upd); err != nil {
		t.Fatal(err)
	}
	got, err = s.Get(ctx, "default", "alice")
	if err != nil {
		t.Fatal(err)
	}
	o.Check(t, got, upd)
	if err := s.Update(ctx, Intercept("default", "zed")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Update missing: %v", err)
	}

	if err := s.Delete(ctx, "default", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "default", "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	if err := s.Create(ctx, &detourv1.Intercept{Name: "x", Spec: Intercept("", "x").Spec}); err == nil {
		t.Fatal("Create without namespace succeeded")
	}
	for _, k := range [][2]string{{"default", "bob"}, {"team-a", "carol"}, {"default-x", "dave"}} {
		if err := s.Delete(ctx, k[0], k[1]); err != nil {
			t.Fatal(err)
		}
	}
}

// The returned objects are copies: changing one must not change the store.
func testReturnsCopies(t *testing.T, open func() store.Store) {
	ctx := context.Background()
	s := open()
	if err := s.Create(ctx, Intercept("copies", "alice")); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "copies", "alice")
	if err != nil {
		t.Fatal(err)
	}
	got.Spec.Destination = "changed:1"
	if again, _ := s.Get(ctx, "copies", "alice"); again.GetSpec().GetDestination() != "api-alice:8080" {
		t.Fatalf("store changed through a returned object: %v", again)
	}
}

// expires_at is kept by Create and Update, and Update can clear it.
func testExpiry(t *testing.T, open func() store.Store, o Options) {
	ctx := context.Background()
	s := open()
	x := Intercept("expiry", "eve")
	x.ExpiresAt = timestamppb.New(time.Unix(1700000000, 0))
	if err := s.Create(ctx, x); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "expiry", "eve")
	if err != nil {
		t.Fatal(err)
	}
	o.Check(t, got, x)

	x.ExpiresAt = nil
	if err := s.Update(ctx, x); err != nil {
		t.Fatal(err)
	}
	got, err = s.Get(ctx, "expiry", "eve")
	if err != nil {
		t.Fatal(err)
	}
	o.Check(t, got, x)
}

// The controller restart: a Store opened again on the same storage finds
// what the first one wrote. Close is idempotent.
func testRestart(t *testing.T, open func() store.Store, o Options) {
	ctx := context.Background()
	s := open()
	want := Intercept("restart", "alice")
	if err := s.Create(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, Intercept("restart", "bob")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "restart", "bob"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	s2 := open()
	for _, ns := range []string{"", "restart"} {
		all := o.list(t, s2, ns, "restart")
		if len(all) != 1 {
			t.Fatalf("List(%q) after restart: %v", ns, Names(all))
		}
		o.Check(t, all[0], want)
	}
}
