package podns_test

import (
	"errors"
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/podns"
)

// TestPrivilegedResolve: a "pod" (a namespace with an address and a process
// in it) is found by its address, as the same namespace; once its process is
// gone the resolver no longer answers with the dead process's handle.
func TestPrivilegedResolve(t *testing.T) {
	nsPath, peer := testutil.NewNetNS(t), testutil.NewNetNS(t)
	podIP := netip.MustParseAddr("198.51.100.77")
	testutil.Veth(t,
		testutil.End{NetNS: nsPath, Dev: "eth0", Addr: podIP},
		testutil.End{NetNS: peer, Dev: "peer0", Addr: netip.MustParseAddr("198.51.100.1")})
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("iproute2 is needed: %v", err)
	}
	proc := exec.Command("ip", "netns", "exec", filepath.Base(nsPath), "sleep", "60")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = proc.Process.Kill()
			_ = proc.Wait()
		}
	})
	want, err := netns.Inode(nsPath)
	if err != nil {
		t.Fatal(err)
	}

	r := podns.New()
	var got string
	// ip enters the namespace just after it starts.
	testutil.Eventually(t, 5*time.Second, func() error {
		got, err = r.Resolve(podIP)
		return err
	})
	if ino, err := netns.Inode(got); err != nil || ino != want {
		t.Fatalf("Resolve(%s) = %s, inode %d (%v); want the pod's namespace, inode %d", podIP, got, ino, err, want)
	}
	if again, err := r.Resolve(podIP); err != nil || again != got {
		t.Fatalf("Resolve again = %q, %v; want %q", again, err, got)
	}
	if _, err := r.Resolve(netip.MustParseAddr("198.51.100.78")); err == nil {
		t.Fatal("an address no namespace has was resolved")
	}

	_ = proc.Process.Kill()
	_ = proc.Wait()
	exited = true
	stale, err := r.Resolve(podIP)
	var nf *podns.NotFoundError
	if !errors.As(err, &nf) {
		t.Fatalf("after the pod's only process exited, Resolve = %q, %v; want not found", stale, err)
	}
}
