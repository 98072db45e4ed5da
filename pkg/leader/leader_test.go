package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
)

const leaseName = "test-lease"

// candidate is one replica of the test: Run with two functions, one that
// works until its context ends and one that also fails when told to.
type candidate struct {
	name    string
	running atomic.Int32 // functions running now
	fail    chan error
	stop    context.CancelFunc
	done    chan struct{} // closed when Run has returned err
	err     error
}

func start(t *testing.T, env *envtest.Env, name string) *candidate {
	t.Helper()
	c := &candidate{name: name, fail: make(chan error, 1), done: make(chan struct{})}
	cfg := Config{
		RESTConfig: kubetest.AdminConfig(env),
		Namespace:  "default", Name: leaseName, Identity: name,
		// Short enough that the test is quick (in the order client-go
		// requires: lease > renew deadline > 1.2 × retry period), and
		// long enough that a loaded CI machine does not miss a renewal.
		LeaseDuration: 10 * time.Second, RenewDeadline: 8 * time.Second, RetryPeriod: 500 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler).With("candidate", name),
	}
	work := func(ctx context.Context) error {
		c.running.Add(1)
		defer c.running.Add(-1)
		<-ctx.Done()
		return nil
	}
	failing := func(ctx context.Context) error {
		c.running.Add(1)
		defer c.running.Add(-1)
		select {
		case <-ctx.Done():
			return nil
		case err := <-c.fail:
			return err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	go func() {
		defer close(c.done)
		c.err = Run(ctx, cfg, work, failing)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(20 * time.Second):
			t.Errorf("candidate %s did not stop", name)
		}
	})
	return c
}

// wait returns Run's error, and checks that no function outlived Run.
func (c *candidate) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("candidate %s did not stop", c.name)
	}
	if n := c.running.Load(); n != 0 {
		t.Fatalf("candidate %s: Run returned with %d functions still running", c.name, n)
	}
	return c.err
}

// leader waits until exactly one of cs runs both its functions and the
// others none, and returns it.
func leader(t *testing.T, cs ...*candidate) *candidate {
	t.Helper()
	var l *candidate
	testutil.Eventually(t, 20*time.Second, func() error {
		l = nil
		for _, c := range cs {
			switch n := c.running.Load(); {
			case n == 2 && l == nil:
				l = c
			case n != 0:
				return fmt.Errorf("%s runs %d of its 2 functions, and another leads or it is starting", c.name, n)
			}
		}
		if l == nil {
			return errors.New("no candidate leads")
		}
		return nil
	})
	return l
}

func without(cs []*candidate, c *candidate) []*candidate {
	var out []*candidate
	for _, o := range cs {
		if o != c {
			out = append(out, o)
		}
	}
	return out
}

// TestRun runs three candidates for one Lease: one at a time runs all its
// functions. A leader that stops cleanly, or whose function fails, stops
// every function before letting go, and another takes over; a leader whose
// lease is taken stops with ErrLost.
func TestRun(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := []*candidate{start(t, env, "a"), start(t, env, "b"), start(t, env, "c")}

	first := leader(t, all...)
	t.Logf("%s leads", first.name)
	first.stop()
	if err := first.wait(t); err != nil {
		t.Fatalf("%s stopped with %v, want nil", first.name, err)
	}
	rest := without(all, first)

	second := leader(t, rest...)
	t.Logf("%s took over", second.name)
	boom := errors.New("boom")
	second.fail <- boom
	if err := second.wait(t); !errors.Is(err, boom) {
		t.Fatalf("%s after a function failed: %v, want %v", second.name, err, boom)
	}
	rest = without(rest, second)

	third := leader(t, rest...)
	t.Logf("%s took over", third.name)
	// Someone else takes the lease: the leader cannot renew it, stops its
	// functions and ends with ErrLost.
	leases := kubernetes.NewForConfigOrDie(kubetest.AdminConfig(env)).CoordinationV1().Leases("default")
	lease, err := leases.Get(ctx, leaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := lease.Spec.HolderIdentity; h == nil || *h != third.name {
		t.Fatalf("lease held by %v, want %s", h, third.name)
	}
	thief, long := "thief", int32(3600)
	now := metav1.NewMicroTime(time.Now())
	lease.Spec = coordinationv1.LeaseSpec{HolderIdentity: &thief, LeaseDurationSeconds: &long, AcquireTime: &now, RenewTime: &now}
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := third.wait(t); !errors.Is(err, ErrLost) {
		t.Fatalf("%s after losing its lease: %v, want %v", third.name, err, ErrLost)
	}
}

func TestRunChecksConfig(t *testing.T) {
	err := Run(context.Background(), Config{Namespace: "default", Name: "l", Identity: "a"},
		func(context.Context) error { t.Fatal("ran without a lease"); return nil })
	if err == nil {
		t.Fatal("Run without a RESTConfig succeeded")
	}
}
