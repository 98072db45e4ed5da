package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/detourdev/detour/pkg/netns"
)

// plan is what preflight resolved before anything is created.
type plan struct {
	ip   string     // the ip(8) binary, for `ip netns exec`
	argv [][]string // per pod: resolved command, nil if none
	path string     // PATH given to the pods
}

// preflight checks everything that can be checked before making anything,
// so the common failures (lab already up, a name taken, a command missing)
// leave nothing to roll back.
func preflight(f *File, opts Options) (*plan, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab up needs root: it creates network namespaces, veths and a bridge")
	}
	if st, err := LoadState(opts.StateDir); err == nil {
		if st.Lab == f.Name {
			return nil, fmt.Errorf("%w: lab %q is already up (state in %s); run `detour lab down --state-dir %s` first",
				ErrConflict, st.Lab, opts.StateDir, opts.StateDir)
		}
		return nil, fmt.Errorf("%w: state dir %s holds lab %q; run `detour lab down --state-dir %s` or use another --state-dir",
			ErrConflict, opts.StateDir, st.Lab, opts.StateDir)
	} else if !errors.Is(err, ErrNotUp) {
		return nil, err
	}

	pl := &plan{argv: make([][]string, len(f.Pods))}
	dirs := append([]string{}, opts.PathPrepend...)
	dirs = append(dirs, filepath.SplitList(os.Getenv("PATH"))...)
	pl.path = strings.Join(dirs, string(os.PathListSeparator))

	var errs []error
	conflict := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConflict}, a...)...))
	}
	for i, p := range f.Pods {
		if netns.Exists(p.Name) {
			conflict("pod %s: network namespace %s already exists (not made by this lab: no state in %s); remove it with `ip netns del %s` or rename the pod",
				p.Name, netns.PathOf(p.Name), opts.StateDir, p.Name)
		}
		if _, err := os.Lstat(filepath.Join(EtcNetnsDir, p.Name)); err == nil {
			conflict("pod %s: %s already exists; it would shadow the lab's hosts file", p.Name, filepath.Join(EtcNetnsDir, p.Name))
		}
		veth := HostVethName(f.Network.Bridge, p.Name)
		if _, err := netlink.LinkByName(veth); err == nil {
			conflict("pod %s: interface %s already exists", p.Name, veth)
		}
		if len(p.Command) > 0 {
			bin, err := lookPath(p.Command[0], dirs)
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s: %w", p.Name, err))
				continue
			}
			pl.argv[i] = append([]string{bin}, p.Command[1:]...)
		}
	}
	if err := checkNetwork(f); err != nil {
		errs = append(errs, err)
	}
	if hasCommands(f) {
		ip, err := lookPath("ip", append(filepath.SplitList(os.Getenv("PATH")), "/usr/sbin", "/sbin", "/usr/bin", "/bin"))
		if err != nil {
			errs = append(errs, fmt.Errorf("iproute2 is needed to run pod commands (`ip netns exec`): %w", err))
		}
		pl.ip = ip
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return pl, nil
}

func hasCommands(f *File) bool {
	for _, p := range f.Pods {
		if len(p.Command) > 0 {
			return true
		}
	}
	return false
}

// checkNetwork refuses a bridge name held by something else and a subnet
// that overlaps an address already on the node, which would make routing
// to either ambiguous.
func checkNetwork(f *File) error {
	prefix := f.Prefix()
	brIndex := 0
	if l, err := netlink.LinkByName(f.Network.Bridge); err == nil {
		if l.Type() != "bridge" {
			return fmt.Errorf("%w: network.bridge %s exists and is a %s, not a bridge", ErrConflict, f.Network.Bridge, l.Type())
		}
		brIndex = l.Attrs().Index
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		p, ok := netipPrefix(a.IPNet)
		if !ok || !p.Overlaps(prefix) {
			continue
		}
		if a.LinkIndex == brIndex && p.Addr() == f.Gateway() && p.Bits() == prefix.Bits() {
			// The bridge already carries the gateway: fine unless pods of
			// another lab hang off it, whose addresses ours would repeat.
			if n := bridgePorts(brIndex); n > 0 {
				return fmt.Errorf("%w: bridge %s already carries %s and has %d ports: another lab is probably up; bring it down or choose another network.bridge and network.subnet",
					ErrConflict, f.Network.Bridge, p, n)
			}
			continue
		}
		name := fmt.Sprint(a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		return fmt.Errorf("%w: network.subnet %s overlaps %s on %s; choose another subnet", ErrConflict, prefix, p, name)
	}
	return nil
}

func bridgePorts(index int) int {
	links, err := netlink.LinkList()
	if err != nil {
		return 0
	}
	n := 0
	for _, l := range links {
		if l.Attrs().MasterIndex == index {
			n++
		}
	}
	return n
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// lookPath finds a command as a shell would, but in the given directories
// rather than this process's PATH, so PathPrepend applies.
func lookPath(name string, dirs []string) (string, error) {
	isExec := func(p string) bool {
		fi, err := os.Stat(p)
		return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
	}
	if strings.Contains(name, "/") {
		if abs, err := filepath.Abs(name); err == nil && isExec(abs) {
			return abs, nil
		}
		return "", fmt.Errorf("command %q: not an executable file", name)
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if isExec(p) {
			if abs, err := filepath.Abs(p); err == nil {
				return abs, nil
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q not found in %s", name, strings.Join(dirs, string(os.PathListSeparator)))
}
