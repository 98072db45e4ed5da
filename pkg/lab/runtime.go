package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/detourdev/detour/pkg/netns"
)

// ErrNoCommand: a pod's command is not found in the lab's bin dir or $PATH.
var ErrNoCommand = errors.New("command not found")

// NewPod is a pod added to a running lab: an environment's fork.
type NewPod struct {
	Name      string
	Namespace string
	Labels    map[string]string
	// Workload is what the pod is a replica of.
	Workload string
	// Command is argv; it is looked up like the lab file's commands.
	Command []string
	// Env is added to the lab's pod environment (NAME=VALUE).
	Env []string
	// HostsLike names the pod whose hosts file the new pod gets (its
	// baseline), so that it resolves the lab's names as that pod does.
	HostsLike string
}

// AddPod adds a pod to the lab in stateDir while it runs: a namespace wired
// to the bridge like the others, with the next free address, the hosts file
// of p.HostsLike plus its own name, and p.Command started in it. The pod is
// recorded in the state (lab down removes it) and in the inventory file the
// controller and agent read. On failure what was made is removed again.
func AddPod(ctx context.Context, stateDir string, p NewPod, opts Options) (_ PodState, err error) {
	opts.StateDir = stateDir
	opts = opts.withDefaults()
	if err := checkDNSLabel("name", p.Name); err != nil {
		return PodState{}, err
	}
	if len(p.Command) == 0 {
		return PodState{}, errors.New("a pod added to a lab needs a command")
	}
	unlock, err := lock(opts.StateDir)
	if err != nil {
		return PodState{}, err
	}
	defer unlock()
	st, err := LoadState(opts.StateDir)
	if err != nil {
		return PodState{}, err
	}
	st.StateDir = opts.StateDir
	for _, q := range st.Pods {
		if q.Name == p.Name {
			return PodState{}, fmt.Errorf("%w: lab pod %s exists", ErrConflict, p.Name)
		}
	}
	if netns.Exists(p.Name) {
		return PodState{}, fmt.Errorf("%w: network namespace %s exists", ErrConflict, p.Name)
	}
	ip, path, err := opts.resolve(p.Command[0])
	if err != nil {
		return PodState{}, err
	}
	argv := append([]string{path}, p.Command[1:]...)
	prefix, err := netip.ParsePrefix(st.Subnet)
	if err != nil {
		return PodState{}, fmt.Errorf("lab subnet %q: %w", st.Subnet, err)
	}
	addr, err := freeAddr(st, prefix)
	if err != nil {
		return PodState{}, err
	}
	gw, err := netip.ParsePrefix(st.BridgeAddr)
	if err != nil {
		return PodState{}, fmt.Errorf("lab bridge address %q: %w", st.BridgeAddr, err)
	}
	br, err := netlink.LinkByName(st.Bridge)
	if err != nil {
		return PodState{}, fmt.Errorf("lab bridge %s: %w", st.Bridge, err)
	}
	hosts, err := hostsFor(p, addr)
	if err != nil {
		return PodState{}, err
	}

	st.Pods = append(st.Pods, PodState{
		Name: p.Name, Namespace: p.Namespace, IP: addr.String(), Command: p.Command,
		Labels: p.Labels, Workload: p.Workload, Env: p.Env, Added: true,
	})
	if err := st.save(); err != nil {
		return PodState{}, err
	}
	ps := &st.Pods[len(st.Pods)-1]
	defer func() {
		if err != nil {
			if rerr := removePod(context.WithoutCancel(ctx), st, p.Name, opts); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}()
	if err := wirePod(st, ps, br, netip.PrefixFrom(addr, prefix.Bits()), gw.Addr(), hosts, opts); err != nil {
		return PodState{}, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	if err := startProcess(st, ps, ip, argv, podEnv(os.Environ(), opts.podPath(), st.Node, ps), opts); err != nil {
		return PodState{}, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	if err := writeInventory(st); err != nil {
		return PodState{}, err
	}
	return *ps, nil
}

// RemovePod stops and removes a pod that AddPod added (a pod of the lab
// file is refused: lab down removes those). A pod not there is not an
// error.
func RemovePod(ctx context.Context, stateDir, name string, opts Options) error {
	opts.StateDir = stateDir
	opts = opts.withDefaults()
	unlock, err := lock(opts.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := LoadState(opts.StateDir)
	if errors.Is(err, ErrNotUp) {
		return nil
	}
	if err != nil {
		return err
	}
	st.StateDir = opts.StateDir
	return removePod(ctx, st, name, opts)
}

// removePod undoes one added pod of st, the lock held.
func removePod(ctx context.Context, st *State, name string, opts Options) error {
	i := slices.IndexFunc(st.Pods, func(p PodState) bool { return p.Name == name })
	if i < 0 {
		return nil
	}
	if !st.Pods[i].Added {
		return fmt.Errorf("pod %s is the lab file's: lab down removes it", name)
	}
	one := &State{Lab: st.Lab, StateDir: st.StateDir, Bridge: st.Bridge, Pods: []PodState{st.Pods[i]}}
	err := teardownPods(ctx, one, opts)
	if err != nil {
		st.Pods[i] = one.Pods[0] // what is left, on record for lab down
		return errors.Join(err, st.save())
	}
	st.Pods = slices.Delete(st.Pods, i, i+1)
	if err := st.save(); err != nil {
		return err
	}
	return writeInventory(st)
}

// Pods lists the pods of the lab in stateDir, added ones included.
func Pods(stateDir string) ([]PodState, error) {
	st, err := LoadState(stateDir)
	if err != nil {
		return nil, err
	}
	return st.Pods, nil
}

// writeInventory writes st's inventory where Up wrote it.
func writeInventory(st *State) error {
	if st.Inventory == "" {
		return nil // Up has not got that far: it writes it itself
	}
	return st.NodeInventory().Save(st.Inventory)
}

// freeAddr is the lowest address of the subnet that no pod and not the
// bridge has.
func freeAddr(st *State, prefix netip.Prefix) (netip.Addr, error) {
	used := map[netip.Addr]bool{}
	for _, p := range st.Pods {
		if a, err := netip.ParseAddr(p.IP); err == nil {
			used[a] = true
		}
	}
	gw := prefix.Addr().Next()
	for a := gw.Next(); prefix.Contains(a); a = a.Next() {
		if !prefix.Contains(a.Next()) {
			break // the broadcast address
		}
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("lab subnet %s is full", prefix)
}

// hostsFor is the hosts file of the pod p.HostsLike, with p's own name.
func hostsFor(p NewPod, addr netip.Addr) ([]byte, error) {
	var b []byte
	if p.HostsLike != "" {
		var err error
		if b, err = os.ReadFile(filepath.Join(EtcNetnsDir, p.HostsLike, "hosts")); err != nil {
			return nil, fmt.Errorf("hosts of %s: %w", p.HostsLike, err)
		}
	}
	line := fmt.Sprintf("%s\t%s %s.%s.pod\n", addr, p.Name, p.Name, p.Namespace)
	if p.HostsLike != "" {
		line = fmt.Sprintf("# %s: %s's hosts file, and its own name:\n", p.Name, p.HostsLike) + line
	}
	return append(b, line...), nil
}

// resolve finds ip(8) and a pod command, as preflight does for lab up.
func (o Options) resolve(cmd string) (ip, path string, err error) {
	dirs := o.podDirs()
	if ip, err = lookPath("ip", dirs); err != nil {
		return "", "", fmt.Errorf("ip(8): %w", err)
	}
	if path, err = lookPath(cmd, dirs); err != nil {
		return "", "", fmt.Errorf("%w: %s (looked in the lab's bin dir and $PATH)", ErrNoCommand, cmd)
	}
	return ip, path, nil
}

func (o Options) podDirs() []string {
	return append(append([]string{}, o.PathPrepend...), filepath.SplitList(os.Getenv("PATH"))...)
}

func (o Options) podPath() string { return strings.Join(o.podDirs(), string(os.PathListSeparator)) }
