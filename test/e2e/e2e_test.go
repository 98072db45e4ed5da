//go:build e2e

// Package e2e runs Detour on a real single-node Kubernetes (test/cluster):
// installed with the manifests a user applies, intercepts made with the CLI
// by users with and without the rights, requests from a client pod through
// the ClusterIP Service, and the agent and a baseline pod deleted under it.
// `make e2e` builds the images, starts the cluster, runs this inside the
// cluster's network namespace and tears everything down.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/podns"
	"github.com/detourdev/detour/pkg/redirect/connect"
	"github.com/detourdev/detour/pkg/redirect/steer"
)

// env is what test/e2e/run.sh hands over.
type env struct {
	state   string // test/cluster's state directory: kubeconfigs
	kubectl string
	bin     string // bin/ of this checkout: detour
}

func setup(t *testing.T) env {
	t.Helper()
	e := env{state: os.Getenv("DETOUR_E2E_STATE"), kubectl: os.Getenv("DETOUR_E2E_KUBECTL"), bin: os.Getenv("DETOUR_E2E_BIN")}
	if e.state == "" || e.kubectl == "" || e.bin == "" {
		t.Fatal("run through `make e2e` (test/e2e/run.sh): DETOUR_E2E_STATE, DETOUR_E2E_KUBECTL and DETOUR_E2E_BIN are not set")
	}
	return e
}

func (e env) kubeconfig(user string) string { return filepath.Join(e.state, user+".kubeconfig") }

// run runs a command and returns its combined output; it fails the test
// when the command fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), err
}

func (e env) k(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, e.kubectl, append([]string{"--kubeconfig", e.kubeconfig("admin")}, args...)...)
}

func (e env) detour(t *testing.T, user string, args ...string) string {
	t.Helper()
	return run(t, filepath.Join(e.bin, "detour"), append([]string{"--kubeconfig", e.kubeconfig(user)}, args...)...)
}

// podIP waits for a Ready pod and returns its address.
func (e env) podIP(t *testing.T, ns, name string) string {
	t.Helper()
	e.k(t, "-n", ns, "wait", "--for=condition=Ready", "--timeout=120s", "pod/"+name)
	return strings.TrimSpace(e.k(t, "-n", ns, "get", "pod", name, "-o", "jsonpath={.status.podIP}"))
}

