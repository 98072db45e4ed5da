package agent

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// pods says where the namespace of the pod at each address was found, for
// targets that carry no netns path.
type pods map[string]location

func (ps pods) where() map[string]location {
	out := map[string]location{}
	for ip, l := range ps {
		out[locateKey(&detourv1.Target{PodIp: ip})] = l
	}
	return out
}

// in is a namespace found, by inode.
func in(ino uint64) location { return location{ino: ino, from: fmt.Sprintf("/proc/%d/ns/net", ino)} }

// key is a pod port, "ADDR:PORT", in the namespace of inode ino.
func key(ino uint64, addrPort string) portKey {
	ap := netip.MustParseAddrPort(addrPort)
	return portKey{ns: ino, addr: ap.Addr(), port: ap.Port()}
}

// planSummary is a plan as a user would check it: ports as "INODE/ADDR:PORT",
// routes as the intercepts a port routes (with " l4" and " from [SOURCES]").
type planSummary struct {
	remove, detach, attach, add, update []string
	routes                              map[string][]string // by port
	targets                             map[string][]string // by intercept
	errs                                map[string]string   // by intercept: a part of its error
	failing                             []string            // targets retried
}

func portString(k portKey) string {
	return fmt.Sprintf("%d/%s", k.ns, netip.AddrPortFrom(k.addr, k.port))
}

func portStrings(ks []portKey) []string {
	var out []string
	for _, k := range ks {
		out = append(out, portString(k))
	}
	return out
}

func summarize(p *plan) planSummary {
	s := planSummary{
		remove: portStrings(p.remove), add: portStrings(p.add), update: portStrings(p.update),
		routes: map[string][]string{}, targets: map[string][]string{}, errs: p.errs,
		failing: slices.Sorted(maps.Keys(p.failing)),
	}
	for _, ino := range p.detach {
		s.detach = append(s.detach, fmt.Sprint(ino))
	}
	for _, a := range p.attach {
		s.attach = append(s.attach, fmt.Sprint(a.ino))
	}
	for k, dp := range p.ports {
		for _, r := range dp.routes {
			desc := r.Intercept
			if r.L4 {
				desc += " l4"
			}
			if r.Sources != nil {
				desc += fmt.Sprintf(" from %v", slices.SortedFunc(maps.Keys(r.Sources), netip.Addr.Compare))
			}
			s.routes[portString(k)] = append(s.routes[portString(k)], desc)
		}
	}
	for id, ks := range p.targets {
		s.targets[id] = portStrings(ks)
	}
	return s
}

// check compares a plan's summary with want, whose errs are parts of the
// errors.
func (want planSummary) check(got planSummary) error {
	var diffs []string
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"remove", got.remove, want.remove}, {"detach", got.detach, want.detach},
		{"attach", got.attach, want.attach}, {"add", got.add, want.add},
		{"update", got.update, want.update}, {"failing", got.failing, want.failing},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			diffs = append(diffs, fmt.Sprintf("%s %q, want %q", f.name, f.got, f.want))
		}
	}
	if !maps.EqualFunc(got.routes, want.routes, slices.Equal) {
		diffs = append(diffs, fmt.Sprintf("routes %q, want %q", got.routes, want.routes))
	}
	if !maps.EqualFunc(got.targets, want.targets, slices.Equal) {
		diffs = append(diffs, fmt.Sprintf("targets %q, want %q", got.targets, want.targets))
	}
	if !maps.EqualFunc(got.errs, want.errs, strings.Contains) {
		diffs = append(diffs, fmt.Sprintf("errors %q, want ones containing %q", got.errs, want.errs))
	}
	if len(diffs) > 0 {
		return errors.New(strings.Join(diffs, "\n"))
	}
	return nil
}

