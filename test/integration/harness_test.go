// Package integration runs Detour end to end on the real kernel: a lab node
// of real network namespaces, the real controller and agent processes, the
// real CLI, and real HTTP clients inside a lab pod.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/netns"
)

// binDir holds the binaries built once for the whole package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "detour-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if os.Geteuid() == 0 {
			for bin, pkg := range map[string]string{
				"detour": "./cmd/ctl", "detour-agent": "./cmd/agent",
				"detour-controller": "./cmd/controller", "detour-echo": "./cmd/echo",
			} {
				cmd := exec.Command("go", "build", "-o", filepath.Join(dir, bin), pkg)
				cmd.Dir = "../.."
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
				if out, err := cmd.CombinedOutput(); err != nil {
					fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
					return 1
				}
			}
			binDir = dir
			os.Setenv("PATH", dir+":"+os.Getenv("PATH"))
		}
		return m.Run()
	}()
	os.Exit(code)
}

// lab is one running lab with its controller and agent.
type lab struct {
	t          testing.TB
	stateDir   string
	inv        *inventory.Inventory
	ctlAddr    string
	ctlMetrics string
	agMetrics  string
	controller *proc
	agent      *proc
	agentFlags []string // more flags for every start of the agent
}

// proc is a started process whose output goes to a file kept for failures.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startLab writes the lab file, brings the lab up with the CLI and starts
// a controller and an agent, the agent with agentFlags added to its own.
func startLab(t testing.TB, labYAML string, agentFlags ...string) *lab {
	t.Helper()
	testutil.RequirePrivileged(t)
	if binDir == "" {
		t.Fatal("binaries were not built")
	}
	dir := t.TempDir()
	l := &lab{t: t, stateDir: filepath.Join(dir, "state"), agentFlags: agentFlags}
	file := filepath.Join(dir, "lab.yaml")
	if err := os.WriteFile(file, []byte(labYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := run(t, "detour", "lab", "up", "-f", file, "--state-dir", l.stateDir)
	if code != 0 {
		t.Fatalf("lab up: exit %d\n%s", code, out)
	}
	t.Cleanup(func() {
		if out, code := run(t, "detour", "lab", "down", "--state-dir", l.stateDir); code != 0 {
			t.Errorf("lab down: exit %d\n%s", code, out)
		}
	})
	inv, err := inventory.Load(filepath.Join(l.stateDir, "inventory.json"))
	if err != nil {
		t.Fatal(err)
	}
	l.inv = inv
	l.ctlAddr, l.ctlMetrics, l.agMetrics = freePort(t), freePort(t), freePort(t)
	l.startController()
	l.startAgent()
	return l
}

func (l *lab) startController() {
	l.controller = l.start("controller", "detour-controller", "--listen", l.ctlAddr,
		"--metrics-listen", l.ctlMetrics, "--store", filepath.Join(l.stateDir, "controller.db"),
		"--inventory", filepath.Join(l.stateDir, "inventory.json"))
	waitHTTP(l.t, "http://"+l.ctlMetrics+"/healthz")
}

func (l *lab) startAgent() {
	argv := append([]string{"detour-agent", "--node", l.inv.Node, "--controller", l.ctlAddr,
		"--metrics-listen", l.agMetrics, "--state-file", filepath.Join(l.stateDir, "agent-state.json"),
		"--log-level", "debug"}, l.agentFlags...)
	l.agent = l.start("agent", argv...)
	waitHTTP(l.t, "http://"+l.agMetrics+"/healthz")
}

func (l *lab) start(name string, argv ...string) *proc {
	t := l.t
	logf, err := os.CreateTemp(l.stateDir, name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("--- %s log (tail)\n%s", name, tail(string(b), 4000))
		}
	})
	return p
}

// stop signals the process and waits for it to exit.
func (p *proc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func waitHTTP(t testing.TB, url string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
}

// run runs a binary and returns its combined output and exit code.
func run(t testing.TB, argv ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return buf.String(), 0
	case errors.As(err, &ee):
		return buf.String(), ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", argv, err)
		return "", -1
	}
}

// ctl runs the CLI against the lab's controller and fails the test unless
// it exits 0.
func (l *lab) ctl(args ...string) string {
	l.t.Helper()
	out, code := l.ctlCode(args...)
	if code != 0 {
		l.t.Fatalf("detour %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

func (l *lab) ctlCode(args ...string) (string, int) {
	l.t.Helper()
	return run(l.t, append([]string{"detour", "--controller", l.ctlAddr}, args...)...)
}

func (l *lab) pod(name string) *inventory.Pod {
	l.t.Helper()
	p, err := l.inv.Pod(inventory.NamespaceDefault, name)
	if err != nil {
		l.t.Fatal(err)
	}
	return p
}

// client is an HTTP client whose connections start in a lab pod's network
// namespace and are counted, so a test can prove keep-alive reuse.
type client struct {
	*http.Client
	dials atomic.Int64
}

func (l *lab) client(fromPod string) *client {
	d := &netns.Dialer{Path: l.pod(fromPod).NetNS}
	c := &client{}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c.dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
	}
	c.Client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	l.t.Cleanup(tr.CloseIdleConnections)
	return c
}

// get sends one request with the session (empty: none) and returns the pod
// that answered.
func (c *client) get(url, session string) (string, error) {
	return echo.WhoAnswers(c.Client, url, session)
}

// status returns `detour status -o json` decoded loosely.
func (l *lab) status() map[string]any {
	l.t.Helper()
	var st map[string]any
	out := l.ctl("status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		l.t.Fatalf("status json: %v\n%s", err, out)
	}
	return st
}

// agentMetrics scrapes the agent's /metrics into series (name{labels}) and
// values.
func (l *lab) agentMetrics() (map[string]float64, error) {
	resp, err := http.Get("http://" + l.agMetrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		i := strings.LastIndexByte(line, ' ')
		if line == "" || line[0] == '#' || i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, nil
}
