package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

//lint:file-ignore SA1019 x/net's HTTP/2 client, as the proxy's upstream side uses (pkg/redirect/proxy, newUpstreamTransport): it multiplexes concurrent streams on one dial, which the prior-knowledge subtest checks

// i3Lab has its own bridge, subnet and pod names, so it never meets the lab
// of TestPrivilegedLabEndToEnd, even when a run leaves one behind.
const i3Lab = `
name: i3
network:
  bridge: dtit1
  subnet: 10.215.0.0/24
pods:
  - name: i3-api
    labels: {app: api}
    command: ["detour-echo", "--listen", ":8080", "--tcp-listen", ":9000"]
  - name: i3-alice
    labels: {app: api-alice}
    command: ["detour-echo", "--listen", ":8080", "--tcp-listen", ":9000"]
  - name: i3-bob
    labels: {app: api-bob}
    command: ["detour-echo", "--listen", ":8080", "--tcp-listen", ":9000"]
  - name: i3-client
    command: ["sleep", "infinity"]
  - name: i3-client2
    command: ["sleep", "infinity"]
services:
  - name: api
    selector: {app: api}
    ports:
      - {name: http, port: 80, targetPort: 8080}
      - {name: bulk, port: 9000, targetPort: 9000}
`

// TestPrivilegedLabH2GRPCAndL4 drives the protocols beyond HTTP/1.1 through
// the lab: gRPC and HTTP/2 routed per stream on shared connections, an h2c
// Upgrade the app does not take, an intercept on one gRPC method, a 100 MiB L4 echo checked end to
// end with the sockops flow metrics it feeds, an L4 intercept for one source
// pod, and deletion leaving nothing in the kernel. The agent runs with its
// default L4 relay (copy); the sockmap relay, slower here, is tested in
// pkg/redirect/splice (including the overlapping retransmissions that made
// it duplicate bytes under load in this test before the verdict program
// trimmed them).
func TestPrivilegedLabH2GRPCAndL4(t *testing.T) {
	l := startLab(t, i3Lab)
	apiIP := l.pod("i3-api").IP
	httpAddr, bulkAddr := apiIP+":8080", apiIP+":9000"

	for _, dev := range []string{"alice", "bob"} {
		l.ctl("intercept", "create", dev, "--service", "default/api", "--port", "80",
			"--session", dev, "--to", "i3-"+dev+":8080", "--wait", "10s")
	}
	want := map[string]string{"alice": "i3-alice", "bob": "i3-bob", "": "i3-api"}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	t.Run("gRPC: every kind of call for alice, bob and nobody on one connection", func(t *testing.T) {
		client, dials := l.grpcClient("i3-client", httpAddr)
		var wg sync.WaitGroup
		for round := range 3 {
			for name, call := range echo.GRPCCalls {
				for _, s := range []string{"alice", "bob", ""} {
					wg.Go(func() {
						if err := call(withSession(ctx, s), client, want[s]); err != nil {
							t.Errorf("round %d, %s, session %q: %v", round, name, s, err)
						}
					})
				}
			}
		}
		wg.Wait()
		for _, s := range []string{"alice", "bob", ""} {
			var tr metadata.MD
			msg := fmt.Sprintf("no such order: 42 (ünïcode, 100%%, %q)", s)
			_, err := client.UnaryCall(withSession(ctx, s), &testgrpc.SimpleRequest{
				ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: msg},
			}, grpc.Trailer(&tr))
			if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != msg {
				t.Errorf("session %q: status error arrived as %v, want NotFound %q", s, err, msg)
			}
			if err := echo.OnePod(tr, want[s]); err != nil {
				t.Errorf("session %q: status error trailer: %v", s, err)
			}
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("the gRPC client opened %d connections, want 1", n)
		}
		testutil.Eventually(t, 5*time.Second, func() error {
			m, err := l.agentMetrics()
			if err != nil {
				return err
			}
			// 3 rounds of 4 call kinds, and the status error.
			for _, dev := range []string{"alice", "bob"} {
				k := `detour_agent_requests_total{intercept="default/` + dev + `",outcome="matched"}`
				if m[k] < 13 {
					return fmt.Errorf("%s = %v, want >= 13", k, m[k])
				}
			}
			return nil
		})
	})

	t.Run("h2c Upgrade: the app stays on HTTP/1.1, so does the client", func(t *testing.T) {
		// detour-echo speaks h2c with prior knowledge only: straight to
		// the pod an Upgrade request is answered in HTTP/1.1, and so it is
		// through the agent (curl --http2 asks for h2c by Upgrade).
		for _, tc := range []struct{ session, pod string }{{"alice", "i3-alice"}, {"", "i3-api"}} {
			out, code := run(t, "nsenter", "--net="+l.pod("i3-client").NetNS, "curl", "--http2", "-sS",
				"-H", "X-Detour-Session: "+tc.session, "-w", "|%{http_version}", "http://"+httpAddr+"/")
			if want := tc.pod + "\n|1.1"; code != 0 || out != want {
				t.Errorf("curl --http2 with session %q: exit %d %q, want %q", tc.session, code, out, want)
			}
		}
		c := dialFrom(t, l.pod("i3-client").NetNS, httpAddr)
		defer c.Close()
		settings := base64.RawURLEncoding.EncodeToString(nil) // no setting changed
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"+
			"HTTP2-Settings: "+settings+"\r\nX-Detour-Session: alice\r\n\r\nGET / HTTP/1.1\r\nHost: api\r\nX-Detour-Session: bob\r\n\r\n")
		br := bufio.NewReader(c)
		for _, want := range []string{"i3-alice", "i3-bob"} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || resp.Proto != "HTTP/1.1" || string(b) != want+"\n" {
				t.Fatalf("got %s %s %q, want 200 HTTP/1.1 from %s", resp.Proto, resp.Status, b, want)
			}
		}
	})

	t.Run("HTTP/2 prior knowledge: concurrent streams on one connection", func(t *testing.T) {
		d := &netns.Dialer{Path: l.pod("i3-client").NetNS}
		var dials atomic.Int64
		tr := &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				dials.Add(1)
				return d.DialContext(ctx, network, addr)
			},
		}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		get := func(path, session string) (*http.Response, []byte, error) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+path, nil)
			if session != "" {
				req.Header.Set("X-Detour-Session", session)
			}
			resp, err := hc.Do(req)
			if err != nil {
				return nil, nil, err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return resp, b, err
		}
		// The first request opens the connection; the others share it.
		if _, _, err := get("/", ""); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		const size = 4 << 20
		wg.Go(func() { // a large response on one stream while the others come and go
			resp, b, err := get("/download?bytes="+strconv.Itoa(size)+"&seed=3", "bob")
			if err != nil {
				t.Errorf("download: %v", err)
				return
			}
			w, _ := io.ReadAll(io.LimitReader(echo.Stream(3), size))
			if resp.ProtoMajor != 2 || resp.Header.Get(echo.PodHeader) != "i3-bob" || !bytes.Equal(b, w) {
				t.Errorf("download: %s from %q, %d bytes, intact %v", resp.Proto, resp.Header.Get(echo.PodHeader), len(b), bytes.Equal(b, w))
			}
		})
		for i := range 60 {
			s := []string{"alice", "bob", ""}[i%3]
			wg.Go(func() {
				resp, b, err := get("/", s)
				switch {
				case err != nil:
					t.Errorf("request %d, session %q: %v", i, s, err)
				case resp.ProtoMajor != 2 || resp.Header.Get(echo.PodHeader) != want[s] || string(b) != want[s]+"\n":
					t.Errorf("request %d, session %q: %s from %q, body %q; want HTTP/2 from %s",
						i, s, resp.Proto, resp.Header.Get(echo.PodHeader), b, want[s])
				}
			})
		}
		wg.Wait()
		if n := dials.Load(); n != 1 {
			t.Errorf("the HTTP/2 client opened %d connections, want 1", n)
		}
	})

	t.Run("an intercept on one gRPC method takes only that method", func(t *testing.T) {
		create := []string{"intercept", "create", "method", "--service", "default/api", "--port", "80",
			"--path", "/grpc.testing.TestService/EmptyCall", "--to", "i3-bob:8080", "--wait", "10s"}
		// Every EmptyCall with session alice would match alice's too.
		if out, code := l.ctlCode(create...); code != 4 || !strings.Contains(out, "alice") {
			t.Fatalf("method intercept beside alice's: exit %d, want 4 (conflict) naming alice\n%s", code, out)
		}
		l.ctl("intercept", "delete", "alice")
		l.ctl("intercept", "delete", "bob")
		l.ctl(create...)
		client, _ := l.grpcClient("i3-client", httpAddr)
		for _, s := range []string{"", "alice"} {
			var hdr, tr metadata.MD
			if _, err := client.EmptyCall(withSession(ctx, s), &testgrpc.Empty{}, grpc.Header(&hdr), grpc.Trailer(&tr)); err != nil {
				t.Fatal(err)
			}
			if err := errors.Join(echo.OnePod(hdr, "i3-bob"), echo.OnePod(tr, "i3-bob")); err != nil {
				t.Errorf("EmptyCall, session %q: %v", s, err)
			}
			for name, call := range echo.GRPCCalls {
				if err := call(withSession(ctx, s), client, "i3-api"); err != nil {
					t.Errorf("%s, session %q: %v", name, s, err)
				}
			}
		}
	})

	t.Run("L4: 100 MiB from a pod on the node, redirected at connect", func(t *testing.T) {
		l.ctl("intercept", "create", "bulk", "--service", "default/api", "--port", "9000",
			"--l4", "--to", "i3-alice:9000", "--wait", "10s")
		// The caller sees the address it dialled (getpeername), though its
		// connection is to i3-alice.
		c := dialFrom(t, l.pod("i3-client").NetNS, bulkAddr)
		if got := c.RemoteAddr().String(); got != bulkAddr {
			t.Errorf("the caller's RemoteAddr (getpeername) is %s, want %s", got, bulkAddr)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if strings.TrimSpace(line) != "i3-alice" {
			t.Fatalf("banner %q, %v; want i3-alice", line, err)
		}
		echo100MiB(t, l.pod("i3-client").NetNS, bulkAddr, "i3-alice")
		l.redirectedAtConnect("default/bulk", 2)
		// The intercept's status counts them as matched.
		testutil.Eventually(t, 5*time.Second, func() error {
			return checkStatus(l.status(), "bulk", func(n map[string]any) error {
				if num(n["matched"]) != 2 {
					return fmt.Errorf("matched %v, want the 2 connections redirected at connect: %v", n["matched"], n)
				}
				return nil
			})
		})
	})

	t.Run("L4: 100 MiB from the host, through the agent's relay", func(t *testing.T) {
		// Callers in the host's namespace are never redirected at
		// connect: the steering hands them to the agent's relay.
		echo100MiB(t, "", bulkAddr, "i3-alice")
		testutil.Eventually(t, 5*time.Second, func() error {
			m, err := l.agentMetrics()
			if err != nil {
				return err
			}
			k := `detour_agent_requests_total{intercept="default/bulk",outcome="matched"}`
			if m[k] != 1 {
				return fmt.Errorf("%s = %v, want 1", k, m[k])
			}
			if m["detour_agent_flow_rtt_seconds_count"] <= 0 {
				return fmt.Errorf("detour_agent_flow_rtt_seconds_count = %v, want > 0", m["detour_agent_flow_rtt_seconds_count"])
			}
			if _, ok := m["detour_agent_flows"]; !ok {
				return errors.New("no detour_agent_flows")
			}
			return nil
		})
	})

	t.Run("L4 for one source pod", func(t *testing.T) {
		l.ctl("intercept", "delete", "bulk")
		l.ctl("intercept", "create", "src", "--service", "default/api", "--port", "9000",
			"--l4", "--from-pod", "i3-client2", "--to", "i3-bob:9000", "--wait", "10s")
		msg := []byte("hello over L4\n")
		// --wait saw the steering; the agent puts i3-client2's redirect in
		// the kernel at its next connect check: probe until one is
		// counted.
		k := `detour_agent_connect_redirects_total{intercept="default/src"}`
		var base float64
		testutil.Eventually(t, 5*time.Second, func() error {
			tcpEcho(t, l.pod("i3-client2").NetNS, bulkAddr, msg, 0, nil)
			m, err := l.agentMetrics()
			if err != nil {
				return err
			}
			if base = m[k]; base == 0 {
				return fmt.Errorf("%s = 0: not redirected at connect yet", k)
			}
			return nil
		})
		for _, tc := range []struct{ from, want string }{
			{"i3-client2", "i3-bob"},
			{"i3-client", "i3-api"}, // the server speaks first: the agent passes it on after its first-byte wait
			{"i3-client2", "i3-bob"},
		} {
			start := time.Now()
			banner, got := tcpEcho(t, l.pod(tc.from).NetNS, bulkAddr, msg, 0, nil)
			if banner != tc.want || !bytes.Equal(got, msg) {
				t.Errorf("from %s: banner %q, echo %q; want %s echoing %q", tc.from, banner, got, tc.want, msg)
			}
			t.Logf("from %s: answered by %s in %v", tc.from, banner, time.Since(start).Round(time.Millisecond))
		}
		// i3-client2 is on this node: its connections were redirected at
		// connect, not relayed; i3-client's went through the agent, which
		// saw a source outside the filter and passed it to the app.
		l.redirectedAtConnect("default/src", base+2)
	})

	t.Run("intercepts deleted: no link left, traffic at the app", func(t *testing.T) {
		l.ctl("intercept", "delete", "method")
		l.ctl("intercept", "delete", "src")
		testutil.Eventually(t, 3*time.Second, func() error {
			if n := ourLinks(t, l.pod("i3-api").NetNS); n != 0 {
				return fmt.Errorf("%d steering links still in the pod namespace", n)
			}
			return nil
		})
		client, _ := l.grpcClient("i3-client2", httpAddr)
		for _, s := range []string{"alice", ""} {
			for name, call := range echo.GRPCCalls {
				if err := call(withSession(ctx, s), client, "i3-api"); err != nil {
					t.Errorf("after delete, %s, session %q: %v", name, s, err)
				}
			}
		}
		for _, from := range []string{"i3-client", "i3-client2"} {
			msg := []byte("x")
			if banner, got := tcpEcho(t, l.pod(from).NetNS, bulkAddr, msg, 0, nil); banner != "i3-api" || !bytes.Equal(got, msg) {
				t.Errorf("after delete, L4 from %s: banner %q, echo %q", from, banner, got)
			}
		}
	})
}

