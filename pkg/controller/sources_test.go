package controller

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

func l4(name, dest string, pods, namespaces []string) *detourv1.CreateInterceptRequest {
	r := req(name, dest, 0)
	r.Intercept.Spec.L4 = true
	r.Intercept.Spec.SourcePods = pods
	r.Intercept.Spec.SourceNamespaces = namespaces
	return r
}

func TestL4AndSourceOverlap(t *testing.T) {
	h := newHarness(t)
	// An L4 intercept from api-bob only.
	h.create(l4("bulk-bob", "api-alice:8080", []string{"api-bob"}, nil))

	for _, tc := range []struct {
		name string
		r    *detourv1.CreateInterceptRequest
		code codes.Code
		msg  string
	}{
		{"request conditions on l4", func() *detourv1.CreateInterceptRequest {
			r := l4("x", "api-alice:8080", nil, nil)
			r.Intercept.Spec.Match = []*detourv1.Condition{session("a")}
			return r
		}(), codes.InvalidArgument, "give no request conditions"},
		{"unknown source pod", l4("x", "api-alice:8080", []string{"nope"}, nil), codes.NotFound, "source pod default/nope not found"},
		{"bad source namespace", l4("x", "api-alice:8080", nil, []string{"Not_A_Label"}), codes.InvalidArgument, "source namespace"},
		{"unrestricted l4 takes everything", l4("x", "api-alice:8080", nil, nil), codes.FailedPrecondition, "overlaps intercept default/bulk-bob"},
		{"same source pod", l4("x", "api-alice:8080", []string{"default/api-bob"}, nil), codes.FailedPrecondition, "from-pod=api-bob"},
		{"source namespace holds the pod", l4("x", "api-alice:8080", nil, []string{"default"}), codes.FailedPrecondition, "l4 intercept"},
		{"a request intercept from the same source", func() *detourv1.CreateInterceptRequest {
			r := req("x", "api-alice:8080", 0, session("zed"))
			r.Intercept.Spec.SourcePods = []string{"api-bob"}
			return r
		}(), codes.FailedPrecondition, "l4 intercept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.ctl.CreateIntercept(ctx(t), tc.r)
			wantCode(t, err, tc.code)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.msg) {
				t.Fatalf("message %q does not contain %q", msg, tc.msg)
			}
		})
	}
	// Disjoint sources coexist: another pod, another namespace.
	h.create(l4("bulk-alice", "api-bob:8080", []string{"api-alice"}, []string{"team-a"}))
}

func TestSourcesResolveToAddresses(t *testing.T) {
	h := newHarness(t)
	lab := h.watchNode(t, "lab")
	lab.recv(t) // empty snapshot
	h.create(l4("bulk", "api-alice:8080", []string{"api-bob"}, []string{"team-a"}))
	ev := lab.recv(t)
	a := ev.GetAssignments()[0]
	want := &detourv1.Assignment{
		Namespace: "default", Name: "bulk",
		Targets:         []*detourv1.Target{{PodNamespace: "default", PodName: "api-0", PodIp: "10.0.0.10", Netns: "/run/netns/api-0", Port: 8080}},
		Destination:     "10.0.0.20:8080",
		L4:              true,
		RestrictSources: true,
		Sources:         []string{"10.0.0.21", "10.0.0.30"}, // api-bob, and web-0 of team-a
		NodeSources:     []string{"10.0.0.21", "10.0.0.30"}, // both on the lab node
		// Every pod of the service, on any node: the sources here are
		// redirected at connect() whichever pod they dial.
		DialedAddresses: []string{"10.0.0.10:8080", "10.0.1.11:8080"},
	}
	if !proto.Equal(a, want) {
		t.Fatalf("assignment\n%v\nwant\n%v", a, want)
	}
}
