package lab

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/netns"
)

// TestPrivilegedAddPod adds a pod to a running lab, as an environment's fork
// is added: it gets its own namespace and address, its baseline's hosts file,
// its command with the extra environment, and the inventory lists it;
// RemovePod takes all of it away, and lab down takes away an added pod
// that is still there.
func TestPrivilegedAddPod(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildEcho(t)
	f := loadLab(t, `
name: lt-add
node: lt-node
network: {bridge: dtlt-add, subnet: 10.213.202.0/29}
pods:
  - name: lt-add-api
    labels: {app: lt-add-api}
    command: ["detour-echo", "--listen", ":8080"]
services:
  - name: lt-add-svc
    selector: {app: lt-add-api}
    ports: [{port: 80, targetPort: 8080}]
`)
	stateDir := filepath.Join(t.TempDir(), "state")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := Options{StateDir: stateDir, PathPrepend: []string{bin}}
	if _, err := Up(ctx, f, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DownWith(context.Background(), opts) })

	fork := NewPod{
		Name: "lt-add-api-pr-1", Namespace: "default", Workload: "lt-add-api-pr-1",
		Labels:    map[string]string{"app": "lt-add-api-pr-1", "detour.dev/environment": "pr-1"},
		Command:   []string{"detour-echo", "--listen", ":8080", "--call", "http://lt-add-svc:8080"},
		Env:       []string{"DETOUR_ENV=pr-1"},
		HostsLike: "lt-add-api",
	}
	ps, err := AddPod(ctx, stateDir, fork, opts)
	if err != nil {
		t.Fatal(err)
	}
	if ps.IP != "10.213.202.3" || !netns.Exists(fork.Name) || !ps.Added {
		t.Errorf("added pod: %+v", ps)
	}
	if _, err := AddPod(ctx, stateDir, fork, opts); !errors.Is(err, ErrConflict) {
		t.Errorf("adding it twice: %v, want ErrConflict", err)
	}
	inv, err := inventory.Load(filepath.Join(stateDir, InventoryFile))
	if err != nil {
		t.Fatal(err)
	}
	p, err := inv.Pod("default", fork.Name)
	if err != nil || p.IP != ps.IP || p.Labels["detour.dev/environment"] != "pr-1" || p.NetNS != netns.PathOf(fork.Name) {
		t.Errorf("inventory: %+v, %v", p, err)
	}
	if len(inv.Endpoints(&inv.Services[0])) != 1 {
		t.Error("the service selects the added pod: its labels differ")
	}
	// The fork answers as itself and resolves the lab's names like its
	// baseline: its call to the service reaches the baseline pod.
	hosts, _ := os.ReadFile(filepath.Join(EtcNetnsDir, fork.Name, "hosts"))
	if !strings.Contains(string(hosts), "lt-add-svc") || !strings.Contains(string(hosts), "10.213.202.3\tlt-add-api-pr-1") {
		t.Errorf("hosts file:\n%s", hosts)
	}
	d := &netns.Dialer{Path: netns.PathOf(fork.Name)}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 5 * time.Second}
	testutil.Eventually(t, 10*time.Second, func() error {
		chain, err := echo.Chain(hc, "http://"+ps.IP+":8080/chain", "")
		if err != nil {
			return err
		}
		if chain != "lt-add-api-pr-1 -> lt-add-api" {
			t.Fatalf("chain %q", chain)
		}
		return nil
	})
	// The extra environment reached the process.
	environ, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(ps.PID), "environ"))
	if err != nil || !strings.Contains(string(environ), "DETOUR_ENV=pr-1\x00") {
		t.Errorf("the pod's environment lacks DETOUR_ENV=pr-1 (%v)", err)
	}

	if err := RemovePod(ctx, stateDir, fork.Name, opts); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(fork.Name) || groupLive(ps.PID) != 0 {
		t.Error("RemovePod left the namespace or the process")
	}
	if _, err := os.Lstat(filepath.Join(EtcNetnsDir, fork.Name)); err == nil {
		t.Error("RemovePod left the hosts dir")
	}
	inv, _ = inventory.Load(filepath.Join(stateDir, InventoryFile))
	if _, err := inv.Pod("default", fork.Name); err == nil {
		t.Error("the inventory still lists the removed pod")
	}
	if err := RemovePod(ctx, stateDir, "lt-add-api", opts); err == nil {
		t.Error("RemovePod of the lab file's pod: no error")
	}
	// A command that is not there fails and leaves nothing.
	bad := fork
	bad.Command = []string{"no-such-command-here"}
	if _, err := AddPod(ctx, stateDir, bad, opts); err == nil || !strings.Contains(err.Error(), "no-such-command-here") {
		t.Errorf("AddPod with a missing command: %v", err)
	}
	if netns.Exists(fork.Name) {
		t.Error("a failed AddPod left its namespace")
	}
	// Lab down removes an added pod too.
	ps, err = AddPod(ctx, stateDir, fork, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := DownWith(ctx, opts); err != nil {
		t.Fatal(err)
	}
	f.Pods = append(f.Pods, Pod{Name: fork.Name})
	assertGone(t, f, stateDir, []int{ps.PID})
}

// TestPrivilegedAddPodReusedAddress adds a pod at the address of one just
// removed, as an environment deleted and created again gets: a pod that had
// talked to the removed one reaches the new one at once, without waiting
// for its ARP cache to forget the old one.
func TestPrivilegedAddPodReusedAddress(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildEcho(t)
	f := loadLab(t, `
name: lt-reuse
node: lt-node
network: {bridge: dtlt-reuse, subnet: 10.213.203.0/29}
pods:
  - name: lt-reuse-api
    labels: {app: lt-reuse-api}
    command: ["detour-echo", "--listen", ":8080"]
`)
	stateDir := filepath.Join(t.TempDir(), "state")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := Options{StateDir: stateDir, PathPrepend: []string{bin}}
	if _, err := Up(ctx, f, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DownWith(context.Background(), opts) })

	// The baseline pod asks each fork who it is.
	d := &netns.Dialer{Path: netns.PathOf("lt-reuse-api")}
	d.Dialer.Timeout = time.Second
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: 2 * time.Second}
	ask := func(ip string) (string, error) {
		resp, err := hc.Get("http://" + ip + ":8080/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		return resp.Header.Get("X-Detour-Pod"), nil
	}
	var ips []string
	for _, name := range []string{"lt-reuse-api-pr-1", "lt-reuse-api-pr-2"} {
		ps, err := AddPod(ctx, stateDir, NewPod{Name: name, Namespace: "default", Workload: name,
			Command: []string{"detour-echo", "--listen", ":8080"}, HostsLike: "lt-reuse-api"}, opts)
		if err != nil {
			t.Fatal(err)
		}
		ips = append(ips, ps.IP)
		// Until it listens, a connection is refused; a timeout means the
		// packets went to a MAC no one has.
		testutil.Eventually(t, 10*time.Second, func() error {
			got, err := ask(ps.IP)
			if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("%s at %s (address of a removed pod: %v): %v", name, ps.IP, len(ips) > 1, err)
			}
			if err != nil {
				return err
			}
			if got != name {
				t.Fatalf("%s answered as %q", ps.IP, got)
			}
			return nil
		})
		if err := RemovePod(ctx, stateDir, name, opts); err != nil {
			t.Fatal(err)
		}
	}
	if ips[0] != ips[1] {
		t.Fatalf("the second pod got %s, not the freed %s: the test tests nothing", ips[1], ips[0])
	}
}
