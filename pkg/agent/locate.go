package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// located is where a target's pod namespace was found in one sync: an open
// handle on it and its inode, or why not.
type located struct {
	f    *os.File
	ino  uint64
	from string
	err  error
	// final: trying again will not help.
	final bool
}

// locate finds and opens the namespace of every target, by its netns path
// or, lacking one, by its pod's address.
func (d *dataplane) locate(assignments []*detourv1.Assignment) map[string]*located {
	found := map[string]*located{}
	for _, a := range assignments {
		for _, t := range a.Targets {
			key := locateKey(t)
			if _, ok := found[key]; ok {
				continue
			}
			l := &located{from: t.Netns}
			found[key] = l
			if l.from == "" {
				addr, err := netip.ParseAddr(t.PodIp)
				switch {
				case err != nil:
					l.err = fmt.Errorf("bad pod address %q", t.PodIp)
					l.final = true
				case d.resolve == nil:
					l.err = errors.New("the target has no netns path and this agent does not look namespaces up")
					l.final = true
				default:
					l.from, l.err = d.resolve(addr)
				}
				if l.err != nil {
					continue
				}
			}
			l.f, l.err = os.Open(l.from)
			if l.err != nil {
				l.err = fmt.Errorf("open the pod's network namespace: %w", l.err)
				continue
			}
			var st unix.Stat_t
			if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
				l.err = fmt.Errorf("stat the pod's network namespace %s: %w", l.from, err)
				continue
			}
			l.ino = st.Ino
		}
	}
	return found
}

func locateKey(t *detourv1.Target) string {
	if t.Netns != "" {
		return "path " + t.Netns
	}
	return "ip " + t.PodIp
}
