package podns

import (
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeProc is a /proc whose "namespaces" are regular files: a process's
// ns/net is a hard link to its namespace's file, so processes of one
// namespace share a device and inode as they do under the real /proc.
type fakeProc struct {
	t     *testing.T
	dir   string
	ns    map[string]string // namespace name -> backing file
	addrs map[nsID][]netip.Addr
	// denied: paths whose stat fails for lack of permission; gone: paths
	// whose process exits between the stat and the entering.
	denied, gone map[string]bool
	// unenterable: paths whose namespace cannot be entered (no CAP_SYS_ADMIN).
	unenterable map[string]bool
	calls       map[string]int // addrs calls by path
}

func newFakeProc(t *testing.T) *fakeProc {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, ".ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &fakeProc{t: t, dir: dir, ns: map[string]string{}, addrs: map[nsID][]netip.Addr{},
		denied: map[string]bool{}, gone: map[string]bool{}, unenterable: map[string]bool{}, calls: map[string]int{}}
}

func (f *fakeProc) resolver() *Resolver { return newResolver(f.dir, f.stat, f.list) }

// netns makes namespace name with addrs, or gives it addrs if it exists.
func (f *fakeProc) netns(name string, addrs ...string) {
	f.t.Helper()
	path, ok := f.ns[name]
	if !ok {
		path = filepath.Join(f.dir, ".ns", name)
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			f.t.Fatal(err)
		}
		f.ns[name] = path
	}
	id, err := statNS(path)
	if err != nil {
		f.t.Fatal(err)
	}
	f.addrs[id] = nil
	for _, a := range addrs {
		f.addrs[id] = append(f.addrs[id], netip.MustParseAddr(a))
	}
}

// run starts process pid in namespace name ("" : a process without one,
// as an exited process that is not reaped yet).
func (f *fakeProc) run(pid int, name string) {
	f.t.Helper()
	dir := filepath.Join(f.dir, strconv.Itoa(pid), "ns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.t.Fatal(err)
	}
	if name == "" {
		return
	}
	if err := os.Link(f.ns[name], filepath.Join(dir, "net")); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeProc) exit(pid int) {
	f.t.Helper()
	if err := os.RemoveAll(filepath.Join(f.dir, strconv.Itoa(pid))); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeProc) path(pid int) string {
	return filepath.Join(f.dir, strconv.Itoa(pid), "ns", "net")
}

func (f *fakeProc) stat(path string) (nsID, error) {
	if f.denied[path] {
		return nsID{}, &fs.PathError{Op: "stat", Path: path, Err: unix.EACCES}
	}
	return statNS(path)
}

func (f *fakeProc) list(path string) ([]netip.Addr, error) {
	f.calls[path]++
	if f.gone[path] {
		return nil, fmt.Errorf("open netns %s: %w", path, unix.ENOENT)
	}
	if f.unenterable[path] {
		return nil, fmt.Errorf("enter netns %s: %w", path, unix.EPERM)
	}
	id, err := statNS(path)
	if err != nil {
		return nil, err
	}
	return f.addrs[id], nil
}

