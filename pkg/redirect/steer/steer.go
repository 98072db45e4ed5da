// Package steer hands new TCP connections for an intercepted pod address and
// port to the agent's listener, with an sk_lookup program attached to the
// pod's network namespace (docs/architecture.md, "Data path on a node",
// step 1; the C is in bpf/steer/steer.c).
//
// One Steering loads the program and its maps once and attaches the program
// to any number of namespaces. A destination is steered by putting the
// agent's listening socket into the steer_sockets SOCKHASH under the pod's
// IPv4 address and port; a lookup that finds it is given that socket with
// bpf_sk_assign. The kernel requires the socket to be a listening TCP socket
// (or an unconnected UDP one) of the same namespace as the lookup, so the
// agent opens its listener inside the pod's namespace (pkg/netns.Do). It must
// be plain TCP: Go listens with MPTCP by default (Go 1.24+) and a sockmap
// takes no MPTCP socket, so open it with net.ListenConfig and
// SetMultipathTCP(false); Steer refuses an MPTCP listener with that advice.
// Which address the listener is bound to does not matter: "tcp4" on
// 0.0.0.0:0 and on the pod's address with port 0 both work, and so does a
// dual-stack "tcp" listener ([::]:0, as Go opens for "tcp" on 0.0.0.0), since
// the kernel only refuses an AF_INET6 socket for IPv4 lookups when it is
// IPV6_V6ONLY. Port 0 keeps the listener from taking any port the app might
// want. The listener must not use SO_REUSEPORT: the kernel would then pick
// any socket of its reuseport group.
//
// The agent's own connections to the app are exempt: the agent dials from
// inside the pod's namespace, from the pod's own address, so their remote
// address equals the local one. Connections from 127.0.0.0/8 are exempt too.
//
// Steering fails open: links live with the agent's file descriptors, so when
// the agent closes them or dies the kernel detaches the program and new
// connections reach the app again. Connections already accepted by the agent
// are the agent's to finish.
//
// On SIGKILL the order matters. The kernel closes a dying process's
// descriptors in ascending order, but the last close of each file only
// queues its release, and the queue runs newest first: the file with the
// highest descriptor is released first. The agent's connections and
// listeners have descriptors above the link's, which is made first, so they
// went first: a client whose connection was reset reconnected, was steered
// by the link still there to a listener about to go, and was reset a second
// time. So each link is also held at a descriptor above every other the
// agent has (linkFDCeiling): its release comes first, the program stops
// steering, and only then do the listeners and connections go.
package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/internal/bpfutil"
)

// ErrClosed is returned by the methods of a closed Steering.
var ErrClosed = errors.New("steering closed")

// Go listens with MPTCP by default (Go 1.24+), and sockmaps take no MPTCP
// socket (the kernel answers EOPNOTSUPP).
var errMPTCP = errors.New("listener is MPTCP, sockmaps take plain TCP only: " +
	"open it with net.ListenConfig.SetMultipathTCP(false)")

// Steering owns the sk_lookup program, its maps and its attachments.
type Steering struct {
	mu     sync.Mutex
	objs   steerObjects
	links  map[uint64]*attachment // by netns inode
	closed bool
}

type attachment struct {
	path string
	link *link.NetNsLink
	// high is a duplicate of the link's descriptor above every other the
	// agent has, so that a dying agent's link is released first (see
	// the package comment).
	high int
}

// close releases both descriptors of the link, which detaches it.
func (a *attachment) close() error {
	err := unix.Close(a.high)
	return errors.Join(err, a.link.Close())
}

// linkFDCeiling bounds where links are held: just below it, or below the
// soft RLIMIT_NOFILE when that is lower, so no descriptor the agent opens
// can be above them. The kernel sizes a process's descriptor table to the
// highest descriptor (8 bytes a slot), so the soft limit itself, often
// 1048576, would cost 8 MiB; 65536 costs 512 KiB, and an agent with more
// descriptors than that would hold more than 65,000 connections, 5 GiB of
// read and write buffers.
const linkFDCeiling = 1 << 16

