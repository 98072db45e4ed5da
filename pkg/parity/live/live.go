// Package live reads one namespace through the Kubernetes API into what
// pkg/parity.Normalize takes: the objects of the kinds parity compares and,
// with Runtime, what runs there (each workload's pods' image digests and
// restarts, and the versions of the nodes they run on). It only ever gets
// and lists: read-only rights are enough, and a kind it may not list is
// reported as unread rather than failing the run. It takes a
// kubernetes.Interface, so the CLI and a controller read the same way.
package live

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/pkg/parity"
)

// ErrNamespaceNotFound says the namespace does not exist.
var ErrNamespaceNotFound = errors.New("namespace not found")

// Options tune Read.
type Options struct {
	// Runtime reads what runs too: pods, their ReplicaSets, their nodes.
	Runtime bool
	// PageSize is the list page size; 500 when zero.
	PageSize int64
}

// Result is one namespace as read.
type Result struct {
	// Objects are the objects of the kinds compared, as JSON maps with
	// apiVersion and kind set; with Runtime, workloads carry a "runtime"
	// field and a parity.NodesKind object is added.
	Objects []map[string]any
	// Unread are the kinds that could not be listed (forbidden, or not
	// served by this cluster).
	Unread []string
}

type lister struct {
	kind, apiVersion string
	list             func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error)
}

func listers(kube kubernetes.Interface, ns string) []lister {
	return []lister{
		{"Deployment", "apps/v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.AppsV1().Deployments(ns).List(ctx, o)
		}},
		{"StatefulSet", "apps/v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.AppsV1().StatefulSets(ns).List(ctx, o)
		}},
		{"DaemonSet", "apps/v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.AppsV1().DaemonSets(ns).List(ctx, o)
		}},
		{"CronJob", "batch/v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.BatchV1().CronJobs(ns).List(ctx, o)
		}},
		{"Job", "batch/v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.BatchV1().Jobs(ns).List(ctx, o)
		}},
		{"ConfigMap", "v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.CoreV1().ConfigMaps(ns).List(ctx, o)
		}},
		{"Secret", "v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.CoreV1().Secrets(ns).List(ctx, o)
		}},
		{"Service", "v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.CoreV1().Services(ns).List(ctx, o)
		}},
		{"Ingress", "networking.k8s.io/v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.NetworkingV1().Ingresses(ns).List(ctx, o)
		}},
		{"NetworkPolicy", "networking.k8s.io/v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.NetworkingV1().NetworkPolicies(ns).List(ctx, o)
		}},
		{"HorizontalPodAutoscaler", "autoscaling/v2", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.AutoscalingV2().HorizontalPodAutoscalers(ns).List(ctx, o)
		}},
		{"PodDisruptionBudget", "policy/v1", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.PolicyV1().PodDisruptionBudgets(ns).List(ctx, o)
		}},
	}
}

// Read reads namespace ns. A namespace that does not exist is
// ErrNamespaceNotFound; one the caller may not get is read all the same.
func Read(ctx context.Context, kube kubernetes.Interface, ns string, o Options) (*Result, error) {
	if o.PageSize == 0 {
		o.PageSize = 500
	}
	if _, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			return nil, fmt.Errorf("namespace %s: %w", ns, ErrNamespaceNotFound)
		case !apierrors.IsForbidden(err):
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	res := &Result{}
	for _, l := range listers(kube, ns) {
		items, err := listAll(ctx, l.list, o.PageSize)
		if apierrors.IsForbidden(err) || apierrors.IsNotFound(err) {
			res.Unread = append(res.Unread, l.kind)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s in namespace %s: %w", l.kind, ns, err)
		}
		for _, it := range items {
			m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(it)
			if err != nil {
				return nil, fmt.Errorf("%s in namespace %s: %w", l.kind, ns, err)
			}
			m["apiVersion"], m["kind"] = l.apiVersion, l.kind
			res.Objects = append(res.Objects, m)
		}
	}
	if o.Runtime {
		if err := readRuntime(ctx, kube, ns, o.PageSize, res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// Snapshot reads namespace ns and normalizes it: one side of a
// comparison, as the CLI and a controller take it. po's Namespace,
// Runtime and Unread are set from the read; its Source defaults to ns.
func Snapshot(ctx context.Context, kube kubernetes.Interface, ns string, o Options, po parity.Options) (*parity.Snapshot, error) {
	res, err := Read(ctx, kube, ns, o)
	if err != nil {
		return nil, err
	}
	if po.Source == "" {
		po.Source = ns
	}
	po.Namespace, po.Runtime, po.Unread = ns, o.Runtime, res.Unread
	return parity.Normalize(res.Objects, po)
}

// listAll lists every page.
func listAll(ctx context.Context, list func(context.Context, metav1.ListOptions) (runtime.Object, error), page int64) ([]runtime.Object, error) {
	var out []runtime.Object
	opts := metav1.ListOptions{Limit: page}
	for {
		l, err := list(ctx, opts)
		if err != nil {
			return nil, err
		}
		items, err := meta.ExtractList(l)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		acc, err := meta.ListAccessor(l)
		if err != nil {
			return nil, err
		}
		if acc.GetContinue() == "" {
			return out, nil
		}
		opts.Continue = acc.GetContinue()
	}
}

// readRuntime adds what runs: it lists pods and ReplicaSets, and gets the
// nodes the pods run on.
func readRuntime(ctx context.Context, kube kubernetes.Interface, ns string, page int64, res *Result) error {
	podObjs, err := listAll(ctx, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return kube.CoreV1().Pods(ns).List(ctx, o)
	}, page)
	if apierrors.IsForbidden(err) {
		res.Unread = append(res.Unread, "Pod")
		return nil
	}
	if err != nil {
		return fmt.Errorf("list pods in namespace %s: %w", ns, err)
	}
	rsObjs, err := listAll(ctx, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return kube.AppsV1().ReplicaSets(ns).List(ctx, o)
	}, page)
	if apierrors.IsForbidden(err) {
		res.Unread = append(res.Unread, "ReplicaSet")
	} else if err != nil {
		return fmt.Errorf("list replicasets in namespace %s: %w", ns, err)
	}
	var pods []*corev1.Pod
	for _, p := range podObjs {
		pods = append(pods, p.(*corev1.Pod))
	}
	owners := map[parity.ObjectKey]parity.ObjectKey{}
	for _, r := range rsObjs {
		rs := r.(*appsv1.ReplicaSet)
		if ref := metav1.GetControllerOf(rs); ref != nil && ref.Kind == "Deployment" {
			owners[parity.ObjectKey{Kind: "ReplicaSet", Name: rs.Name}] = parity.ObjectKey{Kind: "Deployment", Name: ref.Name}
		}
	}
	for _, m := range res.Objects {
		if m["kind"] != "Job" {
			continue
		}
		var job batchv1.Job
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &job); err != nil {
			continue
		}
		if ref := metav1.GetControllerOf(&job); ref != nil && ref.Kind == "CronJob" {
			owners[parity.ObjectKey{Kind: "Job", Name: job.Name}] = parity.ObjectKey{Kind: "CronJob", Name: ref.Name}
		}
	}
	AttachRuntime(res.Objects, pods, owners)

	var nodes []*corev1.Node
	for _, name := range nodeNames(pods) {
		n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsForbidden(err) {
			res.Unread = append(res.Unread, parity.NodesKind)
			return nil
		}
		if apierrors.IsNotFound(err) {
			continue // gone since the pod was listed
		}
		if err != nil {
			return fmt.Errorf("get node %s: %w", name, err)
		}
		nodes = append(nodes, n)
	}
	if len(nodes) > 0 {
		res.Objects = append(res.Objects, NodesObject(nodes))
	}
	return nil
}

