package controller

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
)

func TestCreateGetListDelete(t *testing.T) {
	h := newHarness(t)
	c := ctx(t)

	got := h.create(req("alice", "api-alice:8080", 0, session("alice")))
	if got.GetNamespace() != "default" || got.GetCreatedAt().AsTime() != h.clock.Now() || got.GetExpiresAt() != nil {
		t.Fatalf("created %v", got)
	}
	web := req("carol", "10.0.0.99:8000", time.Hour, session("carol"))
	web.Intercept.Spec.ServiceNamespace, web.Intercept.Spec.ServiceName = "team-a", "web"
	carol := h.create(web)
	if carol.GetNamespace() != "team-a" || !carol.GetExpiresAt().AsTime().Equal(h.clock.Now().Add(time.Hour)) {
		t.Fatalf("created %v", carol)
	}

	g, err := h.ctl.GetIntercept(c, &detourv1.GetInterceptRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(g.GetIntercept(), got) {
		t.Fatalf("get %v, want %v", g.GetIntercept(), got)
	}

	for _, tt := range []struct {
		ns   string
		want []string
	}{{"", []string{"alice", "carol"}}, {"default", []string{"alice"}}, {"team-a", []string{"carol"}}, {"nobody", nil}} {
		l, err := h.ctl.ListIntercepts(c, &detourv1.ListInterceptsRequest{Namespace: tt.ns})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ic := range l.GetIntercepts() {
			names = append(names, ic.GetName())
		}
		if strings.Join(names, ",") != strings.Join(tt.want, ",") {
			t.Errorf("list %q = %v, want %v", tt.ns, names, tt.want)
		}
	}

	if _, err := h.ctl.DeleteIntercept(c, &detourv1.DeleteInterceptRequest{Namespace: "default", Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	_, err = h.ctl.GetIntercept(c, &detourv1.GetInterceptRequest{Name: "alice"})
	wantCode(t, err, codes.NotFound)
	_, err = h.ctl.DeleteIntercept(c, &detourv1.DeleteInterceptRequest{Name: "alice"})
	wantCode(t, err, codes.NotFound)
	_, err = h.ctl.GetIntercept(c, &detourv1.GetInterceptRequest{})
	wantCode(t, err, codes.InvalidArgument)

	if v := h.metric(t, "detour_controller_intercepts_active"); v != 1 {
		t.Errorf("active intercepts gauge %v, want 1", v)
	}
	if v := h.metric(t, "detour_controller_intercept_creates_total", "result", "ok"); v != 2 {
		t.Errorf("creates ok %v, want 2", v)
	}
	if v := h.metric(t, "detour_controller_intercept_deletes_total", "result", "not_found"); v != 1 {
		t.Errorf("deletes not_found %v, want 1", v)
	}
}

func TestCreateValidation(t *testing.T) {
	h := newHarness(t)
	h.create(req("alice", "api-alice:8080", 0, session("alice")))

	mod := func(f func(r *detourv1.CreateInterceptRequest)) *detourv1.CreateInterceptRequest {
		r := req("bob", "api-bob:8080", 0, session("bob"))
		f(r)
		return r
	}
	tests := []struct {
		name string
		req  *detourv1.CreateInterceptRequest
		code codes.Code
		msg  string
	}{
		{"no intercept", &detourv1.CreateInterceptRequest{}, codes.InvalidArgument, "no intercept"},
		{"no spec", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec = nil }), codes.InvalidArgument, "no spec"},
		{"bad name", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Name = "Bob_1" }), codes.InvalidArgument, "DNS-1123"},
		{"long name", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Name = strings.Repeat("a", 64) }), codes.InvalidArgument, "DNS-1123"},
		{"namespace mismatch", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Namespace = "team-a" }), codes.InvalidArgument, "differs"},
		{"no service", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.ServiceName = "" }), codes.InvalidArgument, "no service"},
		{"unknown service", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.ServiceName = "nope" }), codes.NotFound, "service default/nope not found"},
		{"unknown port", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Port = 81 }), codes.InvalidArgument, "has no port 81 (its ports: 80, 9090)"},
		{"zero port", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Port = 0 }), codes.InvalidArgument, "port 0"},
		{"no match", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Match = nil }), codes.InvalidArgument, "no conditions"},
		{"unknown kind", mod(func(r *detourv1.CreateInterceptRequest) {
			r.Intercept.Spec.Match = []*detourv1.Condition{{Kind: 0, Value: "x"}}
		}), codes.InvalidArgument, "unknown condition kind"},
		{"bad regex", mod(func(r *detourv1.CreateInterceptRequest) {
			r.Intercept.Spec.Match = []*detourv1.Condition{{Kind: detourv1.Condition_KIND_HEADER_REGEX, Name: "x-user", Value: "("}}
		}), codes.InvalidArgument, "invalid regexp"},
		{"destination without port", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Destination = "api-bob" }), codes.InvalidArgument, "HOST:PORT"},
		{"destination bad port", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Destination = "api-bob:70000" }), codes.InvalidArgument, "1 to 65535"},
		{"destination bad host", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Destination = "Api_Bob:80" }), codes.InvalidArgument, "neither an IP"},
		{"destination unknown pod", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Destination = "api-zed:8080" }), codes.NotFound, "pod default/api-zed not found"},
		{"destination pod other ns", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Destination = "team-a/api-bob:8080" }), codes.NotFound, "pod team-a/api-bob not found"},
		{"negative ttl", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Spec.Ttl = durationpb.New(-time.Second) }), codes.InvalidArgument, "negative"},
		{"same name", mod(func(r *detourv1.CreateInterceptRequest) { r.Intercept.Name = "alice" }), codes.AlreadyExists, "intercept default/alice already exists"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.ctl.CreateIntercept(ctx(t), tt.req)
			wantCode(t, err, tt.code)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.msg) {
				t.Errorf("message %q does not contain %q", msg, tt.msg)
			}
		})
	}
	// The valid forms of destination.
	for i, dest := range []string{"api-bob:8080", "default/api-bob:8080", "10.0.0.21:8080", "[fd00::1]:8080"} {
		r := req("ok-"+string(rune('a'+i)), dest, 0, session("k"+string(rune('a'+i))))
		h.create(r)
	}
	if v := h.metric(t, "detour_controller_intercept_creates_total", "result", "invalid"); v < 10 {
		t.Errorf("creates invalid %v", v)
	}
}

