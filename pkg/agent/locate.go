package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// found is where one sync found its targets' namespaces: a location per
// target (by locateKey), and a handle on each namespace found, by inode,
// open until the sync ends (attach takes one of its own).
type found struct {
	where map[string]location
	files map[uint64]*os.File
}

func (f *found) close() {
	for _, file := range f.files {
		_ = file.Close()
	}
}

// locate finds and opens the namespace of every target, by its netns path
// or, lacking one, by its pod's address.
func (d *dataplane) locate(assignments []*detourv1.Assignment) *found {
	out := &found{where: map[string]location{}, files: map[uint64]*os.File{}}
	for _, a := range assignments {
		for _, t := range a.Targets {
			key := locateKey(t)
			if _, ok := out.where[key]; ok {
				continue
			}
			out.where[key] = d.locate1(t, out.files)
		}
	}
	return out
}

// locate1 finds and opens the namespace of one target, keeping the handle
// in files unless one on the same namespace is there already.
func (d *dataplane) locate1(t *detourv1.Target, files map[uint64]*os.File) location {
	l := location{from: t.Netns}
	if l.from == "" {
		addr, err := netip.ParseAddr(t.PodIp)
		switch {
		case err != nil:
			return location{err: fmt.Errorf("bad pod address %q", t.PodIp), final: true}
		case d.resolve == nil:
			return location{err: errors.New("the target has no netns path and this agent does not look namespaces up"), final: true}
		}
		if l.from, l.err = d.resolve(addr); l.err != nil {
			return l
		}
	}
	f, err := os.Open(l.from)
	if err != nil {
		l.err = fmt.Errorf("open the pod's network namespace: %w", err)
		return l
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		_ = f.Close()
		l.err = fmt.Errorf("stat the pod's network namespace %s: %w", l.from, err)
		return l
	}
	l.ino = st.Ino
	if files[l.ino] == nil {
		files[l.ino] = f
	} else {
		_ = f.Close() // another path to a namespace found already
	}
	return l
}

func locateKey(t *detourv1.Target) string {
	if t.Netns != "" {
		return "path " + t.Netns
	}
	return "ip " + t.PodIp
}
