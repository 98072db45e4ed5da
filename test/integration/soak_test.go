//go:build soak

package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// soakLab is a lab of its own for the soak: its bridge and subnet meet no
// other test's.
const soakLab = `
name: soak
network:
  bridge: dtsoak
  subnet: 10.216.0.0/24
pods:
  - name: s-api
    labels: {app: api}
    command: ["detour-echo", "--listen", ":8080", "--tcp-listen", ":9000"]
  - name: s-alice
    labels: {app: api-alice}
    command: ["detour-echo", "--listen", ":8080", "--tcp-listen", ":9000"]
  - name: s-client
    command: ["sleep", "infinity"]
services:
  - name: api
    selector: {app: api}
    ports:
      - {name: bulk, port: 9000, targetPort: 9000}
`

// TestSoakSockmapRelay sends many 100 MiB echoes through an L4 intercept
// relayed by the sockmap (--l4-relay sockmap, the connect-time redirect
// off so the client pod's connections take the relay), several at a time
// with CPU burners beside them: the load under which the verdict program
// once duplicated bytes (7 of about 344 transfers). Every echo must equal
// what was sent. It is not part of make test: run it with make soak
// (SOAK_TRANSFERS, default 100; SOAK_PARALLEL, default 2).
func TestSoakSockmapRelay(t *testing.T) {
	transfers, parallel := envInt(t, "SOAK_TRANSFERS", 100), envInt(t, "SOAK_PARALLEL", 2)
	l := startLab(t, soakLab, "--l4-relay", "sockmap", "--connect-redirect", "off")
	addr := l.pod("s-api").IP + ":9000"
	l.ctl("intercept", "create", "bulk", "--service", "default/api", "--port", "9000",
		"--l4", "--to", "s-alice:9000", "--wait", "10s")

	// CPU burners, one per core, so the relay runs under load.
	stop := make(chan struct{})
	var burners sync.WaitGroup
	for range runtime.NumCPU() {
		burners.Go(func() {
			x := 1.0
			for {
				select {
				case <-stop:
					return
				default:
				}
				for range 100000 {
					x = x*1.0000001 + 1e-9
				}
			}
		})
	}
	defer func() { close(stop); burners.Wait() }()

	data := make([]byte, 100<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	var (
		next, corrupt, wrongPod atomic.Int64
		wg                      sync.WaitGroup
		mu                      sync.Mutex
		diffs                   []string
	)
	start := time.Now()
	for range parallel {
		wg.Go(func() {
			for next.Add(1) <= int64(transfers) {
				banner, got := tcpEcho(t, l.pod("s-client").NetNS, addr, data, 0, nil)
				if banner != "s-alice" {
					wrongPod.Add(1)
					continue
				}
				if sha256.Sum256(got) != want {
					corrupt.Add(1)
					mu.Lock()
					diffs = append(diffs, diffStreams(data, got))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d transfers of 100 MiB each way, %d at a time, with %d CPU burners, in %v: %d corrupt, %d not detoured",
		transfers, parallel, runtime.NumCPU(), time.Since(start).Round(time.Second), corrupt.Load(), wrongPod.Load())
	for _, d := range diffs {
		t.Errorf("corrupt echo: %s", d)
	}
	if n := wrongPod.Load(); n > 0 {
		t.Errorf("%d transfers did not reach s-alice", n)
	}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}
