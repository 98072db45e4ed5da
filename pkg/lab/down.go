package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/detourdev/detour/pkg/netns"
)

// Down removes the lab whose state is in stateDir. See DownWith.
func Down(ctx context.Context, stateDir string) error {
	return DownWith(ctx, Options{StateDir: stateDir})
}

// DownWith removes what the state in opts.StateDir records, and nothing else:
// it ends the pods' process groups, deletes their veths, namespaces and
// /etc/netns dirs, the bridge (or only its address, if the bridge was there
// before), then the state files. It is idempotent: with no state it does
// nothing, and after a partial failure the state is kept so that running it
// again finishes the job.
func DownWith(ctx context.Context, opts Options) error {
	opts = opts.withDefaults()
	if _, err := os.Stat(opts.StateDir); err == nil {
		unlock, err := lock(opts.StateDir)
		if err != nil {
			return err
		}
		defer unlock()
	}
	st, err := LoadState(opts.StateDir)
	if errors.Is(err, ErrNotUp) {
		opts.say("no lab state in %s: nothing to do", opts.StateDir)
		return nil
	}
	if err != nil {
		return err
	}
	// The state records where it lives; trust the directory it was read from.
	st.StateDir = opts.StateDir
	opts.say("lab %s: down", st.Lab)
	return teardown(ctx, st, opts)
}

// teardown undoes st in reverse order of creation, carrying on past errors so
// one stuck object does not leak the rest. The state file goes last, and
// only if everything else went.
func teardown(ctx context.Context, st *State, opts Options) error {
	var errs []error
	if err := teardownPods(ctx, st, opts); err != nil {
		errs = append(errs, err)
	}
	switch {
	case st.BridgeCreated:
		if err := deleteLink(st.Bridge, "bridge"); err != nil {
			errs = append(errs, err)
		} else {
			opts.say("bridge %s: deleted", st.Bridge)
			st.BridgeCreated = false
		}
	case st.BridgeAddrAdded:
		if err := deleteAddr(st.Bridge, st.BridgeAddr); err != nil {
			errs = append(errs, err)
		} else {
			opts.say("bridge %s: removed %s (the bridge was there before the lab)", st.Bridge, st.BridgeAddr)
			st.BridgeAddrAdded = false
		}
	}
	if st.Inventory != "" {
		if err := removeIfExists(st.Inventory); err != nil {
			errs = append(errs, err)
		}
		st.Inventory = ""
	}
	if err := errors.Join(errs...); err != nil {
		// Keep what is left on record for the next Down.
		return errors.Join(err, st.save())
	}
	_ = os.Remove(filepath.Join(st.StateDir, LogDir)) // only if empty: logs of others stay
	_ = os.Remove(filepath.Join(st.StateDir, ".lock"))
	if err := removeIfExists(filepath.Join(st.StateDir, StateFile)); err != nil {
		return err
	}
	removeDirs(st.CreatedDirs)
	opts.say("lab %s: removed", st.Lab)
	return nil
}

// deleteLink deletes the named link if it exists and is of the expected
// kind; a link of another kind under that name was not made by the lab.
func deleteLink(name, kind string) error {
	l, err := netlink.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, name, err)
	}
	if l.Type() != kind {
		return fmt.Errorf("%s is now a %s, not the %s the lab made; left alone", name, l.Type(), kind)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete %s %s: %w", kind, name, err)
	}
	return nil
}

func deleteAddr(link, cidr string) error {
	l, err := netlink.LinkByName(link)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bridge %s: %w", link, err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(l, a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("bridge %s: remove %s: %w", link, cidr, err)
	}
	return nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// removeDirs removes directories the lab created, deepest first, each only
// if empty: someone else may have put something there since.
func removeDirs(dirs []string) {
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i])
	}
}

// teardownPods stops st's pods' commands and removes their veths,
// namespaces, hosts files and logs, carrying on past errors; each field is
// cleared once its thing is gone.
func teardownPods(ctx context.Context, st *State, opts Options) error {
	var errs []error
	for i := range st.Pods {
		p := &st.Pods[i]
		if p.PID <= 0 {
			continue
		}
		stopped, err := stopGroup(ctx, p.PID, p.StartTime, opts.StopTimeout)
		if err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", p.Name, err))
			continue
		}
		if stopped {
			opts.say("pod %s: stopped pid %d", p.Name, p.PID)
		}
		p.PID, p.StartTime = 0, 0
	}
	for i := range st.Pods {
		p := &st.Pods[i]
		if p.HostVeth != "" {
			// Deleting either end deletes the pair; deleting the netns
			// below would too, but only once nothing holds it.
			if err := deleteLink(p.HostVeth, "veth"); err != nil {
				errs = append(errs, fmt.Errorf("pod %s: %w", p.Name, err))
			} else {
				opts.say("pod %s: deleted veth %s", p.Name, p.HostVeth)
				p.HostVeth = ""
			}
		}
		if p.NetNS != "" {
			if err := netns.Delete(p.Name); err != nil {
				errs = append(errs, fmt.Errorf("pod %s: %w", p.Name, err))
			} else {
				opts.say("pod %s: deleted netns %s", p.Name, p.NetNS)
				p.NetNS = ""
			}
		}
		if p.HostsDir != "" {
			var err error
			for _, name := range etcFiles {
				err = errors.Join(err, removeIfExists(filepath.Join(p.HostsDir, name)))
			}
			if err == nil {
				err = removeIfExists(p.HostsDir)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s: %w", p.Name, err))
			} else {
				opts.say("pod %s: deleted %s", p.Name, p.HostsDir)
				p.HostsDir = ""
			}
		}
		if p.Log != "" {
			if err := removeIfExists(p.Log); err != nil {
				errs = append(errs, err)
			}
			p.Log = ""
		}
	}
	return errors.Join(errs...)
}
