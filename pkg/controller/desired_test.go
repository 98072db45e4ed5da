package controller

import (
	"testing"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
)

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
