package fastpath

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detourdev/detour/pkg/netns"
)

// who is the pod that should answer a request with session key.
func who(key string) string {
	if key == "" {
		return "app"
	}
	return key
}

func (n *testNet) stats(t testing.TB) Stats {
	t.Helper()
	st, err := n.f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestPrivilegedAlternatingBodies: one keep-alive connection, requests
// alternating alice, bob and no session, each answered by the right pod,
// with both bodies' sha256 checked. 10,000 with bodies of 0 and 3 KiB
// either way, which the kernel routes; among them 200 with 64 KiB one way
// or both (routed in the kernel too) and 20 with 1 MiB (over the kernel's
// bound: the agent's).
func TestPrivilegedAlternatingBodies(t *testing.T) {
	n := newTestNet(t)
	c := n.dial(t)
	keys := []string{"alice", "bob", ""}
	small := []int{0, 3 << 10}
	type req struct {
		key           string
		reqN, respN   int
		kernelHandles bool
	}
	var plan []req
	for i := range 10000 {
		r := req{key: keys[i%3], reqN: small[i%2], respN: small[(i/2)%2], kernelHandles: true}
		switch big := []int{64 << 10, 1 << 20}; {
		case i%500 == 250:
			k := big[1]
			r.reqN, r.respN = [3]int{k, 0, k}[(i/500)%3], [3]int{0, k, k}[(i/500)%3]
			r.kernelHandles = false
		case i%50 == 25:
			k := big[0]
			r.reqN, r.respN = [3]int{k, 0, k}[(i/50)%3], [3]int{0, k, k}[(i/50)%3]
		}
		plan = append(plan, r)
	}
	before := n.stats(t)
	start := time.Now()
	var kernelish int
	for i, r := range plan {
		got, err := c.exchange(r.key, r.reqN, r.respN)
		if err != nil {
			t.Fatalf("request %d (%q, %d bytes up, %d down): %v", i, r.key, r.reqN, r.respN, err)
		}
		if got != who(r.key) {
			t.Fatalf("request %d (%q, %d bytes up, %d down) answered by %s", i, r.key, r.reqN, r.respN, got)
		}
		if r.kernelHandles {
			kernelish++
		}
	}
	st := n.stats(t)
	t.Logf("%d requests in %v; %+v", len(plan), time.Since(start), st)
	routed := st.Routed - before.Routed
	// The agent answers the first request and the one after each it had
	// to take (the 1 MiB ones); every other can be the kernel's.
	if routed < uint64(kernelish)*9/10 {
		t.Errorf("the kernel routed %d of %d requests it could have", routed, kernelish)
	}
	if st.Pipelined != before.Pipelined || st.PassRedirect != before.PassRedirect {
		t.Errorf("pipelined %d, redirects failed %d: want none", st.Pipelined-before.Pipelined, st.PassRedirect-before.PassRedirect)
	}
	if st.PassFraming == before.PassFraming || st.Taken == before.Taken {
		t.Errorf("1 MiB bodies: %d requests and %d responses left to the agent, want some of each", st.PassFraming-before.PassFraming, st.Taken-before.Taken)
	}
	per := n.port.Routed()
	var sum uint64
	for _, k := range keys {
		id := k
		if k != "" {
			id = "default/" + k
		}
		if per[id] < routed/4 {
			t.Errorf("intercept %q: %d of %d requests routed in the kernel", id, per[id], routed)
		}
		sum += per[id]
	}
	if sum != st.Routed {
		t.Errorf("per intercept the kernel routed %d, in all %d", sum, st.Routed)
	}
}

// warm makes c's next requests ones the kernel routes: the agent serves
// the first for each destination, pairs its upstream, and offers the
// caller back after each response. A caller quicker than that offer sends
// its next request to the agent again, so this goes on until the kernel
// routed two in a row.
func (n *testNet) warm(t *testing.T, c *caller) {
	t.Helper()
	keys := []string{"bob", "alice", ""}
	inRow := 0
	for i := 0; inRow < 2; i++ {
		if i == 30 {
			t.Fatalf("warming up: the kernel routed %d in a row of %d requests: %+v", inRow, i, n.stats(t))
		}
		before := n.stats(t).Routed
		key := keys[i%3]
		got, err := c.exchange(key, 10, 10)
		if err != nil || got != who(key) {
			t.Fatalf("warming up: %s answered, %v", got, err)
		}
		if n.stats(t).Routed > before {
			inRow++
		} else {
			inRow = 0
		}
	}
}

// readResponse reads one response on c and checks who answered it and the
// sha256 of its body against X-Sha256.
func (c *caller) readResponse(method string) (*http.Response, error) {
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 {
		return resp, nil
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(got)
	if want := resp.Header.Get("X-Sha256"); want != "" && hex.EncodeToString(sum[:]) != want {
		return nil, fmt.Errorf("%s's response body differs from what it sent", resp.Header.Get("X-Pod"))
	}
	return resp, nil
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestPrivilegedLeftToAgent: what the program does not route passes to
// the agent, which answers it rightly, on a connection the kernel was
// routing; the connection goes on working.
func TestPrivilegedLeftToAgent(t *testing.T) {
	n := newTestNet(t)
	type counter func(Stats) uint64
	head := counter(func(s Stats) uint64 { return s.PassHead })
	framing := counter(func(s Stats) uint64 { return s.PassFraming })
	taken := counter(func(s Stats) uint64 { return s.Taken })
	cases := []struct {
		name string
		by   counter
		// run sends the request on a warm connection and checks its
		// answer; it reports whether the connection stays HTTP/1.1.
		run func(t *testing.T, c *caller) bool
	}{
		{"6 KiB head split across writes", head, func(t *testing.T, c *caller) bool {
			h := "GET /split HTTP/1.1\r\nHost: app\r\nX-Detour-Session: alice\r\nX-Want: 100\r\nX-Pad: " + strings.Repeat("p", 6<<10) + "\r\n\r\n"
			for _, part := range []string{h[:3000], h[3000:]} {
				if _, err := io.WriteString(c.c, part); err != nil {
					t.Fatal(err)
				}
			}
			expectPod(t, c, "GET", "alice")
			return true
		}},
		{"chunked request body", framing, func(t *testing.T, c *caller) bool {
			body := pattern("chunked", 5000)
			var b strings.Builder
			b.WriteString("POST /chunked HTTP/1.1\r\nHost: app\r\nX-Detour-Session: bob\r\nX-Want: 10\r\nTransfer-Encoding: chunked\r\n\r\n")
			for rest := body; len(rest) > 0; {
				k := min(len(rest), 1500)
				fmt.Fprintf(&b, "%x\r\n%s\r\n", k, rest[:k])
				rest = rest[k:]
			}
			b.WriteString("0\r\n\r\n")
			if _, err := io.WriteString(c.c, b.String()); err != nil {
				t.Fatal(err)
			}
			resp := expectPod(t, c, "POST", "bob")
			if resp.Header.Get("X-Body-Sha256") != sha(body) {
				t.Fatal("bob got a chunked body that differs from what was sent")
			}
			return true
		}},
		{"Expect: 100-continue", framing, func(t *testing.T, c *caller) bool {
			body := pattern("expect", 3<<10)
			h := fmt.Sprintf("PUT /expect HTTP/1.1\r\nHost: app\r\nX-Detour-Session: alice\r\nX-Want: 10\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", len(body))
			if _, err := io.WriteString(c.c, h); err != nil {
				t.Fatal(err)
			}
			resp, err := c.readResponse("PUT")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusContinue {
				t.Fatalf("status %d before the body, want 100", resp.StatusCode)
			}
			if _, err := c.c.Write(body); err != nil {
				t.Fatal(err)
			}
			resp = expectPod(t, c, "PUT", "alice")
			if resp.Header.Get("X-Body-Sha256") != sha(body) {
				t.Fatal("alice got a body that differs from what was sent")
			}
			return true
		}},
		{"chunked response", taken, func(t *testing.T, c *caller) bool {
			h := "GET /chunks HTTP/1.1\r\nHost: app\r\nX-Detour-Session: bob\r\nX-Want: 20000\r\nX-Chunked: 1\r\n\r\n"
			if _, err := io.WriteString(c.c, h); err != nil {
				t.Fatal(err)
			}
			expectPod(t, c, "GET", "bob")
			return true
		}},
		{"h2c Upgrade the app declines", framing, func(t *testing.T, c *caller) bool {
			h := "GET /h2c HTTP/1.1\r\nHost: app\r\nX-Detour-Session: alice\r\nX-Want: 100\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
			if _, err := io.WriteString(c.c, h); err != nil {
				t.Fatal(err)
			}
			expectPod(t, c, "GET", "alice")
			return true
		}},
		{"WebSocket", framing, func(t *testing.T, c *caller) bool {
			h := "GET /ws HTTP/1.1\r\nHost: app\r\nX-Detour-Session: bob\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
			if _, err := io.WriteString(c.c, h); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("X-Pod") != "bob" {
				t.Fatalf("status %d from %q, want 101 from bob", resp.StatusCode, resp.Header.Get("X-Pod"))
			}
			msg := pattern("ws", 10000)
			go c.c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c.br, got); err != nil {
				t.Fatal(err)
			}
			if sha(got) != sha(msg) {
				t.Fatal("the tunnel's echo differs from what was sent")
			}
			return false
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := n.dial(t)
			n.warm(t, c)
			before := n.stats(t)
			if !tc.run(t, c) {
				if tc.by(n.stats(t)) == tc.by(before) {
					t.Error("the program did not leave it to the agent")
				}
				return
			}
			if tc.by(n.stats(t)) == tc.by(before) {
				t.Error("the program did not leave it to the agent")
			}
			// The connection goes on, and becomes the kernel's again.
			for _, key := range []string{"alice", "", "bob"} {
				got, err := c.exchange(key, 100, 3000)
				if err != nil || got != who(key) {
					t.Fatalf("after it, a request for %q: answered by %q, %v", key, got, err)
				}
			}
			n.warm(t, c)
		})
	}
	t.Run("h2c with prior knowledge", func(t *testing.T) {
		before := n.stats(t)
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		d := netns.Dialer{Path: n.peers}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protos, DialContext: d.DialContext}}
		defer hc.CloseIdleConnections()
		for _, key := range []string{"alice", "", "bob", "alice"} {
			req, _ := http.NewRequest("GET", "http://"+fastPort.String()+"/h2", nil)
			if key != "" {
				req.Header.Set("X-Detour-Session", key)
			}
			req.Header.Set("X-Want", "100")
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 || resp.Header.Get("X-Pod") != who(key) {
				t.Fatalf("HTTP/%d answer from %q for %q", resp.ProtoMajor, resp.Header.Get("X-Pod"), key)
			}
		}
		if n.stats(t).Routed != before.Routed {
			t.Error("the kernel routed HTTP/2 requests")
		}
	})
}

