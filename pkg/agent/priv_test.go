package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/podns"
	"github.com/detourdev/detour/pkg/redirect/steer"
)

// TestPrivilegedPodsFoundByAddress runs the data path as in Kubernetes:
// targets carry only their pod's address, and the agent finds the pod's
// namespace through /proc. A pod whose sandbox is not up yet is steered once
// it is; a replaced pod's steering moves to the new pod; stopping removes
// all steering.
func TestPrivilegedPodsFoundByAddress(t *testing.T) {
	testutil.RequirePrivileged(t)
	client := testutil.NewNetNS(t)
	pod1 := newPod(t, client, "pd1", netip.MustParseAddr("203.0.113.10"), "cl1", netip.MustParseAddr("203.0.113.1"))
	pod2 := newPod(t, client, "pd2", netip.MustParseAddr("192.0.2.20"), "cl2", netip.MustParseAddr("192.0.2.1"))

	s, err := steer.New()
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	d := newDataplane(s, logs.logger(), newMetrics(prometheus.NewRegistry()))
	d.resolve = podns.New().Resolve
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = d.Close()
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.run(ctx, 20*time.Millisecond, 20*time.Millisecond)

	// The pod's namespace has its address but no process yet: not found.
	d.Apply([]*detourv1.Assignment{intercept("api", target("api-0", pod1.ip, 8080))})
	if err := wantReport(d.Reports(), "default/api", false, "no network namespace on this node has address 203.0.113.10"); err != nil {
		t.Fatal(err)
	}
	pod1.start(t)
	testutil.Eventually(t, 5*time.Second, func() error { return wantReport(d.Reports(), "default/api", true, "") })
	if err := wantLinks(pod1.ino, 1); err != nil {
		t.Fatal(err)
	}
	if err := getApp(client, pod1.ip); err != nil {
		t.Fatal(err)
	}
	if r := report(d.Reports(), "default/api"); r.SteeredConnections == 0 {
		t.Fatal("the request reached the app without the agent")
	}

	// Replaced: same pod name, new address, new namespace (whose process
	// may still be entering it).
	pod2.start(t)
	d.Apply([]*detourv1.Assignment{intercept("api", target("api-0", pod2.ip, 8080))})
	testutil.Eventually(t, 5*time.Second, func() error { return wantReport(d.Reports(), "default/api", true, "") })
	if err := wantLinks(pod1.ino, 0); err != nil {
		t.Fatalf("old pod: %v", err)
	}
	if err := wantLinks(pod2.ino, 1); err != nil {
		t.Fatalf("new pod: %v", err)
	}
	if err := getApp(client, pod2.ip); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("removing the steering took %v", took)
	}
	if err := wantLinks(pod2.ino, 0); err != nil {
		t.Fatalf("after Close: %v", err)
	}
}

// testPod is a pod's network namespace with its address on a veth to the
// client's namespace and an HTTP app on port 8080; start puts a process in
// it, which is how the agent finds it.
type testPod struct {
	ns  string
	ino uint64
	ip  netip.Addr
}

func newPod(t *testing.T, client, dev string, ip netip.Addr, peerDev string, peerIP netip.Addr) *testPod {
	t.Helper()
	p := &testPod{ns: testutil.NewNetNS(t), ip: ip}
	testutil.Veth(t, testutil.End{NetNS: p.ns, Dev: dev, Addr: ip}, testutil.End{NetNS: client, Dev: peerDev, Addr: peerIP})
	var err error
	if p.ino, err = netns.Inode(p.ns); err != nil {
		t.Fatal(err)
	}
	ln, err := netns.Listen(p.ns, "tcp4", netip.AddrPortFrom(ip, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "app "+ip.String()) })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

func (p *testPod) start(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("iproute2 is needed: %v", err)
	}
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(p.ns), "sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

// getApp sends a request from the client's namespace to the pod's app.
func getApp(client string, ip netip.Addr) error {
	d := &netns.Dialer{Path: client}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	resp, err := c.Get("http://" + netip.AddrPortFrom(ip, 8080).String() + "/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if want := "app " + ip.String(); string(b) != want {
		return fmt.Errorf("GET %s: %q, want %q", ip, b, want)
	}
	return nil
}

// wantLinks checks how many of the steering's links the namespace has.
func wantLinks(ino uint64, n int) error {
	ids, err := steer.LinkIDs(ino)
	if err != nil {
		return err
	}
	if len(ids) != n {
		return fmt.Errorf("netns inode %d has %d sk_lookup links of ours, want %d", ino, len(ids), n)
	}
	return nil
}
