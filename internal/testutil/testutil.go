// Package testutil holds helpers shared by the project's tests: the rule for
// privileged tests, throw-away network namespaces, waiting for a condition
// (Eventually, Poll), a synchronized buffer and a throw-away certificate
// authority.
package testutil

import (
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

// pollEvery is how long Poll waits between two calls of cond: short next to
// any timeout a test sets, long enough that a condition which asks an API
// server or scans /proc does not load a machine that runs many tests.
const pollEvery = 20 * time.Millisecond

// Poll calls cond until it returns nil, and then returns nil; once within
// has passed it returns cond's last error instead. It is the one loop that
// waits for a condition in the tests: Eventually for the test's own
// goroutine, Poll itself where the test must not be stopped (another
// goroutine, a hook, a caller that reports the failure its own way).
func Poll(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met within %v: %w", within, err)
		}
		time.Sleep(pollEvery)
	}
}

// Eventually polls cond until it returns nil or within passes, then fails
// the test with cond's last error.
func Eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	if err := Poll(within, cond); err != nil {
		t.Fatal(err)
	}
}
