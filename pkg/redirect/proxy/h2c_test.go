package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

//lint:file-ignore SA1019 x/net's h2c on purpose: a backend that accepts h2c Upgrades, which net/http's own HTTP/2 does not

// upgradeRequest asks to switch to h2c (RFC 7540 3.2) as curl --http2 does.
func upgradeRequest(method, path, session, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n", method, path)
	fmt.Fprintf(&b, "HTTP2-Settings: %s\r\n", base64.RawURLEncoding.EncodeToString(nil))
	if session != "" {
		fmt.Fprintf(&b, "X-Detour-Session: %s\r\n", session)
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

// TestH2CUpgradeStaysHTTP1WhereTheAppDoes: backends that speak HTTP/2 with
// prior knowledge but do not take h2c Upgrades (net/http's own, the lab's
// echo server) answer an Upgrade request in HTTP/1.1, and the client stays
// on HTTP/1.1 through the proxy as it does straight to them: its next
// request on the connection is HTTP/1.1, routed on its own.
func TestH2CUpgradeStaysHTTP1WhereTheAppDoes(t *testing.T) {
	h := newH2Harness(t)
	for _, tc := range []struct {
		name, req, want string
		direct          *h2Backend
	}{
		{"get", upgradeRequest("GET", "/", "alice", ""), "alice", h.alice},
		{"post with body", upgradeRequest("POST", "/upload", "bob", "hello"), "bob 5 " + sum([]byte("hello")), h.bob},
		{"no session", upgradeRequest("GET", "/", "", ""), "app", h.app},
		{"after a keep-alive request", "GET / HTTP/1.1\r\nHost: x\r\nX-Detour-Session: bob\r\n\r\n" + upgradeRequest("GET", "/", "alice", ""), "alice", h.alice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, addr := range []string{tc.direct.addr, h.addr} {
				c := dialRaw(t, addr)
				io.WriteString(c, tc.req)
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				if strings.HasPrefix(tc.name, "after") { // the keep-alive request before
					if resp, err = http.ReadResponse(br, nil); err != nil {
						t.Fatal(err)
					}
					b, _ = io.ReadAll(resp.Body)
				}
				via := map[bool]string{true: "straight to the backend", false: "through the proxy"}[addr == tc.direct.addr]
				if resp.StatusCode != 200 || resp.Proto != "HTTP/1.1" || string(b) != tc.want {
					t.Fatalf("%s: %s %s %q, want 200 HTTP/1.1 %q", via, resp.Proto, resp.Status, b, tc.want)
				}
				// Still HTTP/1.1, and routed per request.
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Detour-Session: bob\r\n\r\n")
				resp, err = http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("%s: the next request: %v", via, err)
				}
				b, _ = io.ReadAll(resp.Body)
				if addr == h.addr && (resp.StatusCode != 200 || string(b) != "bob") {
					t.Fatalf("%s: the next HTTP/1.1 request: %s %q, want 200 from bob", via, resp.Status, b)
				}
			}
		})
	}
}

// upgradingBackend takes h2c Upgrades (and prior knowledge), naming itself
// in every answer.
func upgradingBackend(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
	srv := &http.Server{Handler: h2c.NewHandler(h, &http2.Server{})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestH2CUpgradeWhereTheBackendSwitches: a backend that takes the upgrade
// answers 101 itself, and the connection is then its own, every stream on
// it included, as a WebSocket stays with the backend that accepted it.
func TestH2CUpgradeWhereTheBackendSwitches(t *testing.T) {
	rec := &recorder{}
	app := newH2Backend(t, "app")
	alice := upgradingBackend(t, "alice")
	p, addr, _ := startProxy(t, Config{App: app.addr, Observer: rec})
	p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", alice)})

	c := dialRaw(t, addr)
	io.WriteString(c, upgradeRequest("GET", "/", "alice", ""))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "h2c" {
		t.Fatalf("got %s (Upgrade %q), want alice's 101 to h2c", resp.Status, resp.Header.Get("Upgrade"))
	}
	raw := newRawH2(t, c, br)
	raw.request(3, "GET", "/", "x-detour-session", "bob")
	raw.request(5, "GET", "/")
	got := raw.responses(3)
	for _, id := range []uint32{1, 3, 5} {
		if r := got[id]; r == nil || r.status != "200" || r.body != "alice" {
			t.Errorf("stream %d: %+v, want 200 from alice over HTTP/2", id, r)
		}
	}
	rec.waitCount(t, event{"alice", OutcomeMatched}, 1)
}

// TestH2CUpgradeWithCurl: curl --http2 on an http:// URL asks for h2c by
// Upgrade; it ends on the HTTP version the backend chose, through the proxy
// as straight to it.
func TestH2CUpgradeWithCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl: ", err)
	}
	h := newH2Harness(t)
	alice := upgradingBackend(t, "alice-h2c")
	for _, tc := range []struct {
		name      string
		direct    string
		wantBody  string
		wantProto string
	}{
		{"prior knowledge only", h.alice.addr, "alice", "1.1"},
		{"takes the upgrade", alice, "alice-h2c", "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.p.SetRoutes([]Route{sessionRoute(t, "alice", "alice", tc.direct)})
			for _, addr := range []string{tc.direct, h.addr} {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				var out bytes.Buffer
				cmd := exec.CommandContext(ctx, curl, "--http2", "-sS", "-H", "X-Detour-Session: alice", "-w", "|%{http_version}", "http://"+addr+"/")
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := cmd.Run(); err != nil {
					t.Fatalf("curl %s: %v\n%s", addr, err, out.String())
				}
				if want := tc.wantBody + "|" + tc.wantProto; out.String() != want {
					t.Fatalf("curl --http2 to %s: %q, want %q", addr, out.String(), want)
				}
			}
		})
	}
}
