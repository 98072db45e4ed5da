// Package source turns a side of `detour parity diff` into a snapshot: it
// tells what the argument names (a namespace, CONTEXT/NAMESPACE, env/NAME,
// a snapshot file, a manifest file or directory, "-" for stdin) and reads it
// with pkg/parity/live or pkg/parity/manifest.
package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/live"
	"github.com/detourdev/detour/pkg/parity/manifest"
)

// Kind is what an argument names.
type Kind int

const (
	Live         Kind = iota // a namespace of a kubeconfig context
	Environment              // env/NAME
	SnapshotFile             // a file written by detour parity snapshot
	ManifestFile             // a file of YAML or JSON objects
	Directory                // manifests, or a kustomization
	Stdin                    // "-": a YAML stream
)

// Errors the CLI maps to exit codes.
var (
	// ErrBadArgument is an argument that names nothing parity reads.
	ErrBadArgument = errors.New("bad source")
	// ErrNotFound is a file or namespace that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNoEnvironments says env/NAME cannot be read here (no cluster:
	// the lab's forks are lab pods, not objects of a namespace).
	ErrNoEnvironments = errors.New("environments cannot be read here")
)

// Spec is a parsed argument.
type Spec struct {
	Arg  string
	Kind Kind
	// Path of a file or directory.
	Path string
	// Context ("" for the default) and Namespace of a live side.
	Context, Namespace string
	// Env is the environment's name.
	Env string
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// Parse tells what arg names. A path that exists wins over a namespace of
// the same name; write ./NAME to mean a path that may not exist yet.
func Parse(arg string) (Spec, error) {
	s := Spec{Arg: arg}
	if arg == "-" {
		s.Kind = Stdin
		return s, nil
	}
	if arg == "" {
		return s, fmt.Errorf("%w: empty argument", ErrBadArgument)
	}
	if st, err := os.Stat(arg); err == nil {
		s.Path = arg
		switch {
		case st.IsDir():
			s.Kind = Directory
		default:
			b, err := readHead(arg)
			if err != nil {
				return s, err
			}
			s.Kind = ManifestFile
			if parity.IsSnapshot(b) {
				s.Kind = SnapshotFile
			}
		}
		return s, nil
	}
	if looksLikePath(arg) {
		return s, fmt.Errorf("%w: %s: no such file or directory", ErrNotFound, arg)
	}
	if name, ok := strings.CutPrefix(arg, "env/"); ok {
		if !dnsLabel.MatchString(name) {
			return s, fmt.Errorf("%w: %q is not an environment name", ErrBadArgument, name)
		}
		s.Kind, s.Env = Environment, name
		return s, nil
	}
	ctx, ns := "", arg
	if i := strings.LastIndex(arg, "/"); i >= 0 {
		ctx, ns = arg[:i], arg[i+1:]
		if ctx == "" {
			return s, fmt.Errorf("%w: %q: empty kubeconfig context before /", ErrBadArgument, arg)
		}
	}
	if len(ns) > 63 || !dnsLabel.MatchString(ns) {
		return s, fmt.Errorf("%w: %q is no file or directory here, and %q is not a namespace name", ErrBadArgument, arg, ns)
	}
	s.Kind, s.Context, s.Namespace = Live, ctx, ns
	return s, nil
}

// looksLikePath says whether arg can only be a path.
func looksLikePath(arg string) bool {
	for _, p := range []string{"./", "../", "/", "~"} {
		if strings.HasPrefix(arg, p) {
			return true
		}
	}
	for _, ext := range []string{".yaml", ".yml", ".json"} {
		if strings.HasSuffix(arg, ext) {
			return true
		}
	}
	return false
}

// readHead reads enough of a file to tell a snapshot from manifests.
func readHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<10))
}

// Environments finds what an environment runs (pkg/parity/environment
// reads it from a cluster). With Loader.Environments nil, env/NAME is
// refused with ErrNoEnvironments.
type Environments interface {
	Resolve(ctx context.Context, name string) (*EnvironmentView, error)
}

