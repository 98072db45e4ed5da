package envtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Version is the Kubernetes release the harness runs, built from source by
// test/cluster/build.sh.
const Version = "v1.33.13"

// ErrNoBinaries says that the Kubernetes binaries were neither in the cache
// nor buildable here. Start turns it into a skip, or a failure under CI=true.
var ErrNoBinaries = errors.New("kubernetes binaries unavailable")

// CacheDir is where test/cluster/build.sh puts the binaries (in its bin/):
// $DETOUR_K8S_CACHE, else /var/cache/detour/k8s-<Version>, else, when that
// cannot be created (not root), the user's cache directory. build.sh follows
// the same rule.
func CacheDir() string {
	if dir := os.Getenv("DETOUR_K8S_CACHE"); dir != "" {
		return dir
	}
	dir := "/var/cache/detour/k8s-" + Version
	if err := os.MkdirAll(dir, 0o755); err == nil {
		return dir
	}
	if home, err := os.UserCacheDir(); err == nil {
		return filepath.Join(home, "detour", "k8s-"+Version)
	}
	return dir
}

// binaries the harness needs; build.sh makes more (kubelet, ...).
var required = []string{"etcd", "kube-apiserver"}

// EnsureBinaries returns the directory holding etcd and kube-apiserver of
// Version, running test/cluster/build.sh first. That script returns at once
// when its stamp matches; cold it compiles Kubernetes for about 5 minutes, and
// progress goes to progress. $DETOUR_K8S_BIN names a ready directory instead
// and turns the build off.
func EnsureBinaries(ctx context.Context, progress io.Writer) (string, error) {
	if dir := os.Getenv("DETOUR_K8S_BIN"); dir != "" {
		if err := haveAll(dir); err != nil {
			return "", fmt.Errorf("%w: DETOUR_K8S_BIN: %w", ErrNoBinaries, err)
		}
		return dir, nil
	}
	cache := CacheDir()
	bin := filepath.Join(cache, "bin")
	script, err := buildScript()
	if err != nil {
		// A test binary run away from the source tree: use what is there.
		if herr := haveAll(bin); herr == nil {
			return bin, nil
		}
		return "", fmt.Errorf("%w: %w", ErrNoBinaries, err)
	}
	if _, err := exec.LookPath("go"); err != nil {
		if herr := haveAll(bin); herr == nil {
			return bin, nil
		}
		return "", fmt.Errorf("%w: no go command to build them with", ErrNoBinaries)
	}
	if _, err := os.Stat(filepath.Join(bin, ".stamp")); err != nil {
		fmt.Fprintf(progress, "envtest: building Kubernetes %s and etcd from source into %s "+
			"(test/cluster/build.sh): about 5 minutes on a cold Go build cache, once per machine\n", Version, bin)
	}
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "DETOUR_K8S_CACHE="+cache)
	cmd.Stdout = progress
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrNoBinaries, script, err)
	}
	if err := haveAll(bin); err != nil {
		return "", fmt.Errorf("%w: after %s: %w", ErrNoBinaries, script, err)
	}
	return bin, nil
}

func haveAll(dir string) error {
	for _, b := range required {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil {
			return err
		}
		if fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", filepath.Join(dir, b))
		}
	}
	return nil
}

// buildScript finds test/cluster/build.sh: beside this source file when the
// test binary was built from the tree (the usual case), else in a parent of
// the working directory (go test runs in the package's directory).
func buildScript() (string, error) {
	const rel = "test/cluster/build.sh"
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p := filepath.Join(filepath.Dir(file), "..", "..", rel)
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/detourdev/detour\n") {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", fmt.Errorf("%s not found from %s", rel, dir)
}
