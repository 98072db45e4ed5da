package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"testing"

	"github.com/detourdev/detour/pkg/redirect/connect"
)

// fakeConnector is the kernel map's logic: redirects and their counts.
type fakeConnector struct {
	mu     sync.Mutex
	to     map[connect.From]netip.AddrPort
	counts map[connect.From]uint64
	closed bool
}

func newFakeConnector() *fakeConnector {
	return &fakeConnector{to: map[connect.From]netip.AddrPort{}, counts: map[connect.From]uint64{}}
}

func (f *fakeConnector) Set(from connect.From, to netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.to[from] = to
	return nil
}

func (f *fakeConnector) Delete(from connect.From) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.counts[from]
	delete(f.to, from)
	delete(f.counts, from)
	return n, nil
}

func (f *fakeConnector) Connections(from connect.From) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[from], nil
}

func (f *fakeConnector) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// connect counts a connection the kernel would redirect: the namespace's
// redirect, else the any-namespace one.
func (f *fakeConnector) connect(netns uint64, addr netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range []connect.From{{NetNS: netns, Addr: addr}, {Addr: addr}} {
		if _, ok := f.to[k]; ok {
			f.counts[k]++
			return
		}
	}
}

func (f *fakeConnector) redirects() map[connect.From]netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.to)
}

func TestConnectPlane(t *testing.T) {
	var (
		app1 = netip.MustParseAddrPort("10.0.0.2:9000")
		app2 = netip.MustParseAddrPort("10.0.0.3:9000")
		dev  = netip.MustParseAddrPort("10.0.0.9:9000")
		any1 = connect.From{Addr: app1}
		any2 = connect.From{Addr: app2}
	)
	listens := map[netip.AddrPort]bool{dev: true}
	var mu sync.Mutex
	fc := newFakeConnector()
	cp := newConnectPlane(fc, slog.New(slog.NewTextHandler(io.Discard, nil)), func(to netip.AddrPort) error {
		mu.Lock()
		defer mu.Unlock()
		if !listens[to] {
			return errors.New("nothing listens")
		}
		return nil
	}, func(netip.Addr) (uint64, error) { return 0, errors.New("not used") })
	setListening := func(to netip.AddrPort, v bool) {
		mu.Lock()
		listens[to] = v
		mu.Unlock()
	}
	bulk := func(addr, to netip.AddrPort) connectWant {
		return connectWant{addr: addr, to: []netip.AddrPort{to}, intercept: "shop/bulk"}
	}

	cp.want([]connectWant{bulk(app1, dev), bulk(app2, dev)})
	if len(fc.redirects()) != 0 {
		t.Fatal("want alone put redirects in the kernel; check does")
	}
	cp.check()
	if got := fc.redirects(); len(got) != 2 || got[any1] != dev || got[any2] != dev {
		t.Fatalf("after check, redirects %v; want both ports to %s from any namespace", got, dev)
	}
	fc.connect(5, app1)
	fc.connect(5, app2)
	fc.connect(6, app2)
	if got := cp.connections()["shop/bulk"]; got != 3 {
		t.Errorf("connections = %d, want 3", got)
	}

	// The developer's app stops listening: callers go back to the relay,
	// and the counts stay.
	setListening(dev, false)
	cp.check()
	if got := fc.redirects(); len(got) != 0 {
		t.Errorf("with the destination not listening, redirects %v; want none", got)
	}
	if got := cp.connections()["shop/bulk"]; got != 3 {
		t.Errorf("after removal, connections = %d, want 3 (never going down)", got)
	}
	setListening(dev, true)
	cp.check()
	fc.connect(5, app1)
	if got := cp.connections()["shop/bulk"]; got != 4 {
		t.Errorf("after the destination is back, connections = %d, want 4", got)
	}

	// A port no longer wanted goes; a changed destination is moved.
	dev2 := netip.MustParseAddrPort("10.0.0.10:9000")
	setListening(dev2, true)
	cp.want([]connectWant{bulk(app1, dev2)})
	cp.check()
	if got := fc.redirects(); len(got) != 1 || got[any1] != dev2 {
		t.Errorf("redirects %v; want only %s to %s", got, app1, dev2)
	}

	if err := cp.close(); err != nil {
		t.Fatal(err)
	}
	if got := fc.redirects(); len(got) != 0 || !fc.closed {
		t.Errorf("after close, redirects %v, closed %v", got, fc.closed)
	}
	cp.want([]connectWant{bulk(app1, dev)})
	cp.check()
	if got := fc.redirects(); len(got) != 0 {
		t.Errorf("check after close set %v", got)
	}
}

