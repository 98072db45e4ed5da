// Package connect sends a TCP connect() to an intercepted pod address and
// port straight to the developer's pod, with cgroup programs that rewrite the
// destination at connect time (docs/architecture.md, "Data path on a node",
// step 4; the C is in bpf/connect/connect.c). An L4 intercept's callers on
// the node then have no relay in their path: their connection is to the
// developer's pod, from their own address, at the speed of a direct
// connection.
//
// Three programs are attached to one cgroup v2 directory (the root, to see
// every process on the node):
//   - cgroup/connect4 rewrites a connect() to a redirected address and
//     counts it;
//   - cgroup/getpeername4 shows the caller the address it dialled, not the
//     developer's pod;
//   - cgroup/sock_release forgets that address when the socket is released.
//
// Callers in the host's network namespace (node daemons such as the
// kubelet's probes, host-network pods, the agent) are never redirected: they
// keep reaching the pod through the steering and the agent's relay, which
// applies the same intercept. So does every caller on other nodes.
//
// Links live with the agent's file descriptors: when the agent closes them
// or dies, the kernel detaches the programs and connect() is left alone
// again; connections already made stay with the developer's pod.
package connect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/internal/bpfutil"
)

// ErrClosed is returned by the methods of closed Redirects.
var ErrClosed = errors.New("connect redirects closed")

// Redirects owns the programs, their maps and their cgroup links.
type Redirects struct {
	mu     sync.Mutex
	objs   connectObjects
	links  []link.Link
	cgroup string
	closed bool
}

// New loads the programs, with the calling thread's network namespace as the
// host's (its callers are left alone), and attaches them to the cgroup v2
// directory at cgroupPath.
func New(cgroupPath string) (*Redirects, error) {
	if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil {
		return nil, fmt.Errorf("cgroup sock_addr programs not supported: %w", err)
	}
	host, err := NetNSCookie()
	if err != nil {
		return nil, err
	}
	spec, err := loadConnect()
	if err != nil {
		return nil, fmt.Errorf("load connect spec: %w", err)
	}
	if err := spec.Variables["host_netns"].Set(host); err != nil {
		return nil, fmt.Errorf("set host_netns: %w", err)
	}
	r := &Redirects{cgroup: cgroupPath}
	if err := spec.LoadAndAssign(&r.objs, nil); err != nil {
		return nil, bpfutil.LoadError("connect objects", err)
	}
	for _, a := range []struct {
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		// getpeername and release first: a socket redirected by connect4
		// must never see a getpeername4-less moment.
		{ebpf.AttachCgroupInetSockRelease, r.objs.SockRelease},
		{ebpf.AttachCgroupInet4GetPeername, r.objs.Getpeername4},
		{ebpf.AttachCGroupInet4Connect, r.objs.Connect4},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: a.attach, Program: a.prog})
		if err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("attach %v to cgroup %s: %w", a.attach, cgroupPath, err)
		}
		r.links = append(r.links, l)
	}
	return r, nil
}

// Cgroup is the directory the programs are attached to.
func (r *Redirects) Cgroup() string { return r.cgroup }

// From is what a redirect applies to: connections to Addr made from the
// network namespace whose cookie is NetNS (see NetNSCookie), or from any
// namespace but the host's when NetNS is 0. A connect() matching both a
// namespace's redirect and an any-namespace one takes the namespace's.
type From struct {
	NetNS uint64
	Addr  netip.AddrPort
}

func (f From) String() string {
	if f.NetNS == 0 {
		return f.Addr.String()
	}
	return fmt.Sprintf("%s from netns %d", f.Addr, f.NetNS)
}

// Set sends the connections from makes to to instead. Changing a redirect
// keeps its count.
func (r *Redirects) Set(from From, to netip.AddrPort) error {
	k, err := keyOf(from)
	if err != nil {
		return err
	}
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	if !to.Addr().Is4() || to.Port() == 0 {
		return fmt.Errorf("redirect %s to %s: want an IPv4 address and a port", from, to)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	var d connectConnectDest
	if err := r.objs.ConnectRedirects.Lookup(&k, &d); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("look up redirect of %s: %w", from, err)
	}
	a := to.Addr().As4()
	d.Addr, d.Port = binary.NativeEndian.Uint32(a[:]), to.Port()
	if err := r.objs.ConnectRedirects.Update(&k, &d, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", from, to, err)
	}
	return nil
}

