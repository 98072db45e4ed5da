package testutil

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Poll stops at the first nil from cond, and gives up with cond's last
// error, wrapped, once its time has passed.
func TestPoll(t *testing.T) {
	calls := 0
	err := Poll(5*time.Second, func() error {
		if calls++; calls < 3 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Poll = %v after %d calls, want nil after 3", err, calls)
	}

	last := errors.New("still not")
	start := time.Now()
	err = Poll(50*time.Millisecond, func() error { return last })
	if !errors.Is(err, last) || !strings.Contains(err.Error(), "within 50ms") {
		t.Fatalf("Poll = %v, want %v wrapped with the time it waited", err, last)
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Fatalf("Poll gave up after %v, before its 50ms", took)
	}
}

// failTB records what Eventually fails a test with.
type failTB struct {
	testing.TB
	failed string
}

func (f *failTB) Helper()           {}
func (f *failTB) Fatal(args ...any) { f.failed = fmt.Sprint(args...) }

func TestEventually(t *testing.T) {
	var ok failTB
	Eventually(&ok, time.Second, func() error { return nil })
	if ok.failed != "" {
		t.Fatalf("a condition that holds failed the test: %s", ok.failed)
	}
	var never failTB
	Eventually(&never, 30*time.Millisecond, func() error { return errors.New("the port is closed") })
	if want := "condition not met within 30ms: the port is closed"; never.failed != want {
		t.Fatalf("failed with %q, want %q", never.failed, want)
	}
}
