package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/netns"
)

// buildEcho builds detour-echo into a temp dir, the lab's bin dir for the
// test, so pods run the real server.
func buildEcho(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go toolchain needed to build detour-echo: %v", err)
	}
	dir := t.TempDir()
	out, err := exec.Command(goBin, "build", "-o", filepath.Join(dir, "detour-echo"), "github.com/detourdev/detour/cmd/echo").CombinedOutput()
	if err != nil {
		t.Fatalf("build detour-echo: %v\n%s", err, out)
	}
	return dir
}

func loadLab(t *testing.T, text string) *File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lab.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// syncBuffer collects progress lines; Up writes them from its goroutine
// while the test may read them.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	onLine func(string)
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.b.WriteString(time.Now().Format("05.000 "))
	s.b.Write(p)
	s.mu.Unlock()
	if s.onLine != nil {
		s.onLine(string(p))
	}
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// assertGone checks that nothing of the lab is left on the host.
func assertGone(t *testing.T, f *File, stateDir string, pids []int) {
	t.Helper()
	for _, p := range f.Pods {
		if netns.Exists(p.Name) {
			t.Errorf("netns %s left behind", p.Name)
		}
		if _, err := netlink.LinkByName(HostVethName(f.Network.Bridge, p.Name)); err == nil {
			t.Errorf("veth of %s left behind", p.Name)
		}
		if _, err := os.Lstat(filepath.Join(EtcNetnsDir, p.Name)); err == nil {
			t.Errorf("%s left behind", filepath.Join(EtcNetnsDir, p.Name))
		}
	}
	if _, err := netlink.LinkByName(f.Network.Bridge); err == nil {
		t.Errorf("bridge %s left behind", f.Network.Bridge)
	}
	if _, err := os.Lstat(stateDir); err == nil {
		ents, _ := os.ReadDir(stateDir)
		t.Errorf("state dir %s left behind with %d entries", stateDir, len(ents))
	}
	for _, pid := range pids {
		if n := groupLive(pid); n != 0 {
			t.Errorf("process group %d has %d live processes", pid, n)
		}
	}
}

