package integration

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/steer"
)

const itLab = `
name: it
network:
  bridge: dtit0
  subnet: 10.214.0.0/24
pods:
  - name: it-api
    labels: {app: api}
    command: ["detour-echo", "--listen", ":8080"]
  - name: it-alice
    labels: {app: api-alice}
    command: ["detour-echo", "--listen", ":8080"]
  - name: it-bob
    labels: {app: api-bob}
    command: ["detour-echo", "--listen", ":8080"]
  - name: it-client
    command: ["sleep", "infinity"]
services:
  - name: api
    selector: {app: api}
    ports: [{port: 80, targetPort: 8080}]
`

// TestPrivilegedLabEndToEnd walks one lab through what a team does with
// Detour and what goes wrong around it, in order: two developers and the
// baseline on shared connections, the protocol corners, a developer pod
// dying, the agent and controller dying and coming back, deletion.
func TestPrivilegedLabEndToEnd(t *testing.T) {
	l := startLab(t, itLab)
	apiURL := "http://" + l.pod("it-api").IP + ":8080"

	for _, dev := range []string{"alice", "bob"} {
		l.ctl("intercept", "create", dev, "--service", "default/api", "--port", "80",
			"--session", dev, "--to", "it-"+dev+":8080", "--wait", "10s")
	}
	want := map[string]string{"alice": "it-alice", "bob": "it-bob", "": "it-api"}

	t.Run("shared keep-alive connections", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := l.client("it-client")
				for i := 0; i < 60; i++ {
					s := []string{"alice", "bob", ""}[(i+w)%3]
					got, err := c.get(apiURL+"/", s)
					if err != nil {
						errs <- fmt.Errorf("request %d session %q: %w", i, s, err)
						return
					}
					if got != want[s] {
						errs <- fmt.Errorf("request %d session %q answered by %q, want %q", i, s, got, want[s])
						return
					}
				}
				if n := c.dials.Load(); n != 1 {
					errs <- fmt.Errorf("client opened %d connections, want 1 keep-alive connection", n)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("baggage carries the session", func(t *testing.T) {
		c := l.client("it-client")
		req, _ := http.NewRequest("GET", apiURL+"/", nil)
		req.Header.Set("baggage", "team=core, detour-session=bob;prop=1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Detour-Pod"); got != "it-bob" {
			t.Fatalf("baggage detour-session=bob answered by %q", got)
		}
	})

	t.Run("pipelined requests", func(t *testing.T) {
		conn := dialFrom(t, l.pod("it-client").NetNS, l.pod("it-api").IP+":8080")
		defer conn.Close()
		sessions := []string{"alice", "", "bob", "alice", ""}
		var b strings.Builder
		for _, s := range sessions {
			b.WriteString("GET / HTTP/1.1\r\nHost: api\r\n")
			if s != "" {
				b.WriteString("x-detour-session: " + s + "\r\n")
			}
			b.WriteString("\r\n")
		}
		if _, err := io.WriteString(conn, b.String()); err != nil { // one write: all pipelined
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		for i, s := range sessions {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got := resp.Header.Get("X-Detour-Pod"); got != want[s] {
				t.Fatalf("pipelined response %d (session %q) from %q, want %q", i, s, got, want[s])
			}
		}
	})

	t.Run("chunked upload and download of several MiB", func(t *testing.T) {
		c := l.client("it-client")
		const size = 6 << 20
		payload := make([]byte, size)
		rand.Read(payload)
		sum := sha256.Sum256(payload)
		pr, pw := io.Pipe()
		go func() {
			// Odd-sized writes so chunk boundaries fall anywhere.
			for off := 0; off < size; off += 70001 {
				pw.Write(payload[off:min(off+70001, size)])
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", apiURL+"/upload", pr) // unknown length: chunked
		req.Header.Set("x-detour-session", "alice")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var up struct {
			Pod    string `json:"pod"`
			Bytes  int64  `json:"bytes"`
			SHA256 string `json:"sha256"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&up); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if up.Pod != "it-alice" || up.Bytes != size || up.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("upload: %+v, want it-alice %d bytes sha %x", up, size, sum)
		}

		req, _ = http.NewRequest("GET", apiURL+"/download?bytes="+strconv.Itoa(size)+"&seed=7", nil)
		req.Header.Set("x-detour-session", "bob")
		resp, err = c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
			t.Fatalf("download not chunked: %v", resp.TransferEncoding)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		wantH := sha256.New()
		io.CopyN(wantH, echo.Stream(7), size)
		if n != size || !bytesEqual(h.Sum(nil), wantH.Sum(nil)) || resp.Header.Get("X-Detour-Pod") != "it-bob" {
			t.Fatalf("download: %d bytes from %q, integrity %v", n, resp.Header.Get("X-Detour-Pod"), bytesEqual(h.Sum(nil), wantH.Sum(nil)))
		}
	})

	t.Run("websocket stays with the backend that upgraded", func(t *testing.T) {
		d := &netns.Dialer{Path: l.pod("it-client").NetNS}
		wd := websocket.Dialer{NetDialContext: d.DialContext, HandshakeTimeout: 5 * time.Second}
		hdr := http.Header{"X-Detour-Session": {"alice"}}
		ws, _, err := wd.Dial("ws://"+l.pod("it-api").IP+":8080/ws", hdr)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		for i := 0; i < 5; i++ {
			msg := fmt.Sprintf("hello %d", i)
			if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := ws.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "it-alice: "+msg {
				t.Fatalf("websocket echo %q", got)
			}
		}
	})

	t.Run("status shows steering and counts", func(t *testing.T) {
		out := l.ctl("status")
		for _, s := range []string{"alice", "bob"} {
			if !strings.Contains(out, s) {
				t.Fatalf("status lacks intercept %s:\n%s", s, out)
			}
		}
		st := l.status()
		testutil.Eventually(t, 5*time.Second, func() error {
			st = l.status()
			return checkStatus(st, "alice", func(n map[string]any) error {
				if n["steering_attached"] != true {
					return fmt.Errorf("steering not attached: %v", n)
				}
				if num(n["matched"]) == 0 {
					return fmt.Errorf("no matched requests reported: %v", n)
				}
				return nil
			})
		})
		resp, err := http.Get("http://" + l.agMetrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range []string{`detour_agent_requests_total{intercept="default/alice",outcome="matched"}`,
			"detour_agent_request_duration_seconds_bucket", "detour_agent_steering_attachments 1",
			"detour_agent_active_intercepts 2", "detour_agent_sync_connected 1"} {
			if !strings.Contains(string(body), m) {
				t.Errorf("agent metrics lack %s", m)
			}
		}
	})

	t.Run("developer pod killed: its requests fall back within 1s", func(t *testing.T) {
		c := l.client("it-client")
		if got, err := c.get(apiURL+"/", "alice"); err != nil || got != "it-alice" {
			t.Fatalf("before kill: %q %v", got, err)
		}
		killed := time.Now()
		killPodProcesses(t, l.pod("it-alice").NetNS)
		var alicefail int
		var fellBack time.Time
		for time.Since(killed) < 3*time.Second {
			for _, s := range []string{"alice", "bob", ""} {
				got, err := c.get(apiURL+"/", s)
				switch {
				case s == "alice" && err != nil:
					alicefail++ // a request in flight at the kill may fail
				case err != nil:
					t.Fatalf("session %q failed after the alice pod died: %v", s, err)
				case s == "alice" && got == "it-api" && fellBack.IsZero():
					fellBack = time.Now()
				case s != "alice" && got != want[s]:
					t.Fatalf("session %q answered by %q", s, got)
				}
			}
		}
		if fellBack.IsZero() || fellBack.Sub(killed) > time.Second {
			t.Fatalf("alice's requests did not fall back to the app within 1s (fell back after %v)", fellBack.Sub(killed))
		}
		if alicefail > 1 {
			t.Fatalf("%d of alice's requests failed; only one in flight may", alicefail)
		}
		testutil.Eventually(t, 5*time.Second, func() error {
			return checkStatus(l.status(), "alice", func(n map[string]any) error {
				if num(n["fallbacks"]) == 0 {
					return fmt.Errorf("no fallbacks reported: %v", n)
				}
				return nil
			})
		})
	})

	t.Run("agent killed: traffic reaches the app; restarted: intercepts back within 2s", func(t *testing.T) {
		l.agent.stop(syscall.SIGKILL)
		c := l.client("it-client")
		for _, s := range []string{"bob", "", "bob"} {
			got, err := c.get(apiURL+"/", s)
			if err != nil || got != "it-api" {
				t.Fatalf("with the agent dead, session %q: %q %v (want the app)", s, got, err)
			}
		}
		if n := ourLinks(t, l.pod("it-api").NetNS); n != 0 {
			t.Fatalf("%d steering links left in the pod namespace after the agent died", n)
		}
		restarted := time.Now()
		l.startAgent()
		testutil.Eventually(t, 2*time.Second-time.Since(restarted), func() error {
			c := l.client("it-client") // a new connection: steering applies to new connections
			got, err := c.get(apiURL+"/", "bob")
			if err != nil {
				return err
			}
			if got != "it-bob" {
				return fmt.Errorf("bob answered by %q", got)
			}
			return nil
		})
	})

	t.Run("controller killed: the data path is unchanged", func(t *testing.T) {
		l.controller.stop(syscall.SIGKILL)
		c := l.client("it-client")
		for i := 0; i < 30; i++ {
			s := []string{"bob", ""}[i%2]
			got, err := c.get(apiURL+"/", s)
			if err != nil || got != want[s] {
				t.Fatalf("controller down, session %q: %q %v", s, got, err)
			}
		}
		l.startController() // the store brings the intercepts back
		out := l.ctl("intercept", "list")
		if !strings.Contains(out, "bob") {
			t.Fatalf("intercepts lost across a controller restart:\n%s", out)
		}
		testutil.Eventually(t, 5*time.Second, func() error {
			return checkStatus(l.status(), "bob", func(n map[string]any) error {
				if n["steering_attached"] != true {
					return fmt.Errorf("agent not resynced: %v", n)
				}
				return nil
			})
		})
	})

	t.Run("lease expires: traffic back at the app", func(t *testing.T) {
		l.ctl("intercept", "create", "carol", "--service", "default/api", "--port", "80",
			"--session", "carol", "--to", "it-bob:8080", "--ttl", "2s", "--wait", "5s")
		c := l.client("it-client")
		if got, _ := c.get(apiURL+"/", "carol"); got != "it-bob" {
			t.Fatalf("carol before expiry: %q", got)
		}
		testutil.Eventually(t, 6*time.Second, func() error {
			if _, code := l.ctlCode("intercept", "get", "carol"); code != 3 {
				return fmt.Errorf("carol still there (get exit %d)", code)
			}
			return nil
		})
		testutil.Eventually(t, 2*time.Second, func() error {
			got, err := l.client("it-client").get(apiURL+"/", "carol")
			if err != nil || got != "it-api" {
				return fmt.Errorf("carol after expiry: %q %v", got, err)
			}
			return nil
		})
	})

	t.Run("intercepts deleted: traffic back at the app, no link left", func(t *testing.T) {
		l.ctl("intercept", "delete", "alice")
		l.ctl("intercept", "delete", "bob")
		testutil.Eventually(t, 3*time.Second, func() error {
			if n := ourLinks(t, l.pod("it-api").NetNS); n != 0 {
				return fmt.Errorf("%d steering links still in the pod namespace", n)
			}
			return nil
		})
		c := l.client("it-client")
		for _, s := range []string{"alice", "bob", ""} {
			if got, err := c.get(apiURL+"/", s); err != nil || got != "it-api" {
				t.Fatalf("after delete, session %q: %q %v", s, got, err)
			}
		}
	})
}

func dialFrom(t *testing.T, nsPath, addr string) net.Conn {
	t.Helper()
	d := &netns.Dialer{Path: nsPath}
	d.Dialer.Timeout = 5 * time.Second
	c, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// killPodProcesses SIGKILLs every process inside the pod's network namespace.
func killPodProcesses(t *testing.T, nsPath string) {
	t.Helper()
	ino, err := netns.Inode(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir("/proc")
	killed := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pino, err := netns.Inode(filepath.Join("/proc", e.Name(), "ns/net"))
		if err == nil && pino == ino {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
	}
	if killed == 0 {
		t.Fatalf("no process found in %s", nsPath)
	}
}

// ourLinks counts Detour's steering links attached to one namespace, as
// the kernel lists them.
func ourLinks(t *testing.T, nsPath string) int {
	t.Helper()
	ino, err := netns.Inode(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := steer.LinkIDs(ino)
	if err != nil {
		t.Fatal(err)
	}
	return len(ids)
}

// checkStatus finds the intercept's first node status in `status -o json`.
func checkStatus(st map[string]any, name string, check func(map[string]any) error) error {
	list, _ := st["intercepts"].([]any)
	for _, it := range list {
		m, _ := it.(map[string]any)
		if m["name"] != name {
			continue
		}
		nodes, _ := m["nodes"].([]any)
		if len(nodes) == 0 {
			return fmt.Errorf("intercept %s has no node status", name)
		}
		n, _ := nodes[0].(map[string]any)
		return check(n)
	}
	return fmt.Errorf("intercept %s not in status", name)
}

// num reads a protojson number (uint64 is a string there).
func num(v any) uint64 {
	switch x := v.(type) {
	case string:
		n, _ := strconv.ParseUint(x, 10, 64)
		return n
	case float64:
		return uint64(x)
	}
	return 0
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }
