package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/netns"
)

// Defaults for the optional parts of a lab file.
const (
	DefaultNode     = "lab"
	DefaultBridge   = "detour0"
	DefaultSubnet   = "10.213.0.0/24"
	DefaultStateDir = "/run/detour/lab"
)

// File is a lab file: one simulated node, its pods and the services over them.
type File struct {
	// Name names the lab; it is recorded in the state so that a second `up`
	// of the same lab can say "run lab down" instead of a bare conflict.
	Name string `json:"name"`
	// Node is the node name written into the inventory ("lab" if empty).
	Node     string    `json:"node,omitempty"`
	Network  Network   `json:"network,omitempty"`
	Pods     []Pod     `json:"pods"`
	Services []Service `json:"services,omitempty"`
}

// Network is the node's pod network: one bridge in the node's namespace
// holding the first address of Subnet, like cni0 on a Kubernetes node.
type Network struct {
	Bridge string `json:"bridge,omitempty"`
	Subnet string `json:"subnet,omitempty"`
}

// Pod is a network namespace named after the pod, with one veth to the bridge
// and, optionally, one command running inside it.
type Pod struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Command is argv; empty means the pod runs nothing (a bare namespace
	// that a user can enter with `ip netns exec`).
	Command []string `json:"command,omitempty"`
	// Workload names the workload the pod stands for, as an environment
	// forks it (`detour env create --fork NAME`); absent: the pod's name.
	Workload string `json:"workload,omitempty"`
}

// Service selects pods by labels and maps its ports to theirs.
type Service struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"`
	Selector  map[string]string `json:"selector,omitempty"`
	Ports     []ServicePort     `json:"ports"`
}

// ServicePort maps a service port to a target port on the pods (0 = same).
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Port       int    `json:"port"`
	TargetPort int    `json:"targetPort,omitempty"`
}

// Load reads and validates a lab file.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read lab file: %w", err)
	}
	f, err := Parse(b)
	if err != nil {
		return nil, &fileError{path: path, err: err}
	}
	return f, nil
}

// fileError puts each of a file's problems on its own indented line.
type fileError struct {
	path string
	err  error
}

func (e *fileError) Error() string {
	return "lab file " + e.path + ":\n  " + strings.ReplaceAll(e.err.Error(), "\n", "\n  ")
}

func (e *fileError) Unwrap() error { return e.err }

// Parse decodes a lab file, fills in defaults and validates it. Unknown
// fields are errors: a misspelt "selector" would otherwise silently select
// nothing.
func Parse(b []byte) (*File, error) {
	var f File
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	f.setDefaults()
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// normalized returns a copy of f with defaults filled in, for a File built
// in code rather than parsed; the caller's File is left as it was.
func (f *File) normalized() *File {
	c := *f
	c.Pods = append([]Pod(nil), f.Pods...)
	c.Services = make([]Service, len(f.Services))
	for i, s := range f.Services {
		s.Ports = append([]ServicePort(nil), s.Ports...)
		c.Services[i] = s
	}
	c.setDefaults()
	return &c
}

func (f *File) setDefaults() {
	if f.Node == "" {
		f.Node = DefaultNode
	}
	if f.Network.Bridge == "" {
		f.Network.Bridge = DefaultBridge
	}
	if f.Network.Subnet == "" {
		f.Network.Subnet = DefaultSubnet
	}
	for i := range f.Pods {
		if f.Pods[i].Namespace == "" {
			f.Pods[i].Namespace = inventory.NamespaceDefault
		}
	}
	for i := range f.Services {
		s := &f.Services[i]
		if s.Namespace == "" {
			s.Namespace = inventory.NamespaceDefault
		}
		for j := range s.Ports {
			if s.Ports[j].TargetPort == 0 {
				s.Ports[j].TargetPort = s.Ports[j].Port
			}
		}
	}
}

// maxNameLen bounds pod, service, namespace, lab and node names. Pod names
// become netns names (a file under /run/netns, and /etc/netns/<pod>) as they
// are, so `ip netns exec <pod>` works; interface names never carry them
// (host veths are "dt"+hash and the pod side is eth0), so the limit that
// matters is the DNS-1123 label one, which the names must also meet to appear
// in a hosts file.
const maxNameLen = 63

var (
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	labelValue = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	labelName  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	dnsSubdom  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

func checkDNSLabel(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", what)
	case len(s) > maxNameLen:
		return fmt.Errorf("%s %q is %d characters; at most %d (a DNS-1123 label)", what, s, len(s), maxNameLen)
	case !dnsLabel.MatchString(s):
		return fmt.Errorf("%s %q is not a DNS-1123 label (lower case letters, digits and '-', starting and ending with a letter or digit)", what, s)
	}
	return nil
}

// checkLabels applies the Kubernetes rules for label keys and values, so a
// lab file stays a faithful miniature of the manifests it imitates.
func checkLabels(what string, m map[string]string) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := k
		if prefix, rest, ok := strings.Cut(k, "/"); ok {
			if prefix == "" || len(prefix) > 253 || !dnsSubdom.MatchString(prefix) {
				return fmt.Errorf("%s key %q: prefix must be a DNS subdomain", what, k)
			}
			name = rest
		}
		if name == "" || len(name) > 63 || !labelName.MatchString(name) {
			return fmt.Errorf("%s key %q: name must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit", what, k)
		}
		if v := m[k]; len(v) > 63 || !labelValue.MatchString(v) {
			return fmt.Errorf("%s %q: value %q must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit", what, k, v)
		}
	}
	return nil
}

