package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

func ic(ns, name string) *detourv1.Intercept {
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

func open(t *testing.T, path string) *Bolt {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func names(ics []*detourv1.Intercept) []string {
	var out []string
	for _, i := range ics {
		out = append(out, i.GetNamespace()+"/"+i.GetName())
	}
	return out
}

func TestCRUD(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "sub", "c.db"))

	for _, x := range []*detourv1.Intercept{ic("default", "bob"), ic("default", "alice"), ic("team-a", "carol"), ic("default-x", "dave")} {
		if err := s.Create(ctx, x); err != nil {
			t.Fatalf("create %s: %v", x.GetName(), err)
		}
	}
	if err := s.Create(ctx, ic("default", "alice")); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}

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
		got, err := s.List(ctx, tt.ns)
		if err != nil {
			t.Fatal(err)
		}
		if g := names(got); len(g) != len(tt.want) || (len(g) > 0 && !equal(g, tt.want)) {
			t.Errorf("List(%q) = %v, want %v", tt.ns, g, tt.want)
		}
	}

	got, err := s.Get(ctx, "default", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, ic("default", "alice")) {
		t.Fatalf("Get = %v", got)
	}
	if _, err := s.Get(ctx, "default", "zed"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing: %v", err)
	}

	upd := ic("default", "alice")
	upd.ExpiresAt = timestamppb.New(time.Unix(1700000600, 0))
	if err := s.Update(ctx, upd); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Get(ctx, "default", "alice")
	if !proto.Equal(got, upd) {
		t.Fatalf("after Update: %v", got)
	}
	if err := s.Update(ctx, ic("default", "zed")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update missing: %v", err)
	}

	if err := s.Delete(ctx, "default", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "default", "alice"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	if err := s.Create(ctx, &detourv1.Intercept{Name: "x"}); err == nil {
		t.Fatal("Create without namespace succeeded")
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReopen is the controller restart: what was written is there after the
// file is closed and opened again.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	want := ic("default", "alice")
	if err := s.Create(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, ic("default", "bob")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "default", "bob"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	s2 := open(t, path)
	all, err := s2.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || !proto.Equal(all[0], want) {
		t.Fatalf("after reopen: %v", all)
	}
}

// The returned objects are copies: changing one must not change the store.
func TestReturnsCopies(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "c.db"))
	if err := s.Create(ctx, ic("default", "alice")); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get(ctx, "default", "alice")
	got.Spec.Destination = "changed:1"
	again, _ := s.Get(ctx, "default", "alice")
	if again.GetSpec().GetDestination() != "api-alice:8080" {
		t.Fatalf("store changed through a returned object: %v", again)
	}
}
