package testutil

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/detourdev/detour/pkg/netns"
)

// End is one end of a veth pair: the namespace it lives in, its device name
// and its address (in a /24 shared with the other end).
type End struct {
	NetNS string
	Dev   string
	Addr  netip.Addr
}

// Veth joins two namespaces with a veth pair, addresses both ends, and
// waits until both are up, so a test's first connection does not race the
// link. The pair goes away with its namespaces.
func Veth(tb testing.TB, a, b End) {
	tb.Helper()
	bf, err := os.Open(b.NetNS)
	if err != nil {
		tb.Fatal(err)
	}
	defer bf.Close()
	err = netns.Do(a.NetNS, func() error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: a.Dev},
			PeerName:      b.Dev,
			PeerNamespace: netlink.NsFd(int(bf.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		return linkUp(a.Dev, a.Addr)
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := netns.Do(b.NetNS, func() error { return linkUp(b.Dev, b.Addr) }); err != nil {
		tb.Fatal(err)
	}
	for _, e := range []End{a, b} {
		Eventually(tb, 5*time.Second, func() error {
			return netns.Do(e.NetNS, func() error {
				l, err := netlink.LinkByName(e.Dev)
				if err != nil {
					return err
				}
				if st := l.Attrs().OperState; st != netlink.OperUp {
					return fmt.Errorf("%s is %v", e.Dev, st)
				}
				return nil
			})
		})
	}
}

func linkUp(dev string, addr netip.Addr) error {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(addr.String() + "/24")
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %v to %s: %w", a, dev, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", dev, err)
	}
	return nil
}
