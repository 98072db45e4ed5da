package agent

import (
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"sync"
	"testing"
)

// fakeConnector is the kernel map's logic: redirects and their counts.
type fakeConnector struct {
	mu     sync.Mutex
	to     map[netip.AddrPort]netip.AddrPort
	counts map[netip.AddrPort]uint64
	closed bool
}

func newFakeConnector() *fakeConnector {
	return &fakeConnector{to: map[netip.AddrPort]netip.AddrPort{}, counts: map[netip.AddrPort]uint64{}}
}

func (f *fakeConnector) Set(from, to netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.to[from] = to
	return nil
}

func (f *fakeConnector) Delete(from netip.AddrPort) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.counts[from]
	delete(f.to, from)
	delete(f.counts, from)
	return n, nil
}

func (f *fakeConnector) Connections(from netip.AddrPort) (uint64, error) {
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

// connect counts a connection the kernel would redirect.
func (f *fakeConnector) connect(from netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.to[from]; ok {
		f.counts[from]++
	}
}

func (f *fakeConnector) redirects() map[netip.AddrPort]netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.to)
}

func TestConnectPlane(t *testing.T) {
	var (
		app1 = netip.MustParseAddrPort("10.0.0.2:9000")
		app2 = netip.MustParseAddrPort("10.0.0.3:9000")
		dev  = netip.MustParseAddrPort("10.0.0.9:9000")
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
	})
	setListening := func(v bool) {
		mu.Lock()
		listens[dev] = v
		mu.Unlock()
	}
	bulk := connectWant{to: dev, intercept: "shop/bulk"}

	cp.want(map[netip.AddrPort]connectWant{app1: bulk, app2: bulk})
	if len(fc.redirects()) != 0 {
		t.Fatal("want alone put redirects in the kernel; check does")
	}
	cp.check()
	if got := fc.redirects(); len(got) != 2 || got[app1] != dev || got[app2] != dev {
		t.Fatalf("after check, redirects %v; want both ports to %s", got, dev)
	}
	fc.connect(app1)
	fc.connect(app2)
	fc.connect(app2)
	if got := cp.connections()["shop/bulk"]; got != 3 {
		t.Errorf("connections = %d, want 3", got)
	}

	// The developer's app stops listening: callers go back to the relay,
	// and the counts stay.
	setListening(false)
	cp.check()
	if got := fc.redirects(); len(got) != 0 {
		t.Errorf("with the destination not listening, redirects %v; want none", got)
	}
	if got := cp.connections()["shop/bulk"]; got != 3 {
		t.Errorf("after removal, connections = %d, want 3 (never going down)", got)
	}
	setListening(true)
	cp.check()
	fc.connect(app1)
	if got := cp.connections()["shop/bulk"]; got != 4 {
		t.Errorf("after the destination is back, connections = %d, want 4", got)
	}

	// A port no longer wanted goes; a changed destination is moved.
	dev2 := netip.MustParseAddrPort("10.0.0.10:9000")
	mu.Lock()
	listens[dev2] = true
	mu.Unlock()
	cp.want(map[netip.AddrPort]connectWant{app1: {to: dev2, intercept: "shop/bulk"}})
	cp.check()
	if got := fc.redirects(); len(got) != 1 || got[app1] != dev2 {
		t.Errorf("redirects %v; want only %s to %s", got, app1, dev2)
	}

	if err := cp.close(); err != nil {
		t.Fatal(err)
	}
	if got := fc.redirects(); len(got) != 0 || !fc.closed {
		t.Errorf("after close, redirects %v, closed %v", got, fc.closed)
	}
	cp.want(map[netip.AddrPort]connectWant{app1: bulk})
	cp.check()
	if got := fc.redirects(); len(got) != 0 {
		t.Errorf("check after close set %v", got)
	}
}

func TestListensFor(t *testing.T) {
	dest := netip.MustParseAddr("10.0.0.9")
	for _, tt := range []struct {
		bound string
		want  bool
	}{
		{"0.0.0.0", true},
		{"::", true},
		{"10.0.0.9", true},
		{"::ffff:10.0.0.9", true},
		{"127.0.0.1", false},
		{"10.0.0.8", false},
	} {
		if got := listensFor(net.ParseIP(tt.bound).To16(), dest); got != tt.want {
			t.Errorf("listensFor(%s, %s) = %v, want %v", tt.bound, dest, got, tt.want)
		}
	}
	// sock_diag gives IPv4 addresses in 4 bytes too.
	if !listensFor(net.ParseIP("10.0.0.9").To4(), dest) {
		t.Error("a 4-byte address was not recognised")
	}
}
