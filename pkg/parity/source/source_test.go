package source

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	dir := t.TempDir()
	snap := filepath.Join(dir, "snap.yaml")
	if err := os.WriteFile(snap, []byte("apiVersion: parity.detour.dev/v1alpha1\nkind: ParitySnapshot\nsecretValues: {fingerprint: none}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "objs.yaml")
	if err := os.WriteFile(file, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		arg  string
		want Spec
		err  error
	}{
		{"-", Spec{Arg: "-", Kind: Stdin}, nil},
		{dir, Spec{Arg: dir, Kind: Directory, Path: dir}, nil},
		{snap, Spec{Arg: snap, Kind: SnapshotFile, Path: snap}, nil},
		{file, Spec{Arg: file, Kind: ManifestFile, Path: file}, nil},
		{"shop", Spec{Arg: "shop", Kind: Live, Namespace: "shop"}, nil},
		{"kind-prod/shop", Spec{Arg: "kind-prod/shop", Kind: Live, Context: "kind-prod", Namespace: "shop"}, nil},
		{"arn:aws:eks:eu-west-1:1:cluster/prod/shop", Spec{Arg: "arn:aws:eks:eu-west-1:1:cluster/prod/shop", Kind: Live, Context: "arn:aws:eks:eu-west-1:1:cluster/prod", Namespace: "shop"}, nil},
		{"env/alice", Spec{Arg: "env/alice", Kind: Environment, Env: "alice"}, nil},
		{"env/Alice", Spec{}, ErrBadArgument},
		{"./missing", Spec{}, ErrNotFound},
		{"missing.yaml", Spec{}, ErrNotFound},
		{"Shop", Spec{}, ErrBadArgument},
		{"/shop", Spec{}, ErrNotFound},
		{"ctx/", Spec{}, ErrBadArgument},
		{"", Spec{}, ErrBadArgument},
	}
	for _, tt := range tests {
		got, err := Parse(tt.arg)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("Parse(%q): error %v, want %v", tt.arg, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.arg, got, err, tt.want)
		}
	}
}

type fakeEnvs struct{}

func (fakeEnvs) Resolve(context.Context, string) (*EnvironmentView, error) {
	return nil, errors.New("no such environment")
}

func TestLoad(t *testing.T) {
	l := &Loader{Stdin: strings.NewReader("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: x}\n")}
	s, err := l.Load(context.Background(), Spec{Arg: "-", Kind: Stdin}, "")
	if err != nil || len(s.Objects) != 1 || s.Namespace != "x" || s.Source != "(stdin)" {
		t.Fatalf("stdin: %+v, %v", s, err)
	}
	l.Stdin = strings.NewReader("apiVersion: parity.detour.dev/v1alpha1\nkind: ParitySnapshot\nsource: shop\nsecretValues: {fingerprint: none}\nobjects: [{kind: ConfigMap, name: a}]\n")
	s, err = l.Load(context.Background(), Spec{Arg: "-", Kind: Stdin}, "")
	if err != nil || len(s.Objects) != 1 || s.Source != "(stdin) (snapshot of shop)" {
		t.Fatalf("a snapshot on stdin: %+v, %v", s, err)
	}
	s, err = l.Load(context.Background(), Spec{Arg: "d", Kind: Directory, Path: "../../../examples/parity/staging"}, "override")
	if err != nil || s.Namespace != "override" || len(s.Objects) != 4 {
		t.Fatalf("directory: %+v, %v", s, err)
	}
	if _, err := l.Load(context.Background(), Spec{Arg: "env/a", Kind: Environment, Env: "a"}, ""); !errors.Is(err, ErrNoEnvironments) {
		t.Errorf("env without environments: %v", err)
	}
	l.Environments = fakeEnvs{}
	if _, err := l.Load(context.Background(), Spec{Arg: "env/a", Kind: Environment, Env: "a"}, ""); err == nil || !strings.Contains(err.Error(), "no such environment") {
		t.Errorf("env: %v", err)
	}
	if _, err := l.Load(context.Background(), Spec{Arg: "ns", Kind: Live, Namespace: "ns"}, ""); err == nil {
		t.Error("a live side without a client")
	}
}
