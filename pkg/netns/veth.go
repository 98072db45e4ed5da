package netns

import (
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
)

// End is one end of a veth pair: the namespace it lives in (a path), its
// device name and its address (in a /24 shared with the other end).
type End struct {
	NetNS string
	Dev   string
	Addr  netip.Addr
}

// Veth joins two namespaces with a veth pair, addresses both ends, and
// waits (up to 5 s) until both are up, so a first connection does not race
// the link. The pair goes away with its namespaces.
func Veth(a, b End) error {
	bf, err := os.Open(b.NetNS)
	if err != nil {
		return err
	}
	defer bf.Close()
	err = Do(a.NetNS, func() error {
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
		return err
	}
	if err := Do(b.NetNS, func() error { return linkUp(b.Dev, b.Addr) }); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, e := range []End{a, b} {
		for {
			err := Do(e.NetNS, func() error {
				l, err := netlink.LinkByName(e.Dev)
				if err != nil {
					return err
				}
				if st := l.Attrs().OperState; st != netlink.OperUp {
					return fmt.Errorf("%s is %v", e.Dev, st)
				}
				return nil
			})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
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
