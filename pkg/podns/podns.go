// Package podns finds the network namespace of a pod on this node from the
// pod's IP address. In Kubernetes the controller knows a target pod's IP but
// not where its namespace is on the node; a node agent that shares the host's
// PID namespace (hostPID) finds it: every process's /proc/<pid>/ns/net names
// its network namespace, and the pod's is the one whose interfaces hold the
// pod's IP.
//
// Opening /proc/<pid>/ns/net of another user's process is a ptrace access
// check (CAP_SYS_PTRACE), and reading a namespace's addresses enters it
// (setns(2), CAP_SYS_ADMIN).
package podns

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/pkg/netns"
)

// NotFoundError is Resolve's answer when no namespace on the node has the
// address.
type NotFoundError struct {
	Addr netip.Addr
	// Denied counts the processes whose namespace could not be opened, and
	// Unentered the namespaces that could not be entered, for lack of
	// permission: the pod may be among them.
	Denied, Unentered int
}

func (e *NotFoundError) Error() string {
	msg := fmt.Sprintf("no network namespace on this node has address %s (is the pod on this node, and does the agent run with hostPID?)", e.Addr)
	if e.Denied > 0 {
		msg += fmt.Sprintf("; the namespaces of %d processes could not be opened: permission denied "+
			"(without CAP_SYS_PTRACE the agent cannot open those of other users' processes, or of processes with capabilities it lacks)", e.Denied)
	}
	if e.Unentered > 0 {
		msg += fmt.Sprintf("; %d namespaces could not be entered: permission denied (the agent needs CAP_SYS_ADMIN)", e.Unentered)
	}
	return msg
}

// nsID identifies a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

// entry is where an address was found: its namespace and the path of one
// live process's handle on it.
type entry struct {
	id   nsID
	path string
}

// Resolver finds pod network namespaces by address under a procfs root and
// remembers what it found. It is safe for concurrent use.
type Resolver struct {
	proc  string
	stat  func(path string) (nsID, error)
	addrs func(nsPath string) ([]netip.Addr, error)

	mu sync.Mutex
	// byIP is what the last scan found. An address seen in more than one
	// namespace keeps them all, so that Resolve refuses to choose.
	byIP map[netip.Addr][]entry
}

// New returns a Resolver over the host's /proc (the agent needs hostPID).
func New() *Resolver { return newResolver("/proc", statNS, namespaceAddrs) }

func newResolver(proc string, stat func(string) (nsID, error), addrs func(string) ([]netip.Addr, error)) *Resolver {
	return &Resolver{proc: proc, stat: stat, addrs: addrs, byIP: map[netip.Addr][]entry{}}
}

// Resolve returns a path of the network namespace that holds addr on one of
// its interfaces: /proc/<pid>/ns/net of the namespace's process with the
// lowest PID (for a pod, most likely its long-lived sandbox process). The
// path names the namespace only while that process lives; callers that keep
// using the namespace should open it and hold the descriptor.
//
// An answer from the last scan is checked before it is returned (the
// process may have exited, a reused PID may be in another namespace, the
// namespace may no longer have the address); when it fails the check, or the
// address is unknown, /proc is scanned again.
func (r *Resolver) Resolve(addr netip.Addr) (string, error) {
	addr = addr.Unmap()
	if !addr.Is4() {
		return "", fmt.Errorf("resolve the network namespace of %v: only IPv4 pod addresses are supported", addr)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if es := r.byIP[addr]; len(es) == 1 && r.holds(es[0], addr) {
		return es[0].path, nil
	}
	byIP, nf, err := r.scan()
	if err != nil {
		return "", err
	}
	r.byIP = byIP
	switch es := byIP[addr]; len(es) {
	case 0:
		nf.Addr = addr
		return "", nf
	case 1:
		return es[0].path, nil
	default:
		paths := make([]string, len(es))
		for i, e := range es {
			paths[i] = e.path
		}
		return "", fmt.Errorf("address %s is in %d network namespaces on this node (%s): not choosing one", addr, len(es), strings.Join(paths, ", "))
	}
}

// holds reports whether e's path still names e's namespace and that
// namespace still has addr.
func (r *Resolver) holds(e entry, addr netip.Addr) bool {
	if id, err := r.stat(e.path); err != nil || id != e.id {
		return false
	}
	addrs, err := r.addrs(e.path)
	return err == nil && slices.Contains(addrs, addr)
}

// scan maps every IPv4 address of every network namespace with a process to
// that namespace. Processes that exit during the scan are passed over; so
// are namespaces that cannot be opened or entered, which are counted in nf
// when for lack of permission.
func (r *Resolver) scan() (byIP map[netip.Addr][]entry, nf *NotFoundError, err error) {
	dirents, err := os.ReadDir(r.proc)
	if err != nil {
		return nil, nil, fmt.Errorf("list processes: %w", err)
	}
	nf = &NotFoundError{}
	var pids []int
	for _, d := range dirents {
		if pid, err := strconv.Atoi(d.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)

	// Each namespace with the handles of its processes, lowest PID first.
	var order []nsID
	handles := map[nsID][]string{}
	for _, pid := range pids {
		path := filepath.Join(r.proc, strconv.Itoa(pid), "ns", "net")
		id, err := r.stat(path)
		switch {
		case err == nil:
		case isPermission(err):
			nf.Denied++
			continue
		default: // exited, or a kernel thread being reaped
			continue
		}
		if _, ok := handles[id]; !ok {
			order = append(order, id)
		}
		handles[id] = append(handles[id], path)
	}

	byIP = map[netip.Addr][]entry{}
	for _, id := range order {
		for _, path := range handles[id] {
			addrs, err := r.addrs(path)
			if isPermission(err) {
				nf.Unentered++
				break
			}
			if err != nil {
				continue // most likely exited: try the namespace's next process
			}
			for _, a := range addrs {
				a = a.Unmap()
				if a.Is4() && !a.IsLoopback() {
					byIP[a] = append(byIP[a], entry{id: id, path: path})
				}
			}
			break
		}
	}
	return byIP, nf, nil
}

func isPermission(err error) bool {
	return errors.Is(err, fs.ErrPermission)
}

// statNS identifies the namespace at path (following the /proc magic link).
func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// namespaceAddrs lists the IPv4 addresses of the namespace at nsPath, read
// over netlink from inside it.
func namespaceAddrs(nsPath string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := netns.Do(nsPath, func() error {
		// The package-level handle opens its netlink socket per request, in
		// the namespace of the calling (locked) thread.
		list, err := netlink.AddrList(nil, netlink.FAMILY_V4)
		// A dump racing an address change is marked interrupted and may
		// be incomplete: ask again.
		for i := 0; i < 3 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
			list, err = netlink.AddrList(nil, netlink.FAMILY_V4)
		}
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		for _, a := range list {
			if a.IPNet == nil {
				continue
			}
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
		return nil
	})
	return out, err
}