func TestPrivilegedUpDown(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildEcho(t)
	f := loadLab(t, `
name: lt-updown
node: lt-node
network: {bridge: dtlt-ud, subnet: 10.213.201.0/29}
pods:
  - name: lt-ud-api
    labels: {app: lt-ud-api}
    command: ["detour-echo", "--listen", ":8080"]
  - name: lt-ud-dev
    labels: {app: lt-ud-dev, owner: alice}
    command: ["detour-echo", "--listen", ":8080"]
  - name: lt-ud-client
    command: ["sleep", "infinity"]
  - name: lt-ud-stub          # ignores SIGTERM and forks: Down must SIGKILL the group
    command: ["sh", "-c", "trap '' TERM; sleep infinity & wait"]
  - name: lt-ud-bare          # runs nothing
services:
  - name: lt-ud-svc
    selector: {app: lt-ud-api}
    ports: [{port: 80, targetPort: 8080}]
`)
	stateDir := filepath.Join(t.TempDir(), "state")
	progress := &syncBuffer{}
	opts := Options{StateDir: stateDir, PathPrepend: []string{bin}, Progress: progress, StopTimeout: 300 * time.Millisecond}
	ctx := context.Background()
	t.Cleanup(func() { _ = DownWith(ctx, opts) })

	st, err := Up(ctx, f, opts)
	if err != nil {
		t.Fatalf("up: %v\nprogress:\n%s", err, progress)
	}
	t.Logf("progress:\n%s", progress)
	var pids []int
	for _, p := range st.Pods {
		if p.Name == "lt-ud-bare" {
			if p.PID != 0 {
				t.Errorf("pod without command has pid %d", p.PID)
			}
			continue
		}
		if !p.Running() {
			t.Errorf("pod %s: pid %d not running", p.Name, p.PID)
		}
		pids = append(pids, p.PID)
	}

	// The inventory describes the node.
	inv, err := inventory.Load(filepath.Join(stateDir, InventoryFile))
	if err != nil {
		t.Fatal(err)
	}
	api, err := inv.Pod("default", "lt-ud-api")
	if err != nil {
		t.Fatal(err)
	}
	if inv.Node != "lt-node" || api.IP != "10.213.201.2" || api.NetNS != "/run/netns/lt-ud-api" || api.Node != "lt-node" {
		t.Errorf("inventory pod %+v on node %q", api, inv.Node)
	}
	svc, err := inv.Service("default", "lt-ud-svc")
	if err != nil {
		t.Fatal(err)
	}
	if eps := inv.Endpoints(svc); len(eps) != 1 || eps[0].Name != "lt-ud-api" {
		t.Errorf("service endpoints %+v", eps)
	}

	// From the client pod, each server answers with its own pod name (taken
	// from DETOUR_POD_NAME: the command has no --name).
	d := &netns.Dialer{Path: netns.PathOf("lt-ud-client")}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	for _, want := range []struct{ pod, ip string }{{"lt-ud-api", "10.213.201.2"}, {"lt-ud-dev", "10.213.201.3"}} {
		testutil.Eventually(t, 10*time.Second, func() error {
			resp, err := client.Get("http://" + want.ip + ":8080/")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if string(b) != want.pod+"\n" || resp.Header.Get("X-Detour-Pod") != want.pod {
				return fmt.Errorf("%s answered %q (%s)", want.ip, b, resp.Header.Get("X-Detour-Pod"))
			}
			return nil
		})
	}

	// The pod's hosts file resolves names as the hosts file of a pod sees
	// them through `ip netns exec`.
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"lt-ud-svc":              "10.213.201.2",
		"lt-ud-svc.default.svc":  "10.213.201.2",
		"lt-ud-dev":              "10.213.201.3",
		"lt-ud-bare.default.pod": "10.213.201.6",
	} {
		out, err := exec.Command(ipBin, "netns", "exec", "lt-ud-client", "getent", "hosts", name).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), want+" ") {
			t.Errorf("getent hosts %s in lt-ud-client: %q %v, want %s", name, out, err, want)
		}
	}
	if out, err := exec.Command(ipBin, "netns", "exec", "lt-ud-bare", "true").CombinedOutput(); err != nil {
		t.Errorf("ip netns exec lt-ud-bare true: %v %s", err, out)
	}
	// The pod's own view: eth0 with its address and the default route.
	out, err := exec.Command(ipBin, "-n", "lt-ud-bare", "route", "show", "default").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "via 10.213.201.1 dev eth0") {
		t.Errorf("default route in lt-ud-bare: %q %v", out, err)
	}

	// A second up of the same lab is refused and changes nothing.
	if _, err := Up(ctx, f, opts); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "lab down") {
		t.Errorf("second up: %v, want a conflict telling to run lab down", err)
	}
	if !netns.Exists("lt-ud-api") || !st.Pods[0].Running() {
		t.Fatal("refused second up damaged the running lab")
	}

	progress.b.Reset()
	if err := DownWith(ctx, opts); err != nil {
		t.Fatalf("down: %v\n%s", err, progress)
	}
	t.Logf("down:\n%s", progress)
	assertGone(t, f, stateDir, pids)
	for _, p := range st.Pods {
		if p.PID > 0 && p.Running() {
			t.Errorf("pod %s: pid %d still running", p.Name, p.PID)
		}
	}
	if err := Down(ctx, stateDir); err != nil {
		t.Errorf("second down: %v", err)
	}
}

// A pre-existing netns named like a pod is not the lab's: Up refuses before
// making anything and leaves the namespace alone.
func TestPrivilegedUpRefusesForeignNetns(t *testing.T) {
	testutil.RequirePrivileged(t)
	if _, err := netns.Create("lt-cl-b"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Delete("lt-cl-b") })
	f := loadLab(t, `
name: lt-clash
network: {bridge: dtlt-cl, subnet: 10.213.202.0/29}
pods:
  - {name: lt-cl-a, command: [sleep, infinity]}
  - {name: lt-cl-b, command: [sleep, infinity]}
`)
	stateDir := filepath.Join(t.TempDir(), "state")
	opts := Options{StateDir: stateDir}
	t.Cleanup(func() { _ = DownWith(context.Background(), opts) })
	_, err := Up(context.Background(), f, opts)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "lt-cl-b") {
		t.Fatalf("up: %v, want a conflict naming lt-cl-b", err)
	}
	if !netns.Exists("lt-cl-b") {
		t.Error("the foreign netns was removed")
	}
	f.Pods = f.Pods[:1] // lt-cl-b is not ours: check only the rest
	assertGone(t, f, stateDir, nil)
}