func TestCreateConflictNamesOtherIntercept(t *testing.T) {
	h := newHarness(t)
	h.create(req("alice", "api-alice:8080", 0, session("alice")))

	_, err := h.ctl.CreateIntercept(ctx(t), req("bob", "api-bob:8080", 0, session("alice")))
	wantCode(t, err, codes.FailedPrecondition)
	msg := status.Convert(err).Message()
	for _, want := range []string{"default/alice", "session=alice", "both match"} {
		if !strings.Contains(msg, want) {
			t.Errorf("conflict message %q does not contain %q", msg, want)
		}
	}

	// A narrower intercept still overlaps; a disjoint one does not.
	_, err = h.ctl.CreateIntercept(ctx(t), req("bob", "api-bob:8080", 0, session("alice"),
		&detourv1.Condition{Kind: detourv1.Condition_KIND_PATH_PREFIX, Value: "/v2"}))
	wantCode(t, err, codes.FailedPrecondition)
	h.create(req("bob", "api-bob:8080", 0, session("bob")))

	// The same match on another port of the service cannot compete.
	other := req("alice-grpc", "api-alice:9090", 0, session("alice"))
	other.Intercept.Spec.Port = 9090
	h.create(other)
	if v := h.metric(t, "detour_controller_intercept_creates_total", "result", "conflict"); v != 2 {
		t.Errorf("creates conflict %v, want 2", v)
	}
}

// TestRestartKeepsIntercepts is the controller restart: a new Server over
// the reopened store serves the same intercepts and the same desired state.
func TestRestartKeepsIntercepts(t *testing.T) {
	h := newHarness(t)
	want := h.create(req("alice", "api-alice:8080", time.Hour, session("alice")))
	h.restart()

	got, err := h.ctl.GetIntercept(ctx(t), &detourv1.GetInterceptRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.GetIntercept(), want) {
		t.Fatalf("after restart %v, want %v", got.GetIntercept(), want)
	}
	w := h.watchNode(t, "lab")
	snap := w.recv(t)
	if snap.GetType() != detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT || len(snap.GetAssignments()) != 1 {
		t.Fatalf("snapshot after restart %v", snap)
	}
	_, err = h.ctl.CreateIntercept(ctx(t), req("alice", "api-alice:8080", 0, session("other")))
	wantCode(t, err, codes.AlreadyExists)
}

