package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/detourdev/detour/pkg/inventory"
)

// File names inside the state directory.
const (
	StateFile     = "state.json"
	InventoryFile = "inventory.json"
	LogDir        = "logs"
)

// ErrNotUp means the state directory holds no lab.
var ErrNotUp = errors.New("no lab is up")

// ErrConflict means Up refused because something it would create exists.
var ErrConflict = errors.New("conflict")

// State records everything Up made, as it makes it. Down trusts nothing else:
// a field is set only once the thing exists, so a half-finished Up is undone
// exactly and nothing that was there before is touched.
type State struct {
	Lab      string    `json:"lab"`
	Node     string    `json:"node"`
	StateDir string    `json:"stateDir"`
	Started  time.Time `json:"started"`
	Subnet   string    `json:"subnet"`
	Bridge   string    `json:"bridge"`
	// BridgeCreated: Up made the bridge, so Down deletes it.
	BridgeCreated bool `json:"bridgeCreated,omitempty"`
	// BridgeAddr is the gateway address (CIDR); BridgeAddrAdded says Up put
	// it on a bridge that existed before, so Down removes only the address.
	BridgeAddr      string `json:"bridgeAddr"`
	BridgeAddrAdded bool   `json:"bridgeAddrAdded,omitempty"`
	// CreatedDirs are directories Up made (state dir parents, /etc/netns),
	// removed by Down only if empty, deepest first.
	CreatedDirs []string   `json:"createdDirs,omitempty"`
	Pods        []PodState `json:"pods"`
	// Services are the lab file's, so that the inventory can be written
	// again when pods are added (AddPod).
	Services []Service `json:"services,omitempty"`
	// Inventory is the path of the inventory file once written.
	Inventory string `json:"inventory,omitempty"`
}

// PodState is one pod and what Up made for it.
type PodState struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	IP        string   `json:"ip"`
	Command   []string `json:"command,omitempty"`
	// Labels and Workload are the lab file's (Workload defaulted to the
	// name), or for an added pod its own.
	Labels   map[string]string `json:"labels,omitempty"`
	Workload string            `json:"workload,omitempty"`
	// Env is what an added pod got on top of the lab's pod environment.
	Env []string `json:"env,omitempty"`
	// Added marks a pod made after up (AddPod), such as an environment's
	// fork.
	Added bool `json:"added,omitempty"`
	// NetNS is the namespace path, set once created.
	NetNS string `json:"netns,omitempty"`
	// HostVeth is the node-side veth, set once created.
	HostVeth string `json:"hostVeth,omitempty"`
	// HostsDir is /etc/netns/<pod>, set once created.
	HostsDir string `json:"hostsDir,omitempty"`
	// PID leads the command's own session and process group.
	PID int `json:"pid,omitempty"`
	// StartTime is the process's start time in clock ticks since boot, from
	// /proc: with it a recycled PID is never mistaken for the pod's.
	StartTime uint64 `json:"startTime,omitempty"`
	Log       string `json:"log,omitempty"`
}

// Running reports whether the pod's command is still alive.
func (p *PodState) Running() bool {
	if p.PID <= 0 {
		return false
	}
	ps, err := readProc(p.PID)
	return err == nil && ps.startTime == p.StartTime && ps.state != 'Z' && ps.state != 'X'
}

// LoadState reads the state of the lab in stateDir. It returns an error
// wrapping ErrNotUp if there is none.
func LoadState(stateDir string) (*State, error) {
	path := filepath.Join(stateDir, StateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s)", ErrNotUp, path)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse lab state %s: %w", path, err)
	}
	return &st, nil
}

// save writes the state atomically: a crash leaves the old or the new record,
// never half of one.
func (st *State) save() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(st.StateDir, StateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	return nil
}

// mkdirAll is os.MkdirAll that records each directory it creates, so Down
// can remove exactly those.
func mkdirAll(dir string, perm os.FileMode) (created []string, err error) {
	dir = filepath.Clean(dir)
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return created, err
		} else if err == nil {
			created = append(created, missing[i])
		}
	}
	return created, nil
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
		w := p.Workload
		if w == "" {
			w = p.Name
		}
		st.Pods = append(st.Pods, PodState{Name: p.Name, Namespace: p.Namespace, IP: f.PodIP(i).String(), Command: p.Command,
			Labels: p.Labels, Workload: w})
	}
	st.Services = f.Services
	if err := st.save(); err != nil {
		os.Remove(path)
		removeDirs(created)
		return nil, err
	}
	opts.say("state: %s", path)
	return st, nil
}

// NodeInventory describes the lab's node as it is now, added pods included.
func (st *State) NodeInventory() *inventory.Inventory {
	inv := &inventory.Inventory{Node: st.Node, Pods: []inventory.Pod{}, Services: []inventory.Service{}}
	for _, p := range st.Pods {
		if p.NetNS == "" {
			continue // not made (yet)
		}
		inv.Pods = append(inv.Pods, inventory.Pod{
			Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, IP: p.IP, NetNS: p.NetNS, Node: st.Node,
		})
	}
	for _, s := range st.Services {
		is := inventory.Service{Name: s.Name, Namespace: s.Namespace, Selector: s.Selector, Ports: []inventory.ServicePort{}}
		for _, p := range s.Ports {
			is.Ports = append(is.Ports, inventory.ServicePort{Name: p.Name, Port: uint32(p.Port), TargetPort: uint32(p.TargetPort)})
		}
		inv.Services = append(inv.Services, is)
	}
	return inv
}

// lock holds the state directory for one change at a time: lab up and down
// (the CLI) and AddPod and RemovePod (the controller's environments) may
// run at once. The lock file stays; it holds nothing.
func lock(stateDir string) (unlock func(), err error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("lock lab state: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(stateDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock lab state: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock lab state: %w", err)
	}
	return func() { f.Close() }, nil
}
