// Package fastpath owns the kernel fast path (docs/architecture.md, "Data
// path on a node", step 7): a cgroup sock_ops program that puts the
// sockets of callers of fast ports, and of the connections the app and the
// destinations accept, into a SOCKHASH, and an sk_msg program on them that
// routes each HTTP/1.1 request the way the proxy would and puts it, and
// then its response, straight into the receiving socket's queue
// (bpf/fastpath/fastpath.c).
//
// The agent stays in charge: it compiles each port's routes into the
// program's rules (SetPort), serves every caller's first requests itself,
// pairs a caller with the upstream connections it made for it (Conn.Pair)
// and offers the caller to the kernel between requests (Conn.Handback).
// Whatever the program cannot settle comes back to the agent as ordinary
// TCP bytes.
package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/pkg/redirect/internal/bpfutil"
)

// ErrClosed is returned by the methods of a closed FastPath.
var ErrClosed = errors.New("fast path closed")

// ErrNotOnNode: the caller's socket is not one the kernel can reach (a
// caller on another node, in the host's namespace before the attach, or
// MPTCP).
var ErrNotOnNode = errors.New("caller's socket not in the fast path's map")

// DefaultMaxBody is the largest body, either way, the kernel queues for a
// reader: ingress redirects are not charged to the reader's receive
// buffer, so this bounds what a slow reader can make the kernel hold per
// connection. Larger bodies go through the agent.
const DefaultMaxBody = 256 << 10

// Config configures a FastPath.
type Config struct {
	// Cgroup is the cgroup v2 directory the sock_ops program attaches
	// to: the node's root, so that callers in every pod are seen.
	Cgroup string
	// MaxBody: see DefaultMaxBody (0: the default).
	MaxBody uint32
}

// FastPath is the loaded programs and maps. It is safe for concurrent use.
type FastPath struct {
	mu      sync.Mutex
	closed  bool
	objs    fastpathObjects
	sockops link.Link
	mem     []byte // fp_state, shared with the program

	freeConns []uint32
	freeSets  []uint32
	freeRules []uint32
	counters  counterAlloc
	ports     map[netip.AddrPort]*Port
	dests     map[netip.AddrPort]int // destination address -> ports naming it
	aliases   map[netip.AddrPort]int // Service address -> ports it leads to
	froms     map[netip.Addr]int     // pod address -> its ports with destinations (fp_froms)
}

// Stats are the program's counts since load, summed over CPUs.
type Stats struct {
	Routed, Responses                                                      uint64
	PassMode, PassHead, PassFraming, PassRules, PassUnpaired, PassRedirect uint64
	Taken, Pipelined, Handbacks, HandbackWaits                             uint64
}

// New loads the programs, attaches the sk_msg program to the SOCKHASH and
// the sock_ops program to cfg.Cgroup. It needs kernel BTF (the handback
// reads TCP sequence numbers), bpf_loop (5.17) and CAP_BPF, CAP_NET_ADMIN
// and CAP_PERFMON.
func New(cfg Config) (*FastPath, error) {
	for _, pt := range []ebpf.ProgramType{ebpf.SkMsg, ebpf.SockOps} {
		if err := features.HaveProgramType(pt); err != nil {
			return nil, fmt.Errorf("%v programs not supported: %w", pt, err)
		}
	}
	if err := features.HaveMapType(ebpf.SockHash); err != nil {
		return nil, fmt.Errorf("SOCKHASH maps not supported: %w", err)
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	spec, err := loadFastpath()
	if err != nil {
		return nil, fmt.Errorf("load fastpath spec: %w", err)
	}
	if err := spec.Variables["fp_max_body"].Set(cfg.MaxBody); err != nil {
		return nil, fmt.Errorf("set fp_max_body: %w", err)
	}
	if err := spec.Variables["fp_builtins"].Set(builtins()); err != nil {
		return nil, fmt.Errorf("set fp_builtins: %w", err)
	}
	f := &FastPath{ports: map[netip.AddrPort]*Port{}, dests: map[netip.AddrPort]int{}, aliases: map[netip.AddrPort]int{}, froms: map[netip.Addr]int{}}
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		return nil, bpfutil.LoadError("fastpath objects", err)
	}
	fail := func(err error) (*FastPath, error) {
		f.release()
		return nil, err
	}
	// BPF_PROG_ATTACH, as the splice's verdict: the program stays
	// attached while the map lives, and goes with it.
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: f.objs.FpSocks.FD(), Program: f.objs.FpMsg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fail(fmt.Errorf("attach sk_msg to fp_socks: %w", err))
	}
	size := int(f.objs.FpState.MaxEntries()) * int(f.objs.FpState.ValueSize())
	if ps := os.Getpagesize(); size%ps != 0 {
		size += ps - size%ps
	}
	if f.mem, err = unix.Mmap(f.objs.FpState.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fail(fmt.Errorf("map fp_state: %w", err))
	}
	if f.sockops, err = link.AttachCgroup(link.CgroupOptions{Path: cfg.Cgroup, Attach: ebpf.AttachCGroupSockOps, Program: f.objs.FpSockops}); err != nil {
		return fail(fmt.Errorf("attach sock_ops to cgroup %s: %w", cfg.Cgroup, err))
	}
	for i := maxConns - 1; i >= 0; i-- {
		f.freeConns = append(f.freeConns, uint32(i))
	}
	for i := maxSets - 1; i >= 0; i-- {
		f.freeSets = append(f.freeSets, uint32(i))
	}
	for i := maxRules - 1; i >= 0; i-- {
		f.freeRules = append(f.freeRules, uint32(i))
	}
	f.counters = newCounterAlloc(maxCounters)
	return f, nil
}