// echo100MiB sends 100 MiB of random bytes to the echo server at addr from
// the namespace at nsPath ("" the host's) and requires the banner of
// wantPod and the same bytes back.
func echo100MiB(t *testing.T, nsPath, addr, wantPod string) {
	t.Helper()
	data := make([]byte, 100<<20)
	rand.Read(data)
	start := time.Now()
	banner, got := tcpEcho(t, nsPath, addr, data, 0, nil)
	if banner != wantPod {
		t.Fatalf("banner %q, want %s: the connection was not detoured", banner, wantPod)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("the echo differs from what was sent (sha256): %s", diffStreams(data, got))
	}
	t.Logf("100 MiB each way in %v", time.Since(start).Round(time.Millisecond))
}

// redirectedAtConnect requires the agent to count n connections of
// intercept as redirected at connect, and none carried by its relay.
func (l *lab) redirectedAtConnect(intercept string, n float64) {
	l.t.Helper()
	testutil.Eventually(l.t, 5*time.Second, func() error {
		m, err := l.agentMetrics()
		if err != nil {
			return err
		}
		k := `detour_agent_connect_redirects_total{intercept="` + intercept + `"}`
		if m[k] != n {
			return fmt.Errorf("%s = %v, want %v", k, m[k], n)
		}
		k = `detour_agent_requests_total{intercept="` + intercept + `",outcome="matched"}`
		if m[k] != 0 {
			return fmt.Errorf("%s = %v, want 0: the relay carried a connection redirected at connect", k, m[k])
		}
		return nil
	})
}

