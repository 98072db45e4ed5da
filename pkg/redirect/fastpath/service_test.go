package fastpath

import (
	"net/netip"
	"os/exec"
	"testing"
)

// TestPrivilegedServiceAddress: a caller that dials the Service's address
// (a ClusterIP that DNAT turns into the pod's, as kube-proxy does) is routed
// in the kernel once the port knows the address, and not before.
func TestPrivilegedServiceAddress(t *testing.T) {
	n := newTestNet(t)
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	// In the callers' namespace, as kube-proxy does on a node: a route to
	// the service range and DNAT of the Service's address to the pod's.
	for _, args := range [][]string{
		{"ip", "route", "add", "10.96.0.0/16", "dev", "peer0"},
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", svc.Addr().String(), "--dport", "80",
			"-j", "DNAT", "--to-destination", fastPort.String()},
	} {
		cmd := append([]string{"--net=" + n.peers}, args...)
		if out, err := exec.Command("nsenter", cmd...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s (make test needs iptables: apt-get install iptables)", args, err, out)
		}
	}

	exchange := func(c *caller, rounds int) uint64 {
		t.Helper()
		before := n.stats(t).Routed
		for i := range rounds {
			for _, key := range []string{"alice", "bob", ""} {
				got, err := c.exchange(key, 100, 100)
				if err != nil {
					t.Fatalf("request %d for %q: %v", i, key, err)
				}
				if got != who(key) {
					t.Fatalf("request %d for %q answered by %s", i, key, got)
				}
			}
		}
		return n.stats(t).Routed - before
	}

	// Before the port knows the address: right answers, all the agent's.
	if routed := exchange(n.dialAt(t, svc), 10); routed != 0 {
		t.Errorf("the kernel routed %d requests of a caller of an address the port does not know", routed)
	}
	if err := n.port.SetAliases([]netip.AddrPort{svc}); err != nil {
		t.Fatal(err)
	}
	// A new connection: its socket goes into the map when established.
	if routed := exchange(n.dialAt(t, svc), 20); routed < 40 {
		t.Errorf("the kernel routed %d of 60 requests to the Service's address, want most", routed)
	}
	if err := n.port.SetAliases(nil); err != nil {
		t.Fatal(err)
	}
	var have uint32
	k := addrKey(svc)
	if err := n.f.objs.FpAliases.Lookup(&k, &have); err == nil {
		t.Errorf("the Service's address is still in fp_aliases after SetAliases(nil)")
	}
}
