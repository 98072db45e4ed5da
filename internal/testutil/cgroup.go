package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// EnterCgroup moves the test process into a new child of the cgroup v2
// hierarchy and back out when the test ends, and returns the child's
// directory: a cgroup program attached there sees the test's sockets and
// no one else's (sockets belong to the cgroup of the process that creates
// them, accepted ones to their listener's).
func EnterCgroup(t testing.TB) string {
	t.Helper()
	root := "/sys/fs/cgroup/unified"
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		root = "/sys/fs/cgroup"
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var orig string
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			orig = filepath.Join(root, p)
		}
	}
	if orig == "" {
		t.Fatal("no cgroup v2 entry in /proc/self/cgroup")
	}
	dir := filepath.Join(root, fmt.Sprintf("detour-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	move := func(to string) error {
		return os.WriteFile(filepath.Join(to, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
	}
	if err := move(dir); err != nil {
		os.Remove(dir)
		t.Fatalf("enter %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := move(orig); err != nil {
			t.Errorf("back to %s: %v", orig, err)
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}
