// Package lab simulates one Kubernetes node on the local kernel: every pod is
// a real named network namespace wired to a bridge in the node's namespace by
// a veth pair, as a CNI plugin would wire it, and runs a real command. It
// writes the node's inventory so the agent and controller see the lab as they
// would see a cluster node.
//
// A lab is described by a File, brought up by Up and removed by Down. Up
// records everything it makes in a state file as it makes it, so a failed
// Up rolls back through the same code as Down and nothing is leaked, and
// Down removes only what the state says Up made.
//
// Service names resolve, through a per-pod hosts file, straight to the IPs of
// the selected pods: the lab has no ClusterIP and no load balancing, because
// the node-level data path that Detour adds works on pod addresses and ports.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/detourdev/detour/pkg/netns"
)

// EtcNetnsDir is where `ip netns exec` looks for per-namespace /etc files.
const EtcNetnsDir = "/etc/netns"

// Options tune Up and Down.
type Options struct {
	// StateDir holds state.json, inventory.json and logs/ (DefaultStateDir
	// if empty).
	StateDir string
	// PathPrepend lists directories searched, before $PATH, for pod
	// commands, e.g. the lab's own bin dir holding detour-echo.
	PathPrepend []string
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// StopTimeout is how long Down waits after SIGTERM (and again after
	// SIGKILL) for a pod's processes to end; 5s if zero.
	StopTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 5 * time.Second
	}
	return o
}

func (o Options) say(format string, a ...any) {
	fmt.Fprintf(o.Progress, format+"\n", a...)
}

// HostVethName is the node-side veth of a pod: derived from the bridge and the
// pod name so it fits IFNAMSIZ whatever the pod is called and two labs on
// different bridges never collide.
func HostVethName(bridge, pod string) string {
	h := fnv64a(bridge + "\x00" + pod)
	return fmt.Sprintf("dt%010x", h&(1<<40-1))
}

func fnv64a(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// plan is what preflight resolved before anything is created.
type plan struct {
	ip   string     // the ip(8) binary, for `ip netns exec`
	argv [][]string // per pod: resolved command, nil if none
	path string     // PATH given to the pods
}

// Up brings the lab described by f up and returns its state. If anything
// fails, what was made is removed again and the error says what failed. An
// error wrapping ErrConflict means something in the way exists already.
func Up(ctx context.Context, f *File, opts Options) (_ *State, err error) {
	opts = opts.withDefaults()
	f = f.normalized()
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("invalid lab file: %w", err)
	}
	for _, w := range f.Warnings() {
		opts.say("warning: %s", w)
	}
	pl, err := preflight(f, opts)
	if err != nil {
		return nil, err
	}
	st, err := claim(f, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			return
		}
		opts.say("up failed: %v; rolling back", err)
		// The caller's context may be what failed; rollback must still run.
		if derr := teardown(context.WithoutCancel(ctx), st, opts); derr != nil {
			err = errors.Join(err, fmt.Errorf("rollback incomplete (run lab down --state-dir %s): %w", opts.StateDir, derr))
		}
	}()

	br, err := setupBridge(f, st, opts)
	if err != nil {
		return nil, err
	}
	for i := range f.Pods {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("lab up: %w", err)
		}
		if err := setupPod(f, i, br, st, opts); err != nil {
			return nil, fmt.Errorf("pod %s: %w", f.Pods[i].Name, err)
		}
	}
	// Commands start once every pod is wired, so a client that connects at
	// start finds its peers.
	for i := range f.Pods {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("lab up: %w", err)
		}
		if pl.argv[i] == nil {
			continue
		}
		if err := startPod(f, i, pl, st, opts); err != nil {
			return nil, fmt.Errorf("pod %s: %w", f.Pods[i].Name, err)
		}
	}
	inv := f.Inventory(netns.PathOf)
	path := filepath.Join(opts.StateDir, InventoryFile)
	if err := inv.Save(path); err != nil {
		return nil, err
	}
	st.Inventory = path
	if err := st.save(); err != nil {
		return nil, err
	}
	opts.say("inventory: %s (node %s, %d pods, %d services)", path, inv.Node, len(inv.Pods), len(inv.Services))
	return st, nil
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

