package netns_test

import (
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

// TestPrivilegedCreateSurvivesIPNetnsAdd: a namespace made by Create can
// still be entered after `ip netns add` makes one of its own; without a
// shared /run/netns mount the second would hide the first.
func TestPrivilegedCreateSurvivesIPNetnsAdd(t *testing.T) {
	path := testutil.NewNetNS(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("iproute2 is needed: %v", err)
	}
	name := "dt-test-ipadd-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if err := netns.Do(path, func() error { return nil }); err != nil {
		t.Fatalf("the namespace made by Create cannot be entered after ip netns add: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "exec", name, "true").CombinedOutput(); err != nil {
		t.Fatalf("ip netns exec: %v\n%s", err, out)
	}
}
