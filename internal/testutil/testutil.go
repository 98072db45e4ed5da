// Package testutil holds helpers shared by the project's tests: the rule for
// privileged tests, throw-away network namespaces, a synchronized buffer and
// a throw-away certificate authority.
package testutil

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourdev/detour/pkg/netns"
)

// RequirePrivileged marks a test that needs root (BPF, namespaces). Outside
// CI it skips with a reason when not root; under CI=true a privileged test
// that cannot run fails, so nothing hides behind a skip.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatalf("privileged test cannot run: not root (CI=true forbids skipping)")
	}
	t.Skip("privileged test: needs root")
}

// InCI reports whether the tests run under CI=true.
func InCI() bool { return strings.EqualFold(os.Getenv("CI"), "true") }

var nsSeq atomic.Uint64

// NewNetNS creates a throw-away named network namespace with loopback up and
// removes it when the test ends. It returns the namespace's path.
func NewNetNS(t testing.TB) string {
	t.Helper()
	RequirePrivileged(t)
	name := fmt.Sprintf("dt-test-%d-%d", os.Getpid(), nsSeq.Add(1))
	path, err := netns.Create(name)
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(name); err != nil {
			t.Errorf("delete netns: %v", err)
		}
	})
	return path
}

// Eventually polls cond until it returns nil or the deadline passes, then
// fails the test with cond's last error.
func Eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met within %v: %v", within, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
