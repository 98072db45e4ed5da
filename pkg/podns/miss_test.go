package podns

import (
	"net/netip"
	"testing"
	"time"
)

func TestMissCache(t *testing.T) {
	var calls int
	found := map[netip.Addr]bool{}
	resolve := func(a netip.Addr) (string, error) {
		calls++
		if found[a] {
			return "/proc/1/ns/net", nil
		}
		return "", &NotFoundError{Addr: a}
	}
	now := time.Unix(1000, 0)
	m := NewMissCache(10 * time.Second)
	m.now = func() time.Time { return now }
	r := m.Wrap(resolve)
	elsewhere := netip.MustParseAddr("10.0.1.5")

	for range 5 {
		if _, err := r(elsewhere); err == nil {
			t.Fatal("a pod on no namespace here was found")
		}
	}
	if calls != 1 {
		t.Errorf("5 lookups of a missing pod within the ttl scanned %d times, want 1", calls)
	}
	found[elsewhere] = true
	now = now.Add(11 * time.Second)
	if path, err := r(elsewhere); err != nil || path == "" {
		t.Errorf("after the ttl, the pod (now here) = %q, %v", path, err)
	}
	if _, err := r(elsewhere); err != nil || calls != 3 {
		t.Errorf("a found pod is looked up every time (podns checks its cache): calls %d, err %v", calls, err)
	}
	if m.Wrap(nil) != nil {
		t.Error("Wrap(nil) is not nil: the agent would think it can look namespaces up")
	}
}

// TestMissCacheForget: a miss forgotten is looked up again at once (a pod
// made at an address missed a moment ago).
func TestMissCacheForget(t *testing.T) {
	m := NewMissCache(10 * time.Second)
	addr := netip.MustParseAddr("10.0.0.9")
	here := false
	calls := 0
	r := m.Wrap(func(netip.Addr) (string, error) {
		calls++
		if here {
			return "/run/netns/x", nil
		}
		return "", &NotFoundError{Addr: addr}
	})
	if _, err := r(addr); err == nil {
		t.Fatal("found")
	}
	here = true
	if _, err := r(addr); err == nil || calls != 1 {
		t.Fatalf("within the ttl: %v after %d lookups, want the remembered miss", err, calls)
	}
	m.Forget()
	if path, err := r(addr); err != nil || path != "/run/netns/x" || calls != 2 {
		t.Errorf("after Forget: %q, %v after %d lookups", path, err, calls)
	}
}