// holdHigh duplicates fd, close-on-exec, to a free descriptor just below
// linkFDCeiling (or the soft limit), where the held links are the only
// descriptors: held of them are there already.
func holdHigh(fd, held int) (int, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return -1, fmt.Errorf("descriptor limit: %w", err)
	}
	top := int(min(rl.Cur, linkFDCeiling))
	// F_DUPFD takes the lowest free descriptor from a floor. Below the
	// held links there is room (a link freed by Detach leaves a hole
	// above, which is as good); should there not be, lower the floor.
	for floor := top - 1 - held; floor > fd; floor-- {
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, floor)
		if err == nil {
			return nfd, nil
		}
		if !errors.Is(err, unix.EMFILE) {
			return -1, fmt.Errorf("duplicate link descriptor: %w", err)
		}
	}
	return -1, fmt.Errorf("duplicate link descriptor: no free descriptor above %d below %d", fd, top)
}

// New loads the program and maps. Nothing is attached until Attach.
func New() (*Steering, error) {
	if err := features.HaveProgramType(ebpf.SkLookup); err != nil {
		return nil, fmt.Errorf("sk_lookup programs not supported (need Linux 5.9+): %w", err)
	}
	s := &Steering{links: make(map[uint64]*attachment)}
	// loadSteerObjects closes whatever it loaded when it fails.
	if err := loadSteerObjects(&s.objs, nil); err != nil {
		return nil, bpfutil.LoadError("steer objects", err)
	}
	return s, nil
}

// Attach attaches the program to the network namespace at netnsPath. It is
// idempotent per namespace: two paths naming the same namespace share one
// link.
func (s *Steering) Attach(netnsPath string) error {
	ino, err := netns.Inode(netnsPath)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if _, ok := s.links[ino]; ok {
		return nil
	}
	f, err := os.Open(netnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer f.Close()
	l, err := link.AttachNetNs(int(f.Fd()), s.objs.SteerLookup)
	if err != nil {
		return fmt.Errorf("attach sk_lookup to netns %s: %w", netnsPath, err)
	}
	high, err := holdHigh(l.FD(), len(s.links))
	if err != nil {
		_ = l.Close()
		return fmt.Errorf("attach sk_lookup to netns %s: %w", netnsPath, err)
	}
	s.links[ino] = &attachment{path: netnsPath, link: l, high: high}
	return nil
}

// Detach closes the link of the namespace at netnsPath, if there is one. A
// namespace that is already gone is found by the path it was attached with.
func (s *Steering) Detach(netnsPath string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	ino, err := netns.Inode(netnsPath)
	if err != nil {
		found := false
		for i, a := range s.links {
			if a.path == netnsPath {
				ino, found = i, true
				break
			}
		}
		if !found {
			return err
		}
	}
	a, ok := s.links[ino]
	if !ok {
		return nil
	}
	delete(s.links, ino)
	if err := a.close(); err != nil {
		return fmt.Errorf("close link of netns %s: %w", a.path, err)
	}
	return nil
}

// Attached returns the paths of the namespaces with a link, sorted.
func (s *Steering) Attached() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	paths := make([]string, 0, len(s.links))
	for _, a := range s.links {
		paths = append(paths, a.path)
	}
	slices.Sort(paths)
	return paths
}

