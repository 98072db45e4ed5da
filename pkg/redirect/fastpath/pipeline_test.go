package fastpath

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPrivilegedPipelined: requests pipelined behind one the kernel routed,
// in the same write or the next, are answered by the right pods, in order,
// with whole bodies. The agent serves them once the response on its way is
// whole, and the kernel leaves the end of that response to the agent, so
// the agent's answers cannot overtake it.
func TestPrivilegedPipelined(t *testing.T) {
	n := newTestNet(t)
	c := n.dial(t)
	keys := []string{"alice", "bob", ""}
	sizes := []int{10, 3 << 10, 64 << 10}
	request := func(key string, respSize int) string {
		var b strings.Builder
		fmt.Fprintf(&b, "POST /items HTTP/1.1\r\nHost: app\r\nX-Want: %d\r\nContent-Length: 0\r\n", respSize)
		if key != "" {
			fmt.Fprintf(&b, "X-Detour-Session: %s\r\n", key)
		}
		b.WriteString("\r\n")
		return b.String()
	}
	n.warm(t, c)
	before := n.stats(t)
	for i := range 300 {
		batch := 2 + i%2
		var want []string
		var writes []string
		for j := range batch {
			key := keys[(i+j)%3]
			want = append(want, who(key))
			writes = append(writes, request(key, sizes[(i+2*j)%3]))
		}
		if err := c.c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 { // all in one write
			writes = []string{strings.Join(writes, "")}
		}
		for _, w := range writes {
			if _, err := c.c.Write([]byte(w)); err != nil {
				t.Fatalf("batch %d: write: %v (%+v)", i, err, n.stats(t))
			}
		}
		for j, w := range want {
			resp, err := c.readResponse("POST")
			if err != nil {
				t.Fatalf("batch %d, response %d of %d: %v (%+v)", i, j+1, batch, err, n.stats(t))
			}
			if got := resp.Header.Get("X-Pod"); got != w {
				t.Fatalf("batch %d, response %d of %d answered by %s, want %s", i, j+1, batch, got, w)
			}
		}
		// One on its own, so that the kernel takes the caller back.
		key := keys[i%3]
		if got, err := c.exchange(key, 10, 10); err != nil || got != who(key) {
			t.Fatalf("after batch %d: %s answered (%v), want %s", i, got, err, who(key))
		}
	}
	st := n.stats(t)
	t.Logf("%+v", st)
	if st.Pipelined == before.Pipelined {
		t.Errorf("no request went to the agent as pipelined: the test did not pipeline behind the kernel")
	}
	if st.Routed-before.Routed < 300 {
		t.Errorf("the kernel routed %d requests, want at least one per batch", st.Routed-before.Routed)
	}
}