// Delete stops redirecting from and returns how many connections it
// redirected. Deleting what is not there is no error.
func (r *Redirects) Delete(from From) (uint64, error) { return r.count(from, true) }

// Connections is how many connect() calls to from were redirected since it
// was set; 0 when it is not.
func (r *Redirects) Connections(from From) (uint64, error) { return r.count(from, false) }

// count reads from's count, deleting the redirect with it when del; a
// redirect not there counts 0.
func (r *Redirects) count(from From, del bool) (uint64, error) {
	k, err := keyOf(from)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, ErrClosed
	}
	lookup := r.objs.ConnectRedirects.Lookup
	if del {
		lookup = r.objs.ConnectRedirects.LookupAndDelete
	}
	var d connectConnectDest
	if err := lookup(&k, &d); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("redirect %s: %w", from, err)
	}
	return d.Connections, nil
}

// Close detaches the programs and frees the maps. Sockets redirected before
// keep their connection; getpeername then shows the developer's pod.
func (r *Redirects) Close() error {
	return bpfutil.CloseOnce(&r.mu, &r.closed, func() error {
		var errs []error
		// connect4 first: nothing is redirected without its origin kept.
		for i := len(r.links) - 1; i >= 0; i-- {
			errs = append(errs, r.links[i].Close())
		}
		errs = append(errs, r.objs.Close())
		return errors.Join(errs...)
	})
}

func keyOf(from From) (connectConnectKey, error) {
	addr := netip.AddrPortFrom(from.Addr.Addr().Unmap(), from.Addr.Port())
	if !addr.Addr().Is4() || addr.Port() == 0 {
		return connectConnectKey{}, fmt.Errorf("redirect %s: want an IPv4 address and a port", from)
	}
	a := addr.Addr().As4()
	return connectConnectKey{Netns: from.NetNS, Addr: binary.NativeEndian.Uint32(a[:]), Port: addr.Port()}, nil
}

// NetNSCookieOf is the cookie of the network namespace at path.
func NetNSCookieOf(path string) (uint64, error) {
	var c uint64
	err := netns.Do(path, func() error {
		var err error
		c, err = NetNSCookie()
		return err
	})
	return c, err
}

// NetNSCookie is the cookie of the calling thread's network namespace, as
// bpf_get_netns_cookie gives it (Linux 5.14+ for SO_NETNS_COOKIE).
func NetNSCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie (SO_NETNS_COOKIE needs Linux 5.14+): %w", err)
	}
	return c, nil
}

// CgroupV2Root finds the root of the node's cgroup v2 hierarchy: the first
// of the candidate directories that is a cgroup2 mount (a unified host
// mounts it at /sys/fs/cgroup, a hybrid one at /sys/fs/cgroup/unified; a
// container sees the host's through a hostPath volume under /host).
func CgroupV2Root() (string, error) {
	candidates := []string{
		"/host/sys/fs/cgroup/unified", "/host/sys/fs/cgroup",
		"/sys/fs/cgroup/unified", "/sys/fs/cgroup",
	}
	for _, dir := range candidates {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return filepath.Clean(dir), nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 hierarchy mounted at any of %v", candidates)
}

// LinkIDs lists the cgroup links in the kernel that run this package's
// programs, from any process, so that tests can prove none is left behind.
func LinkIDs() ([]link.ID, error) {
	ours := map[string]ebpf.ProgramType{
		connectProgConnect4:     ebpf.CGroupSockAddr,
		connectProgGetpeername4: ebpf.CGroupSockAddr,
		connectProgSockRelease:  ebpf.CGroupSock,
	}
	var ids []link.ID
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			return nil, fmt.Errorf("info of link %d: %w", it.ID, err)
		}
		if info.Type != link.CgroupType {
			continue
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if errors.Is(err, os.ErrNotExist) {
			continue // detached meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("program of link %d: %w", it.ID, err)
		}
		pi, err := prog.Info()
		prog.Close()
		if err != nil {
			return nil, fmt.Errorf("program of link %d: %w", it.ID, err)
		}
		if t, ok := ours[pi.Name]; ok && t == pi.Type {
			ids = append(ids, it.ID)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate links: %w", err)
	}
	return ids, nil
}