// checkIfName applies the kernel's rules for a network interface name.
func checkIfName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > 15:
		return fmt.Errorf("%q is %d characters; an interface name has at most 15", s, len(s))
	case s == "." || s == "..":
		return fmt.Errorf("%q is not a valid interface name", s)
	case strings.ContainsAny(s, "/: \t\n"):
		return fmt.Errorf("%q must not contain '/', ':' or whitespace", s)
	}
	return nil
}

// Prefix returns the pod subnet. Only valid after Validate.
func (f *File) Prefix() netip.Prefix { return netip.MustParsePrefix(f.Network.Subnet) }

// Gateway is the bridge's address: the first host of the subnet.
func (f *File) Gateway() netip.Addr { return f.Prefix().Addr().Next() }

// PodIP returns the address of the i-th pod: pods take .2, .3, ... in file
// order, so addresses stay put across runs of an unchanged file.
func (f *File) PodIP(i int) netip.Addr {
	a := f.Gateway()
	for range i + 1 {
		a = a.Next()
	}
	return a
}

// maxPods is how many pods fit: the subnet minus network, bridge and
// broadcast addresses.
func maxPods(p netip.Prefix) int {
	hostBits := 32 - p.Bits()
	if hostBits >= 31 {
		return 1<<31 - 1
	}
	return 1<<hostBits - 3
}