func (e env) baselinePods(t *testing.T) map[string]string {
	t.Helper()
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Status struct {
				PodIP string `json:"podIP"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(e.k(t, "-n", "shop", "get", "pods", "-l", "app=api", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	pods := map[string]string{}
	for _, p := range list.Items {
		if p.Metadata.DeletionTimestamp == nil {
			pods[p.Metadata.Name] = p.Status.PodIP
		}
	}
	return pods
}

// client sends requests from the client pod's network namespace.
type client struct {
	t     *testing.T
	ns    string
	dials atomic.Int64
	keep  *http.Client // one keep-alive connection
	fresh *http.Client // a new connection per request
	h2    *http.Client // HTTP/2 with prior knowledge (h2c, as gRPC): one connection, every request a stream
}

func newClient(t *testing.T, podIP string) *client {
	t.Helper()
	path, err := podns.New().Resolve(netip.MustParseAddr(podIP))
	if err != nil {
		t.Fatalf("network namespace of the client pod: %v", err)
	}
	c := &client{t: t, ns: path}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c.dials.Add(1)
		d := &netns.Dialer{Path: path}
		return d.DialContext(ctx, network, addr)
	}
	c.keep = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1}}
	c.fresh = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	c.h2 = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, Protocols: &protos, MaxConnsPerHost: 1}}
	return c
}

// get returns the pod that answered, or an error.
func (c *client) get(hc *http.Client, url, session string) (string, error) {
	return echo.WhoAnswers(hc, url, session)
}

// sessionRounds sends five rounds of alice, bob and no session to url
// over hc, which must take a single connection for all 15 requests, and
// checks that api-alice, api-bob and a baseline pod answer them.
func (c *client) sessionRounds(t *testing.T, hc *http.Client, url, proto string, baseline map[string]string) {
	t.Helper()
	before := c.dials.Load()
	for round := 0; round < 5; round++ {
		for _, s := range []string{"alice", "bob", ""} {
			got, err := c.get(hc, url, s)
			if err != nil {
				t.Fatalf("session %q over %s: %v", s, proto, err)
			}
			if _, ok := baseline[got]; s == "" && !ok || s != "" && got != "api-"+s {
				t.Fatalf("session %q over %s: answered by %q, want api-%s (a baseline pod of %v for none)", s, proto, got, s, baseline)
			}
		}
	}
	if n := c.dials.Load() - before; n != 1 {
		t.Fatalf("the %s client opened %d connections for 15 requests, want 1", proto, n)
	}
}

func TestE2E(t *testing.T) {
	testutil.RequirePrivileged(t)
	e := setup(t)

	if ids, err := steer.LinkIDs(); err != nil || len(ids) != 0 {
		t.Fatalf("before install: Detour steering links %v (err %v): the machine is not clean", ids, err)
	}
	if ids, err := connect.LinkIDs(); err != nil || len(ids) != 0 {
		t.Fatalf("before install: Detour connect-time links %v (err %v): the machine is not clean", ids, err)
	}

	t.Log("install Detour with the manifests under deploy/")
	start := time.Now()
	t.Log(e.detour(t, "admin", "install", "--timeout", "3m"))
	t.Logf("installed and ready in %s", time.Since(start).Round(time.Second))

	t.Log("the application and the users' rights")
	e.k(t, "apply", "-f", "testdata/workloads.yaml")
	e.k(t, "-n", "shop", "rollout", "status", "deployment/api", "--timeout=120s")
	e.podIP(t, "shop", "api-alice")
	e.podIP(t, "shop", "api-bob")
	c := newClient(t, e.podIP(t, "shop", "client"))
	svc := "http://" + strings.TrimSpace(e.k(t, "-n", "shop", "get", "svc", "api", "-o", "jsonpath={.spec.clusterIP}")) + ":80/"

	// kube-proxy answers a Service without endpoints with "no route to
	// host": wait until it has the api pods.
	testutil.Eventually(t, 30*time.Second, func() error {
		_, err := c.get(c.fresh, svc, "")
		return err
	})

	t.Log("intercepts made with the CLI: alice's by alice, bob's by the admin")
	e.detour(t, "alice", "intercept", "create", "alice", "-n", "shop", "--service", "shop/api", "--port", "80",
		"--session", "alice", "--to", "api-alice:8080", "--wait", "60s")
	e.detour(t, "admin", "intercept", "create", "bob", "-n", "shop", "--service", "shop/api", "--port", "80",
		"--session", "bob", "--to", "api-bob:8080", "--wait", "60s")
	t.Log(e.detour(t, "admin", "intercept", "list", "-A"))
	t.Log(e.k(t, "get", "intercepts", "-A"))

	t.Run("requests from a client pod over one keep-alive connection reach the right pod", func(t *testing.T) {
		baseline := e.baselinePods(t)
		c.sessionRounds(t, c.keep, svc, "HTTP/1.1 keep-alive", baseline)
		// The agent runs with --fast-path=auto: after each destination's
		// first request on a connection, which the agent serves and pairs,
		// the kernel routes that connection's requests and counts them
		// (docs/architecture.md, data path step 7). Callers that dial a
		// pod's address are routed in the kernel; so are callers of the
		// Service's ClusterIP.
		kernel := func() float64 {
			return agentMetric(t, `detour_agent_kernel_requests_total{intercept="shop/alice"}`)
		}
		viaService := kernel()
		var podURL string
		for _, ip := range baseline {
			podURL = "http://" + ip + ":8080/"
			break
		}
		for i := 0; i < 5; i++ {
			if got, err := c.get(c.keep, podURL, "alice"); err != nil || got != "api-alice" {
				t.Fatalf("alice's request to %s answered by %q (%v), want api-alice", podURL, got, err)
			}
		}
		viaPod := kernel() - viaService
		t.Logf("alice's requests routed in the kernel: %v of 5 through the ClusterIP, %v of 5 to a pod's address", viaService, viaPod)
		if viaPod == 0 {
			t.Errorf("the kernel routed none of alice's 5 requests to %s: is the fast path on in the DaemonSet? (the agent's log says)", podURL)
		}
		if viaService == 0 {
			t.Errorf("the kernel routed none of alice's 5 requests through the ClusterIP")
		}
		// The agent's flows (the client's, steered to it, and its own to
		// the pods) fed the sockops metrics.
		testutil.Eventually(t, 10*time.Second, func() error {
			if n := agentMetric(t, "detour_agent_flow_rtt_seconds_count"); n == 0 {
				return errors.New("detour_agent_flow_rtt_seconds_count is 0 after the requests: no flow metrics in the cluster")
			}
			return nil
		})
	})

	t.Run("HTTP/2 streams on one connection from a client pod reach the right pod", func(t *testing.T) {
		// The agent forwards HTTP/2 frame by frame and routes each
		// stream on its own (docs/architecture.md, data path).
		c.sessionRounds(t, c.h2, svc, "HTTP/2", e.baselinePods(t))
	})

	t.Run("the Intercept resources show what the controller and the agent did", func(t *testing.T) {
		testutil.Eventually(t, 30*time.Second, func() error {
			out := e.k(t, "-n", "shop", "get", "intercept", "alice", "-o",
				`jsonpath={.status.state} {.status.matchSummary} {.status.conditions[?(@.type=="Ready")].status} {.status.nodes[0].node} {.status.nodes[0].steeringAttached} {.status.nodes[0].matched}`)
			f := strings.Fields(out)
			if len(f) != 6 || f[0] != "Active" || f[1] != "session=alice" || f[2] != "True" || f[3] != "detour-node" || f[4] != "true" || f[5] == "0" {
				return fmt.Errorf("status of shop/alice: %q, want Active session=alice True detour-node true and requests matched", out)
			}
			return nil
		})
	})

	t.Run("controller leader deleted: the other replica takes over", func(t *testing.T) {
		leader := strings.TrimSpace(e.k(t, "-n", "detour-system", "get", "lease", "detour-controller", "-o", "jsonpath={.spec.holderIdentity}"))
		e.k(t, "-n", "detour-system", "delete", "pod", leader, "--wait=false")
		testutil.Eventually(t, 60*time.Second, func() error {
			now := strings.TrimSpace(e.k(t, "-n", "detour-system", "get", "lease", "detour-controller", "-o", "jsonpath={.spec.holderIdentity}"))
			if now == "" || now == leader {
				return fmt.Errorf("lease still held by %q", now)
			}
			return nil
		})
		// The CLI finds the new leader, and it knows alice's intercept.
		testutil.Eventually(t, 60*time.Second, func() error {
			out, err := runErr(filepath.Join(e.bin, "detour"), "--kubeconfig", e.kubeconfig("alice"), "intercept", "get", "alice", "-n", "shop")
			if err != nil {
				return fmt.Errorf("detour intercept get: %v\n%s", err, out)
			}
			return nil
		})
		// The data path never depended on the controller.
		for _, s := range []string{"alice", "bob"} {
			if got, err := c.get(c.fresh, svc, s); err != nil || got != "api-"+s {
				t.Fatalf("after the failover, session %s answered by %q (%v)", s, got, err)
			}
		}
	})

	t.Run("a user without rights on intercepts is refused by the controller", func(t *testing.T) {
		out, err := runErr(filepath.Join(e.bin, "detour"), "--kubeconfig", e.kubeconfig("mallory"),
			"intercept", "create", "mallory", "-n", "shop", "--service", "shop/api", "--port", "80",
			"--session", "mallory", "--to", "api-alice:8080")
		if err == nil {
			t.Fatalf("mallory's intercept was accepted:\n%s", out)
		}
		if !strings.Contains(out, "dev-mallory") || !strings.Contains(out, "may not create") {
			t.Fatalf("refusal does not say who may not do what:\n%s", out)
		}
		if got := e.k(t, "-n", "shop", "get", "intercepts", "-o", "name"); strings.Contains(got, "mallory") {
			t.Fatalf("an intercept for mallory exists: %s", got)
		}
	})

	t.Run("agent pod deleted: traffic reaches the baseline, then the intercepts come back", func(t *testing.T) {
		old := strings.TrimSpace(e.k(t, "-n", "detour-system", "get", "pods", "-l", "app.kubernetes.io/name=detour-agent", "-o", "jsonpath={.items[0].metadata.name}"))
		e.k(t, "-n", "detour-system", "delete", "pod", old, "--wait=false")
		var failures, baselineAnswers int
		deadline := time.Now().Add(90 * time.Second)
		for ; ; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("alice's requests did not reach api-alice again within 90s (baseline answers %d, failures %d)", baselineAnswers, failures)
			}
			got, err := c.get(c.fresh, svc, "alice")
			switch {
			case err != nil:
				failures++
				t.Logf("request failed while the agent restarts: %v", err)
			case got == "api-alice":
				if baselineAnswers > 0 {
					goto back
				}
			default:
				baselineAnswers++
			}
		}
	back:
		// The agent unsteers first and drains what it holds (--shutdown-grace):
		// a restart loses no request.
		if failures > 0 {
			t.Fatalf("%d requests failed while the agent restarted, want none", failures)
		}
		t.Logf("while the agent restarted: %d answers from the baseline, %d failures", baselineAnswers, failures)
		e.k(t, "-n", "detour-system", "rollout", "status", "daemonset/detour-agent", "--timeout=90s")
		for _, s := range []string{"alice", "bob"} {
			if got, err := c.get(c.fresh, svc, s); err != nil || got != "api-"+s {
				t.Fatalf("after the agent came back, session %s answered by %q (%v)", s, got, err)
			}
		}
	})

	t.Run("baseline pod deleted: steering follows its replacement", func(t *testing.T) {
		before := e.baselinePods(t)
		var victim string
		for name := range before {
			victim = name
			break
		}
		e.k(t, "-n", "shop", "delete", "pod", victim, "--wait=true", "--timeout=60s")
		var fresh, ip string
		testutil.Eventually(t, 90*time.Second, func() error {
			now := e.baselinePods(t)
			for name, addr := range now {
				if _, old := before[name]; !old && addr != "" {
					fresh, ip = name, addr
					return nil
				}
			}
			return fmt.Errorf("no replacement for %s yet: %v", victim, now)
		})
		e.podIP(t, "shop", fresh)
		direct := "http://" + ip + ":8080/"
		testutil.Eventually(t, 30*time.Second, func() error {
			got, err := c.get(c.fresh, direct, "alice")
			if err != nil || got != "api-alice" {
				return fmt.Errorf("alice's request to the new pod %s answered by %q (%v)", fresh, got, err)
			}
			return nil
		})
		if got, err := c.get(c.fresh, direct, ""); err != nil || got != fresh {
			t.Fatalf("a request without a session to %s answered by %q (%v)", fresh, got, err)
		}
		for i := 0; i < 20; i++ {
			if got, err := c.get(c.fresh, svc, "alice"); err != nil || got != "api-alice" {
				t.Fatalf("through the Service, alice's request %d answered by %q (%v)", i, got, err)
			}
		}
	})

	t.Run("an L4 intercept: the client pod connects to the ClusterIP and reaches alice's pod directly", func(t *testing.T) {
		// An L4 intercept takes every connection to the port: the
		// session intercepts on it go first.
		for _, s := range []string{"alice", "bob"} {
			e.detour(t, "admin", "intercept", "delete", s, "-n", "shop")
		}
		e.detour(t, "alice", "intercept", "create", "bulk", "-n", "shop", "--service", "shop/api", "--port", "80",
			"--l4", "--to", "api-alice:8080", "--wait", "60s")
		defer func() {
			// Back to alice's session intercept, for what follows.
			e.detour(t, "admin", "intercept", "delete", "bulk", "-n", "shop")
			e.detour(t, "alice", "intercept", "create", "alice", "-n", "shop", "--service", "shop/api", "--port", "80",
				"--session", "alice", "--to", "api-alice:8080", "--wait", "60s")
		}()
		vip := strings.TrimSuffix(strings.TrimPrefix(svc, "http://"), "/")
		testutil.Eventually(t, 30*time.Second, func() error {
			got, err := c.get(c.fresh, svc, "")
			if err != nil || got != "api-alice" {
				return fmt.Errorf("a request without a session through the Service answered by %q (%v), want api-alice", got, err)
			}
			return nil
		})
		before := agentMetric(t, `detour_agent_connect_redirects_total{intercept="shop/bulk"}`)
		for i := 0; i < 10; i++ {
			if got, err := c.get(c.fresh, svc, ""); err != nil || got != "api-alice" {
				t.Fatalf("request %d through the Service answered by %q (%v), want api-alice", i, got, err)
			}
		}
		// Redirected at connect(), not relayed: the agent counted every
		// connection there, and the client sees the ClusterIP as its peer.
		if n := agentMetric(t, `detour_agent_connect_redirects_total{intercept="shop/bulk"}`) - before; n != 10 {
			t.Errorf("the agent redirected %v of the 10 connections at connect, want 10", n)
		}
		conn, err := (&netns.Dialer{Path: c.ns}).DialContext(t.Context(), "tcp", vip)
		if err != nil {
			t.Fatal(err)
		}
		if got := conn.RemoteAddr().String(); got != vip {
			t.Errorf("the client's RemoteAddr (getpeername) is %s, want the ClusterIP %s", got, vip)
		}
		conn.Close()
	})

	t.Run("environments: forks of a two-service chain, fork to fork with no header, expiry leaves nothing", func(t *testing.T) {
		testEnvironments(t, e, c)
	})

	t.Run("parity: detour parity diff between two namespaces, and a ParityCheck's status and metric", func(t *testing.T) {
		testParity(t, e)
	})

	t.Run("environment data: a branch of a PostgreSQL database, written by a fork, gone at expiry", func(t *testing.T) {
		testEnvironmentData(t, e, c)
	})

	t.Run("uninstall leaves no Detour BPF link on the node", func(t *testing.T) {
		if ids, err := steer.LinkIDs(); err != nil || len(ids) == 0 {
			t.Fatalf("before uninstall: steering links %v (err %v), want some: the check below would prove nothing", ids, err)
		}
		if ids, err := connect.LinkIDs(); err != nil || len(ids) == 0 {
			t.Fatalf("before uninstall: connect-time links %v (err %v), want the agent's", ids, err)
		}
		t.Log(e.detour(t, "admin", "uninstall", "--timeout", "3m"))
		ids, err := steer.LinkIDs()
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) != 0 {
			t.Fatalf("after uninstall the kernel still has Detour steering links %v", ids)
		}
		if ids, err := connect.LinkIDs(); err != nil || len(ids) != 0 {
			t.Fatalf("after uninstall the kernel still has Detour connect-time links %v (err %v)", ids, err)
		}
		if out, err := runErr(e.kubectl, "--kubeconfig", e.kubeconfig("admin"), "get", "crd", "intercepts.detour.dev"); err == nil {
			t.Fatalf("the CRD is still there:\n%s", out)
		}
		// Without Detour, alice's requests reach the baseline.
		if got, err := c.get(c.fresh, svc, "alice"); err != nil || got == "api-alice" {
			t.Fatalf("after uninstall alice's request answered by %q (%v), want the baseline", got, err)
		}
	})
}

// agentMetric reads one series from the agent's /metrics: the agent uses
// the node's network namespace, which this test runs in; 0 when absent.
func agentMetric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:9471/metrics")
	if err != nil {
		t.Fatalf("agent metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("metric %s: %q", series, line)
			}
			return f
		}
	}
	return 0
}