func TestLeaseExpiry(t *testing.T) {
	h := newHarness(t)
	h.create(req("forever", "api-bob:8080", 0, session("bob")))
	w := h.watchIntercepts(t, "")
	// The EXISTING event shows the watch is in place: the stream has no
	// other marker of where the existing intercepts end.
	w.recv(t)
	h.create(req("alice", "api-alice:8080", time.Minute, session("alice")))
	if ev := w.recv(t); ev.GetType() != detourv1.WatchInterceptsResponse_TYPE_CREATED || ev.GetIntercept().GetName() != "alice" {
		t.Fatalf("event %v", ev)
	}

	// Renewal half way moves the end of the lease.
	h.clock.Advance(40 * time.Second)
	r, err := h.ctl.RenewIntercept(ctx(t), &detourv1.RenewInterceptRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if want := h.clock.Now().Add(time.Minute); !r.GetIntercept().GetExpiresAt().AsTime().Equal(want) {
		t.Fatalf("renewed to %v, want %v", r.GetIntercept().GetExpiresAt().AsTime(), want)
	}
	if ev := w.recv(t); ev.GetType() != detourv1.WatchInterceptsResponse_TYPE_UPDATED {
		t.Fatalf("event %v", ev)
	}
	// Past the original end, before the renewed one: still there.
	h.clock.Advance(40 * time.Second)
	if _, err := h.ctl.GetIntercept(ctx(t), &detourv1.GetInterceptRequest{Name: "alice"}); err != nil {
		t.Fatalf("renewed intercept gone early: %v", err)
	}
	// Renew with an explicit ttl, then let it run out.
	_, err = h.ctl.RenewIntercept(ctx(t), &detourv1.RenewInterceptRequest{Name: "alice", Ttl: durationpb.New(10 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	w.recv(t) // updated
	h.clock.Advance(11 * time.Second)
	ev := w.recv(t)
	if ev.GetType() != detourv1.WatchInterceptsResponse_TYPE_EXPIRED || ev.GetIntercept().GetName() != "alice" {
		t.Fatalf("event %v, want EXPIRED alice", ev)
	}
	_, err = h.ctl.GetIntercept(ctx(t), &detourv1.GetInterceptRequest{Name: "alice"})
	wantCode(t, err, codes.NotFound)
	if _, err := h.ctl.GetIntercept(ctx(t), &detourv1.GetInterceptRequest{Name: "forever"}); err != nil {
		t.Fatalf("intercept without a lease expired: %v", err)
	}
	if v := h.metric(t, "detour_controller_intercept_expirations_total", "result", "ok"); v != 1 {
		t.Errorf("expirations %v, want 1", v)
	}
	// Expired while the controller was down: gone once it is back.
	h.create(req("brief", "api-alice:8080", time.Minute, session("brief")))
	h.stop()
	h.clock.Advance(2 * time.Minute)
	h.start()
	testutil.Eventually(t, 5*time.Second, func() error {
		if _, err := h.ctl.GetIntercept(ctx(t), &detourv1.GetInterceptRequest{Name: "brief"}); status.Code(err) != codes.NotFound {
			return fmt.Errorf("brief after restart: GetIntercept = %v, want NotFound", err)
		}
		return nil
	})

	_, err = h.ctl.RenewIntercept(ctx(t), &detourv1.RenewInterceptRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound)
	_, err = h.ctl.RenewIntercept(ctx(t), &detourv1.RenewInterceptRequest{Name: "forever", Ttl: durationpb.New(-time.Second)})
	wantCode(t, err, codes.InvalidArgument)
}

func TestWatchIntercepts(t *testing.T) {
	h := newHarness(t)
	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	web := req("carol", "10.0.0.99:8000", 0, session("carol"))
	web.Intercept.Spec.ServiceNamespace, web.Intercept.Spec.ServiceName = "team-a", "web"
	h.create(web)

	all := h.watchIntercepts(t, "")
	def := h.watchIntercepts(t, "default")
	for _, want := range []string{"alice", "carol"} {
		ev := all.recv(t)
		if ev.GetType() != detourv1.WatchInterceptsResponse_TYPE_EXISTING || ev.GetIntercept().GetName() != want {
			t.Fatalf("event %v, want EXISTING %s", ev, want)
		}
	}
	if ev := def.recv(t); ev.GetType() != detourv1.WatchInterceptsResponse_TYPE_EXISTING || ev.GetIntercept().GetName() != "alice" {
		t.Fatalf("namespaced watch: %v", ev)
	}

	h.create(req("bob", "api-bob:8080", 0, session("bob")))
	if _, err := h.ctl.DeleteIntercept(ctx(t), &detourv1.DeleteInterceptRequest{Namespace: "team-a", Name: "carol"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ctl.DeleteIntercept(ctx(t), &detourv1.DeleteInterceptRequest{Name: "bob"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CREATED bob", "DELETED carol", "DELETED bob"} {
		if got := describeEvent(all.recv(t)); got != want {
			t.Fatalf("all: %s, want %s", got, want)
		}
	}
	// The default-namespace watch never sees carol.
	for _, want := range []string{"CREATED bob", "DELETED bob"} {
		if got := describeEvent(def.recv(t)); got != want {
			t.Fatalf("default: %s, want %s", got, want)
		}
	}
}

func describeEvent(ev *detourv1.WatchInterceptsResponse) string {
	return strings.TrimPrefix(ev.GetType().String(), "TYPE_") + " " + ev.GetIntercept().GetName()
}

func TestDesiredState(t *testing.T) {
	h := newHarness(t)
	lab := h.watchNode(t, "lab")
	nodeB := h.watchNode(t, "node-b")
	lab2 := h.watchNode(t, "lab") // a second watcher of the same node
	for _, w := range []*nodeWatch{lab, nodeB, lab2} {
		if ev := w.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT || len(ev.GetAssignments()) != 0 {
			t.Fatalf("first event %v, want an empty snapshot", ev)
		}
	}

	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	ev := lab.recv(t)
	if ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_UPSERT || len(ev.GetAssignments()) != 1 {
		t.Fatalf("lab event %v", ev)
	}
	a := ev.GetAssignments()[0]
	want := &detourv1.Assignment{
		Namespace: "default", Name: "alice",
		Match:       []*detourv1.Condition{session("alice")},
		Targets:     []*detourv1.Target{{PodNamespace: "default", PodName: "api-0", PodIp: "10.0.0.10", Netns: "/run/netns/api-0", Port: 8080}},
		Destination: "10.0.0.20:8080",
	}
	if !proto.Equal(a, want) {
		t.Fatalf("lab assignment\n%v\nwant\n%v", a, want)
	}
	if ev := lab2.recv(t); !proto.Equal(ev.GetAssignments()[0], want) {
		t.Fatalf("second lab watcher got %v", ev)
	}
	ev = nodeB.recv(t)
	if b := ev.GetAssignments()[0]; b.GetTargets()[0].GetPodName() != "api-1" || b.GetDestination() != "10.0.0.20:8080" {
		t.Fatalf("node-b assignment %v", b)
	}

	// The developer's pod is recreated with a new address: the destination
	// follows it on every node.
	inv := labInventory()
	inv.Pods[2].IP = "10.0.0.42"
	h.inv.Set(inv)
	for _, w := range []*nodeWatch{lab, nodeB} {
		ev := w.recv(t)
		if ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_UPSERT || ev.GetAssignments()[0].GetDestination() != "10.0.0.42:8080" {
			t.Fatalf("after IP change %v", ev)
		}
	}
	lab2.recv(t)

	// The shared pod leaves node-b: node-b drops the assignment, lab keeps
	// it unchanged and hears nothing.
	inv2 := labInventory()
	inv2.Pods[2].IP = "10.0.0.42"
	inv2.Pods = append(inv2.Pods[:1], inv2.Pods[2:]...)
	h.inv.Set(inv2)
	if ev := nodeB.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_DELETE || ev.GetName() != "alice" || ev.GetNamespace() != "default" {
		t.Fatalf("node-b after pod left %v", ev)
	}

	// A late watcher gets the current state in its snapshot.
	late := h.watchNode(t, "lab")
	if ev := late.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT || len(ev.GetAssignments()) != 1 || ev.GetAssignments()[0].GetDestination() != "10.0.0.42:8080" {
		t.Fatalf("late snapshot %v", ev)
	}

	if _, err := h.ctl.DeleteIntercept(ctx(t), &detourv1.DeleteInterceptRequest{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	// lab's next event is the delete: nothing was sent for the inventory
	// change that did not concern it.
	if ev := lab.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_DELETE || ev.GetName() != "alice" {
		t.Fatalf("lab after delete %v", ev)
	}
	if ev := late.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_DELETE {
		t.Fatalf("late after delete %v", ev)
	}
}

// An intercept whose developer pod disappears is withdrawn (fail-open) and
// comes back when the pod does.
func TestDesiredStateDestinationGone(t *testing.T) {
	h := newHarness(t)
	lab := h.watchNode(t, "lab")
	lab.recv(t)
	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	lab.recv(t)

	inv := labInventory()
	inv.Pods = append(inv.Pods[:2], inv.Pods[3:]...) // no api-alice
	h.inv.Set(inv)
	if ev := lab.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_DELETE {
		t.Fatalf("after pod gone %v", ev)
	}
	st, err := h.ctl.GetStatus(ctx(t), &detourv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := st.GetIntercepts()[0].GetNodes(); len(n) != 2 || !strings.Contains(n[0].GetError(), "api-alice is not in the inventory") {
		t.Fatalf("status names no problem: %v", n)
	}
	for ns, want := range map[string]int{"default": 1, "other": 0} {
		st, err := h.ctl.GetStatus(ctx(t), &detourv1.GetStatusRequest{Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(st.GetIntercepts()); got != want {
			t.Fatalf("status of namespace %s lists %d intercepts, want %d", ns, got, want)
		}
	}
	h.inv.Set(labInventory())
	if ev := lab.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_UPSERT {
		t.Fatalf("after pod back %v", ev)
	}
}

func TestStatus(t *testing.T) {
	h := newHarness(t)
	c := ctx(t)
	start := h.clock.Now()
	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	h.create(req("bob", "api-bob:8080", 0, session("bob")))

	if _, err := h.agents.Register(c, &detourv1.RegisterRequest{Node: "lab", Version: "agent-1"}); err != nil {
		t.Fatal(err)
	}
	w := h.watchNode(t, "lab")
	w.recv(t)
	h.clock.Advance(time.Minute)
	if _, err := h.agents.ReportStatus(c, &detourv1.ReportStatusRequest{Node: "lab", Intercepts: []*detourv1.InterceptReport{
		{Namespace: "default", Name: "alice", SteeringAttached: true, Matched: 7, Fallbacks: 1, SteeredConnections: 3},
		{Namespace: "default", Name: "ghost", SteeringAttached: true, Matched: 99},
	}}); err != nil {
		t.Fatal(err)
	}
	_, err := h.agents.ReportStatus(c, &detourv1.ReportStatusRequest{})
	wantCode(t, err, codes.InvalidArgument)

	st, err := h.ctl.GetStatus(c, &detourv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetControllerVersion() != "v-test" || !st.GetControllerStarted().AsTime().Equal(start) {
		t.Fatalf("controller %q %v", st.GetControllerVersion(), st.GetControllerStarted().AsTime())
	}
	if len(st.GetAgents()) != 1 {
		t.Fatalf("agents %v", st.GetAgents())
	}
	ag := st.GetAgents()[0]
	if ag.GetNode() != "lab" || !ag.GetConnected() || ag.GetVersion() != "agent-1" || !ag.GetLastSeen().AsTime().Equal(start.Add(time.Minute)) {
		t.Fatalf("agent %v", ag)
	}
	if len(st.GetIntercepts()) != 2 {
		t.Fatalf("intercepts %v", st.GetIntercepts())
	}
	alice, bob := st.GetIntercepts()[0], st.GetIntercepts()[1]
	wantAlice := []*detourv1.InterceptNodeStatus{
		{Node: "lab", SteeringAttached: true, Matched: 7, Fallbacks: 1, SteeredConnections: 3},
		{Node: "node-b"},
	}
	if alice.GetName() != "alice" || len(alice.GetNodes()) != 2 || !proto.Equal(alice.GetNodes()[0], wantAlice[0]) || !proto.Equal(alice.GetNodes()[1], wantAlice[1]) {
		t.Fatalf("alice status %v", alice)
	}
	// No report yet: the targeted nodes show, unattached.
	if bob.GetName() != "bob" || len(bob.GetNodes()) != 2 || bob.GetNodes()[0].GetSteeringAttached() || bob.GetNodes()[1].GetNode() != "node-b" {
		t.Fatalf("bob status %v", bob)
	}
	if v := h.metric(t, "detour_controller_agents_connected"); v != 1 {
		t.Errorf("connected agents gauge %v", v)
	}

	// The watch closes: the agent is known but no longer connected.
	w.cancel()
	testutil.Eventually(t, 5*time.Second, func() error {
		st, err := h.ctl.GetStatus(c, &detourv1.GetStatusRequest{})
		if err != nil {
			return err
		}
		if a := st.GetAgents(); len(a) != 1 || a[0].GetConnected() {
			return fmt.Errorf("agents %v, want one, disconnected", a)
		}
		return nil
	})
	if v := h.metric(t, "detour_controller_agents_connected"); v != 0 {
		t.Errorf("connected agents gauge %v after disconnect", v)
	}

	// Deleting an intercept drops its counters.
	if _, err := h.ctl.DeleteIntercept(c, &detourv1.DeleteInterceptRequest{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	st, _ = h.ctl.GetStatus(c, &detourv1.GetStatusRequest{})
	if n := st.GetIntercepts()[0].GetNodes()[0]; n.GetMatched() != 0 || n.GetSteeringAttached() {
		t.Fatalf("recreated intercept inherited counters: %v", n)
	}
}

func TestWatchEndsOnClose(t *testing.T) {
	h := newHarness(t)
	w := h.watchNode(t, "lab")
	w.recv(t)
	iw := h.watchIntercepts(t, "")
	h.srv.Close()
	if _, err := w.stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("desired-state watch after Close: %v", err)
	}
	if _, err := iw.stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("intercept watch after Close: %v", err)
	}
	_, err := h.agents.WatchDesiredState(ctx(t), &detourv1.WatchDesiredStateRequest{Node: "lab"})
	if err == nil {
		s, _ := h.agents.WatchDesiredState(ctx(t), &detourv1.WatchDesiredStateRequest{Node: "lab"})
		_, err = s.Recv()
	}
	wantCode(t, err, codes.Unavailable)
}

// An intercept whose service has left the inventory says so in status.
func TestStatusServiceGone(t *testing.T) {
	h := newHarness(t)
	lab := h.watchNode(t, "lab")
	lab.recv(t)
	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	lab.recv(t)
	inv := labInventory()
	inv.Services = inv.Services[1:]
	h.inv.Set(inv)
	if ev := lab.recv(t); ev.GetType() != detourv1.WatchDesiredStateResponse_TYPE_DELETE {
		t.Fatalf("after service gone %v", ev)
	}
	st, err := h.ctl.GetStatus(ctx(t), &detourv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := st.GetIntercepts()[0].GetNodes()
	if len(n) != 1 || n[0].GetNode() != "" || n[0].GetError() != "service default/api is not in the inventory" {
		t.Fatalf("status %v", n)
	}
}

// TestPodWithoutAddressNotTargeted: a pod whose sandbox is still starting
// has no address and takes no traffic; it is steered once it has one.
func TestPodWithoutAddressNotTargeted(t *testing.T) {
	h := newHarness(t)
	inv := labInventory()
	inv.Pods[0].IP = "" // api-0, on node lab
	h.inv.Set(inv)
	lab := h.watchNode(t, "lab")
	lab.recv(t)
	h.create(req("alice", "api-alice:8080", 0, session("alice")))
	h.inv.Set(labInventory())
	ev := lab.recv(t)
	if as := ev.GetAssignments(); len(as) != 1 || len(as[0].GetTargets()) != 1 || as[0].GetTargets()[0].GetPodIp() != "10.0.0.10" {
		t.Fatalf("once api-0 has its address: %v", ev)
	}
}