// Validate reports every problem in the file at once, each naming the object
// it is about, so one edit round fixes them all.
func (f *File) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if err := checkDNSLabel("name", f.Name); err != nil {
		add("%w", err)
	}
	if err := checkDNSLabel("node", f.Node); err != nil {
		add("%w", err)
	}
	if err := checkIfName(f.Network.Bridge); err != nil {
		add("network.bridge: %w", err)
	}
	prefix, err := netip.ParsePrefix(f.Network.Subnet)
	switch {
	case err != nil:
		add("network.subnet %q: not a CIDR prefix such as 10.213.0.0/24", f.Network.Subnet)
	case !prefix.Addr().Is4():
		add("network.subnet %q: only IPv4 is supported", f.Network.Subnet)
	case prefix.Bits() > 30:
		add("network.subnet %q: too small; need at least a /30 (bridge and one pod)", f.Network.Subnet)
	case prefix.Masked() != prefix:
		add("network.subnet %q: has host bits set; did you mean %s?", f.Network.Subnet, prefix.Masked())
	default:
		if n := maxPods(prefix); len(f.Pods) > n {
			add("network.subnet %s: %d pods do not fit (at most %d: .1 is the bridge)", prefix, len(f.Pods), n)
		}
	}

	if len(f.Pods) == 0 {
		add("pods: a lab needs at least one pod")
	}
	seenPod := map[string]int{}
	for i, p := range f.Pods {
		obj := fmt.Sprintf("pods[%d]", i)
		if p.Name != "" {
			obj = fmt.Sprintf("pods[%d] %q", i, p.Name)
		}
		if err := checkDNSLabel("name", p.Name); err != nil {
			add("%s: %w", obj, err)
		} else if j, dup := seenPod[p.Name]; dup {
			// Netns names are global to the host, so pod names must be
			// unique across namespaces too.
			add("%s: duplicate pod name (also pods[%d]); pod names become netns names and must be unique across namespaces", obj, j)
		} else {
			seenPod[p.Name] = i
		}
		if err := checkDNSLabel("namespace", p.Namespace); err != nil {
			add("%s: %w", obj, err)
		}
		if p.Workload != "" {
			if err := checkDNSLabel("workload", p.Workload); err != nil {
				add("%s: %w", obj, err)
			}
		}
		if err := checkLabels("label", p.Labels); err != nil {
			add("%s: %w", obj, err)
		}
		for j, a := range p.Command {
			if a == "" {
				add("%s: command[%d] is empty", obj, j)
			}
		}
	}

	seenSvc := map[string]int{}
	for i, s := range f.Services {
		obj := fmt.Sprintf("services[%d]", i)
		if s.Name != "" {
			obj = fmt.Sprintf("services[%d] %q", i, s.Name)
		}
		if err := checkDNSLabel("name", s.Name); err != nil {
			add("%s: %w", obj, err)
		} else if j, dup := seenSvc[s.Namespace+"/"+s.Name]; dup {
			add("%s: duplicate service %s/%s (also services[%d])", obj, s.Namespace, s.Name, j)
		} else {
			seenSvc[s.Namespace+"/"+s.Name] = i
		}
		if err := checkDNSLabel("namespace", s.Namespace); err != nil {
			add("%s: %w", obj, err)
		}
		if err := checkLabels("selector", s.Selector); err != nil {
			add("%s: %w", obj, err)
		}
		if len(s.Ports) == 0 {
			add("%s: needs at least one port", obj)
		}
		seenPort := map[int]bool{}
		seenName := map[string]bool{}
		for j, p := range s.Ports {
			if p.Port < 1 || p.Port > 65535 {
				add("%s: ports[%d]: port %d out of range 1-65535", obj, j, p.Port)
			} else if seenPort[p.Port] {
				add("%s: ports[%d]: duplicate port %d", obj, j, p.Port)
			}
			seenPort[p.Port] = true
			// A defaulted targetPort repeats port: report a bad one once.
			if p.TargetPort != p.Port && (p.TargetPort < 1 || p.TargetPort > 65535) {
				add("%s: ports[%d]: targetPort %d out of range 1-65535", obj, j, p.TargetPort)
			}
			if p.Name != "" {
				if err := checkDNSLabel("name", p.Name); err != nil {
					add("%s: ports[%d]: %w", obj, j, err)
				} else if seenName[p.Name] {
					add("%s: ports[%d]: duplicate port name %q", obj, j, p.Name)
				}
				seenName[p.Name] = true
			} else if len(s.Ports) > 1 {
				add("%s: ports[%d]: a service with several ports must name each", obj, j)
			}
		}
	}
	return errors.Join(errs...)
}

// Warnings lists things that are allowed but probably not meant.
func (f *File) Warnings() []string {
	var w []string
	inv := f.Inventory(nil)
	for i := range inv.Services {
		s := &inv.Services[i]
		if len(inv.Endpoints(s)) == 0 {
			w = append(w, fmt.Sprintf("service %s/%s selects no pod: its name will not resolve in the lab", s.Namespace, s.Name))
		}
	}
	for i := range inv.Pods {
		p := &inv.Pods[i]
		for j := range inv.Services {
			s := &inv.Services[j]
			if s.Name == p.Name && s.Namespace == p.Namespace && !s.Selects(p) {
				w = append(w, fmt.Sprintf("service %s/%s and pod %s share a name: in namespace %s the short name %q resolves to the service; reach the pod as %s.%s.pod",
					s.Namespace, s.Name, p.Name, p.Namespace, p.Name, p.Name, p.Namespace))
			}
		}
	}
	return w
}

// Inventory describes the lab's node as the controller and agent see it.
// netnsPath maps a pod name to its namespace path; nil means the standard
// one under netns.RunDir.
func (f *File) Inventory(netnsPath func(string) string) *inventory.Inventory {
	if netnsPath == nil {
		netnsPath = netns.PathOf
	}
	inv := &inventory.Inventory{Node: f.Node, Pods: []inventory.Pod{}, Services: []inventory.Service{}}
	for i, p := range f.Pods {
		inv.Pods = append(inv.Pods, inventory.Pod{
			Name:      p.Name,
			Namespace: p.Namespace,
			Labels:    p.Labels,
			IP:        f.PodIP(i).String(),
			NetNS:     netnsPath(p.Name),
			Node:      f.Node,
		})
	}
	for _, s := range f.Services {
		is := inventory.Service{Name: s.Name, Namespace: s.Namespace, Selector: s.Selector, Ports: []inventory.ServicePort{}}
		for _, p := range s.Ports {
			is.Ports = append(is.Ports, inventory.ServicePort{Name: p.Name, Port: uint32(p.Port), TargetPort: uint32(p.TargetPort)})
		}
		inv.Services = append(inv.Services, is)
	}
	return inv
}
