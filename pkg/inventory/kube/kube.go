// Package kube fills an inventory.Inventory from a Kubernetes API server
// with shared informers on pods, services and EndpointSlices, for the
// controller (the whole cluster) and the agent (its own node).
//
// What it gives, and what it leaves to others:
//
//   - Pods: name, namespace, labels, node (spec.nodeName) and IP, the first
//     IPv4 address of status.podIPs (status.podIP when podIPs is empty). A
//     pod without an IPv4 address yet is listed with an empty IP, so that
//     it appears once the address comes. Pods on the host network (their
//     "IP" is the node's) and finished pods (Succeeded, Failed) are left
//     out: there is nothing of theirs to steer. NotReady mirrors the pod's
//     Ready condition: an environment's intercepts send only to ready fork
//     pods.
//   - NetNS is always empty: the API does not know a pod's network
//     namespace path. The agent resolves it on its own node (from the
//     container runtime), where the path means something.
//   - Services: name, namespace, selector and ports. Which pods back a
//     service stays what inventory.Service.Selects says: its selector over
//     the listed pods. The inventory's shape is selector-based, and
//     EndpointSlices would add nothing the pods do not already show here
//     while hiding pods that are not Ready yet (which an intercept may want)
//     and naming pods of other nodes the agent's Source does not list.
//     Services without a selector therefore select nothing.
//   - Ports: Port → TargetPort. A numeric targetPort is used as it is; an
//     empty one means the port itself. A named targetPort is properly
//     resolved per pod through its containers' ports, which is out of scope;
//     instead the Source takes the number the EndpointSlice controller
//     resolved for that service port (the slice's port of the same name),
//     and when no slice names it, falls back to the service port. This is
//     the only use of the EndpointSlice informer. Ports other than TCP are
//     left out: the data path steers TCP, and inventory.ServicePort has no
//     protocol to tell a UDP 53 from a TCP 53.
package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/detourdev/detour/pkg/inventory"
)

var _ inventory.Source = (*Source)(nil)

// Options tunes New.
type Options struct {
	// Node, when set, restricts pods to those with spec.nodeName == Node
	// (a server-side field selector): what an agent needs. It is also the
	// Inventory's Node. Services and EndpointSlices are always cluster-wide.
	Node string
	// Resync is the informers' resync period; 0 turns resync off. A resync
	// redelivers every object as an update, hence a Changed signal.
	Resync time.Duration
}

// ErrNotSynced is returned by Get before Run's caches have synced.
var ErrNotSynced = errors.New("kubernetes inventory: caches not synced yet")

// Source is an inventory.Source kept current by informers.
type Source struct {
	opts    Options
	changed chan struct{}

	podFactory informers.SharedInformerFactory // maybe node-restricted
	factory    informers.SharedInformerFactory // services, EndpointSlices
	pods       corelisters.PodLister
	services   corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	informers  []cache.SharedIndexInformer

	mu     sync.Mutex
	synced bool
}

// New returns a Source reading through client. Nothing is listed or
// watched before Run.
func New(client kubernetes.Interface, opts Options) *Source {
	s := &Source{opts: opts, changed: make(chan struct{}, 1)}
	var podOpts []informers.SharedInformerOption
	if opts.Node != "" {
		sel := fields.OneTermEqualSelector("spec.nodeName", opts.Node).String()
		podOpts = append(podOpts, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = sel
		}))
	}
	s.podFactory = informers.NewSharedInformerFactoryWithOptions(client, opts.Resync, podOpts...)
	s.factory = informers.NewSharedInformerFactory(client, opts.Resync)

	pods := s.podFactory.Core().V1().Pods()
	services := s.factory.Core().V1().Services()
	slices := s.factory.Discovery().V1().EndpointSlices()
	s.pods, s.services, s.slices = pods.Lister(), services.Lister(), slices.Lister()
	s.informers = []cache.SharedIndexInformer{pods.Informer(), services.Informer(), slices.Informer()}
	return s
}

// Run, called once, registers the event handlers, starts the informers and waits for
// their caches to sync, then blocks until ctx ends. It returns an error
// when ctx ends before the caches sync, nil after a clean stop.
func (s *Source) Run(ctx context.Context) error {
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.notify() },
		UpdateFunc: func(any, any) { s.notify() },
		DeleteFunc: func(any) { s.notify() },
	}
	var regs []cache.ResourceEventHandlerRegistration
	for _, inf := range s.informers {
		r, err := inf.AddEventHandler(h)
		if err != nil {
			return fmt.Errorf("kubernetes inventory: add event handler: %w", err)
		}
		regs = append(regs, r)
	}
	s.podFactory.Start(ctx.Done())
	s.factory.Start(ctx.Done())
	defer s.podFactory.Shutdown()
	defer s.factory.Shutdown()

	syncs := make([]cache.InformerSynced, 0, len(s.informers)+len(regs))
	for _, inf := range s.informers {
		syncs = append(syncs, inf.HasSynced)
	}
	for _, r := range regs {
		syncs = append(syncs, r.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return fmt.Errorf("kubernetes inventory: caches did not sync: %w", context.Cause(ctx))
	}
	s.mu.Lock()
	s.synced = true
	s.mu.Unlock()
	s.notify() // Get now answers: let the reader take its first look
	<-ctx.Done()
	return nil
}

