package fastpath

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/match"
	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// The test network: the pod's namespace holds the proxy (on the fast
// port, as the agent's steered listener would) and the app; the peers'
// namespace holds the callers and the developers' pods, so requests cross
// the veth as from another pod on the node.
var (
	podAddr  = netip.MustParseAddr("10.254.0.1")
	peerAddr = netip.MustParseAddr("10.254.0.2")
	fastPort = netip.AddrPortFrom(podAddr, 8080)
	appAddr  = netip.AddrPortFrom(podAddr, 8081)
	alice    = netip.AddrPortFrom(peerAddr, 9001)
	bob      = netip.AddrPortFrom(peerAddr, 9002)
)

type testNet struct {
	pod, peers string
	cgroup     string
	f          *FastPath
	port       *Port
	proxy      *proxy.Proxy
}

// pods answers with the pod's name in X-Pod, the sha256 of the request body
// in X-Body-Sha256, and a body of the size asked for in X-Want (fixed
// length, or chunked with X-Chunked), whose sha256 is in X-Sha256.
func pod(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			echoTunnel(w, name)
			return
		}
		h := sha256.New()
		if _, err := io.Copy(h, r.Body); err != nil {
			return
		}
		n, _ := strconv.Atoi(r.Header.Get("X-Want"))
		body := pattern(name, n)
		sum := sha256.Sum256(body)
		w.Header().Set("X-Pod", name)
		w.Header().Set("X-Body-Sha256", hex.EncodeToString(h.Sum(nil)))
		w.Header().Set("X-Sha256", hex.EncodeToString(sum[:]))
		if r.Header.Get("X-Chunked") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(n))
		}
		if r.Method == http.MethodHead {
			return
		}
		if r.Header.Get("X-Chunked") != "" {
			for len(body) > 0 {
				k := min(len(body), 1000)
				w.Write(body[:k])
				w.(http.Flusher).Flush()
				body = body[k:]
			}
			return
		}
		w.Write(body)
	})
}

