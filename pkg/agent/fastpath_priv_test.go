package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	dtestutil "github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/podns"
	"github.com/detourdev/detour/pkg/redirect/fastpath"
	"github.com/detourdev/detour/pkg/redirect/steer"
)

// TestPrivilegedFastPath: with the fast path, a keep-alive caller's
// requests to an intercepted port are answered by the app, most of them
// routed in the kernel, and counted in detour_agent_kernel_requests_total;
// the matched ones reach the developer's pod, and the intercept's status
// counts them whoever routed them.
func TestPrivilegedFastPath(t *testing.T) {
	dtestutil.RequirePrivileged(t)
	cg := dtestutil.EnterCgroup(t)
	client := dtestutil.NewNetNS(t)
	pod := newPod(t, client, "fp1", netip.MustParseAddr("203.0.113.30"), "fc1", netip.MustParseAddr("203.0.113.3"))
	pod.start(t)

	fp, err := fastpath.New(fastpath.Config{Cgroup: cg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fp.Close() })
	s, err := steer.New()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	d := newDataplane(s, (&logBuffer{}).logger(), newMetrics(reg))
	d.resolve = podns.New().Resolve
	d.fast = fp
	reg.MustRegister(kernelRequests{d})
	t.Cleanup(func() { _ = d.Close() })

	// The developer's pod: a server in the pod's namespace, which the
	// agent dials from there.
	dev := netip.AddrPortFrom(pod.ip, 9090)
	ln, err := netns.Listen(pod.ns, "tcp4", dev.String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "dev") })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	a := intercept("api", target("api-0", pod.ip, 8080))
	a.Destination = dev.String()
	d.Apply([]*detourv1.Assignment{a})
	dtestutil.Eventually(t, 5*time.Second, func() error { return wantReport(d.Reports(), "default/api", true, "") })

	dialer := netns.Dialer{Path: client}
	c, err := dialer.DialContext(context.Background(), "tcp4", netip.AddrPortFrom(pod.ip, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(header, want string) error {
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: api\r\n%s\r\n", header); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && string(b) != want {
			err = fmt.Errorf("%q, want %q", b, want)
		}
		return err
	}
	for i := range 50 {
		header, want := "", "app "+pod.ip.String()
		if i%5 == 4 {
			header, want = "X-Dev: alice\r\n", "dev"
		}
		if err := get(header, want); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	routed := d.kernelRouted()
	kernel := routed[""]
	if kernel < 30 || routed["default/api"] < 5 {
		t.Fatalf("the kernel routed %d of 40 requests to the app, %d of 10 to the developer's pod", kernel, routed["default/api"])
	}
	if got := value(t, reg, "detour_agent_kernel_requests_total", ""); got != float64(kernel) {
		t.Fatalf("detour_agent_kernel_requests_total{intercept=\"\"} = %v, want %d", got, kernel)
	}
	// Status counts the matched requests, the kernel's and the agent's.
	if r := report(d.Reports(), "default/api"); r.Matched != 10 || r.Fallbacks != 0 {
		t.Fatalf("%d matched and %d fallbacks counted, want 10 and none", r.Matched, r.Fallbacks)
	}
}