// builtins are the names the program knows, in the order of its FP_B_*.
func builtins() [8]fastpathFpName {
	var out [8]fastpathFpName
	for i, n := range []string{"x-detour-session", "baggage", "content-length", "transfer-encoding", "connection", "upgrade", "expect"} {
		out[i] = nameEntry(n)
	}
	return out
}

func nameEntry(n string) fastpathFpName {
	e := fastpathFpName{Hash: fnv64(n), Len: uint32(len(n))}
	copy(e.Name[:], n)
	return e
}

// Close detaches the sock_ops program (no new sockets are added), then
// releases the maps, which detaches the sk_msg program and takes every
// socket out of the map: callers' later requests go over TCP to the agent's
// sockets again. Idempotent.
func (f *FastPath) Close() error {
	return bpfutil.CloseOnce(&f.mu, &f.closed, func() error { return f.release() })
}

func (f *FastPath) release() error {
	var errs []error
	if f.sockops != nil {
		errs = append(errs, f.sockops.Close())
	}
	if f.mem != nil {
		errs = append(errs, unix.Munmap(f.mem))
		f.mem = nil
	}
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}

// Stats reads the program's counts.
func (f *FastPath) Stats() (Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return Stats{}, ErrClosed
	}
	var v [12]uint64
	for i := range v {
		var per []uint64
		if err := f.objs.FpStats.Lookup(uint32(i), &per); err != nil {
			return Stats{}, err
		}
		for _, x := range per {
			v[i] += x
		}
	}
	return Stats{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]}, nil
}

// count is a counter of fp_counts summed over CPUs.
func (f *FastPath) count(id uint32) uint64 {
	var per []uint64
	if err := f.objs.FpCounts.Lookup(id, &per); err != nil {
		return 0
	}
	var n uint64
	for _, x := range per {
		n += x
	}
	return n
}

// conn is caller entry idx in the shared memory.
func (f *FastPath) conn(idx uint32) *fastpathFpConn {
	size := uintptr(f.objs.FpState.ValueSize())
	return (*fastpathFpConn)(unsafe.Pointer(&f.mem[uintptr(idx)*size]))
}

// tupleOf is the key of the socket at the other end of c, as that socket
// sees itself: local is c's remote address.
func tupleOf(c net.Conn) (fastpathFpTuple, error) {
	l, lok := c.LocalAddr().(*net.TCPAddr)
	r, rok := c.RemoteAddr().(*net.TCPAddr)
	if !lok || !rok {
		return fastpathFpTuple{}, errors.New("not a TCP connection")
	}
	la, ra := l.AddrPort(), r.AddrPort()
	if !la.Addr().Unmap().Is4() || !ra.Addr().Unmap().Is4() {
		return fastpathFpTuple{}, errors.New("not IPv4")
	}
	return fastpathFpTuple{
		LocalIp4: ip4(ra.Addr()), RemoteIp4: ip4(la.Addr()),
		LocalPort: ra.Port(), RemotePort: la.Port(),
	}, nil
}

// ip4 is a's IPv4 address in network byte order, as the program has it.
func ip4(a netip.Addr) uint32 {
	b := a.Unmap().As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrKey(a netip.AddrPort) fastpathFpAddr {
	return fastpathFpAddr{Ip4: ip4(a.Addr()), Port: a.Port()}
}

// inMap reports whether the socket with key t is in fp_socks.
func (f *FastPath) inMap(t fastpathFpTuple) bool {
	var cookie uint64
	return f.objs.FpSocks.Lookup(&t, &cookie) == nil
}

// counterAlloc hands out fp_counts entries: one per intercept (shared by
// its ports), one per port for the app.
type counterAlloc struct {
	free []uint32
	byID map[string]*counterRef
}

type counterRef struct {
	id   uint32
	refs int
}

func newCounterAlloc(n int) counterAlloc {
	a := counterAlloc{byID: map[string]*counterRef{}}
	for i := n - 1; i >= 0; i-- {
		a.free = append(a.free, uint32(i))
	}
	return a
}

func (a *counterAlloc) get(id string) (uint32, bool) {
	if r := a.byID[id]; r != nil {
		r.refs++
		return r.id, true
	}
	if len(a.free) == 0 {
		return 0, false
	}
	r := &counterRef{id: a.free[len(a.free)-1], refs: 1}
	a.free = a.free[:len(a.free)-1]
	a.byID[id] = r
	return r.id, true
}

// put releases a reference; the caller zeroes the counter when it was the
// last (reported by the bool).
func (a *counterAlloc) put(id string) (uint32, bool) {
	r := a.byID[id]
	if r == nil {
		return 0, false
	}
	if r.refs--; r.refs > 0 {
		return r.id, false
	}
	delete(a.byID, id)
	a.free = append(a.free, r.id)
	return r.id, true
}
