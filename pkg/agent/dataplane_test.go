package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
)

// TestTargetRetriedUntilSteered: a target that cannot be steered yet is
// reported as such, logged once (not at every retry), and steered by the
// retries once it can be, with no new desired state.
func TestTargetRetriedUntilSteered(t *testing.T) {
	podIP := netip.MustParseAddr("10.0.0.5")
	tests := []struct {
		name    string
		breakIt func(s *fakeSteerer, r *fakeResolver, nsPath string)
		fixIt   func(s *fakeSteerer, r *fakeResolver, nsPath string)
		wantErr string
	}{{
		name:    "pod sandbox not there yet",
		breakIt: func(_ *fakeSteerer, r *fakeResolver, _ string) {},
		fixIt:   func(_ *fakeSteerer, r *fakeResolver, nsPath string) { r.set(podIP, nsPath) },
		wantErr: "pod default/api-0 10.0.0.5:8080: no network namespace on this node has address 10.0.0.5",
	}, {
		name: "attach fails",
		breakIt: func(s *fakeSteerer, r *fakeResolver, nsPath string) {
			r.set(podIP, nsPath)
			s.setAttachErr(errors.New("link create: device busy"))
		},
		fixIt:   func(s *fakeSteerer, _ *fakeResolver, _ string) { s.setAttachErr(nil) },
		wantErr: "attach steering to netns",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, r, logs := newFakeSteerer(), newFakeResolver(), &logBuffer{}
			d := newTestDataplane(t, s, r, logs)
			nsPath, ino := fakeNetNS(t)
			tt.breakIt(s, r, nsPath)

			d.Apply([]*detourv1.Assignment{intercept("api", target("api-0", podIP, 8080))})
			if err := wantReport(d.Reports(), "default/api", false, tt.wantErr); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go d.run(ctx, 5*time.Millisecond, 5*time.Millisecond)
			asked := r.asked()
			testutil.Eventually(t, 5*time.Second, func() error {
				if n := r.asked() - asked; n < 5 {
					return errors.New("fewer than 5 retries")
				}
				return nil
			})
			if err := wantReport(d.Reports(), "default/api", false, tt.wantErr); err != nil {
				t.Fatal(err)
			}
			if n := logs.count("cannot steer a target yet"); n != 1 {
				t.Fatalf("the failure was logged %d times over 5 retries, want once:\n%s", n, logs)
			}

			tt.fixIt(s, r, nsPath)
			testutil.Eventually(t, 5*time.Second, func() error {
				return wantReport(d.Reports(), "default/api", true, "")
			})
			if err := s.wantState([]uint64{ino}, "10.0.0.5:8080"); err != nil {
				t.Fatal(err)
			}
			if n := logs.count("target no longer failing"); n != 1 {
				t.Fatalf("the recovery was logged %d times, want once:\n%s", n, logs)
			}
		})
	}
}

// TestPodReplaced: a pod replaced by one with a new address in a new
// namespace moves the steering at the next desired state; one replaced with
// the same address is found by the periodic recheck.
func TestPodReplaced(t *testing.T) {
	s, r, logs := newFakeSteerer(), newFakeResolver(), &logBuffer{}
	d := newTestDataplane(t, s, r, logs)
	oldIP, newIP := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6")
	oldNS, oldIno := fakeNetNS(t)
	newNS, newIno := fakeNetNS(t)

	r.set(oldIP, oldNS)
	d.Apply([]*detourv1.Assignment{intercept("api", target("api-0", oldIP, 8080))})
	if err := s.wantState([]uint64{oldIno}, "10.0.0.5:8080"); err != nil {
		t.Fatal(err)
	}

	r.set(oldIP, "")
	r.set(newIP, newNS)
	d.Apply([]*detourv1.Assignment{intercept("api", target("api-0", newIP, 8080))})
	if err := s.wantState([]uint64{newIno}, "10.0.0.6:8080"); err != nil {
		t.Fatalf("after the pod was replaced: %v", err)
	}
	if err := wantReport(d.Reports(), "default/api", true, ""); err != nil {
		t.Fatal(err)
	}

	// Replaced again, keeping its address: no new desired state comes.
	sameIPNS, sameIPIno := fakeNetNS(t)
	r.set(newIP, sameIPNS)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.run(ctx, 5*time.Millisecond, 5*time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() error {
		return s.wantState([]uint64{sameIPIno}, "10.0.0.6:8080")
	})
}