// claim makes the state directory and writes the first, empty state. The
// exclusive create is the lock: of two concurrent Ups on one state dir, one
// loses here before making anything.
func claim(f *File, opts Options) (*State, error) {
	created, err := mkdirAll(opts.StateDir, 0o755)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	path := filepath.Join(opts.StateDir, StateFile)
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		removeDirs(created)
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: %s appeared meanwhile: another lab up is running", ErrConflict, path)
		}
		return nil, fmt.Errorf("state: %w", err)
	}
	fh.Close()
	st := &State{
		Lab:         f.Name,
		Node:        f.Node,
		StateDir:    opts.StateDir,
		Started:     time.Now().UTC().Truncate(time.Second),
		Subnet:      f.Prefix().String(),
		Bridge:      f.Network.Bridge,
		BridgeAddr:  netip.PrefixFrom(f.Gateway(), f.Prefix().Bits()).String(),
		CreatedDirs: created,
	}
	for i, p := range f.Pods {
		st.Pods = append(st.Pods, PodState{Name: p.Name, Namespace: p.Namespace, IP: f.PodIP(i).String(), Command: p.Command})
	}
	if err := st.save(); err != nil {
		os.Remove(path)
		removeDirs(created)
		return nil, err
	}
	opts.say("state: %s", path)
	return st, nil
}

func setupBridge(f *File, st *State, opts Options) (netlink.Link, error) {
	name := f.Network.Bridge
	br, err := netlink.LinkByName(name)
	if err != nil {
		if !errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		st.BridgeCreated = true
		if err := st.save(); err != nil {
			return nil, err
		}
		if br, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
		opts.say("bridge %s: created", name)
	} else {
		opts.say("bridge %s: exists, using it (it stays after lab down)", name)
	}
	addr, err := netlink.ParseAddr(st.BridgeAddr)
	if err != nil {
		return nil, err
	}
	if err := netlink.AddrAdd(br, addr); err != nil {
		if !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("bridge %s: add %s: %w", name, st.BridgeAddr, err)
		}
	} else if !st.BridgeCreated {
		st.BridgeAddrAdded = true
		if err := st.save(); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("bridge %s: set up: %w", name, err)
	}
	opts.say("bridge %s: %s up", name, st.BridgeAddr)
	return br, nil
}

