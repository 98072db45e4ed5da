// Package flowmetrics measures the TCP flows of a cgroup from the kernel's
// own TCP state (docs/architecture.md, "Data path on a node", step 5): a
// cgroup sock_ops program (bpf/sockops/sockops.c) turns on the RTT,
// retransmit and RTO callbacks of each connection as it is established and
// keeps per-flow smoothed RTT and retransmits, and node-wide totals that
// SockOps exports to Prometheus.
package flowmetrics

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/pkg/redirect/internal/bpfutil"
)

// ErrClosed is returned by the methods of a closed SockOps.
var ErrClosed = errors.New("flow metrics closed")

// SockOps attaches the flow metrics sock_ops program to a cgroup v2 and
// reads what it records: per flow the smoothed RTT and retransmits, and
// node-wide totals that only grow. It is a prometheus.Collector.
//
// sock_ops programs see the TCP sockets created by the processes of the
// cgroup and its descendants (an accepted socket belongs to its listener's
// cgroup), in any network namespace. For the agent that means:
//   - the flows of a pod: attach to the pod's cgroup v2 directory (under
//     kubepods.slice with the systemd driver, /sys/fs/cgroup on a v2 host);
//   - the agent's own spliced sockets: the agent's cgroup;
//   - on a cgroup v1/v2 hybrid host (v2 mounted at /sys/fs/cgroup/unified,
//     as here) the runtime may not place pods in the v2 tree at all; then
//     attach once to the v2 root, which sees every process, and name the
//     intercepted ports so only those flows pay for the callbacks.
//
// Only connections established after the attach are tracked: the program
// turns on the callbacks when the handshake completes.
type SockOps struct {
	mu     sync.Mutex
	objs   sockopsObjects
	link   link.Link
	cgroup string
	filter bool // only connections with a port in flow_ports
	closed bool

	rttDesc, retransDesc, rtoDesc, flowsDesc *prometheus.Desc
}

// New loads the program and attaches it to the cgroup v2 directory at
// cgroupPath. With ports, it tracks only connections with one of them as
// local or remote port; without, every connection of the cgroup.
func New(cgroupPath string, ports ...uint16) (*SockOps, error) {
	return newSockOps(cgroupPath, len(ports) > 0, ports)
}

// NewOnPorts is New tracking only connections with a port
// given to SetPorts (none until then) as local or remote port: for a cgroup
// that holds more than the flows of interest.
func NewOnPorts(cgroupPath string) (*SockOps, error) {
	return newSockOps(cgroupPath, true, nil)
}

// SetPorts replaces the ports whose connections are tracked, for SockOps
// made by NewOnPorts. A connection is chosen when it is established:
// changing the ports does not start or stop tracking the ones already open.
func (s *SockOps) SetPorts(ports []uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case !s.filter:
		return errors.New("flowmetrics: tracking every connection; SetPorts needs NewOnPorts")
	}
	want := make(map[uint16]bool, len(ports))
	for _, p := range ports {
		want[p] = true
	}
	var (
		p     uint16
		v     uint8
		stale []uint16
	)
	for it := s.objs.FlowPorts.Iterate(); it.Next(&p, &v); {
		if !want[p] {
			stale = append(stale, p)
		}
		delete(want, p)
	}
	for _, p := range stale {
		if err := s.objs.FlowPorts.Delete(&p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove port %d: %w", p, err)
		}
	}
	for p := range want {
		if err := s.objs.FlowPorts.Update(&p, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("add port %d: %w", p, err)
		}
	}
	return nil
}

func newSockOps(cgroupPath string, filter bool, ports []uint16) (*SockOps, error) {
	if err := features.HaveProgramType(ebpf.SockOps); err != nil {
		return nil, fmt.Errorf("sock_ops programs not supported: %w", err)
	}
	spec, err := loadSockops()
	if err != nil {
		return nil, fmt.Errorf("load sockops spec: %w", err)
	}
	if filter {
		if err := spec.Variables["filter_ports"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set filter_ports: %w", err)
		}
	}
	s := &SockOps{cgroup: cgroupPath, filter: filter}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		return nil, bpfutil.LoadError("sockops objects", err)
	}
	for _, p := range ports {
		if err := s.objs.FlowPorts.Update(&p, uint8(1), ebpf.UpdateAny); err != nil {
			s.objs.Close()
			return nil, fmt.Errorf("add port %d: %w", p, err)
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{
		Path:    cgroupPath,
		Attach:  ebpf.AttachCGroupSockOps,
		Program: s.objs.FlowSockops,
	})
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("attach sock_ops to cgroup %s: %w", cgroupPath, err)
	}
	s.link = l
	s.rttDesc = prometheus.NewDesc("detour_agent_flow_rtt_seconds",
		"Smoothed RTT of tracked TCP flows, one sample per RTT measurement (sock_ops RTT callback).", nil, nil)
	s.retransDesc = prometheus.NewDesc("detour_agent_flow_retransmits_total",
		"TCP segments retransmitted by tracked flows.", nil, nil)
	s.rtoDesc = prometheus.NewDesc("detour_agent_flow_rtos_total",
		"Retransmission timeouts of tracked flows.", nil, nil)
	s.flowsDesc = prometheus.NewDesc("detour_agent_flows",
		"TCP flows currently tracked for RTT and retransmits.", nil, nil)
	return s, nil
}