func (f *fakeProc) totalCalls() int {
	n := 0
	for _, c := range f.calls {
		n += c
	}
	return n
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fakeProc)
		addr    string
		wantPID int    // the answer is this process's handle
		wantErr string // or an error with this text
	}{{
		name: "namespace's lowest PID",
		setup: func(f *fakeProc) {
			f.netns("host", "192.168.1.10", "127.0.0.1")
			f.netns("pod", "10.0.0.5", "127.0.0.1")
			f.run(1, "host")
			f.run(300, "pod")
			f.run(20, "pod")
		},
		addr: "10.0.0.5", wantPID: 20,
	}, {
		name: "not on this node",
		setup: func(f *fakeProc) {
			f.netns("host", "192.168.1.10")
			f.run(1, "host")
		},
		addr:    "10.0.0.5",
		wantErr: "no network namespace on this node has address 10.0.0.5 (is the pod on this node, and does the agent run with hostPID?)",
	}, {
		name: "loopback names no pod",
		setup: func(f *fakeProc) {
			f.netns("pod", "10.0.0.5", "127.0.0.1")
			f.run(20, "pod")
		},
		addr: "127.0.0.1", wantErr: "no network namespace on this node has address 127.0.0.1",
	}, {
		name: "exited process is passed over",
		setup: func(f *fakeProc) {
			f.netns("pod", "10.0.0.5")
			f.run(7, "")
			f.run(20, "pod")
		},
		addr: "10.0.0.5", wantPID: 20,
	}, {
		name: "process exits between stat and entering: its namespace's next process",
		setup: func(f *fakeProc) {
			f.netns("pod", "10.0.0.5")
			f.run(20, "pod")
			f.run(21, "pod")
			f.gone[f.path(20)] = true
		},
		addr: "10.0.0.5", wantPID: 21,
	}, {
		name: "permission denied is told",
		setup: func(f *fakeProc) {
			f.netns("pod", "10.0.0.5")
			f.run(20, "pod")
			f.denied[f.path(20)] = true
		},
		addr:    "10.0.0.5",
		wantErr: "has address 10.0.0.5 (is the pod on this node, and does the agent run with hostPID?); the namespaces of 1 processes could not be opened: permission denied (without CAP_SYS_PTRACE",
	}, {
		name: "namespace that cannot be entered is told",
		setup: func(f *fakeProc) {
			f.netns("pod", "10.0.0.5")
			f.run(20, "pod")
			f.run(21, "pod")
			f.unenterable[f.path(20)] = true
		},
		addr:    "10.0.0.5",
		wantErr: "has address 10.0.0.5 (is the pod on this node, and does the agent run with hostPID?); 1 namespaces could not be entered: permission denied (the agent needs CAP_SYS_ADMIN)",
	}, {
		name: "address in two namespaces",
		setup: func(f *fakeProc) {
			f.netns("a", "10.0.0.5")
			f.netns("b", "10.0.0.5")
			f.run(20, "a")
			f.run(30, "b")
		},
		addr: "10.0.0.5", wantErr: "address 10.0.0.5 is in 2 network namespaces on this node",
	}, {
		name:    "IPv6",
		setup:   func(f *fakeProc) {},
		addr:    "fd00::5",
		wantErr: "only IPv4 pod addresses are supported",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeProc(t)
			tt.setup(f)
			got, err := f.resolver().Resolve(netip.MustParseAddr(tt.addr))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Resolve(%s) = %q, %v; want error containing %q", tt.addr, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != f.path(tt.wantPID) {
				t.Fatalf("Resolve(%s) = %q, %v; want %q", tt.addr, got, err, f.path(tt.wantPID))
			}
		})
	}
}

// TestResolveRechecksWhatItRemembers: an answer is reused only while its
// process is in the same namespace and the namespace has the address.
func TestResolveRechecksWhatItRemembers(t *testing.T) {
	f := newFakeProc(t)
	f.netns("host", "192.168.1.10")
	f.netns("pod", "10.0.0.5")
	f.netns("other", "10.0.0.9")
	f.run(1, "host")
	f.run(20, "pod")
	f.run(21, "pod")
	r := f.resolver()
	addr := netip.MustParseAddr("10.0.0.5")

	resolve := func(want string) {
		t.Helper()
		got, err := r.Resolve(addr)
		if want == "" {
			if err == nil {
				t.Fatalf("Resolve = %q, want not found", got)
			}
			return
		}
		if err != nil || got != want {
			t.Fatalf("Resolve = %q, %v; want %q", got, err, want)
		}
	}

	resolve(f.path(20))
	scan := f.totalCalls() // one per namespace
	resolve(f.path(20))
	if n := f.totalCalls() - scan; n != 1 {
		t.Fatalf("a remembered answer took %d address lookups, want 1 (no scan)", n)
	}

	f.exit(20) // the sandbox's first process is gone, the pod lives on
	resolve(f.path(21))

	f.exit(21) // PID reused by a process of another namespace
	f.run(21, "other")
	resolve("")

	f.exit(21) // the pod is back, restarted, with a new address
	f.run(40, "pod")
	f.netns("pod", "10.0.0.6")
	resolve("")
	if got, err := r.Resolve(netip.MustParseAddr("10.0.0.6")); err != nil || got != f.path(40) {
		t.Fatalf("Resolve(new address) = %q, %v; want %q", got, err, f.path(40))
	}
}