func nodeNames(pods []*corev1.Pod) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range pods {
		if n := p.Spec.NodeName; n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// AttachRuntime adds to each workload in objs a "runtime" field: its pod
// count and, per container, the image digests its pods run and their
// restarts. A pod belongs to the workload its controller reference names,
// through owners for the ReplicaSets and a CronJob's Jobs (pod owners that
// are not compared → the workload that owns them).
func AttachRuntime(objs []map[string]any, pods []*corev1.Pod, owners map[parity.ObjectKey]parity.ObjectKey) {
	type cstate struct {
		digests  map[string]bool
		restarts int64
	}
	type wstate struct {
		pods       int64
		containers map[string]*cstate
	}
	byWorkload := map[parity.ObjectKey]*wstate{}
	for _, p := range pods {
		ref := metav1.GetControllerOf(p)
		if ref == nil {
			continue
		}
		w := parity.ObjectKey{Kind: ref.Kind, Name: ref.Name}
		if o, ok := owners[w]; ok {
			w = o
		}
		ws := byWorkload[w]
		if ws == nil {
			ws = &wstate{containers: map[string]*cstate{}}
			byWorkload[w] = ws
		}
		ws.pods++
		statuses := append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
		for _, cs := range statuses {
			c := ws.containers[cs.Name]
			if c == nil {
				c = &cstate{digests: map[string]bool{}}
				ws.containers[cs.Name] = c
			}
			if d := digest(cs.ImageID); d != "" {
				c.digests[d] = true
			}
			c.restarts += int64(cs.RestartCount)
		}
	}
	for _, m := range objs {
		kind, _ := m["kind"].(string)
		md, _ := m["metadata"].(map[string]any)
		name, _ := md["name"].(string)
		ws := byWorkload[parity.ObjectKey{Kind: kind, Name: name}]
		if ws == nil {
			continue
		}
		containers := map[string]any{}
		for n, c := range ws.containers {
			var ds []any
			for d := range c.digests {
				ds = append(ds, d)
			}
			containers[n] = map[string]any{"imageDigests": ds, "restarts": c.restarts}
		}
		m["runtime"] = map[string]any{"pods": ws.pods, "containers": containers}
	}
}

// digest is the content address of a container's image, without the
// repository (a mirror serves the same digest under another name).
func digest(imageID string) string {
	if i := strings.LastIndex(imageID, "@"); i >= 0 {
		return imageID[i+1:]
	}
	return imageID
}

// NodesObject is the synthetic object that holds the versions of the nodes
// a namespace's pods run on: node names differ between clusters, their
// versions are what can differ in behaviour.
func NodesObject(nodes []*corev1.Node) map[string]any {
	set := func(get func(corev1.NodeSystemInfo) string) []any {
		seen := map[string]bool{}
		var out []any
		for _, n := range nodes {
			if v := get(n.Status.NodeInfo); v != "" && !seen[v] {
				seen[v] = true
				out = append(out, v)
			}
		}
		return out
	}
	return map[string]any{
		"apiVersion":               parity.SnapshotAPIVersion,
		"kind":                     parity.NodesKind,
		"metadata":                 map[string]any{"name": "nodes"},
		"kubeletVersions":          set(func(i corev1.NodeSystemInfo) string { return i.KubeletVersion }),
		"kernelVersions":           set(func(i corev1.NodeSystemInfo) string { return i.KernelVersion }),
		"osImages":                 set(func(i corev1.NodeSystemInfo) string { return i.OSImage }),
		"containerRuntimeVersions": set(func(i corev1.NodeSystemInfo) string { return i.ContainerRuntimeVersion }),
	}
}