// TestConnectPlaneSources checks intercepts with a source filter: a redirect
// per source pod namespace found on the node, none for a source not found
// (the relay decides those), and two intercepts with disjoint sources on
// one port side by side.
func TestConnectPlaneSources(t *testing.T) {
	var (
		app   = netip.MustParseAddrPort("10.0.0.2:5432")
		alice = netip.MustParseAddrPort("10.0.0.9:5432")
		bob   = netip.MustParseAddrPort("10.0.0.10:5432")
		c1    = netip.MustParseAddr("10.0.0.21")
		c2    = netip.MustParseAddr("10.0.0.22")
		gone  = netip.MustParseAddr("10.0.0.23")
	)
	namespaces := map[netip.Addr]uint64{c1: 101, c2: 102}
	fc := newFakeConnector()
	cp := newConnectPlane(fc, slog.New(slog.NewTextHandler(io.Discard, nil)),
		func(netip.AddrPort) error { return nil },
		func(pod netip.Addr) (uint64, error) {
			if c, ok := namespaces[pod]; ok {
				return c, nil
			}
			return 0, errors.New("no such pod on this node")
		})
	cp.want([]connectWant{
		{addr: app, to: []netip.AddrPort{alice}, intercept: "db/alice", restricted: true, sources: []netip.Addr{c1, gone}},
		{addr: app, to: []netip.AddrPort{bob}, intercept: "db/bob", restricted: true, sources: []netip.Addr{c2}},
		{addr: app, to: []netip.AddrPort{bob}, intercept: "db/none", restricted: true}, // no source on this node
	})
	cp.check()
	want := map[connect.From]netip.AddrPort{
		{NetNS: 101, Addr: app}: alice,
		{NetNS: 102, Addr: app}: bob,
	}
	if got := fc.redirects(); !maps.Equal(got, want) {
		t.Fatalf("redirects %v, want %v", got, want)
	}
	fc.connect(101, app)
	fc.connect(102, app)
	fc.connect(102, app)
	fc.connect(103, app) // not a source: not redirected
	got := cp.connections()
	if got["db/alice"] != 1 || got["db/bob"] != 2 || got["db/none"] != 0 {
		t.Errorf("connections %v, want db/alice 1, db/bob 2", got)
	}
}

// TestConnectPlaneForks checks an environment's forks route: each source
// pod is sent to one of the fork's pods, chosen by its namespace so the
// sources spread; a fork pod that stops listening is skipped; a pod on
// another node (not checkable here) is trusted only when the controller
// saw it ready.
func TestConnectPlaneForks(t *testing.T) {
	var (
		api    = netip.MustParseAddrPort("10.0.0.2:8080")
		vip    = netip.MustParseAddrPort("10.96.0.20:80")
		fork1  = netip.MustParseAddrPort("10.0.0.7:8080")
		fork2  = netip.MustParseAddrPort("10.0.0.8:8080")
		remote = netip.MustParseAddrPort("10.0.1.9:8080")
		web1   = netip.MustParseAddr("10.0.0.31")
		web2   = netip.MustParseAddr("10.0.0.32")
	)
	listens := map[netip.AddrPort]bool{fork1: true, fork2: true}
	fc := newFakeConnector()
	cp := newConnectPlane(fc, slog.New(slog.NewTextHandler(io.Discard, nil)),
		func(to netip.AddrPort) error {
			if to == remote {
				return fmt.Errorf("%w: not found", errNotHere)
			}
			if !listens[to] {
				return errors.New("nothing listens")
			}
			return nil
		},
		func(pod netip.Addr) (uint64, error) { return map[netip.Addr]uint64{web1: 2, web2: 3}[pod], nil })
	forks := func(trust bool, to ...netip.AddrPort) []connectWant {
		var out []connectWant
		var far map[netip.AddrPort]bool
		if trust {
			far = map[netip.AddrPort]bool{remote: true}
		}
		for _, addr := range []netip.AddrPort{api, vip} {
			out = append(out, connectWant{addr: addr, to: to, intercept: "shop/pr-7-api-80-forks", restricted: true,
				sources: []netip.Addr{web1, web2}, remote: far})
		}
		return out
	}
	cp.want(forks(true, fork1, fork2))
	cp.check()
	want := map[connect.From]netip.AddrPort{
		{NetNS: 2, Addr: api}: fork1, {NetNS: 2, Addr: vip}: fork1, // cookie 2: index 0
		{NetNS: 3, Addr: api}: fork2, {NetNS: 3, Addr: vip}: fork2, // cookie 3: index 1
	}
	if got := fc.redirects(); !maps.Equal(got, want) {
		t.Fatalf("redirects %v, want %v", got, want)
	}
	// fork2 stops listening: its callers move to fork1.
	listens[fork2] = false
	cp.check()
	for from, to := range fc.redirects() {
		if to != fork1 {
			t.Errorf("%v still sent to %s with fork2 down", from, to)
		}
	}
	// A fork pod on another node: trusted when the controller saw it ready
	// there...
	cp.want(forks(true, remote))
	cp.check()
	if got := fc.redirects(); len(got) != 4 || got[connect.From{NetNS: 2, Addr: api}] != remote {
		t.Errorf("ready remote destination: redirects %v", got)
	}
	// ...and not otherwise: the relay on its node decides.
	cp.want(forks(false, remote))
	cp.check()
	if got := fc.redirects(); len(got) != 0 {
		t.Errorf("unchecked remote destination: redirects %v, want none", got)
	}
}