// setupPod gives pod i its namespace, its veth (eth0 inside, the pod IP and a
// default route via the bridge, like a CNI bridge plugin) and its hosts file.
func setupPod(f *File, i int, br netlink.Link, st *State, opts Options) error {
	p := f.Pods[i]
	ps := &st.Pods[i]
	path, err := netns.Create(p.Name)
	if err != nil {
		return err
	}
	ps.NetNS = path
	if err := st.save(); err != nil {
		return err
	}
	opts.say("pod %s: netns %s", p.Name, path)

	nsh, err := vnetns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer nsh.Close()
	host := HostVethName(f.Network.Bridge, p.Name)
	// The peer is created directly inside the pod's namespace as eth0, so
	// no half-configured interface ever sits in the node's namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: host, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(nsh)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", host, err)
	}
	ps.HostVeth = host
	if err := st.save(); err != nil {
		return err
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("veth %s: %w", host, err)
	}
	if hl.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(hl, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", host, f.Network.Bridge, err)
		}
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return fmt.Errorf("set %s up: %w", host, err)
	}
	if err := configureEth0(nsh, netip.PrefixFrom(f.PodIP(i), f.Prefix().Bits()), f.Gateway()); err != nil {
		return err
	}
	opts.say("pod %s: veth %s (on %s) <-> eth0 %s/%d, default via %s", p.Name, host, f.Network.Bridge, f.PodIP(i), f.Prefix().Bits(), f.Gateway())

	created, err := mkdirAll(EtcNetnsDir, 0o755)
	if err != nil {
		return fmt.Errorf("hosts: %w", err)
	}
	if len(created) > 0 {
		st.CreatedDirs = append(st.CreatedDirs, created...)
		if err := st.save(); err != nil {
			return err
		}
	}
	dir := filepath.Join(EtcNetnsDir, p.Name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("hosts: %w", err)
	}
	ps.HostsDir = dir
	if err := st.save(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts"), f.hostsFile(i), 0o644); err != nil {
		return fmt.Errorf("hosts: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(resolvConf), 0o644); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	opts.say("pod %s: hosts %s", p.Name, filepath.Join(dir, "hosts"))
	return nil
}

// resolvConf replaces the node's resolver config inside pods. The node's
// nameserver is unreachable from the lab network (no NAT), so every lookup
// that missed the hosts file, e.g. the AAAA query libc makes first for
// `getent hosts`, waited out DNS timeouts. Pointing at the pod's own
// loopback, where nothing listens, makes such lookups fail at once.
const resolvConf = `# Written by detour lab: the lab has no DNS server; names come from /etc/hosts.
nameserver 127.0.0.1
options timeout:1 attempts:1
`

// etcFiles are the files Up writes into /etc/netns/<pod>; `ip netns exec`
// bind-mounts each over its namesake in /etc.
var etcFiles = []string{"hosts", "resolv.conf"}

func configureEth0(nsh vnetns.NsHandle, addr netip.Prefix, gw netip.Addr) error {
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in pod netns: %w", err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	a, err := netlink.ParseAddr(addr.String())
	if err != nil {
		return err
	}
	if err := h.AddrAdd(eth0, a); err != nil {
		return fmt.Errorf("eth0: add %s: %w", addr, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("eth0: set up: %w", err)
	}
	route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("eth0: default route via %s: %w", gw, err)
	}
	return nil
}

// startPod runs the pod's command under `ip netns exec`, which also
// bind-mounts /etc/netns/<pod>/hosts over /etc/hosts in a private mount
// namespace: that is how lab names resolve inside the pod. The command leads
// its own session, so it outlives `detour lab up` and Down can end it and
// all it forked with one signal to the group.
func startPod(f *File, i int, pl *plan, st *State, opts Options) error {
	p := f.Pods[i]
	ps := &st.Pods[i]
	logDir := filepath.Join(opts.StateDir, LogDir)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	logPath := filepath.Join(logDir, p.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	ps.Log = logPath

	cmd := exec.Command(pl.ip, append([]string{"netns", "exec", p.Name}, pl.argv[i]...)...)
	cmd.Env = podEnv(os.Environ(), pl.path, f, i)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", strings.Join(p.Command, " "), err)
	}
	pid := cmd.Process.Pid
	// Reap it if it exits while this process lives (tests, a long-running
	// caller); once this process exits, init adopts it.
	go func() { _ = cmd.Wait() }()
	ps.PID = pid
	if pst, err := readProc(pid); err == nil {
		ps.StartTime = pst.startTime
	}
	if err := st.save(); err != nil {
		return err
	}
	opts.say("pod %s: started pid %d: %s (log %s)", p.Name, pid, strings.Join(p.Command, " "), logPath)
	return nil
}

// podEnv is the caller's environment with PATH widened by PathPrepend and
// the pod's identity added, as the downward API would give it.
func podEnv(base []string, path string, f *File, i int) []string {
	env := make([]string, 0, len(base)+5)
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "DETOUR_POD_NAME", "DETOUR_POD_NAMESPACE", "DETOUR_POD_IP", "DETOUR_NODE_NAME":
			continue
		}
		env = append(env, kv)
	}
	p := f.Pods[i]
	return append(env,
		"PATH="+path,
		"DETOUR_POD_NAME="+p.Name,
		"DETOUR_POD_NAMESPACE="+p.Namespace,
		"DETOUR_POD_IP="+f.PodIP(i).String(),
		"DETOUR_NODE_NAME="+f.Node,
	)
}