// echoTunnel switches protocols and then echoes every byte, for a
// WebSocket's path through the proxy (its framing does not matter here).
func echoTunnel(w http.ResponseWriter, name string) {
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Pod: %s\r\n\r\n", name)
	if brw.Flush() != nil {
		return
	}
	buf := make([]byte, 4096)
	for {
		k, err := brw.Read(buf)
		if k > 0 {
			if _, werr := c.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pattern is n bytes that differ per pod and per size.
func pattern(seed string, n int) []byte {
	b := make([]byte, n)
	x := uint32(len(seed)*7919 + n)
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// newTestNet brings up the namespaces, the fast path attached to a fresh
// cgroup the test process moves into, the app and two developers' pods,
// and the proxy routing session alice and bob.
func newTestNet(t testing.TB) *testNet {
	t.Helper()
	return newTestNetIdle(t, 0)
}

// newTestNetIdle is newTestNet with an app that closes keep-alive
// connections idle for appIdle (0: the server's default).
func newTestNetIdle(t testing.TB, appIdle time.Duration) *testNet {
	t.Helper()
	return newTestNetOpts(t, netOpts{appIdle: appIdle})
}

type netOpts struct {
	appIdle time.Duration // see newTestNetIdle
	// serveBob, when set, serves bob's address instead of pod("bob").
	serveBob func(ln net.Listener)
	// noAgent: no fast path and no proxy in this process (another runs
	// them: see TestPrivilegedAgentSIGKILL); n.cgroup is where to attach.
	noAgent bool
	// routes, when set, are the port's routes (destinations alice and
	// bob); else session alice and session bob.
	routes func(t testing.TB) []proxy.Route
}

func newTestNetOpts(t testing.TB, o netOpts) *testNet {
	t.Helper()
	testutil.RequirePrivileged(t)
	cg := testutil.EnterCgroup(t)
	n := &testNet{pod: testutil.NewNetNS(t), peers: testutil.NewNetNS(t)}
	testutil.Veth(t, testutil.End{NetNS: n.pod, Dev: "pod0", Addr: podAddr}, testutil.End{NetNS: n.peers, Dev: "peer0", Addr: peerAddr})
	n.cgroup = cg
	n.serveHTTP(t, n.pod, appAddr, "app", o.appIdle)
	n.serveHTTP(t, n.peers, alice, "alice", 0)
	if o.serveBob == nil {
		n.serveHTTP(t, n.peers, bob, "bob", 0)
	} else {
		ln, err := netns.Listen(n.peers, "tcp4", bob.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go o.serveBob(ln)
	}

	if o.noAgent {
		return n
	}
	routes := defaultRoutes
	if o.routes != nil {
		routes = o.routes
	}
	f, ln, px, port := serveAgent(t, n.pod, cg, routes(t))
	t.Cleanup(func() {
		ln.Close()
		px.Close()
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	n.f, n.proxy, n.port = f, px, port
	return n
}

// serveAgent loads the fast path on cgroup and serves the fast port in
// the pod's namespace with a proxy using it, as the agent would.
func serveAgent(t testing.TB, pod, cgroup string, routes []proxy.Route) (*FastPath, net.Listener, *proxy.Proxy, *Port) {
	t.Helper()
	f, err := New(Config{Cgroup: cgroup})
	if err != nil {
		t.Fatal(err)
	}
	port, err := f.SetPort(fastPort, appAddr.String(), RoutesOf(routes))
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	px := proxy.New(proxy.Config{
		App:      appAddr.String(),
		Dial:     (&netns.Dialer{Path: pod}).DialContext,
		FastPath: ForProxy(port),
	})
	px.SetRoutes(routes)
	ln, err := netns.Listen(pod, "tcp4", fastPort.String())
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	go px.Serve(ln)
	return f, ln, px, port
}

func defaultRoutes(t testing.TB) []proxy.Route {
	return []proxy.Route{sessionRoute(t, "alice", alice), sessionRoute(t, "bob", bob)}
}

func sessionRoute(t testing.TB, key string, dest netip.AddrPort) proxy.Route {
	return route(t, "default/"+key, dest, match.Condition{Kind: match.Session, Value: key})
}

func route(t testing.TB, intercept string, dest netip.AddrPort, conds ...match.Condition) proxy.Route {
	m, err := match.Compile(conds)
	if err != nil {
		t.Fatal(err)
	}
	return proxy.Route{Intercept: intercept, Matcher: m, Destination: dest.String()}
}

// serveHTTP serves pod(name) at at, HTTP/1.1 and h2c with prior
// knowledge, closing connections idle for idle (0: the default).
func (n *testNet) serveHTTP(t testing.TB, ns string, at netip.AddrPort, name string, idle time.Duration) {
	t.Helper()
	ln, err := netns.Listen(ns, "tcp4", at.String())
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: pod(name), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idle, Protocols: &protos}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// caller is one keep-alive connection from the peers' namespace to the
// fast port.
type caller struct {
	c       net.Conn
	br      *bufio.Reader
	timeout time.Duration // for one exchange; 0: 10 s
}

func (n *testNet) dial(t testing.TB) *caller {
	t.Helper()
	return n.dialAt(t, fastPort)
}

// dialAt is dial to another address that leads to the fast port (a
// Service's, NATed on the way).
func (n *testNet) dialAt(t testing.TB, at netip.AddrPort) *caller {
	t.Helper()
	d := netns.Dialer{Path: n.peers}
	c, err := d.DialContext(context.Background(), "tcp4", at.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &caller{c: c, br: bufio.NewReaderSize(c, 64<<10)}
}

// exchange sends one request with session key (none when empty) and a body
// of reqSize bytes, asking for a body of respSize, and checks who answered
// and both bodies' sha256.
func (c *caller) exchange(key string, reqSize, respSize int, extra ...string) (string, error) {
	body := pattern("req"+key, reqSize)
	var b strings.Builder
	fmt.Fprintf(&b, "POST /items HTTP/1.1\r\nHost: app\r\nX-Want: %d\r\nContent-Length: %d\r\n", respSize, reqSize)
	if key != "" {
		fmt.Fprintf(&b, "X-Detour-Session: %s\r\n", key)
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	timeout := c.timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	if err := c.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	if _, err := c.c.Write(append([]byte(b.String()), body...)); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return "", err
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	who := resp.Header.Get("X-Pod")
	sum := sha256.Sum256(got)
	reqSum := sha256.Sum256(body)
	switch {
	case len(got) != respSize:
		return who, fmt.Errorf("%s answered %d bytes, want %d", who, len(got), respSize)
	case hex.EncodeToString(sum[:]) != resp.Header.Get("X-Sha256"):
		return who, fmt.Errorf("%s's response body differs from what it sent", who)
	case hex.EncodeToString(reqSum[:]) != resp.Header.Get("X-Body-Sha256"):
		return who, fmt.Errorf("%s got a request body that differs from what was sent", who)
	}
	return who, nil
}

func TestPrivilegedSmoke(t *testing.T) {
	n := newTestNet(t)
	c := n.dial(t)
	for i := range 20 {
		for _, key := range []string{"alice", "bob", ""} {
			want := key
			if want == "" {
				want = "app"
			}
			who, err := c.exchange(key, 10, 100)
			if err != nil {
				t.Fatalf("request %d for %q: %v", i, key, err)
			}
			if who != want {
				t.Fatalf("request %d for %q answered by %s", i, key, who)
			}
		}
	}
	st, err := n.f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", st)
	if st.Routed == 0 {
		t.Fatal("the kernel routed nothing")
	}
}