// EnvironmentView is where an environment runs: its baseline namespace,
// its forks and the fields of a fork that stay its workload's (see
// parity.Overlay).
type EnvironmentView struct {
	Context, Namespace string
	Forks              map[parity.ObjectKey]parity.ObjectKey
	Keep               []string
}

// Loader reads sides.
type Loader struct {
	// Stdin is read for "-".
	Stdin io.Reader
	// Kube returns a clientset for a kubeconfig context ("" for the
	// default one).
	Kube func(context string) (kubernetes.Interface, error)
	// Fingerprint turns Secret values into HMACs; nil keeps keys only.
	Fingerprint *parity.Fingerprinter
	// Runtime reads what runs on live sides.
	Runtime bool
	// Environments resolves env/NAME; nil refuses it.
	Environments Environments
	// KeepNoise turns noise rules off, by name.
	KeepNoise []string
}

// Load reads the side s names. namespace, when set, overrides the side's
// namespace (for manifests that name none).
func (l *Loader) Load(ctx context.Context, s Spec, namespace string) (*parity.Snapshot, error) {
	snap, err := l.load(ctx, s)
	if err != nil {
		return nil, err
	}
	if namespace != "" {
		snap.Namespace = namespace
	}
	return snap, nil
}

func (l *Loader) load(ctx context.Context, s Spec) (*parity.Snapshot, error) {
	opts := parity.Options{Source: s.Arg, Fingerprint: l.Fingerprint, KeepNoise: l.KeepNoise}
	var objs []map[string]any
	var err error
	switch s.Kind {
	case Stdin:
		if l.Stdin == nil {
			return nil, fmt.Errorf("%w: no standard input", ErrBadArgument)
		}
		opts.Source = "(stdin)"
		b, rerr := io.ReadAll(io.LimitReader(l.Stdin, 1<<30))
		if rerr != nil {
			return nil, fmt.Errorf("read standard input: %w", rerr)
		}
		if parity.IsSnapshot(b) {
			return readSnapshot(b, "(stdin)")
		}
		objs, err = manifest.Decode(b, "stdin")
	case Directory:
		objs, err = manifest.ReadDir(s.Path)
	case ManifestFile:
		objs, err = manifest.ReadFile(s.Path)
	case SnapshotFile:
		b, rerr := os.ReadFile(s.Path)
		if rerr != nil {
			return nil, rerr
		}
		return readSnapshot(b, s.Path)
	case Live:
		return l.live(ctx, s.Context, s.Namespace, opts)
	case Environment:
		if l.Environments == nil {
			return nil, fmt.Errorf("env/%s: %w", s.Env, ErrNoEnvironments)
		}
		view, err := l.Environments.Resolve(ctx, s.Env)
		if err != nil {
			return nil, fmt.Errorf("env/%s: %w", s.Env, err)
		}
		// The forks are read, to stand in for what they fork.
		opts.KeepNoise = append(append([]string(nil), opts.KeepNoise...), parity.RuleEnvironmentForks)
		base, err := l.live(ctx, view.Context, view.Namespace, opts)
		if err != nil {
			return nil, fmt.Errorf("env/%s: %w", s.Env, err)
		}
		return parity.Overlay(base, view.Forks, s.Arg, view.Keep...), nil
	default:
		return nil, fmt.Errorf("%w: %q", ErrBadArgument, s.Arg)
	}
	if err != nil {
		return nil, err
	}
	return parity.Normalize(objs, opts)
}

func readSnapshot(b []byte, name string) (*parity.Snapshot, error) {
	snap, err := parity.ReadSnapshot(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	snap.Source = name + " (snapshot of " + snap.Source + ")"
	return snap, nil
}

func (l *Loader) live(ctx context.Context, kctx, ns string, opts parity.Options) (*parity.Snapshot, error) {
	if l.Kube == nil {
		return nil, fmt.Errorf("namespace %s: no Kubernetes client", ns)
	}
	kube, err := l.Kube(kctx)
	if err != nil {
		return nil, err
	}
	snap, err := live.Snapshot(ctx, kube, ns, live.Options{Runtime: l.Runtime}, opts)
	if errors.Is(err, live.ErrNamespaceNotFound) {
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return snap, err
}