// Changed implements inventory.Source: it receives,
// coalesced, after any pod, service or EndpointSlice was added, updated or
// deleted (and once when the caches have synced).
func (s *Source) Changed() <-chan struct{} { return s.changed }

func (s *Source) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Get implements inventory.Source. It builds a new
// Inventory from the listers at each call, sorted by namespace and name; the
// cached objects are only read, never modified.
func (s *Source) Get() (*inventory.Inventory, error) {
	s.mu.Lock()
	synced := s.synced
	s.mu.Unlock()
	if !synced {
		return nil, ErrNotSynced
	}
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("kubernetes inventory: list pods: %w", err)
	}
	svcs, err := s.services.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("kubernetes inventory: list services: %w", err)
	}
	inv := &inventory.Inventory{Node: s.opts.Node, Pods: []inventory.Pod{}, Services: []inventory.Service{}}
	for _, p := range pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if s.opts.Node != "" && p.Spec.NodeName != s.opts.Node {
			continue // the field selector already did this; be sure
		}
		inv.Pods = append(inv.Pods, inventory.Pod{
			Name:      p.Name,
			Namespace: p.Namespace,
			Labels:    maps.Clone(p.Labels),
			IP:        podIPv4(p),
			Node:      p.Spec.NodeName,
			NotReady:  !podReady(p),
		})
	}
	for _, svc := range svcs {
		inv.Services = append(inv.Services, inventory.Service{
			Name:      svc.Name,
			Namespace: svc.Namespace,
			Selector:  maps.Clone(svc.Spec.Selector),
			Ports:     s.ports(svc),
			ClusterIP: clusterIPv4(svc),
		})
	}
	sort.Slice(inv.Pods, func(i, j int) bool {
		a, b := inv.Pods[i], inv.Pods[j]
		return a.Namespace < b.Namespace || a.Namespace == b.Namespace && a.Name < b.Name
	})
	sort.Slice(inv.Services, func(i, j int) bool {
		a, b := inv.Services[i], inv.Services[j]
		return a.Namespace < b.Namespace || a.Namespace == b.Namespace && a.Name < b.Name
	})
	return inv, nil
}

// ports maps the service's ports to target ports (see the package comment
// for named target ports). Only TCP ports: the data path steers TCP.
func (s *Source) ports(svc *corev1.Service) []inventory.ServicePort {
	out := []inventory.ServicePort{}
	var named map[string]uint32 // port name → number, from the slices, on demand
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		p := inventory.ServicePort{Name: sp.Name, Port: uint32(sp.Port), TargetPort: uint32(sp.Port)}
		switch {
		case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal > 0:
			p.TargetPort = uint32(sp.TargetPort.IntVal)
		case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
			if named == nil {
				named = s.slicePorts(svc)
			}
			if n, ok := named[sp.Name]; ok {
				p.TargetPort = n
			}
		}
		out = append(out, p)
	}
	return out
}

// slicePorts returns, for the service's EndpointSlices, each port name with
// the number the EndpointSlice controller resolved. Where slices disagree
// (pods naming the port differently) the smallest number wins, so the
// answer does not depend on listing order.
func (s *Source) slicePorts(svc *corev1.Service) map[string]uint32 {
	out := map[string]uint32{}
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name})
	slices, err := s.slices.EndpointSlices(svc.Namespace).List(sel)
	if err != nil {
		return out
	}
	for _, es := range slices {
		for _, p := range es.Ports {
			if p.Port == nil || *p.Port <= 0 || p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
				continue
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if n, ok := out[name]; !ok || uint32(*p.Port) < n {
				out[name] = uint32(*p.Port)
			}
		}
	}
	return out
}

// podIPv4 returns the pod's first IPv4 address, or "" when it has none.
// podReady reports whether the pod's Ready condition is True.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podIPv4(p *corev1.Pod) string {
	ips := make([]string, 0, len(p.Status.PodIPs)+1)
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	ips = append(ips, p.Status.PodIP)
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Unmap().Is4() {
			return a.Unmap().String()
		}
	}
	return ""
}

// clusterIPv4 is the service's IPv4 ClusterIP, or empty (headless, none,
// or IPv6 only).
func clusterIPv4(svc *corev1.Service) string {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil && a.Is4() {
			return a.String()
		}
	}
	return ""
}
