package fastpath

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/internal/bpfutil"
)

const agentEnv = "DETOUR_FASTPATH_TEST_AGENT" // pod netns path|cgroup

// TestPrivilegedAgentSIGKILL: an agent process (the proxy and the fast
// path, in a child process) is killed with SIGKILL while 8 callers send
// requests that the kernel routes. Each caller may lose the request in
// flight and no more: it fails within a bound, none hangs; the callers
// then reach the app, which now listens on the port as it would once the
// steering goes with the agent. The programs and maps go with the
// process.
func TestPrivilegedAgentSIGKILL(t *testing.T) {
	const (
		callers = 8
		bound   = 3 * time.Second
	)
	n := newTestNetOpts(t, netOpts{noAgent: true})
	cmd := exec.Command(os.Args[0], "-test.run=^TestFastPathAgentProcess$", "-test.v")
	cmd.Env = append(os.Environ(), agentEnv+"="+n.pod+"|"+n.cgroup)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe() // the agent lives until stdin closes
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	var routed atomic.Int64
	ids := make(chan []uint32, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var a, b, c, d uint32
			var r int64
			if _, err := fmt.Sscanf(sc.Text(), "ready %d %d %d %d", &a, &b, &c, &d); err == nil {
				ids <- []uint32{a, b, c, d}
			} else if _, err := fmt.Sscanf(sc.Text(), "routed %d", &r); err == nil {
				routed.Store(r)
			}
		}
		close(ids)
	}()
	var objs []uint32
	select {
	case objs = <-ids:
		if objs == nil {
			t.Fatal("agent process exited before ready")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent process not ready within 30s")
	}

	killed := make(chan struct{})
	var (
		mu                     sync.Mutex
		failures               = map[int]int{}
		hung, wrong, afterKill int
		firstErr               error
	)
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			d := netns.Dialer{Path: n.peers}
			var c *caller
			after := 0 // requests answered after the kill
			for i := 0; after < 20; i++ {
				if c == nil {
					// Refused between the kill and the app's listener:
					// tried again, within the bound.
					var nc net.Conn
					err := testutil.Poll(bound, func() (err error) {
						nc, err = d.DialContext(context.Background(), "tcp4", fastPort.String())
						return err
					})
					if err != nil {
						mu.Lock()
						firstErr = cmp(firstErr, err)
						failures[g]++
						mu.Unlock()
						return
					}
					c = &caller{c: nc, br: bufio.NewReaderSize(nc, 64<<10), timeout: bound}
				}
				key := []string{"alice", "bob", ""}[(g+i)%3]
				start := time.Now()
				got, err := c.exchange(key, 100, 100)
				isKilled := false
				select {
				case <-killed:
					isKilled = true
				default:
				}
				mu.Lock()
				switch {
				case err != nil:
					failures[g]++
					firstErr = cmp(firstErr, err)
					if time.Since(start) >= bound {
						hung++
					}
				case isKilled && got == "app":
					after++
					afterKill++
				case got != who(key):
					wrong++
				}
				mu.Unlock()
				if err != nil {
					c.c.Close()
					c = nil
				}
			}
			if c != nil {
				c.c.Close()
			}
		})
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if r := routed.Load(); r < 500 {
			return fmt.Errorf("the kernel routed %d requests", r)
		}
		return nil
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	close(killed)
	// The steering would now send new connections to the app.
	n.serveHTTP(t, n.pod, fastPort, "app", 0)
	wg.Wait()

	t.Logf("failures per caller %v (first: %v); %d answered by the app after the kill", failures, firstErr, afterKill)
	if hung > 0 || wrong > 0 {
		t.Errorf("%d requests hung until the %v bound, %d answered by the wrong pod", hung, bound, wrong)
	}
	for g, k := range failures {
		if k > 1 {
			t.Errorf("caller %d: %d requests failed, want at most the one in flight", g, k)
		}
	}
	// Programs and maps leave with the process.
	testutil.Eventually(t, 10*time.Second, func() error {
		for i, id := range objs {
			var err error
			if i < 2 {
				var loaded bool
				if loaded, err = bpfutil.ProgramLoaded(ebpf.ProgramID(id)); err == nil && loaded {
					return fmt.Errorf("program %d still loaded", id)
				}
			} else {
				var m *ebpf.Map
				if m, err = ebpf.NewMapFromID(ebpf.MapID(id)); err == nil {
					m.Close()
					return fmt.Errorf("map %d still there", id)
				}
				if errors.Is(err, os.ErrNotExist) {
					err = nil
				}
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// TestFastPathAgentProcess is the agent process of
// TestPrivilegedAgentSIGKILL; it does nothing unless started by that test.
func TestFastPathAgentProcess(t *testing.T) {
	env := os.Getenv(agentEnv)
	if env == "" {
		return
	}
	pod, cg, _ := strings.Cut(env, "|")
	f, _, _, _ := serveAgent(t, pod, cg, defaultRoutes(t))
	var ids []uint32
	for _, p := range []*ebpf.Program{f.objs.FpMsg, f.objs.FpSockops} {
		id, err := bpfutil.ProgramID(p)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, uint32(id))
	}
	for _, m := range []*ebpf.Map{f.objs.FpSocks, f.objs.FpState} {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, ok := info.ID()
		if !ok {
			t.Fatal("no map id")
		}
		ids = append(ids, uint32(id))
	}
	fmt.Printf("ready %d %d %d %d\n", ids[0], ids[1], ids[2], ids[3])
	go func() {
		for range time.Tick(20 * time.Millisecond) {
			if st, err := f.Stats(); err == nil {
				fmt.Printf("routed %d\n", st.Routed)
			}
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin) // killed before this returns
}