// grpcClient returns a TestService client whose one connection starts in
// the pod's network namespace, and a count of the connections it dialled.
func (l *lab) grpcClient(fromPod, addr string) (testgrpc.TestServiceClient, *atomic.Int64) {
	l.t.Helper()
	d := &netns.Dialer{Path: l.pod(fromPod).NetNS}
	dials := new(atomic.Int64)
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			dials.Add(1)
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc), dials
}

func withSession(ctx context.Context, s string) context.Context {
	if s == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "x-detour-session", s)
}

// tcpEcho talks to detour-echo's raw TCP echo at addr from the namespace
// nsPath: it reads the banner, sends data while it reads the echo back,
// half-closes, and reads until the server closes. With pause, it stops
// sending once pauseAt bytes are out (the echo keeps being read) until pause
// returns nil, failing the test if it has not within 10s. It returns the
// banner and the bytes echoed.
func tcpEcho(t *testing.T, nsPath, addr string, data []byte, pauseAt int, pause func() error) (string, []byte) {
	t.Helper()
	c := dialFrom(t, nsPath, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	br := bufio.NewReader(c)
	banner, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("banner from %s: %q, %v", addr, banner, err)
	}
	type result struct {
		got []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		buf := bytes.NewBuffer(make([]byte, 0, len(data)+1<<20))
		_, err := buf.ReadFrom(br) // until the server closes
		done <- result{buf.Bytes(), err}
	}()
	werr := func() error {
		rest := data
		if pause != nil {
			if _, err := c.Write(data[:pauseAt]); err != nil {
				return err
			}
			rest = data[pauseAt:]
			var last error
			for deadline := time.Now().Add(10 * time.Second); ; {
				if last = pause(); last == nil {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("paused after %d bytes: condition not met within 10s: %w", pauseAt, last)
				}
				select {
				case r := <-done:
					done <- r
					return fmt.Errorf("paused after %d bytes: the connection ended (%v) before the condition held: %w", pauseAt, r.err, last)
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
		if _, err := c.Write(rest); err != nil {
			return err
		}
		return c.(*net.TCPConn).CloseWrite()
	}()
	if werr != nil {
		c.Close()
		<-done
		t.Fatalf("send to %s: %v", addr, werr)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("read echo from %s after %d bytes: %v", addr, len(r.got), r.err)
	}
	return strings.TrimSuffix(banner, "\n"), r.got
}

// diffStreams says where got departs from sent, for a data path engineer:
// the common prefix and suffix, and where in sent the bytes between come
// from if they are a copy of some (a duplicated or replayed skb).
func diffStreams(sent, got []byte) string {
	p := 0
	for p < len(sent) && p < len(got) && sent[p] == got[p] {
		p++
	}
	s := 0
	for s < len(sent)-p && s < len(got)-p && sent[len(sent)-1-s] == got[len(got)-1-s] {
		s++
	}
	mid := got[p : len(got)-s]
	msg := fmt.Sprintf("sent %d bytes, got %d (%+d); equal for the first %d and the last %d; got[%d:%d] (%d bytes) differs from sent[%d:%d]",
		len(sent), len(got), len(got)-len(sent), p, s, p, len(got)-s, len(mid), p, len(sent)-s)
	if len(mid) >= 64 {
		if i := bytes.Index(sent, mid[:64]); i >= 0 {
			n := 0
			for n < len(mid) && i+n < len(sent) && mid[n] == sent[i+n] {
				n++
			}
			msg += fmt.Sprintf("; its first %d bytes are sent[%d:%d] (offset %+d from where they appear)", n, i, i+n, p-i)
		}
	}
	return msg
}

func TestDiffStreams(t *testing.T) {
	sent, _ := io.ReadAll(io.LimitReader(echo.Stream(1), 1000))
	dup := append(append(append([]byte{}, sent[:600]...), sent[400:600]...), sent[600:]...)
	lost := append(append([]byte{}, sent[:300]...), sent[500:]...)
	for _, tc := range []struct {
		name string
		got  []byte
		want string
	}{
		{"equal", sent, "sent 1000 bytes, got 1000 (+0); equal for the first 1000 and the last 0; got[1000:1000] (0 bytes) differs from sent[1000:1000]"},
		{"200 bytes again", dup, "sent 1000 bytes, got 1200 (+200); equal for the first 600 and the last 400; got[600:800] (200 bytes) differs from sent[600:600]; its first 200 bytes are sent[400:600] (offset +200 from where they appear)"},
		{"200 bytes lost", lost, "sent 1000 bytes, got 800 (-200); equal for the first 300 and the last 500; got[300:300] (0 bytes) differs from sent[300:500]"},
	} {
		if got := diffStreams(sent, tc.got); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}
