package lab

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// hostsFile renders /etc/netns/<pod>/hosts for the i-th pod. `ip netns exec`
// bind-mounts it over /etc/hosts, so a pod's command resolves lab names with
// the ordinary libc or Go resolver and no DNS server runs.
//
// The lab has no ClusterIP: a service name resolves straight to the IPs of
// the pods it selects, one hosts line per pod (glibc and Go both return
// every address listed for a name; clients usually take the first). Names:
//
//   - a service: name.namespace, name.namespace.svc,
//     name.namespace.svc.cluster.local, and the bare name from pods in the
//     service's own namespace (as a Kubernetes search path would give);
//   - a pod: name.namespace.pod and the bare name, unless a service visible
//     from this pod already claims the bare name: then the service wins, as
//     the bare name is how clients are written against Kubernetes.
func (f *File) hostsFile(i int) []byte {
	self := f.Pods[i]
	type entry struct {
		ip    netip.Addr
		names []string
		seen  map[string]bool
	}
	var order []*entry
	byIP := map[netip.Addr]*entry{}
	add := func(ip netip.Addr, names ...string) {
		e := byIP[ip]
		if e == nil {
			e = &entry{ip: ip, seen: map[string]bool{}}
			byIP[ip] = e
			order = append(order, e)
		}
		for _, n := range names {
			if !e.seen[n] {
				e.seen[n] = true
				e.names = append(e.names, n)
			}
		}
	}

	shortSvc := map[string]bool{}
	for _, s := range f.Services {
		if s.Namespace == self.Namespace {
			shortSvc[s.Name] = true
		}
	}
	// Pods first, in file order, so the file reads like the lab file.
	for j, p := range f.Pods {
		names := []string{}
		if !shortSvc[p.Name] {
			names = append(names, p.Name)
		}
		names = append(names, p.Name+"."+p.Namespace+".pod")
		add(f.PodIP(j), names...)
	}
	// Which pods a service selects, as the controller decides it.
	inv := f.Inventory(nil)
	for k := range inv.Services {
		s := &inv.Services[k]
		fq := s.Name + "." + s.Namespace
		names := []string{}
		if s.Namespace == self.Namespace {
			names = append(names, s.Name)
		}
		names = append(names, fq, fq+".svc", fq+".svc.cluster.local")
		for j := range inv.Pods {
			if s.Selects(&inv.Pods[j]) {
				add(f.PodIP(j), names...)
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# Written by detour lab %q for pod %s/%s; `ip netns exec %s` mounts it over /etc/hosts.\n",
		f.Name, self.Namespace, self.Name, self.Name)
	b.WriteString("# Service names resolve to the selected pods' IPs: the lab has no ClusterIP.\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, e := range order {
		// Bare names first: the first name on a line is the canonical one
		// that getent and reverse lookups report.
		sort.SliceStable(e.names, func(a, b int) bool {
			return !strings.Contains(e.names[a], ".") && strings.Contains(e.names[b], ".")
		})
		fmt.Fprintf(&b, "%s\t%s\n", e.ip, strings.Join(e.names, " "))
	}
	return []byte(b.String())
}
