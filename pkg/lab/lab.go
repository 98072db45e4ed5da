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
	"path/filepath"
	"time"
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
	inv := st.NodeInventory()
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
