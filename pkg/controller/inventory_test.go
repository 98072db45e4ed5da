package controller

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
)

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
func TestFileInventory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lab", "inventory.json")
	f := NewFileInventory(path, nil)
	inv, err := f.Get()
	if err != nil || len(inv.Pods) != 0 {
		t.Fatalf("missing file: %v %v, want an empty inventory", inv, err)
	}
	signalled(f.Changed()) // the first load may signal

	want := labInventory()
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
func TestFileInventoryNeverGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inventory.json")
	if err := os.WriteFile(path, []byte("nope"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileInventory(path, nil).Get(); err == nil {
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

func TestPlanSkipsDestinationPod(t *testing.T) {
	inv := labInventory()
	// The developer's pod carries the shared label, so the service selects it.
	inv.Pods[2].Labels = map[string]string{"app": "api"}
	ic := req("alice", "api-alice:8080", 0, session("alice")).GetIntercept()
	ic.Namespace = "default"
	p := computePlan(inv, []*detourv1.Intercept{ic})
	for _, tg := range p.nodes["lab"]["default/alice"].GetTargets() {
		if tg.GetPodName() == "api-alice" {
			t.Fatal("the destination pod is steered to itself")
		}
	}
	if n := len(p.nodes["lab"]["default/alice"].GetTargets()); n != 1 {
		t.Fatalf("%d targets on lab, want 1", n)
	}
}

func TestPlanCarriesServiceAddress(t *testing.T) {
	inv := labInventory()
	ic := req("alice", "api-alice:8080", 0, session("alice")).GetIntercept()
	ic.Namespace = "default"
	if got := computePlan(inv, []*detourv1.Intercept{ic}).nodes["lab"]["default/alice"].GetServiceAddresses(); len(got) != 0 {
		t.Errorf("without a ClusterIP (the lab), service addresses %v, want none", got)
	}
	inv.Services[0].ClusterIP = "10.96.0.7"
	p := computePlan(inv, []*detourv1.Intercept{ic})
	for _, node := range []string{"lab", "node-b"} {
		got := p.nodes[node]["default/alice"].GetServiceAddresses()
		if len(got) != 1 || got[0] != "10.96.0.7:80" {
			t.Errorf("node %s: service addresses %v, want [10.96.0.7:80] (the ClusterIP and the service port)", node, got)
		}
	}
}

func TestPlanSourcesByNode(t *testing.T) {
	inv := labInventory()
	// A source pod on each node: web-0 on lab, and one on node-b.
	inv.Pods = append(inv.Pods, inventory.Pod{Name: "web-1", Namespace: "team-a", Labels: map[string]string{"app": "web"}, IP: "10.0.1.31", Node: "node-b"})
	ic := req("db", "api-alice:9090", 0).GetIntercept()
	ic.Namespace = "default"
	ic.Spec.Port = 9090
	ic.Spec.L4 = true
	ic.Spec.SourceNamespaces = []string{"team-a"}
	p := computePlan(inv, []*detourv1.Intercept{ic})
	for node, want := range map[string]string{"lab": "10.0.0.30", "node-b": "10.0.1.31"} {
		a := p.nodes[node]["default/db"]
		if got := a.GetNodeSources(); len(got) != 1 || got[0] != want {
			t.Errorf("node %s: node sources %v, want [%s]", node, got, want)
		}
		if got := a.GetSources(); len(got) != 2 {
			t.Errorf("node %s: sources %v, want both source pods", node, got)
		}
	}
}