// TestPlan: what one sync changes on the node, from the intercepts assigned,
// where their pods' namespaces were found and what is steered now.
func TestPlan(t *testing.T) {
	var (
		ip5, ip6, ip7 = netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6"), netip.MustParseAddr("10.0.0.7")
		api0          = target("api-0", ip5, 8080)
		notYet        = location{err: errors.New("no network namespace on this node has address 10.0.0.5")}
		never         = location{err: errors.New("the target has no netns path"), final: true}
	)
	l4 := func(a *detourv1.Assignment) *detourv1.Assignment {
		a.L4, a.Match = true, nil
		return a
	}
	from := func(a *detourv1.Assignment, sources ...string) *detourv1.Assignment {
		a.RestrictSources, a.Sources = true, sources
		return a
	}
	tests := []struct {
		name        string
		assignments []*detourv1.Assignment
		pods        pods
		steered     []portKey
		attached    []uint64
		want        planSummary
	}{{
		name:        "a new intercept attaches its pod's namespace and steers its port",
		assignments: []*detourv1.Assignment{intercept("api", api0)},
		pods:        pods{"10.0.0.5": in(1)},
		want: planSummary{
			attach: []string{"1"}, add: []string{"1/10.0.0.5:8080"},
			routes:  map[string][]string{"1/10.0.0.5:8080": {"default/api"}},
			targets: map[string][]string{"default/api": {"1/10.0.0.5:8080"}},
		},
	}, {
		name:        "an intercept applied already only has its routes set again",
		assignments: []*detourv1.Assignment{intercept("api", api0)},
		pods:        pods{"10.0.0.5": in(1)},
		steered:     []portKey{key(1, "10.0.0.5:8080")},
		attached:    []uint64{1},
		want: planSummary{
			update:  []string{"1/10.0.0.5:8080"},
			routes:  map[string][]string{"1/10.0.0.5:8080": {"default/api"}},
			targets: map[string][]string{"default/api": {"1/10.0.0.5:8080"}},
		},
	}, {
		name:     "a deleted intercept's port is unsteered and its namespace detached",
		steered:  []portKey{key(1, "10.0.0.5:8080")},
		attached: []uint64{1},
		want:     planSummary{remove: []string{"1/10.0.0.5:8080"}, detach: []string{"1"}},
	}, {
		name:        "a deleted intercept leaves a namespace another intercept steers in",
		assignments: []*detourv1.Assignment{intercept("web", target("api-0", ip5, 9090))},
		pods:        pods{"10.0.0.5": in(1)},
		steered:     []portKey{key(1, "10.0.0.5:8080"), key(1, "10.0.0.5:9090")},
		attached:    []uint64{1},
		want: planSummary{
			remove: []string{"1/10.0.0.5:8080"}, update: []string{"1/10.0.0.5:9090"},
			routes:  map[string][]string{"1/10.0.0.5:9090": {"default/web"}},
			targets: map[string][]string{"default/web": {"1/10.0.0.5:9090"}},
		},
	}, {
		name:        "a pod replaced by one with a new address in a new namespace: the old detached, the new attached, in one step",
		assignments: []*detourv1.Assignment{intercept("api", target("api-0", ip6, 8080))},
		pods:        pods{"10.0.0.6": in(2)},
		steered:     []portKey{key(1, "10.0.0.5:8080")},
		attached:    []uint64{1},
		want: planSummary{
			remove: []string{"1/10.0.0.5:8080"}, detach: []string{"1"},
			attach: []string{"2"}, add: []string{"2/10.0.0.6:8080"},
			routes:  map[string][]string{"2/10.0.0.6:8080": {"default/api"}},
			targets: map[string][]string{"default/api": {"2/10.0.0.6:8080"}},
		},
	}, {
		name:        "a pod replaced by one with the same address in a new namespace moves the same way",
		assignments: []*detourv1.Assignment{intercept("api", api0)},
		pods:        pods{"10.0.0.5": in(2)},
		steered:     []portKey{key(1, "10.0.0.5:8080")},
		attached:    []uint64{1},
		want: planSummary{
			remove: []string{"1/10.0.0.5:8080"}, detach: []string{"1"},
			attach: []string{"2"}, add: []string{"2/10.0.0.5:8080"},
			routes:  map[string][]string{"2/10.0.0.5:8080": {"default/api"}},
			targets: map[string][]string{"default/api": {"2/10.0.0.5:8080"}},
		},
	}, {
		name:        "an intercept moved to another port of its pod keeps the namespace attached",
		assignments: []*detourv1.Assignment{intercept("api", target("api-0", ip5, 9090))},
		pods:        pods{"10.0.0.5": in(1)},
		steered:     []portKey{key(1, "10.0.0.5:8080")},
		attached:    []uint64{1},
		want: planSummary{
			remove: []string{"1/10.0.0.5:8080"}, add: []string{"1/10.0.0.5:9090"},
			routes:  map[string][]string{"1/10.0.0.5:9090": {"default/api"}},
			targets: map[string][]string{"default/api": {"1/10.0.0.5:9090"}},
		},
	}, {
		name:        "two pods in one namespace attach it once",
		assignments: []*detourv1.Assignment{intercept("api", api0, target("api-1", ip7, 8080))},
		pods:        pods{"10.0.0.5": in(1), "10.0.0.7": in(1)},
		want: planSummary{
			attach: []string{"1"}, add: []string{"1/10.0.0.5:8080", "1/10.0.0.7:8080"},
			routes:  map[string][]string{"1/10.0.0.5:8080": {"default/api"}, "1/10.0.0.7:8080": {"default/api"}},
			targets: map[string][]string{"default/api": {"1/10.0.0.5:8080", "1/10.0.0.7:8080"}},
		},
	}, {
		name:        "two intercepts on one port share one listener, routed in intercept order",
		assignments: []*detourv1.Assignment{intercept("alice", api0), intercept("bob", api0)},
		pods:        pods{"10.0.0.5": in(1)},
		want: planSummary{
			attach: []string{"1"}, add: []string{"1/10.0.0.5:8080"},
			routes:  map[string][]string{"1/10.0.0.5:8080": {"default/alice", "default/bob"}},
			targets: map[string][]string{"default/alice": {"1/10.0.0.5:8080"}, "default/bob": {"1/10.0.0.5:8080"}},
		},
	}, {
		name:        "a target whose pod is not found yet is reported and retried",
		assignments: []*detourv1.Assignment{intercept("api", api0)},
		pods:        pods{"10.0.0.5": notYet},
		want: planSummary{
			targets: map[string][]string{"default/api": nil},
			errs:    map[string]string{"default/api": "pod default/api-0 10.0.0.5:8080: no network namespace on this node has address 10.0.0.5"},
			failing: []string{"default/api-0 10.0.0.5:8080"},
		},
	}, {
		name:        "a target whose pod is not found yet while it is steered is unsteered",
		assignments: []*detourv1.Assignment{intercept("api", api0)},
		pods:        pods{"10.0.0.5": notYet},
		steered:     []portKey{key(1, "10.0.0.5:8080")},
		attached:    []uint64{1},
		want: planSummary{
			remove: []string{"1/10.0.0.5:8080"}, detach: []string{"1"},
			targets: map[string][]string{"default/api": nil},
			errs:    map[string]string{"default/api": "no network namespace on this node has address 10.0.0.5"},
			failing: []string{"default/api-0 10.0.0.5:8080"},
		},
	}, {
		name:        "a target that can never be found is reported, not retried",
		assignments: []*detourv1.Assignment{intercept("api", api0)},
		pods:        pods{"10.0.0.5": never},
		want: planSummary{
			targets: map[string][]string{"default/api": nil},
			errs:    map[string]string{"default/api": "pod default/api-0 10.0.0.5:8080: the target has no netns path"},
		},
	}, {
		name: "a bad target is reported; the intercept's good targets are steered",
		assignments: []*detourv1.Assignment{intercept("api", api0,
			&detourv1.Target{PodNamespace: "default", PodName: "api-1", PodIp: "fd00::1", Port: 8080},
			target("api-2", ip6, 0),
			target("api-3", ip6, 70000))},
		pods: pods{"10.0.0.5": in(1)},
		want: planSummary{
			attach: []string{"1"}, add: []string{"1/10.0.0.5:8080"},
			routes:  map[string][]string{"1/10.0.0.5:8080": {"default/api"}},
			targets: map[string][]string{"default/api": {"1/10.0.0.5:8080"}},
			errs:    map[string]string{"default/api": `bad target default/api-1 "fd00::1":8080`},
		},
	}, {
		name: "a bad match fails its intercept alone, not retried",
		assignments: []*detourv1.Assignment{
			{Namespace: "default", Name: "bad", Match: []*detourv1.Condition{{}}, Targets: []*detourv1.Target{api0}},
			intercept("good", target("web-0", ip7, 80)),
		},
		pods: pods{"10.0.0.5": in(1), "10.0.0.7": in(2)},
		want: planSummary{
			attach: []string{"2"}, add: []string{"2/10.0.0.7:80"},
			routes:  map[string][]string{"2/10.0.0.7:80": {"default/good"}},
			targets: map[string][]string{"default/bad": nil, "default/good": {"2/10.0.0.7:80"}},
			errs:    map[string]string{"default/bad": "condition 1: unknown condition kind"},
		},
	}, {
		name:        "an intercept with no target on this node is reported with none",
		assignments: []*detourv1.Assignment{intercept("api")},
		want:        planSummary{targets: map[string][]string{"default/api": nil}},
	}, {
		name:        "an L4 intercept routes whole connections",
		assignments: []*detourv1.Assignment{l4(intercept("db", target("db-0", ip5, 5432)))},
		pods:        pods{"10.0.0.5": in(1)},
		want: planSummary{
			attach: []string{"1"}, add: []string{"1/10.0.0.5:5432"},
			routes:  map[string][]string{"1/10.0.0.5:5432": {"default/db l4"}},
			targets: map[string][]string{"default/db": {"1/10.0.0.5:5432"}},
		},
	}, {
		name: "a source filter admits only its sources; an empty one none",
		assignments: []*detourv1.Assignment{
			from(l4(intercept("alice", target("db-0", ip5, 5432))), "10.0.0.22", "::ffff:10.0.0.21"),
			from(l4(intercept("nobody", target("db-0", ip5, 5432)))),
		},
		pods: pods{"10.0.0.5": in(1)},
		want: planSummary{
			attach: []string{"1"}, add: []string{"1/10.0.0.5:5432"},
			routes:  map[string][]string{"1/10.0.0.5:5432": {"default/alice l4 from [10.0.0.21 10.0.0.22]", "default/nobody l4 from []"}},
			targets: map[string][]string{"default/alice": {"1/10.0.0.5:5432"}, "default/nobody": {"1/10.0.0.5:5432"}},
		},
	}, {
		name:        "a bad source address fails its intercept",
		assignments: []*detourv1.Assignment{from(l4(intercept("db", target("db-0", ip5, 5432))), "client-0")},
		pods:        pods{"10.0.0.5": in(1)},
		want: planSummary{
			targets: map[string][]string{"default/db": nil},
			errs:    map[string]string{"default/db": `bad source address "client-0"`},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.want.errs == nil {
				tt.want.errs = map[string]string{}
			}
			p := planSync(tt.assignments, tt.pods.where(), tt.steered, tt.attached)
			if err := tt.want.check(summarize(p)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPlanNamespacePath: a target that names its namespace by path (the
// lab) is found by that path, not by its pod's address.
func TestPlanNamespacePath(t *testing.T) {
	tg := target("web-0", netip.MustParseAddr("10.0.0.7"), 80)
	tg.Netns = "/run/netns/web"
	where := map[string]location{
		locateKey(tg): {ino: 3, from: tg.Netns},
		locateKey(&detourv1.Target{PodIp: tg.PodIp}): {err: errors.New("looked up by address")},
	}
	p := planSync([]*detourv1.Assignment{intercept("web", tg)}, where, nil, nil)
	if len(p.attach) != 1 || p.attach[0] != (attachment{ino: 3, from: "/run/netns/web"}) || len(p.errs) != 0 {
		t.Fatalf("attach %v, errors %v; want inode 3 from /run/netns/web, no error", p.attach, p.errs)
	}
}

// TestPlanPortFailed: a port the sync could not steer (its namespace not
// attached, its listener not opened) fails every intercept routed there,
// after their own errors, and its target is retried.
func TestPlanPortFailed(t *testing.T) {
	api0 := target("api-0", netip.MustParseAddr("10.0.0.5"), 8080)
	bad := &detourv1.Target{PodNamespace: "default", PodName: "api-1", PodIp: "fd00::1", Port: 8080}
	p := planSync([]*detourv1.Assignment{intercept("alice", bad, api0), intercept("bob", api0)},
		pods{"10.0.0.5": in(1)}.where(), nil, nil)
	p.portFailed(key(1, "10.0.0.5:8080"), errors.New("attach steering to netns /proc/1/ns/net: busy"))
	const msg = "pod default/api-0 10.0.0.5:8080: attach steering to netns /proc/1/ns/net: busy"
	want := map[string]string{"default/alice": `bad target default/api-1 "fd00::1":8080`, "default/bob": msg}
	if !maps.Equal(p.errs, want) {
		t.Errorf("errors %q, want %q", p.errs, want)
	}
	if !maps.Equal(p.failing, map[string]string{"default/api-0 10.0.0.5:8080": msg}) {
		t.Errorf("failing %q, want the target, with %q", p.failing, msg)
	}
}

// TestConnectWants: the steered ports of L4 intercepts, and their service
// addresses, are redirected at connect() to the destination; nothing else.
func TestConnectWants(t *testing.T) {
	steered := key(1, "10.0.0.5:5432")
	notSteered := key(2, "10.0.0.6:5432")
	targets := map[string][]portKey{
		"default/db":    {steered, notSteered},
		"default/gone":  {notSteered},
		"default/web":   {key(1, "10.0.0.5:80")},
		"default/alice": {steered},
		"default/bad":   {steered},
	}
	isSteered := func(k portKey) bool { return k != notSteered }
	db := l4Assignment("db", "10.0.0.9:5432")
	db.ServiceAddresses = []string{"10.96.0.10:5432", "not an address"}
	gone := l4Assignment("gone", "10.0.0.9:5432")
	gone.ServiceAddresses = []string{"10.96.0.11:5432"}
	alice := l4Assignment("alice", "10.0.0.9:5432")
	alice.RestrictSources, alice.NodeSources = true, []string{"10.0.0.21", "::ffff:10.0.0.22", "client-0"}
	web := intercept("web")
	web.Destination = "10.0.0.9:80"
	// An environment's forks route: sources on this node, a service whose
	// pods are elsewhere (nothing steered here), two fork pods.
	forks := l4Assignment("pr-7-api-80-forks", "10.0.1.7:8080")
	forks.Destinations = []string{"10.0.1.7:8080", "10.0.1.8:8080"}
	forks.RestrictSources, forks.NodeSources = true, []string{"10.0.0.31"}
	forks.RemoteDestinations = []string{"10.0.1.8:8080"}
	forks.DialedAddresses = []string{"10.0.2.5:8080", "10.96.0.20:80"}

	got := connectWants([]*detourv1.Assignment{
		alice,
		l4Assignment("bad", "[fd00::9]:5432"),
		db,
		gone,
		web,
		forks,
	}, targets, isSteered)
	want := []string{
		"default/alice: 10.0.0.5:5432 -> [10.0.0.9:5432] from [10.0.0.21 10.0.0.22]",
		"default/db: 10.0.0.5:5432 -> [10.0.0.9:5432]",
		"default/db: 10.96.0.10:5432 -> [10.0.0.9:5432]",
		"default/pr-7-api-80-forks: 10.0.2.5:8080 -> [10.0.1.7:8080 10.0.1.8:8080] from [10.0.0.31] remote 1",
		"default/pr-7-api-80-forks: 10.96.0.20:80 -> [10.0.1.7:8080 10.0.1.8:8080] from [10.0.0.31] remote 1",
	}
	var gotS []string
	for _, w := range got {
		s := fmt.Sprintf("%s: %s -> %s", w.intercept, w.addr, w.to)
		if w.restricted {
			s += fmt.Sprintf(" from %v", w.sources)
		}
		if len(w.remote) > 0 {
			s += fmt.Sprintf(" remote %d", len(w.remote))
		}
		gotS = append(gotS, s)
	}
	if !slices.Equal(gotS, want) {
		t.Errorf("connectWants:\n got %q\nwant %q", gotS, want)
	}
}

func l4Assignment(name, destination string) *detourv1.Assignment {
	return &detourv1.Assignment{Namespace: "default", Name: name, L4: true, Destination: destination}
}

func TestFlowPortsOf(t *testing.T) {
	want := map[portKey]*desiredPort{
		{ns: 1, addr: netip.MustParseAddr("10.0.0.2"), port: 8080}: {},
		{ns: 2, addr: netip.MustParseAddr("10.0.0.3"), port: 8080}: {},
		{ns: 2, addr: netip.MustParseAddr("10.0.0.3"), port: 9000}: {},
	}
	assignments := []*detourv1.Assignment{
		{Destination: "10.0.0.9:18080"},
		{Destination: "10.0.0.9:9000"},
		{Destination: "not an address"},
	}
	if got := flowPortsOf(want, assignments); !slices.Equal(got, []uint16{8080, 9000, 18080}) {
		t.Errorf("flowPortsOf = %v, want [8080 9000 18080]", got)
	}
}

// TestPlanServiceAddresses: a port carries the Service addresses of the
// intercepts routed there, once each, for the fast path's callers of the
// ClusterIP; what does not parse is left out.
func TestPlanServiceAddresses(t *testing.T) {
	tg := target("api-0", netip.MustParseAddr("10.0.0.7"), 8080)
	alice, bob := intercept("alice", tg), intercept("bob", tg)
	alice.ServiceAddresses = []string{"10.96.0.10:80", "not an address"}
	bob.ServiceAddresses = []string{"10.96.0.10:80", "10.96.0.11:8080"}
	p := planSync([]*detourv1.Assignment{alice, bob}, pods{"10.0.0.7": in(3)}.where(), nil, nil)
	dp := p.ports[key(3, "10.0.0.7:8080")]
	if dp == nil {
		t.Fatalf("no port 10.0.0.7:8080 in the plan: %v", summarize(p))
	}
	if got := fmt.Sprint(dp.services); got != "[10.96.0.10:80 10.96.0.11:8080]" {
		t.Errorf("service addresses %s, want [10.96.0.10:80 10.96.0.11:8080]", got)
	}
}
