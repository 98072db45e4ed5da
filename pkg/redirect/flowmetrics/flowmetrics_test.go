package flowmetrics

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/redirect/internal/bpfutil"
)

func TestFlowOf(t *testing.T) {
	ip4 := func(s string) [4]uint32 {
		a := netip.MustParseAddr(s).As4()
		return [4]uint32{uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24}
	}
	tests := []struct {
		name          string
		f             sockopsFlow
		local, remote string
	}{
		{
			name:  "ipv4",
			f:     sockopsFlow{Family: unix.AF_INET, LocalIp: ip4("10.252.0.1"), RemoteIp: ip4("10.252.0.2"), LocalPort: 8000, RemotePort: 40000},
			local: "10.252.0.1:8000", remote: "10.252.0.2:40000",
		},
		{
			name:  "ipv6",
			f:     sockopsFlow{Family: unix.AF_INET6, LocalIp: [4]uint32{0xfd}, RemoteIp: [4]uint32{0xfd, 0, 0, 0x02000000}, LocalPort: 1, RemotePort: 2},
			local: "[fd00::]:1", remote: "[fd00::2]:2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := flowOf(7, &tt.f)
			if got.Local.String() != tt.local || got.Remote.String() != tt.remote || got.Cookie != 7 {
				t.Fatalf("flowOf = %v -> %v (cookie %d), want %s -> %s", got.Local, got.Remote, got.Cookie, tt.local, tt.remote)
			}
		})
	}
}

func TestCumulative(t *testing.T) {
	var b [rttBuckets]uint64
	b[0], b[3], b[rttBuckets-1] = 1, 2, 5 // the last one is +Inf only
	got := cumulative(b)
	if len(got) != rttBuckets-1 {
		t.Fatalf("%d buckets, want %d", len(got), rttBuckets-1)
	}
	for _, c := range []struct {
		le   float64
		want uint64
	}{{1e-6, 1}, {4e-6, 1}, {8e-6, 3}, {math.Ldexp(1e-6, rttBuckets-2), 3}} {
		if got[c.le] != c.want {
			t.Errorf("bucket le %g = %d, want %d", c.le, got[c.le], c.want)
		}
	}
}

// TestPrivilegedSockOps splices a connection inside a cgroup with the flow
// program attached and checks that the proxy's two flows have an RTT.
func TestPrivilegedSockOps(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.EnterCgroup(t)
	ops, err := New(cg, proxyPort, serverPort)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ops.programID()
	if err != nil {
		t.Fatal(err)
	}
	if n := cgroupLinks(t, id); n != 1 {
		t.Fatalf("%d cgroup links run the program, want 1", n)
	}

	n := newNet(t)
	results := n.startSplicingProxy(t)
	// An echo, and flows read while the connections are open.
	n.serve(t, func(c *net.TCPConn) {
		if _, err := io.Copy(c, c); err == nil {
			_ = c.CloseWrite()
		}
	})
	c := n.dial(t)
	_ = c.SetDeadline(time.Now().Add(within))
	const size = 4 * mib
	go func() { _, _ = io.Copy(c, stream(1, size)) }()
	if _, err := io.CopyN(io.Discard, c, size); err != nil {
		t.Fatal(err)
	}
	flows, err := ops.Flows()
	if err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	if err := waitResult(t, results); err != nil {
		t.Fatal(err)
	}
	// Client and server sockets of this process count too: look for the
	// proxy's accepted socket and its upstream socket.
	want := map[string]bool{
		fmt.Sprintf("%v:%d", proxyAddr, proxyPort): false, // accepted, local port
		fmt.Sprintf("%v:%d", peerAddr, serverPort): false, // upstream, remote port
	}
	for _, f := range flows {
		t.Logf("flow %v -> %v srtt %v samples %d retrans %d", f.Local, f.Remote, f.SRTT, f.RTTSamples, f.Retransmits)
		for _, ap := range []string{f.Local.String(), f.Remote.String()} {
			if _, ok := want[ap]; ok && f.Local.Addr() == proxyAddr && f.SRTT > 0 && f.RTTSamples > 0 {
				want[ap] = true
			}
		}
	}
	for ap, seen := range want {
		if !seen {
			t.Errorf("no proxy flow with %s and an RTT", ap)
		}
	}
	tot, err := ops.Totals()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("totals: %+v", tot)
	if tot.RTTCount == 0 || tot.RTTSum == 0 || tot.Flows < 4 {
		t.Fatalf("totals %+v, want RTT samples from at least 4 flows", tot)
	}

	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(ops); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
		if mf.GetName() == "detour_agent_flow_rtt_seconds" {
			if h := mf.GetMetric()[0].GetHistogram(); h.GetSampleCount() != tot.RTTCount && h.GetSampleCount() < tot.RTTCount {
				t.Errorf("histogram count %d, want >= %d", h.GetSampleCount(), tot.RTTCount)
			}
		}
	}
	for _, name := range []string{"detour_agent_flow_rtt_seconds", "detour_agent_flow_retransmits_total", "detour_agent_flow_rtos_total", "detour_agent_flows"} {
		if !got[name] {
			t.Errorf("metric %s not collected", name)
		}
	}

	if err := ops.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ops.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := ops.Flows(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Flows after Close: %v, want ErrClosed", err)
	}
	testutil.Eventually(t, within, func() error {
		if n := cgroupLinks(t, id); n != 0 {
			return fmt.Errorf("%d cgroup links still run the program", n)
		}
		if ok, err := bpfutil.ProgramLoaded(id); err != nil || ok {
			return fmt.Errorf("program %d still loaded (%v)", id, err)
		}
		return nil
	})
}

// cgroupLinks counts the cgroup links in the kernel that run program id.
func cgroupLinks(t *testing.T, id ebpf.ProgramID) int {
	t.Helper()
	n := 0
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Type == link.CgroupType && info.Program == id {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPrivilegedSockOpsSetPorts checks the port filter set at run time: a
// connection is tracked when one of its ports was set as it was established.
func TestPrivilegedSockOpsSetPorts(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.EnterCgroup(t)
	ops, err := NewOnPorts(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer ops.Close()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	echo := func() {
		t.Helper()
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(within))
		go func() { _, _ = io.Copy(c, stream(2, mib)); _ = c.(*net.TCPConn).CloseWrite() }()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatal(err)
		}
	}
	flows := func() uint64 {
		t.Helper()
		tot, err := ops.Totals()
		if err != nil {
			t.Fatal(err)
		}
		return tot.Flows
	}

	echo()
	if n := flows(); n != 0 {
		t.Fatalf("with no port set, %d flows tracked, want 0", n)
	}
	if err := ops.SetPorts([]uint16{port}); err != nil {
		t.Fatal(err)
	}
	echo()
	if n := flows(); n != 2 {
		t.Fatalf("with the server's port set, %d flows tracked, want 2 (client and server sockets)", n)
	}
	if err := ops.SetPorts(nil); err != nil {
		t.Fatal(err)
	}
	echo()
	if n := flows(); n != 2 {
		t.Fatalf("after the port was removed, %d flows tracked, want still 2", n)
	}
	all, err := New(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	if err := all.SetPorts([]uint16{port}); err == nil {
		t.Error("SetPorts on SockOps tracking every connection: no error")
	}
}
