package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	labpkg "github.com/detourdev/detour/pkg/lab"
	"github.com/detourdev/detour/pkg/netns"
)

// The environments lab: a two-service chain, web -> api, and a client.
// web's baseline propagates the session header and baggage, as a traced
// app does; forks are given a command that does not, to show what
// connect-time routing gives without any propagation.
const envLab = `
name: it-env
network: {bridge: dtit-env, subnet: 10.213.211.0/24}
pods:
  - name: ie-web
    labels: {app: ie-web}
    workload: web
    command: ["detour-echo", "--listen", ":8080", "--call", "http://api:8080", "--propagate"]
  - name: ie-api
    labels: {app: ie-api}
    workload: api
    command: ["detour-echo", "--listen", ":8080"]
  - name: ie-client
    command: ["sleep", "infinity"]
services:
  - name: web
    selector: {app: ie-web}
    ports: [{port: 80, targetPort: 8080}]
  - name: api
    selector: {app: ie-api}
    ports: [{port: 80, targetPort: 8080}]
`

// noPropagation is the forks' web command: it calls api without the key.
const noPropagation = "web=detour-echo --listen :8080 --call http://api:8080"

// TestPrivilegedEnvironments runs the environment story in the lab: two
// environments at once, each request answered by the right chain of pods,
// forks calling forks with no header (redirected at connect()), kubectl-like
// refusals of changes to an environment's intercepts, a preview URL, a
// fork's pod killed, a fork that cannot start, TTL expiry and delete, and
// nothing left in the kernel or the lab afterwards.
func TestPrivilegedEnvironments(t *testing.T) {
	l := startLab(t, envLab)
	hc := l.client("ie-client")
	// The lab's names resolve in the client's hosts file; Go's resolver in
	// this process does not read it, so dial addresses.
	web := l.pod("ie-web").IP
	url := func(path string) string { return "http://" + web + ":8080" + path }
	chain := func(key string) string {
		t.Helper()
		got, err := echo.Chain(hc.Client, url("/chain"), key)
		if err != nil {
			t.Fatalf("chain with key %q: %v", key, err)
		}
		return got
	}

	start := time.Now()
	l.ctl("env", "create", "pr-7", "--fork", "web", "--fork", "api", "--command", noPropagation, "--wait", "30s")
	t.Logf("pr-7 Ready in %v (two forks)", time.Since(start).Round(time.Millisecond))
	l.ctl("env", "create", "pr-8", "--fork", "api", "--wait", "30s")

	// Each request answered by its own chain, over one keep-alive
	// connection from the client; the baggage member works like the
	// header.
	want := map[string]string{"pr-7": "web-pr-7 -> api-pr-7", "pr-8": "ie-web -> api-pr-8", "": "ie-web -> ie-api"}
	for round := range 3 {
		for _, key := range []string{"pr-7", "pr-8", ""} {
			if got := chain(key); got != want[key] {
				t.Errorf("round %d, key %q: answered by %q, want %q", round, key, got, want[key])
			}
		}
	}
	if n := hc.dials.Load(); n != 1 {
		t.Errorf("the client opened %d connections for 9 requests, want 1", n)
	}
	req, _ := http.NewRequest(http.MethodGet, url("/chain"), nil)
	req.Header.Set("baggage", "other=1,detour-session=pr-7")
	if resp, err := hc.Do(req); err != nil || resp.Header.Get(echo.ChainHeader) != want["pr-7"] {
		t.Errorf("baggage member detour-session=pr-7: %v %v", err, resp.Header.Get(echo.ChainHeader))
	} else {
		resp.Body.Close()
	}

	// web-pr-7 called api with no header at all: its connections were
	// redirected at connect() to api-pr-7, by the fork pod's namespace.
	testutil.Eventually(t, 5*time.Second, func() error {
		m, err := l.agentMetrics()
		if err != nil {
			return err
		}
		if n := m[`detour_agent_connect_redirects_total{intercept="default/pr-7-api-80-forks"}`]; n < 4 {
			return fmt.Errorf("%v connect-time redirects from pr-7's forks to api-pr-7, want at least 4 (one per pr-7 chain)", n)
		}
		return nil
	})

	// What the environment shows, and what it owns.
	var got struct {
		Environment struct {
			Status struct {
				Phase  string
				Routes []struct{ Intercept, Kind, State string }
				Forks  []struct {
					Name          string
					ReadyReplicas int `json:"ready_replicas"`
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(l.ctl("env", "get", "pr-7", "-o", "json")), &got); err != nil {
		t.Fatal(err)
	}
	st := got.Environment.Status
	if st.Phase != "Ready" || len(st.Routes) != 4 || len(st.Forks) != 2 {
		t.Errorf("pr-7: %+v", st)
	}
	for _, r := range st.Routes {
		if r.State != "Active" {
			t.Errorf("route %s: %s", r.Intercept, r.State)
		}
	}
	if out, code := l.ctlCode("intercept", "delete", "pr-7-api-80"); code != 4 || !strings.Contains(out, "belongs to environment pr-7") {
		t.Errorf("deleting an environment's intercept: exit %d\n%s", code, out)
	}
	if out, code := l.ctlCode("env", "create", "pr-9", "--key", "pr-7", "--fork", "api"); code != 4 || !strings.Contains(out, `key "pr-7" is already used by environment default/pr-7`) {
		t.Errorf("a taken key: exit %d\n%s", code, out)
	}
	if out, code := l.ctlCode("env", "create", "pr-9", "--fork", "nope"); code != 3 || !strings.Contains(out, "Deployment nope not found") {
		t.Errorf("an unknown workload: exit %d\n%s", code, out)
	}
	if out, code := l.ctlCode("env", "create", "pr-9", "--fork", "api", "--ttl", "100000h"); code != 2 || !strings.Contains(out, "--env-max-ttl") {
		t.Errorf("a TTL over the maximum: exit %d\n%s", code, out)
	}
	if out, code := l.ctlCode("env", "create", "pr-9", "--fork", "api", "--image", "api=reg/api:9"); code != 2 || !strings.Contains(out, "the lab runs commands, not images") {
		t.Errorf("an image in the lab: exit %d\n%s", code, out)
	}

	// A preview URL: env open adds the key to every request.
	openAddr := freePort(t)
	open := l.start("env-open", "detour", "--controller", l.ctlAddr, "env", "open", "pr-7", "--service", "web", "--port", "80",
		"--listen", openAddr, "--lab-state", l.stateDir)
	testutil.Eventually(t, 10*time.Second, func() error {
		got, err := echo.Chain(http.DefaultClient, "http://"+openAddr+"/chain", "")
		if err != nil {
			return err
		}
		if got != want["pr-7"] {
			t.Fatalf("through env open: %q, want %q", got, want["pr-7"])
		}
		return nil
	})
	open.stop(syscall.SIGTERM)

	// A fork's pod killed: its requests reach the baseline within a
	// second, by the session route (pr-8) and by the connect-time route
	// (pr-7's web fork calling api).
	for _, tc := range []struct{ key, pod, want string }{
		{"pr-8", "api-pr-8", "ie-web -> ie-api"},
		{"pr-7", "api-pr-7", "web-pr-7 -> ie-api"},
	} {
		killPod(t, l.stateDir, tc.pod)
		killed := time.Now()
		var last string
		for {
			got, err := echo.Chain(hc.Client, url("/chain"), tc.key)
			if err == nil && got == tc.want {
				break
			}
			last = fmt.Sprint(got, err)
			if time.Since(killed) > 5*time.Second {
				t.Fatalf("key %s: %s killed 5 s ago, still %s", tc.key, tc.pod, last)
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(killed)
		t.Logf("key %s: %s killed, requests reached the baseline after %v", tc.key, tc.pod, took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("key %s: requests reached the baseline %v after %s was killed, want within 1 s", tc.key, took, tc.pod)
		}
	}

	// A fork that cannot start: Failed with the reason; delete cleans.
	out, code := l.ctlCode("env", "create", "bad", "--fork", "api", "--command", "api=false", "--wait", "20s")
	if code != 1 || !strings.Contains(out, "failed (ForkFailed)") || !strings.Contains(out, "its command exited") {
		t.Errorf("a fork that exits: exit %d\n%s", code, out)
	}
	l.ctl("env", "delete", "bad", "--wait", "20s")

	// TTL: an environment that expires leaves nothing.
	l.ctl("env", "create", "short", "--fork", "api", "--ttl", "4s", "--wait", "20s")
	testutil.Eventually(t, 15*time.Second, func() error {
		if _, code := l.ctlCode("env", "get", "short"); code != 3 {
			return fmt.Errorf("env get short: exit %d, want 3 (gone)", code)
		}
		return nil
	})
	if netns.Exists("api-short") {
		t.Error("the expired environment's fork is still a namespace")
	}
	if out := l.ctl("intercept", "list"); strings.Contains(out, "short-") {
		t.Errorf("the expired environment's intercepts are left:\n%s", out)
	}

	// Delete the rest: nothing of any environment left, in the lab, the
	// controller or the kernel.
	l.ctl("env", "delete", "pr-7", "--wait", "20s")
	l.ctl("env", "delete", "pr-8", "--wait", "20s")
	if out := l.ctl("env", "list", "-A"); strings.Count(out, "\n") != 1 {
		t.Errorf("environments left:\n%s", out)
	}
	if out := l.ctl("intercept", "list", "-A"); strings.Count(out, "\n") != 1 {
		t.Errorf("intercepts left:\n%s", out)
	}
	pods, err := labpkg.Pods(l.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.Added {
			t.Errorf("lab pod %s left", p.Name)
		}
	}
	for _, name := range []string{"web-pr-7", "api-pr-7", "api-pr-8", "api-bad", "api-short"} {
		if netns.Exists(name) {
			t.Errorf("namespace %s left", name)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, m := range []string{"connect_redirec", "steer_sockets"} {
			if n := kernelEntries(t, l.agent.cmd.Process.Pid, m); n != 0 {
				return fmt.Errorf("the agent's map %s holds %d entries", m, n)
			}
		}
		for _, p := range []string{"ie-web", "ie-api"} {
			if n := ourLinks(t, l.pod(p).NetNS); n != 0 {
				return fmt.Errorf("%d steering links left on %s", n, p)
			}
		}
		return nil
	})
}

// killPod kills a lab pod's command, leaving its namespace as a crashed
// container leaves its sandbox.
func killPod(t *testing.T, stateDir, name string) {
	t.Helper()
	pods, err := labpkg.Pods(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.Name == name {
			if err := syscall.Kill(-p.PID, syscall.SIGKILL); err != nil {
				t.Fatalf("kill %s: %v", name, err)
			}
			return
		}
	}
	t.Fatalf("no lab pod %s", name)
}

// kernelEntries counts the entries of the BPF map named name (as the
// kernel keeps it, 15 characters at most) that process pid holds, read from
// the kernel by the map's id.
func kernelEntries(t *testing.T, pid int, name string) int {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fdinfo")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	found, total := false, 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var id uint64
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "map_id:"); ok {
				id, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			}
		}
		if id == 0 {
			continue
		}
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue
		}
		info, err := m.Info()
		if err != nil || info.Name != name {
			m.Close()
			continue
		}
		found = true
		// Count keys: a SOCKHASH's values are sockets, not readable as
		// bytes, but its keys are.
		key := make([]byte, info.KeySize)
		next := make([]byte, info.KeySize)
		var prev any // nil: the first key
		for m.NextKey(prev, next) == nil {
			total++
			copy(key, next)
			prev = key
		}
		m.Close()
	}
	if !found {
		t.Fatalf("process %d holds no BPF map %s", pid, name)
	}
	return total
}