// Flow is one tracked TCP connection.
type Flow struct {
	Cookie        uint64 // socket cookie, as the splice map keys sockets
	Local, Remote netip.AddrPort
	SRTT          time.Duration // smoothed RTT at the last sample
	RTTSamples    uint64
	Retransmits   uint32 // segments
	RTOs          uint32
}

// Flows returns the connections tracked now, by cookie. A connection leaves
// when it closes.
func (s *SockOps) Flows() ([]Flow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	var (
		out    []Flow
		cookie uint64
		f      sockopsFlow
	)
	it := s.objs.Flows.Iterate()
	for it.Next(&cookie, &f) {
		out = append(out, flowOf(cookie, &f))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate flows: %w", err)
	}
	slices.SortFunc(out, func(a, b Flow) int { return cmp.Compare(a.Cookie, b.Cookie) })
	return out, nil
}

func flowOf(cookie uint64, f *sockopsFlow) Flow {
	addr := func(ip [4]uint32) netip.Addr {
		var b [16]byte
		for i, w := range ip {
			binary.NativeEndian.PutUint32(b[4*i:], w) // network byte order in memory
		}
		if f.Family == unix.AF_INET {
			return netip.AddrFrom4([4]byte(b[:4]))
		}
		return netip.AddrFrom16(b)
	}
	return Flow{
		Cookie:      cookie,
		Local:       netip.AddrPortFrom(addr(f.LocalIp), f.LocalPort),
		Remote:      netip.AddrPortFrom(addr(f.RemoteIp), f.RemotePort),
		SRTT:        time.Duration(f.SrttUs) * time.Microsecond,
		RTTSamples:  f.RttSamples,
		Retransmits: f.TotalRetrans,
		RTOs:        f.Rtos,
	}
}

// rttBuckets is FLOW_RTT_BUCKETS in bpf/sockops/sockops.c.
const rttBuckets = len(sockopsFlowTotals{}.RttBuckets)

// Totals are node-wide sums over every flow tracked since the attach,
// closed ones included; they only grow.
type Totals struct {
	// RTTBuckets[i] counts RTT samples <= 2^i µs (and above the previous
	// bound); the last one counts the samples above all bounds.
	RTTBuckets  [rttBuckets]uint64
	RTTSum      time.Duration
	RTTCount    uint64
	Retransmits uint64 // segments
	RTOs        uint64
	Flows       uint64 // flows ever tracked
}

// Totals sums the per-CPU totals.
func (s *SockOps) Totals() (Totals, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Totals{}, ErrClosed
	}
	var perCPU []sockopsFlowTotals
	if err := s.objs.FlowStats.Lookup(uint32(0), &perCPU); err != nil {
		return Totals{}, fmt.Errorf("flow totals: %w", err)
	}
	var t Totals
	var sumUs uint64
	for _, c := range perCPU {
		for i, n := range c.RttBuckets {
			t.RTTBuckets[i] += n
		}
		sumUs += c.RttSumUs
		t.RTTCount += c.RttCount
		t.Retransmits += c.Retrans
		t.RTOs += c.Rtos
		t.Flows += c.Flows
	}
	t.RTTSum = time.Duration(sumUs) * time.Microsecond
	return t, nil
}

// Describe implements prometheus.Collector.
func (s *SockOps) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.rttDesc
	ch <- s.retransDesc
	ch <- s.rtoDesc
	ch <- s.flowsDesc
}

// Collect implements prometheus.Collector: a histogram with bounds at powers
// of two microseconds, the counters, and the number of flows tracked now.
func (s *SockOps) Collect(ch chan<- prometheus.Metric) {
	t, err := s.Totals()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(s.rttDesc, err)
		return
	}
	ch <- prometheus.MustNewConstHistogram(s.rttDesc, t.RTTCount, t.RTTSum.Seconds(), cumulative(t.RTTBuckets))
	ch <- prometheus.MustNewConstMetric(s.retransDesc, prometheus.CounterValue, float64(t.Retransmits))
	ch <- prometheus.MustNewConstMetric(s.rtoDesc, prometheus.CounterValue, float64(t.RTOs))
	if flows, err := s.Flows(); err == nil {
		ch <- prometheus.MustNewConstMetric(s.flowsDesc, prometheus.GaugeValue, float64(len(flows)))
	}
}

// cumulative turns per-bucket counts into Prometheus's cumulative buckets,
// by upper bound in seconds; the overflow bucket is left to +Inf (count).
func cumulative(b [rttBuckets]uint64) map[float64]uint64 {
	out := make(map[float64]uint64, rttBuckets-1)
	var sum uint64
	for i := range rttBuckets - 1 {
		sum += b[i]
		out[math.Ldexp(1e-6, i)] = sum
	}
	return out
}

// Close detaches the program, then unloads it and its maps. It is
// idempotent.
func (s *SockOps) Close() error {
	return bpfutil.CloseOnce(&s.mu, &s.closed, func() error {
		var errs []error
		if err := s.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach sock_ops from %s: %w", s.cgroup, err))
		}
		if err := s.objs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close sockops objects: %w", err))
		}
		return errors.Join(errs...)
	})
}

// programID is the kernel's id of the loaded sock_ops program.
func (s *SockOps) programID() (ebpf.ProgramID, error) { return bpfutil.ProgramID(s.objs.FlowSockops) }