func TestPrivilegedUpMissingCommand(t *testing.T) {
	testutil.RequirePrivileged(t)
	f := loadLab(t, `
name: lt-missing
network: {bridge: dtlt-mc, subnet: 10.213.203.0/29}
pods:
  - {name: lt-mc-a, command: [sleep, infinity]}
  - {name: lt-mc-b, command: [lt-no-such-command]}
`)
	stateDir := filepath.Join(t.TempDir(), "state")
	opts := Options{StateDir: stateDir}
	t.Cleanup(func() { _ = DownWith(context.Background(), opts) })
	_, err := Up(context.Background(), f, opts)
	if err == nil || !strings.Contains(err.Error(), `pod lt-mc-b: command "lt-no-such-command" not found`) {
		t.Fatalf("up: %v", err)
	}
	assertGone(t, f, stateDir, nil)
}

// Up stopped halfway (after a pod's command started) removes everything it
// made, the running process included.
func TestPrivilegedUpRollsBackHalfway(t *testing.T) {
	testutil.RequirePrivileged(t)
	f := loadLab(t, `
name: lt-rollback
network: {bridge: dtlt-rb, subnet: 10.213.204.0/29}
pods:
  - {name: lt-rb-a, command: [sleep, infinity]}
  - {name: lt-rb-b, command: [sleep, infinity]}
  - {name: lt-rb-c}
`)
	stateDir := filepath.Join(t.TempDir(), "state")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := regexp.MustCompile(`pod lt-rb-a: started pid (\d+)`)
	var pid int
	progress := &syncBuffer{onLine: func(line string) {
		if m := started.FindStringSubmatch(line); m != nil {
			pid, _ = strconv.Atoi(m[1])
			cancel() // the next step sees it
		}
	}}
	opts := Options{StateDir: stateDir, Progress: progress, StopTimeout: time.Second}
	t.Cleanup(func() { _ = DownWith(context.Background(), opts) })
	_, err := Up(ctx, f, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("up: %v, want context.Canceled\n%s", err, progress)
	}
	if pid == 0 {
		t.Fatalf("pod lt-rb-a never started:\n%s", progress)
	}
	t.Logf("progress:\n%s", progress)
	assertGone(t, f, stateDir, []int{pid})
	if err := syscall.Kill(pid, 0); err == nil {
		if ps, err := readProc(pid); err == nil && ps.state != 'Z' {
			t.Errorf("pid %d still alive", pid)
		}
	}
}

// A bridge that was there before the lab is used and left in place: Down
// removes only the address Up put on it. A subnet that overlaps an address
// on another link is refused.
func TestPrivilegedExistingBridge(t *testing.T) {
	testutil.RequirePrivileged(t)
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "dtlt-eb"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName("dtlt-eb"); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	f := loadLab(t, `
name: lt-existing
network: {bridge: dtlt-eb, subnet: 10.213.205.0/29}
pods: [{name: lt-eb-a}]
`)
	stateDir := filepath.Join(t.TempDir(), "state")
	opts := Options{StateDir: stateDir}
	ctx := context.Background()
	t.Cleanup(func() { _ = DownWith(ctx, opts) })
	st, err := Up(ctx, f, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.BridgeCreated || !st.BridgeAddrAdded {
		t.Errorf("state: created=%v addrAdded=%v, want false/true", st.BridgeCreated, st.BridgeAddrAdded)
	}

	// Another lab whose subnet overlaps this one's is refused.
	other := loadLab(t, `
name: lt-overlap
network: {bridge: dtlt-ov, subnet: 10.213.205.0/24}
pods: [{name: lt-ov-a}]
`)
	otherDir := filepath.Join(t.TempDir(), "state")
	if _, err := Up(ctx, other, Options{StateDir: otherDir}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "overlaps") {
		t.Errorf("overlapping lab: %v, want an overlap conflict", err)
	}
	assertGone(t, other, otherDir, nil)

	if err := Down(ctx, stateDir); err != nil {
		t.Fatal(err)
	}
	br, err := netlink.LinkByName("dtlt-eb")
	if err != nil {
		t.Fatalf("the pre-existing bridge was deleted: %v", err)
	}
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 0 {
		t.Errorf("bridge addresses after down: %v %v", addrs, err)
	}
	if netns.Exists("lt-eb-a") {
		t.Error("netns left behind")
	}
}