// Steer hands new TCP connections to addr:port, in any attached namespace, to
// ln. ln must be listening inside the namespace that owns addr. Steering the
// same destination again replaces the listener.
func (s *Steering) Steer(addr netip.Addr, port uint16, ln *net.TCPListener) error {
	key, err := keyOf(addr, port)
	if err != nil {
		return err
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		return fmt.Errorf("listener fd: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	var updErr error
	// The kernel takes its own reference to the socket: the fd only has to
	// be valid during the update.
	if err := rc.Control(func(fd uintptr) {
		proto, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
		switch {
		case err != nil:
			updErr = fmt.Errorf("listener protocol: %w", err)
		case proto == unix.IPPROTO_MPTCP:
			updErr = errMPTCP
		default:
			updErr = s.objs.SteerSockets.Update(&key, uint64(fd), ebpf.UpdateAny)
		}
	}); err != nil {
		return fmt.Errorf("listener fd: %w", err)
	}
	if updErr != nil {
		return fmt.Errorf("steer %s: %w", netip.AddrPortFrom(addr, port), updErr)
	}
	return nil
}

// Unsteer stops steering addr:port and drops its counters. Unsteering a
// destination that is not steered is not an error.
func (s *Steering) Unsteer(addr netip.Addr, port uint16) error {
	key, err := keyOf(addr, port)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	var errs []error
	for _, m := range []*ebpf.Map{s.objs.SteerSockets, s.objs.SteerStats} {
		if err := m.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("unsteer %s: %w", netip.AddrPortFrom(addr, port), err))
		}
	}
	return errors.Join(errs...)
}

// Connections returns how many connections to addr:port were handed to the
// agent's listener since it was steered; 0 for a destination never steered.
func (s *Steering) Connections(addr netip.Addr, port uint16) (uint64, error) {
	key, err := keyOf(addr, port)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	var st steerSteerStat
	if err := s.objs.SteerStats.Lookup(&key, &st); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("stats of %s: %w", netip.AddrPortFrom(addr, port), err)
	}
	return st.Connections, nil
}

// Close detaches the program from every namespace, then unloads it and its
// maps. It is idempotent.
func (s *Steering) Close() error {
	return bpfutil.CloseOnce(&s.mu, &s.closed, func() error {
		var errs []error
		for ino, a := range s.links {
			if err := a.close(); err != nil {
				errs = append(errs, fmt.Errorf("close link of netns %s: %w", a.path, err))
			}
			delete(s.links, ino)
		}
		if err := s.objs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close steer objects: %w", err))
		}
		return errors.Join(errs...)
	})
}

// LinkIDs lists the sk_lookup links in the kernel that run this package's
// program, from any process, so that tests can prove none is left behind.
// Given namespace inodes (see pkg/netns.Inode), it lists only the links
// attached to those namespaces.
func LinkIDs(netnsInodes ...uint64) ([]link.ID, error) {
	var ids []link.ID
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			return nil, fmt.Errorf("info of link %d: %w", it.ID, err)
		}
		ns := info.NetNs()
		if info.Type != link.NetNsType || ns == nil || ebpf.AttachType(ns.AttachType) != ebpf.AttachSkLookup {
			continue
		}
		if len(netnsInodes) > 0 && !slices.Contains(netnsInodes, uint64(ns.NetnsInode)) {
			continue
		}
		ours, err := runsOurProgram(info.Program)
		if err != nil {
			return nil, fmt.Errorf("program of link %d: %w", it.ID, err)
		}
		if ours {
			ids = append(ids, it.ID)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate links: %w", err)
	}
	return ids, nil
}

func runsOurProgram(id ebpf.ProgramID) (bool, error) {
	prog, err := ebpf.NewProgramFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // detached meanwhile
	}
	if err != nil {
		return false, err
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return false, err
	}
	return info.Type == ebpf.SkLookup && info.Name == steerProgSteerLookup, nil
}

// keyOf builds the map key of an IPv4 destination: the address in network
// byte order, the port in host byte order, as the sk_lookup context has them.
func keyOf(addr netip.Addr, port uint16) (steerSteerKey, error) {
	addr = addr.Unmap()
	if !addr.Is4() {
		return steerSteerKey{}, fmt.Errorf("steer %v: only IPv4 destinations are steered", addr)
	}
	a4 := addr.As4()
	return steerSteerKey{Addr: binary.NativeEndian.Uint32(a4[:]), Port: port}, nil
}
