package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

// slowLab is a lab of its own: its bridge and subnet meet no other test's.
const slowLab = `
name: slow
network:
  bridge: dtslow0
  subnet: 10.218.0.0/24
pods:
  - name: s-api
    labels: {app: api}
    command: ["detour-echo", "--listen", ":8080"]
  - name: s-alice
    labels: {app: api-alice}
    command: ["detour-echo", "--listen", ":8080"]
  - name: s-client
    command: ["sleep", "infinity"]
services:
  - name: api
    selector: {app: api}
    ports: [{port: 80, targetPort: 8080}]
`

// latencies sends requests on `clients` keep-alive connections for d,
// half of them alice's, and returns every request's latency. Each says
// "Connection: keep-alive", which the kernel fast path leaves to the agent
// (docs/architecture.md, data path step 7): they measure the agent, whose
// resources slow heads hold.
func latencies(t *testing.T, dial func() net.Conn, clients int, d time.Duration) []time.Duration {
	t.Helper()
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range clients {
		wg.Go(func() {
			c := dial()
			defer c.Close()
			br := bufio.NewReader(c)
			var mine []time.Duration
			for i := 0; time.Now().Before(end); i++ {
				s, want := "", "s-api"
				if i%2 == 0 {
					s, want = "alice", "s-alice"
				}
				start := time.Now()
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: api\r\nConnection: keep-alive\r\nX-Detour-Session: %s\r\n\r\n", s)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mine = append(mine, time.Since(start))
				if got := resp.Header.Get(echo.PodHeader); got != want {
					t.Errorf("session %q answered by %q, want %q", s, got, want)
					return
				}
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return all
}

// cpuTime is the CPU time a process has used so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// After the command, in parentheses: fields 14 and 15 are utime and
	// stime in clock ticks (100 a second on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	k, _ := strconv.Atoi(f[12])
	return time.Duration(u+k) * 10 * time.Millisecond
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// dribble opens n connections that send a 16 KiB request head at once and
// then one more byte of it every `every`, never ending it: slowloris. One
// goroutine writes to all of them in turn, so the test's own scheduling adds
// little to the latencies it measures. They are closed by the returned func.
func dribble(t *testing.T, dial func() net.Conn, n int, every time.Duration) func() {
	t.Helper()
	start := "GET / HTTP/1.1\r\nHost: api\r\nX-Detour-Session: alice\r\n" +
		strings.Repeat("X-Pad: "+strings.Repeat("p", 120)+"\r\n", 128) + "X-Slow: "
	var cs []net.Conn
	for range n {
		c := dial()
		if _, err := io.WriteString(c, start); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		// One connection at a time, evenly: a burst of writes every
		// `every` would delay the test's own clients.
		tick := time.NewTicker(every / time.Duration(n))
		defer tick.Stop()
		for i := 0; ; i = (i + 1) % n {
			select {
			case <-stop:
				return
			case <-tick.C:
				io.WriteString(cs[i], "s")
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		for _, c := range cs {
			c.Close()
		}
	}
}

// TestPrivilegedSlowloris: 200 connections dribbling request heads that
// never end hold the agent's slow-head places, and the other clients'
// requests through the agent on the same port keep their latency: p99
// within 1.5 times that of a quiet run. (Requests the kernel routes do not
// reach the agent; what 200 dribbling heads cost them is the agent's CPU on
// the same cores: docs/performance.md, "The fast path itself".) Quiet and loaded runs alternate, and the median of
// their rounds' ratios is taken, so load from elsewhere on the machine
// weighs on both sides alike.
func TestPrivilegedSlowloris(t *testing.T) {
	l := startLab(t, slowLab)
	l.ctl("intercept", "create", "alice", "--service", "default/api", "--port", "80",
		"--session", "alice", "--to", "s-alice:8080", "--wait", "10s")
	d := &netns.Dialer{Path: l.pod("s-client").NetNS}
	addr := l.pod("s-api").IP + ":8080"
	dial := func() net.Conn {
		c, err := d.DialContext(t.Context(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	const (
		slowConns = 200
		clients   = 4
		rounds    = 9
		run       = time.Second
		every     = 100 * time.Millisecond // each dribbling connection sends a byte
	)
	latencies(t, dial, clients, run/4) // warm up: upstream pools, caches
	var quiet, loaded []time.Duration
	for range rounds {
		pid := l.agent.cmd.Process.Pid
		cpu0 := cpuTime(t, pid)
		q := latencies(t, dial, clients, run)
		quiet = append(quiet, percentile(q, 0.99))
		cpuQuiet := cpuTime(t, pid) - cpu0

		stop := dribble(t, dial, slowConns, every)
		// Past the first second every dribbling head holds a place.
		testutil.Eventually(t, 10*time.Second, func() error {
			m, err := l.agentMetrics()
			if err != nil {
				return err
			}
			if n := m["detour_agent_slow_heads"]; n != slowConns {
				return fmt.Errorf("%v slow heads waiting, want %d", n, slowConns)
			}
			return nil
		})
		cpu0 = cpuTime(t, pid)
		ld := latencies(t, dial, clients, run)
		loaded = append(loaded, percentile(ld, 0.99))
		cpuLoaded := cpuTime(t, pid) - cpu0
		stop()
		t.Logf("round: quiet p50 %v p99 %v (%d requests, agent CPU %v); with %d dribbling heads p50 %v p99 %v (%d requests, agent CPU %v)",
			percentile(q, 0.5), percentile(q, 0.99), len(q), cpuQuiet, slowConns, percentile(ld, 0.5), percentile(ld, 0.99), len(ld), cpuLoaded)
	}
	// Each loaded run against the quiet run just before it: what else
	// loads the machine changes slowly, and weighs on both alike.
	var ratios []float64
	for i := range quiet {
		ratios = append(ratios, float64(loaded[i])/float64(quiet[i]))
	}
	slices.Sort(ratios)
	ratio := ratios[len(ratios)/2]
	t.Logf("p99 quiet %v, with %d dribbling heads %v: ratio %.2f (the median of %d rounds' ratios %.2f)", quiet, slowConns, loaded, ratio, rounds, ratios)
	if ratio > 1.5 {
		t.Errorf("with %d dribbling heads the other clients' p99 is %.2f times a quiet run's, want at most 1.5", slowConns, ratio)
	}
	m, err := l.agentMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if n := m[`detour_agent_passthroughs_total{reason="slow_heads_full"}`] + m[`detour_agent_passthroughs_total{reason="head_timeout"}`]; n != 0 {
		t.Errorf("%v dribbling heads passed to the app, want none (all within --max-slow-heads and --head-timeout)", n)
	}
}
