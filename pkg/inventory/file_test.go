package inventory

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testInventory is one node with two pods and a service over one.
func testInventory() *Inventory {
	return &Inventory{
		Node: "lab",
		Pods: []Pod{
			{Name: "api-0", Namespace: "default", Labels: map[string]string{"app": "api"}, IP: "10.0.0.10", NetNS: "/run/netns/api-0"},
			{Name: "api-alice", Namespace: "default", Labels: map[string]string{"app": "api-alice"}, IP: "10.0.0.20", NetNS: "/run/netns/api-alice"},
		},
		Services: []Service{{Name: "api", Namespace: "default", Selector: map[string]string{"app": "api"},
			Ports: []ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}}},
	}
}

func signalled(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// The file source is driven by poll directly: the 500ms ticker in Run only
// calls it.
func TestFileSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lab", "inventory.json")
	f := NewFileSource(path, nil)
	inv, err := f.Get()
	if err != nil || len(inv.Pods) != 0 {
		t.Fatalf("missing file: %v %v, want an empty inventory", inv, err)
	}
	signalled(f.Changed()) // the first load may signal

	want := testInventory()
	if err := want.Save(path); err != nil {
		t.Fatal(err)
	}
	f.poll()
	if !signalled(f.Changed()) {
		t.Fatal("no change signalled after the file appeared")
	}
	if inv, _ := f.Get(); len(inv.Pods) != len(want.Pods) {
		t.Fatalf("got %d pods, want %d", len(inv.Pods), len(want.Pods))
	}
	f.poll()
	if signalled(f.Changed()) {
		t.Fatal("change signalled for an unchanged file")
	}

	// A bad rewrite keeps the last good inventory.
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	bump(t, path)
	f.poll()
	if inv, err := f.Get(); err != nil || len(inv.Pods) != len(want.Pods) {
		t.Fatalf("after a bad write: %v pods, %v", len(inv.Pods), err)
	}

	// The pod's address changes.
	want.Pods[0].IP = "10.9.9.9"
	if err := want.Save(path); err != nil {
		t.Fatal(err)
	}
	bump(t, path)
	f.poll()
	if !signalled(f.Changed()) {
		t.Fatal("no change signalled after a rewrite")
	}
	if inv, _ := f.Get(); inv.Pods[0].IP != "10.9.9.9" {
		t.Fatalf("stale inventory %v", inv.Pods[0])
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	f.poll()
	if inv, err := f.Get(); err != nil || len(inv.Pods) != 0 || !signalled(f.Changed()) {
		t.Fatalf("after removal: %v %v", inv, err)
	}
}

// A file that never parsed is an error, not an empty inventory: the
// controller must not mistake a broken lab for one without pods.
func TestFileSourceNeverGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inventory.json")
	if err := os.WriteFile(path, []byte("nope"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileSource(path, nil).Get(); err == nil {
		t.Fatal("no error for an unparsable file")
	}
}

// bump moves the file's mtime forward so that a rewrite within the file
// system's timestamp granularity is still seen.
func bump(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	mt := st.ModTime().Add(time.Second)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}
