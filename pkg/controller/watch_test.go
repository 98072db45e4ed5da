package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
)

// nodeWatch is an agent's desired-state stream in a test.
type nodeWatch struct {
	stream grpc.ServerStreamingClient[detourv1.WatchDesiredStateResponse]
	cancel context.CancelFunc
}

func (h *harness) watchNode(t *testing.T, node string) *nodeWatch {
	t.Helper()
	c, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := h.agents.WatchDesiredState(c, &detourv1.WatchDesiredStateRequest{Node: node})
	if err != nil {
		t.Fatal(err)
	}
	return &nodeWatch{stream: s, cancel: cancel}
}

// recv waits for the next event, failing the test after a deadline rather
// than hanging it.
func (w *nodeWatch) recv(t *testing.T) *detourv1.WatchDesiredStateResponse {
	t.Helper()
	return recvWithin(t, w.stream.Recv)
}

type interceptWatch struct {
	stream grpc.ServerStreamingClient[detourv1.WatchInterceptsResponse]
}

func (h *harness) watchIntercepts(t *testing.T, ns string) *interceptWatch {
	t.Helper()
	watchers := func() int {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		return len(h.srv.icWatchers)
	}
	before := watchers()
	c, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := h.ctl.WatchIntercepts(c, &detourv1.WatchInterceptsRequest{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	// The call returns before the server has registered the watch; a change
	// made in between would arrive as EXISTING rather than as itself.
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := watchers(); n <= before {
			return fmt.Errorf("%d intercept watches registered, want more than %d", n, before)
		}
		return nil
	})
	return &interceptWatch{stream: s}
}

func (w *interceptWatch) recv(t *testing.T) *detourv1.WatchInterceptsResponse {
	t.Helper()
	return recvWithin(t, w.stream.Recv)
}

func recvWithin[T any](t *testing.T, recv func() (T, error)) T {
	t.Helper()
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() { v, err := recv(); ch <- res{v, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("recv: %v", r.err)
		}
		return r.v
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for an event")
		panic("unreachable")
	}
}

// metric reads one series from the harness's registry, as a scrape would
// see it; label pairs select the series.
func (h *harness) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	fams, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}
