package fastpath

import (
	"bufio"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

// TestPrivilegedDestinationCallers: a destination's accepted socket joins
// the SOCKHASH when the agent dialled it, from the fast port's pod
// address, and not when anyone else did (an environment's fork called by
// another fork): sk_msg would run on each of that caller's messages for
// nothing. Once the port is gone its pod address is no longer one the
// program looks for.
func TestPrivilegedDestinationCallers(t *testing.T) {
	n := newTestNet(t)
	dialAlice := func(from string) net.Conn {
		t.Helper()
		d := netns.Dialer{Path: from}
		c, err := d.DialContext(context.Background(), "tcp4", alice.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// One exchange: alice has accepted and the connection is
		// established on her side, where sock_ops adds it.
		cl := &caller{c: c, br: bufio.NewReader(c)}
		if who, err := cl.exchange("", 10, 10); err != nil || who != "alice" {
			t.Fatalf("exchange with alice: %s, %v", who, err)
		}
		return c
	}
	inMap := func(c net.Conn) bool {
		t.Helper()
		k, err := tupleOf(c)
		if err != nil {
			t.Fatal(err)
		}
		return n.f.inMap(k)
	}

	agents := dialAlice(n.pod) // from podAddr, as the agent dials
	testutil.Eventually(t, 5*time.Second, func() error {
		if !inMap(agents) {
			return errors.New("alice's socket of a connection from the pod's address is not in fp_socks")
		}
		return nil
	})
	other := dialAlice(n.peers) // from peerAddr: not a fast port's pod
	if inMap(other) {
		t.Error("alice's socket of a connection from another address is in fp_socks")
	}

	n.f.RemovePort(fastPort)
	var v uint32
	k := ip4(podAddr)
	if err := n.f.objs.FpFroms.Lookup(&k, &v); err == nil {
		t.Error("the pod's address is still in fp_froms after its only port was removed")
	}
	if len(n.f.froms) != 0 {
		t.Errorf("froms = %v after the only port was removed", n.f.froms)
	}
}
