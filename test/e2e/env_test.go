//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
)

// testEnvironments: an environment forking both Deployments of a chain,
// requests through web's ClusterIP from the client pod with and without
// the key, the web fork calling the orders fork with no header at all
// (redirected at connect()), kubectl's view, a renewal, and expiry leaving
// no fork, intercept or connect-time entry.
func testEnvironments(t *testing.T, e env, c *client) {
	e.k(t, "apply", "-f", "testdata/chain.yaml")
	for _, d := range []string{"orders", "web"} {
		e.k(t, "-n", "chain", "rollout", "status", "deployment/"+d, "--timeout=120s")
	}
	webVIP := "http://" + strings.TrimSpace(e.k(t, "-n", "chain", "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}")) + ":80/chain"
	chain := func(key string) (string, error) { return echo.Chain(c.fresh, webVIP, key) }

	start := time.Now()
	out := e.detour(t, "admin", "env", "create", "pr-42", "-n", "chain",
		"--fork", "web", "--fork", "orders",
		"--set-env", "web:DETOUR_ECHO_PROPAGATE=false", // the fork does not pass the key on
		"--ttl", "10m", "--wait", "120s")
	t.Logf("pr-42 Ready in %s\n%s", time.Since(start).Round(100*time.Millisecond), out)
	t.Log(e.k(t, "-n", "chain", "get", "environments"))
	if got := e.k(t, "-n", "chain", "get", "environment", "pr-42", "-o", "jsonpath={.status.phase} {.status.key} {.status.forkSummary}"); got != "Ready pr-42 web, orders" {
		t.Errorf("kubectl get environment pr-42: %q", got)
	}
	t.Log(e.k(t, "-n", "chain", "get", "deployments,intercepts"))

	redirects := func() float64 {
		return agentMetric(t, `detour_agent_connect_redirects_total{intercept="chain/pr-42-orders-80-forks"}`)
	}
	before := redirects()
	testutil.Eventually(t, 30*time.Second, func() error {
		got, err := chain("pr-42")
		if err != nil || !strings.HasPrefix(got, "web-pr-42-") || !strings.Contains(got, " -> orders-pr-42-") {
			return fmt.Errorf("with the key: %q (%v), want web-pr-42-... -> orders-pr-42-...", got, err)
		}
		return nil
	})
	for i := range 5 {
		got, err := chain("pr-42")
		if err != nil || !strings.HasPrefix(got, "web-pr-42-") || !strings.Contains(got, " -> orders-pr-42-") {
			t.Fatalf("request %d with the key: %q (%v)", i, got, err)
		}
		got, err = chain("")
		if err != nil || strings.Contains(got, "pr-42") {
			t.Fatalf("request %d without the key: %q (%v), want the baseline chain", i, got, err)
		}
	}
	// The web fork called orders through its ClusterIP with no header: the
	// agent redirected those connections at connect() to the orders fork.
	if n := redirects() - before; n < 5 {
		t.Errorf("%v fork-to-fork connections redirected at connect(), want at least 5", n)
	}

	// Renewed to end in a few seconds, then expired by the controller.
	t.Log(e.detour(t, "admin", "env", "renew", "pr-42", "-n", "chain", "--ttl", "3s"))
	t.Log("waiting for the TTL to end")
	testutil.Eventually(t, 90*time.Second, func() error {
		if out, err := runErr(e.kubectl, "--kubeconfig", e.kubeconfig("admin"), "-n", "chain", "get", "environment", "pr-42"); err == nil {
			return fmt.Errorf("pr-42 still there:\n%s", out)
		}
		return nil
	})
	testutil.Eventually(t, 60*time.Second, func() error {
		left := e.k(t, "-n", "chain", "get", "deployments,pods,intercepts", "-o", "name")
		if strings.Contains(left, "pr-42") {
			return fmt.Errorf("left after expiry:\n%s", left)
		}
		if n := agentMapEntries(t, "connect_redirec"); n != 0 {
			return fmt.Errorf("the agent's connect-time map holds %d entries after expiry", n)
		}
		return nil
	})
	if got, err := chain("pr-42"); err != nil || strings.Contains(got, "pr-42") {
		t.Errorf("after expiry, with the key: %q (%v), want the baseline chain", got, err)
	}
}

// agentMapEntries counts the keys of the agent's BPF map named name (as
// the kernel keeps it: 15 characters), read from the kernel through the
// agent process's file descriptors.
func agentMapEntries(t *testing.T, name string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "detour-agent") {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		fds, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "fdinfo", "*"))
		for _, fd := range fds {
			info, err := os.ReadFile(fd)
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(info), "\n") {
				v, ok := strings.CutPrefix(line, "map_id:")
				if !ok {
					continue
				}
				id, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
				m, err := ebpf.NewMapFromID(ebpf.MapID(id))
				if err != nil {
					continue
				}
				mi, err := m.Info()
				if err != nil || mi.Name != name {
					m.Close()
					continue
				}
				n := 0
				next := make([]byte, mi.KeySize)
				var prev any
				for m.NextKey(prev, next) == nil {
					n++
					prev = append([]byte(nil), next...)
				}
				m.Close()
				return n
			}
		}
	}
	t.Fatalf("no agent process holds a BPF map %s", name)
	return 0
}
