// Package inventory describes what runs on a node: pods with their addresses
// and network namespaces, and the services that select them. The lab writes
// it; the controller and agent read it (in Kubernetes, informers fill the
// same shape). The controller takes it from a Source: the lab's file
// (FileSource), memory (StaticSource), or the API server (pkg/inventory/kube).
package inventory

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// NamespaceDefault is Kubernetes' default namespace, "default"
// (metav1.NamespaceDefault, restated so that the lab builds without
// client-go): that of pods, services and intercepts that name none.
const NamespaceDefault = "default"

// Inventory is one node's pods and the services over them.
type Inventory struct {
	Node     string    `json:"node"`
	Pods     []Pod     `json:"pods"`
	Services []Service `json:"services"`
}

// Pod is a pod on the node.
type Pod struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	// IP is the pod's IPv4 address.
	IP string `json:"ip"`
	// NetNS is the path of the pod's network namespace on the node.
	NetNS string `json:"netns"`
	Node  string `json:"node"`
	// NotReady is set for a pod whose Ready condition is not True; the lab
	// leaves it unset (its pods are ready once they run).
	NotReady bool `json:"notReady,omitempty"`
}

// Service selects pods by labels and maps its ports to theirs.
type Service struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Selector  map[string]string `json:"selector"`
	Ports     []ServicePort     `json:"ports"`
	// ClusterIP is the service's IPv4 virtual address in Kubernetes; empty
	// in the lab and for headless services.
	ClusterIP string `json:"clusterIP,omitempty"`
}

// ServicePort maps a service port to the pods' target port.
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Port       uint32 `json:"port"`
	TargetPort uint32 `json:"targetPort"`
}

// Load reads an inventory file.
func Load(path string) (*Inventory, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read inventory: %w", err)
	}
	var inv Inventory
	if err := json.Unmarshal(b, &inv); err != nil {
		return nil, fmt.Errorf("parse inventory %s: %w", path, err)
	}
	return &inv, nil
}

// Save writes the inventory atomically, so a reader never sees half a file.
func (inv *Inventory) Save(path string) error {
	b, err := json.MarshalIndent(inv, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("save inventory: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("save inventory: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save inventory: %w", err)
	}
	return nil
}

// Service returns the named service.
func (inv *Inventory) Service(namespace, name string) (*Service, error) {
	for i := range inv.Services {
		s := &inv.Services[i]
		if s.Namespace == namespace && s.Name == name {
			return s, nil
		}
	}
	return nil, fmt.Errorf("service %s/%s not found", namespace, name)
}

// Pod returns the named pod.
func (inv *Inventory) Pod(namespace, name string) (*Pod, error) {
	for i := range inv.Pods {
		p := &inv.Pods[i]
		if p.Namespace == namespace && p.Name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s not found", namespace, name)
}

// TargetPort maps a service port to its pods' port.
func (s *Service) TargetPort(port uint32) (uint32, error) {
	for _, p := range s.Ports {
		if p.Port == port {
			if p.TargetPort == 0 {
				return p.Port, nil
			}
			return p.TargetPort, nil
		}
	}
	return 0, fmt.Errorf("service %s/%s has no port %d", s.Namespace, s.Name, port)
}

// Selects reports whether the service's selector selects the pod. An empty
// selector selects nothing, as in Kubernetes.
func (s *Service) Selects(p *Pod) bool {
	if len(s.Selector) == 0 || p.Namespace != s.Namespace {
		return false
	}
	for k, v := range s.Selector {
		if p.Labels[k] != v {
			return false
		}
	}
	return true
}

// Endpoints returns the pods a service selects, sorted by name.
func (inv *Inventory) Endpoints(s *Service) []Pod {
	var out []Pod
	for _, p := range inv.Pods {
		if s.Selects(&p) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