// TestNamespacePaths: a target names its namespace by path (the lab) or is
// looked up by address; without a resolver, only the first is steered.
func TestNamespacePaths(t *testing.T) {
	s, logs := newFakeSteerer(), &logBuffer{}
	d := newTestDataplane(t, s, nil, logs)
	labNS, labIno := fakeNetNS(t)
	withPath := target("web-0", netip.MustParseAddr("10.0.0.7"), 80)
	withPath.Netns = labNS
	d.Apply([]*detourv1.Assignment{
		intercept("web", withPath),
		intercept("api", target("api-0", netip.MustParseAddr("10.0.0.5"), 8080)),
	})
	reports := d.Reports()
	if err := wantReport(reports, "default/web", true, ""); err != nil {
		t.Fatal(err)
	}
	if err := wantReport(reports, "default/api", false, "has no netns path and this agent does not look namespaces up"); err != nil {
		t.Fatal(err)
	}
	if err := s.wantState([]uint64{labIno}, "10.0.0.7:80"); err != nil {
		t.Fatal(err)
	}
}

// TestCloseRemovesSteering: Close removes every port and attachment, leaves
// nothing for a later Apply to add, and can be called again.
func TestCloseRemovesSteering(t *testing.T) {
	s, r, logs := newFakeSteerer(), newFakeResolver(), &logBuffer{}
	d := newTestDataplane(t, s, r, logs)
	ip := netip.MustParseAddr("10.0.0.5")
	nsPath, ino := fakeNetNS(t)
	r.set(ip, nsPath)
	assignments := []*detourv1.Assignment{intercept("api", target("api-0", ip, 8080), target("api-0", ip, 9090))}
	d.Apply(assignments)
	if err := s.wantState([]uint64{ino}, "10.0.0.5:8080", "10.0.0.5:9090"); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if !s.closed {
		t.Fatal("the steering was not closed")
	}
	d.Apply(assignments)
	if err := s.wantState(nil); err != nil {
		t.Fatalf("after Close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestPortFailureDetachesItsNamespace: a port whose listener cannot be
// opened leaves nothing behind (its namespace, attached for it, is detached
// again), is reported and retried, and is steered once it can be.
func TestPortFailureDetachesItsNamespace(t *testing.T) {
	s, r, logs := newFakeSteerer(), newFakeResolver(), &logBuffer{}
	d := newTestDataplane(t, s, r, logs)
	var refuse atomic.Bool
	refuse.Store(true)
	d.listen = func(path, network, addr string) (net.Listener, error) {
		if refuse.Load() {
			return nil, errors.New("address already in use")
		}
		return listenHere(path, network, addr)
	}
	ip := netip.MustParseAddr("10.0.0.5")
	nsPath, ino := fakeNetNS(t)
	r.set(ip, nsPath)

	d.Apply([]*detourv1.Assignment{intercept("api", target("api-0", ip, 8080))})
	if err := s.wantState(nil); err != nil {
		t.Fatalf("after the listener failed: %v", err)
	}
	if err := wantReport(d.Reports(), "default/api", false, "pod default/api-0 10.0.0.5:8080: listen in pod namespace: address already in use"); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.run(ctx, 5*time.Millisecond, 5*time.Millisecond)
	refuse.Store(false)
	testutil.Eventually(t, 5*time.Second, func() error {
		return wantReport(d.Reports(), "default/api", true, "")
	})
	if err := s.wantState([]uint64{ino}, "10.0.0.5:8080"); err != nil {
		t.Fatal(err)
	}
}
