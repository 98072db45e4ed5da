package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
)

// series lists the registry's series as name{labels}.
func series(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			out = append(out, mf.GetName()+"{"+strings.Join(ls, ",")+"}")
		}
	}
	slices.Sort(out)
	return out
}

// onlyPortAddr is the address of the listener of the dataplane's one port.
func onlyPortAddr(t *testing.T, d *dataplane) string {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.ports) != 1 {
		t.Fatalf("%d ports steered, want 1", len(d.ports))
	}
	for _, p := range d.ports {
		return p.ln.Addr().String()
	}
	return ""
}

// TestInterceptSeriesLeaveWithIt: an intercept that carried traffic and
// then left the node leaves no series behind, not even when one of its
// requests was still being answered as it left; after a churn of
// intercepts the agent exports the series it had before.
func TestInterceptSeriesLeaveWithIt(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "app") }))
	t.Cleanup(app.Close)
	entered, release := make(chan struct{}), make(chan struct{})
	// /hang answers once the test lets it.
	dev := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "dev")
	}))
	t.Cleanup(dev.Close)

	reg := prometheus.NewRegistry()
	d := newDataplane(newFakeSteerer(), (&logBuffer{}).logger(), newMetrics(reg))
	d.listen, d.dialFrom = listenHere, dialHere
	t.Cleanup(func() { _ = d.Close() })
	nsPath, _ := fakeNetNS(t)
	appAddr := netip.MustParseAddrPort(app.Listener.Addr().String())
	tg := target("api-0", appAddr.Addr(), uint32(appAddr.Port()))
	tg.Netns = nsPath
	on := func(name string) *detourv1.Assignment {
		a := intercept(name, tg)
		a.Match = []*detourv1.Condition{{Kind: detourv1.Condition_KIND_HEADER_EXACT, Name: "x-dev", Value: name}}
		a.Destination = dev.Listener.Addr().String()
		return a
	}
	keep := on("keep")
	d.Apply([]*detourv1.Assignment{keep})
	addr := onlyPortAddr(t, d)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path, dev, want string) error {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		if dev != "" {
			req.Header.Set("x-dev", dev)
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			return fmt.Errorf("GET %s as %q answered %q, want %q", path, dev, b, want)
		}
		return nil
	}
	for _, dev := range []string{"keep", ""} {
		if err := get("/", dev, map[string]string{"keep": "dev", "": "app"}[dev]); err != nil {
			t.Fatal(err)
		}
	}
	// The observer runs as the response goes out, and counts a request
	// before it records its duration: wait for all four series.
	testutil.Eventually(t, 5*time.Second, func() error {
		s := strings.Join(series(t, reg), " ")
		for _, want := range []string{
			"intercept=default/keep,outcome=matched", "intercept=,outcome=unmatched",
			"request_duration_seconds{outcome=matched}", "request_duration_seconds{outcome=unmatched}",
		} {
			if !strings.Contains(s, want) {
				return fmt.Errorf("no %s in %s", want, s)
			}
		}
		return nil
	})
	base := series(t, reg)

	for i := range 6 {
		name := fmt.Sprintf("churn-%d", i)
		d.Apply([]*detourv1.Assignment{keep, on(name)})
		if err := get("/", name, "dev"); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			d.Apply([]*detourv1.Assignment{keep})
			continue
		}
		// A request of the intercept is still being answered as it
		// leaves the node; it ends afterwards.
		done := make(chan error, 1)
		go func() { done <- get("/hang", name, "dev") }()
		<-entered
		d.Apply([]*detourv1.Assignment{keep})
		release <- struct{}{}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// The last request's observer may run a moment after its response.
	testutil.Eventually(t, 5*time.Second, func() error {
		if got := series(t, reg); !slices.Equal(got, base) {
			return fmt.Errorf("after the churn the agent exports %d series, want the %d it had before:\n got %v\nwant %v", len(got), len(base), got, base)
		}
		return nil
	})
}

// TestConnectSeriesLeaveWithTheIntercept: an L4 intercept's count of
// connections redirected at connect() stays while it is on the node (its
// redirects may come and go) and goes, with its series, when it leaves.
func TestConnectSeriesLeaveWithTheIntercept(t *testing.T) {
	app := netip.MustParseAddrPort("10.0.0.2:9000")
	dev := netip.MustParseAddrPort("10.0.0.9:9000")
	fc := newFakeConnector()
	listening := true
	cp := newConnectPlane(fc, (&logBuffer{}).logger(), func(netip.AddrPort) error {
		if !listening {
			return errors.New("nothing listens")
		}
		return nil
	}, func(netip.Addr) (uint64, error) { return 0, errors.New("not used") })
	reg := prometheus.NewRegistry()
	reg.MustRegister(cp)
	base := series(t, reg)

	for i := range 5 {
		id := fmt.Sprintf("shop/bulk-%d", i)
		cp.keep(map[string][]portKey{id: nil})
		cp.want([]connectWant{{addr: app, to: []netip.AddrPort{dev}, intercept: id}})
		cp.check()
		fc.connect(5, app)
		// The destination stops listening: the redirect goes, the count
		// of the intercept still on the node stays.
		listening = false
		cp.check()
		if got := cp.connections()[id]; got != 1 {
			t.Fatalf("%s with its redirect removed: %d connections, want 1", id, got)
		}
		listening = true
		cp.check()
		// It leaves the node.
		cp.keep(map[string][]portKey{})
		cp.want(nil)
		cp.check()
	}
	if got := series(t, reg); !slices.Equal(got, base) {
		t.Fatalf("after the churn %v, want the series before: %v", got, base)
	}
}

// TestPassthroughsByReason: what the routers pass to the app untouched is
// counted by reason, every reason shown from the start, and the slow heads
// waiting over all ports are a gauge.
func TestPassthroughsByReason(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "app") }))
	t.Cleanup(app.Close)
	reg := prometheus.NewRegistry()
	a, err := New(Config{Node: "n", Registry: reg, Logger: (&logBuffer{}).logger()}, newFakeSteerer())
	if err != nil {
		t.Fatal(err)
	}
	d := a.dp
	d.listen, d.dialFrom = listenHere, dialHere
	t.Cleanup(func() { _ = d.Close() })
	nsPath, _ := fakeNetNS(t)
	appAddr := netip.MustParseAddrPort(app.Listener.Addr().String())
	tg := target("api-0", appAddr.Addr(), uint32(appAddr.Port()))
	tg.Netns = nsPath
	d.Apply([]*detourv1.Assignment{intercept("api", tg)})
	for _, r := range []string{"not_http", "no_request", "malformed_head", "head_too_large", "head_timeout", "slow_heads_full"} {
		if !slices.Contains(series(t, reg), "detour_agent_passthroughs_total{reason="+r+"}") {
			t.Fatalf("no series for reason %s: %v", r, series(t, reg))
		}
	}
	c, err := net.Dial("tcp", onlyPortAddr(t, d))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
	c.Close()
	testutil.Eventually(t, 5*time.Second, func() error {
		if v := value(t, reg, "detour_agent_passthroughs_total", "not_http"); v != 1 {
			return fmt.Errorf("not_http passthroughs %v, want 1", v)
		}
		return nil
	})
	if v := value(t, reg, "detour_agent_slow_heads", ""); v != 0 {
		t.Fatalf("slow heads %v, want 0", v)
	}
}

// value is the value of a series of the registry: the one whose only
// label has the value label ("" for a series without labels).
func value(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 0 && label == "" || len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				if c := m.GetCounter(); c != nil {
					return c.GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s{%s}", name, label)
	return 0
}