// expectPod reads a response and checks it is pod's.
func expectPod(t *testing.T, c *caller, method, pod string) *http.Response {
	t.Helper()
	resp, err := c.readResponse(method)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("X-Pod"); got != pod {
		t.Fatalf("answered by %q, want %s", got, pod)
	}
	return resp
}

// TestPrivilegedAppClosesIdle: the app closes keep-alive connections idle
// for 20 ms while 8 callers send requests with pauses around that, so the
// app often closes a connection the kernel is about to put a request into.
// Every request must be answered by the right pod or fail within a bound
// (a failed one is retried on a new connection, as clients do); none may
// hang.
func TestPrivilegedAppClosesIdle(t *testing.T) {
	const (
		idle    = 20 * time.Millisecond
		bound   = 3 * time.Second
		callers = 8
		run     = 3 * time.Second
	)
	n := newTestNetIdle(t, idle)
	before := n.stats(t)
	var (
		mu                  sync.Mutex
		ok, failed, slowest int
		worst               time.Duration
		firstErr, wrongPod  error
	)
	var wg sync.WaitGroup
	end := time.Now().Add(run)
	for g := range callers {
		wg.Go(func() {
			d := netns.Dialer{Path: n.peers}
			var c *caller
			for i := 0; time.Now().Before(end); i++ {
				if c == nil {
					nc, err := d.DialContext(context.Background(), "tcp4", fastPort.String())
					if err != nil {
						mu.Lock()
						failed++
						firstErr = cmp(firstErr, err)
						mu.Unlock()
						continue
					}
					c = &caller{c: nc, br: bufio.NewReaderSize(nc, 64<<10), timeout: bound}
				}
				// Pauses of 0 to 40 ms: half of them outlast the app's
				// idle timeout.
				time.Sleep(time.Duration((g*7+i*13)%41) * time.Millisecond)
				key := []string{"", "", "alice", "", "bob"}[(g+i)%5]
				start := time.Now()
				got, err := c.exchange(key, 0, 100)
				took := time.Since(start)
				mu.Lock()
				if took > worst {
					worst = took
				}
				switch {
				case err != nil:
					failed++
					if took >= bound {
						slowest++
					}
					firstErr = cmp(firstErr, err)
				case got != who(key):
					wrongPod = cmp(wrongPod, fmt.Errorf("a request for %q answered by %s", key, got))
				default:
					ok++
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
	wg.Wait()
	st := n.stats(t)
	t.Logf("%d answered, %d failed (first: %v), slowest %v; routed in the kernel %d, redirects failed %d",
		ok, failed, firstErr, worst, st.Routed-before.Routed, st.PassRedirect-before.PassRedirect)
	if wrongPod != nil {
		t.Error(wrongPod)
	}
	if slowest > 0 {
		t.Errorf("%d requests hung until the %v bound", slowest, bound)
	}
	if ok == 0 || failed > ok/10 {
		t.Errorf("%d answered, %d failed: want at most one in ten to fail", ok, failed)
	}
	if st.Routed == before.Routed {
		t.Error("the kernel routed nothing")
	}
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// sockstatMem is the pages TCP sockets hold, from /proc/net/sockstat
// (the whole host's: other processes move it too).
func sockstatMem(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "TCP:") {
			continue
		}
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "mem" {
				n, err := strconv.Atoi(f[i+1])
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
	}
	t.Fatal("no TCP mem in /proc/net/sockstat")
	return 0
}

// TestPrivilegedSlowReader: responses of 10 MiB, and of the largest size
// the kernel queues, to a caller that reads 16 KiB every millisecond:
// nothing lost; a response over DefaultMaxBody is left to the agent, so
// TCP's flow control bounds what the kernel holds for the reader, and one
// under it is the most the kernel queues outside that control.
// /proc/net/sockstat's TCP memory is watched meanwhile.
func TestPrivilegedSlowReader(t *testing.T) {
	n := newTestNet(t)
	c := n.dial(t)
	for _, size := range []int{10 << 20, DefaultMaxBody - 1024} {
		// After a response it left to the agent, the kernel takes the
		// caller back only after the agent served a request.
		n.warm(t, c)
		before := n.stats(t)
		base := sockstatMem(t)
		h := fmt.Sprintf("GET /big HTTP/1.1\r\nHost: app\r\nX-Detour-Session: alice\r\nX-Want: %d\r\n\r\n", size)
		if err := c.c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c.c, h); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Header.Get("X-Pod") != "alice" {
			t.Fatalf("answered by %q", resp.Header.Get("X-Pod"))
		}
		hash := sha256.New()
		buf := make([]byte, 16<<10)
		var got, peak int
		for {
			k, err := resp.Body.Read(buf)
			hash.Write(buf[:k])
			got += k
			if m := sockstatMem(t) - base; m > peak {
				peak = m
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", got, err)
			}
			time.Sleep(2 * time.Millisecond) // the slow reader: 8 MB/s
		}
		if got != size || hex.EncodeToString(hash.Sum(nil)) != resp.Header.Get("X-Sha256") {
			t.Fatalf("got %d bytes of %d, sha256 equal: %v", got, size, hex.EncodeToString(hash.Sum(nil)) == resp.Header.Get("X-Sha256"))
		}
		st := n.stats(t)
		peakBytes := peak * os.Getpagesize()
		t.Logf("%d bytes: TCP memory at most %d KiB above its start; routed %d, taken %d", size, peakBytes>>10, st.Routed-before.Routed, st.Taken-before.Taken)
		// The counter is the host's, so only a gross excess is sure to
		// be this test's: the response held twice over. Through the
		// agent, TCP's buffers (tcp_rmem, tcp_wmem) are the bound; in
		// the kernel's queue, one response of at most DefaultMaxBody.
		if peakBytes > 2*size+(4<<20) {
			t.Errorf("%d bytes to a slow reader held %d KiB of TCP memory", size, peakBytes>>10)
		}
		switch {
		case size > DefaultMaxBody && st.Taken == before.Taken:
			t.Error("the kernel did not leave a response over its bound to the agent")
		case size < DefaultMaxBody && st.Responses == before.Responses:
			t.Error("the kernel did not deliver a response under its bound")
		}
	}
}

// TestPrivilegedUnsolicitedBytes: bytes an idle upstream sends on its own
// never reach the caller; the agent drops the connection that sent them,
// and the caller's next request is answered rightly on a new one.
func TestPrivilegedUnsolicitedBytes(t *testing.T) {
	sent, closed := make(chan string, 1), make(chan string, 64) // by connection
	// bob answers every GET with "ok"; after one asking for it, it then
	// sends a response no one asked for.
	serve := func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				closed <- c.RemoteAddr().String()
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Pod: bob\r\nContent-Length: 2\r\n\r\nok")
			if req.Header.Get("X-Then-Unsolicited") != "" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Pod: evil\r\nContent-Length: 4\r\n\r\nevil")
				sent <- c.RemoteAddr().String()
			}
		}
	}
	n := newTestNetOpts(t, netOpts{serveBob: func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}})
	c := n.dial(t)
	get := func(extra string) {
		t.Helper()
		if err := c.c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c.c, "GET / HTTP/1.1\r\nHost: app\r\nX-Detour-Session: bob\r\n"+extra+"\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.Header.Get("X-Pod") != "bob" || string(b) != "ok" {
			t.Fatalf("answered %q by %q, %v", b, resp.Header.Get("X-Pod"), err)
		}
	}
	// Until the kernel routes bob's requests.
	for i, inRow := 0, 0; inRow < 2; i++ {
		if i == 30 {
			t.Fatalf("the kernel did not take bob's requests: %+v", n.stats(t))
		}
		before := n.stats(t).Routed
		get("")
		if n.stats(t).Routed > before {
			inRow++
		} else {
			inRow = 0
		}
	}
	before := n.stats(t)
	get("X-Then-Unsolicited: 1\r\n")
	if n.stats(t).Routed == before.Routed {
		t.Fatal("the kernel did not route the request")
	}
	rogue := <-sent
	// The agent closes the upstream connection that sent them.
	for gone := ""; gone != rogue; {
		select {
		case gone = <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("the agent kept the upstream connection that sent unsolicited bytes")
		}
	}
	if c.br.Buffered() > 0 {
		t.Fatal("unsolicited bytes reached the caller")
	}
	get("")
	get("")
	// Nothing else came.
	if err := c.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if b, err := c.br.Peek(1); err == nil {
		t.Fatalf("the caller got %q more", b)
	}
}
