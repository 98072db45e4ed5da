package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

// killLab is a lab of its own: its bridge and subnet meet no other test's.
const killLab = `
name: kill
network:
  bridge: dtkill0
  subnet: 10.217.0.0/24
pods:
  - name: k-api
    labels: {app: api}
    command: ["detour-echo", "--listen", ":8080"]
  - name: k-alice
    labels: {app: api-alice}
    command: ["detour-echo", "--listen", ":8080"]
  - name: k-client
    command: ["sleep", "infinity"]
services:
  - name: api
    selector: {app: api}
    ports: [{port: 80, targetPort: 8080}]
`

// killLoad is wrk-like load from the client pod: each worker keeps one
// keep-alive connection busy with alice's requests, opens a new one after
// connReqs requests (so the steering of a restarted agent takes effect) or
// right after a request fails, and counts failures.
type killLoad struct {
	failures atomic.Int64
	mu       sync.Mutex
	lastErr  error
	// viaAgent: the time of each worker's last answer from alice's pod,
	// which only the agent gives; direct: from the app.
	viaAgent, direct []time.Time
	stop             chan struct{}
	wg               sync.WaitGroup
}

const connReqs = 40

func startKillLoad(t *testing.T, nsPath, addr string, workers int) *killLoad {
	ld := &killLoad{viaAgent: make([]time.Time, workers), direct: make([]time.Time, workers), stop: make(chan struct{})}
	d := &netns.Dialer{Path: nsPath}
	d.Dialer.Timeout = 2 * time.Second
	for w := range workers {
		ld.wg.Go(func() {
			for {
				select {
				case <-ld.stop:
					return
				default:
				}
				if err := ld.connection(t, d, addr, w); err != nil {
					ld.failures.Add(1)
					ld.mu.Lock()
					ld.lastErr = err
					ld.mu.Unlock()
				}
			}
		})
	}
	t.Cleanup(func() { close(ld.stop); ld.wg.Wait() })
	return ld
}

// connection sends connReqs requests on one new connection, the last with
// Connection: close, and returns the first failure.
func (ld *killLoad) connection(t *testing.T, d *netns.Dialer, addr string, w int) error {
	c, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range connReqs {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		closing := ""
		if i == connReqs-1 {
			closing = "Connection: close\r\n"
		}
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: api\r\nX-Detour-Session: alice\r\n%s\r\n", closing); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		ld.mu.Lock()
		if resp.Header.Get(echo.PodHeader) == "k-alice" {
			ld.viaAgent[w] = time.Now()
		} else {
			ld.direct[w] = time.Now()
		}
		ld.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	return nil
}

// allSince reports whether every worker's last answer in at is after t0.
func (ld *killLoad) allSince(at []time.Time, t0 time.Time) error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	for w, x := range at {
		if !x.After(t0) {
			return fmt.Errorf("worker %d: no such answer since %v (last error: %v)", w, t0.Format(time.StampMicro), ld.lastErr)
		}
	}
	return nil
}

// TestPrivilegedAgentSIGKILLFailsOpen kills the agent with SIGKILL under
// load, again and again: each kill may fail the requests of the
// connections open through it, once each, and no more. A client that
// reconnects after its connection was reset must reach the app, not be
// steered to the dying agent's listener and reset a second time, so the
// kernel must stop steering before the listener stops accepting
// (pkg/redirect/steer holds its links above every other descriptor).
func TestPrivilegedAgentSIGKILLFailsOpen(t *testing.T) {
	l := startLab(t, killLab)
	l.ctl("intercept", "create", "alice", "--service", "default/api", "--port", "80",
		"--session", "alice", "--to", "k-alice:8080", "--wait", "10s")
	const workers, kills = 8, 20
	ld := startKillLoad(t, l.pod("k-client").NetNS, l.pod("k-api").IP+":8080", workers)
	var perKill []int64
	restarted := time.Now()
	for range kills {
		// Every worker's connection goes through the agent.
		testutil.Eventually(t, 20*time.Second, func() error { return ld.allSince(ld.viaAgent, restarted) })
		before := ld.failures.Load()
		killed := time.Now()
		l.agent.stop(syscall.SIGKILL)
		// Every worker has been answered by the app since: what failed
		// has failed.
		testutil.Eventually(t, 10*time.Second, func() error { return ld.allSince(ld.direct, killed) })
		perKill = append(perKill, ld.failures.Load()-before)
		restarted = time.Now()
		l.startAgent()
	}
	var total, worst int64
	for _, n := range perKill {
		total += n
		worst = max(worst, n)
	}
	t.Logf("%d SIGKILLs under load on %d connections: failed requests per kill %v (total %d, at most %d)", kills, workers, perKill, total, worst)
	if worst > workers {
		t.Errorf("a kill failed %d requests, more than the %d connections open through the agent: a reconnecting client was steered to the dying agent", worst, workers)
	}
}
