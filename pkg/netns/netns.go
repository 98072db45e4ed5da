// Package netns runs code, opens listeners, dials connections and looks
// for listening sockets inside another network namespace. The agent uses it
// to own sockets in a pod's namespace while the agent process itself stays
// in the node's namespace.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named network namespaces live, as with `ip netns add`.
const RunDir = "/run/netns"

// PathOf returns the bind-mount path of the named namespace NAME.
func PathOf(name string) string { return filepath.Join(RunDir, name) }

// Do runs fn on a locked OS thread that has entered the network namespace at
// path, then returns the thread to its original namespace. Sockets created by
// fn stay in the target namespace for their whole life. If the thread cannot
// be restored it is left locked, so the Go runtime discards it instead of
// reusing a thread in the wrong namespace.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := vnetns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()
	if err := vnetns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	fnErr := fn()
	if err := vnetns.Set(orig); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return errors.Join(fnErr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Listen opens a listener inside the namespace at path ("" = current).
// MPTCP is off: since Go 1.24 net.Listen opens MPTCP sockets where the kernel
// has it, and the kernel refuses an MPTCP listener in a SOCKHASH, which is
// where steering puts the agent's listeners.
func Listen(path, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := Do(path, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	return ln, err
}

// Dialer dials from inside one network namespace.
type Dialer struct {
	Path   string // namespace path; "" dials from the current namespace
	Dialer net.Dialer
}

// DialContext creates the socket inside the namespace and connects it. The
// connect itself completes after the thread has left the namespace: a socket
// belongs to the namespace it was created in. MPTCP is off, as in Listen, so
// the connection can go into a sockmap.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := d.Dialer
	nd.SetMultipathTCP(false)
	var c net.Conn
	err := Do(d.Path, func() error {
		var err error
		c, err = nd.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Inode identifies a network namespace: two paths name the same namespace
// when their inodes match.
func Inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat netns %s: %w", path, err)
	}
	return st.Ino, nil
}

// Exists reports whether a named namespace exists.
func Exists(name string) bool {
	_, err := os.Stat(PathOf(name))
	return err == nil
}

// Create makes a new named network namespace (like `ip netns add NAME`),
// brings its loopback up, and returns its path. The calling goroutine's
// namespace is unchanged.
func Create(name string) (string, error) {
	if Exists(name) {
		return "", fmt.Errorf("netns %q already exists", name)
	}
	if err := sharedRunDir(); err != nil {
		return "", err
	}
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return "", fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()
	h, err := vnetns.NewNamed(name) // also enters it
	if err != nil {
		if rerr := vnetns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		return "", fmt.Errorf("create netns %q: %w", name, err)
	}
	h.Close()
	upErr := loUp()
	if err := vnetns.Set(orig); err != nil {
		return "", fmt.Errorf("restore netns: %w", err)
	}
	runtime.UnlockOSThread()
	if upErr != nil {
		_ = Delete(name)
		return "", upErr
	}
	return PathOf(name), nil
}

// Delete removes a named namespace created by Create or `ip netns add`.
func Delete(name string) error {
	if err := vnetns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %q: %w", name, err)
	}
	return nil
}

// loUp sets the loopback of the current thread's namespace up.
func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// sharedRunDir makes RunDir a shared mount point, as `ip netns add` does
// before its first namespace. Without it, a later `ip netns add` (by a user,
// a CNI plugin or another tool) bind-mounts RunDir over itself and hides
// the namespaces created before, which then can be neither entered by name
// nor deleted.
func sharedRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	if unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "") == nil {
		return nil // already a mount point
	}
	if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount %s onto itself: %w", RunDir, err)
	}
	if err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", RunDir, err)
	}
	return nil
}
