package kube_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/inventory/kube"
)

const ns = "inv-test"

func client(t *testing.T) kubernetes.Interface {
	t.Helper()
	env := envtest.Start(t)
	c, err := kubernetes.NewForConfig(&rest.Config{
		Host:            env.URL,
		BearerToken:     env.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: env.CAPEM},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// createPod creates a pod on node and, there being no kubelet, sets its IP
// through the status subresource.
func createPod(ctx context.Context, t *testing.T, c kubernetes.Interface, name, node, app, ip string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "c", Image: "example.invalid/c"}},
		},
	}
	p, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{FieldManager: "detour-test"})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	setIP(ctx, t, c, p, ip)
}

func setIP(ctx context.Context, t *testing.T, c kubernetes.Interface, p *corev1.Pod, ip string) {
	t.Helper()
	p = p.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	// api-0 is Ready; web-0 runs but is not (yet): NotReady says which.
	if strings.HasPrefix(p.Name, "api-") {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	}
	if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{FieldManager: "detour-test"}); err != nil {
		t.Fatalf("set IP of pod %s: %v", p.Name, err)
	}
}

// run starts src until the test ends and checks that Run returns cleanly.
func run(t *testing.T, src *kube.Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// waitFor rereads the inventory at every Changed signal until check passes
// or the deadline; it returns the last inventory.
func waitFor(ctx context.Context, t *testing.T, src *kube.Source, what string, check func(*inventory.Inventory) error) *inventory.Inventory {
	t.Helper()
	var last error
	for {
		inv, err := src.Get()
		if err == nil {
			if last = check(inv); last == nil {
				return inv
			}
		} else {
			last = err
		}
		select {
		case <-src.Changed():
		case <-ctx.Done():
			t.Fatalf("%s: %v (last: %v)", what, ctx.Err(), last)
		}
	}
}

func TestSource(t *testing.T) {
	c := client(t)
	ctx := ctxT(t, 2*time.Minute)
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	all := kube.New(c, kube.Options{})
	if _, err := all.Get(); !errors.Is(err, kube.ErrNotSynced) {
		t.Fatalf("Get before Run: %v, want ErrNotSynced", err)
	}
	run(t, all)
	nodeA := kube.New(c, kube.Options{Node: "node-a"})
	run(t, nodeA)

	createPod(ctx, t, c, "api-0", "node-a", "api", "10.0.0.10")
	createPod(ctx, t, c, "web-0", "node-b", "web", "10.0.1.20")
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: ns},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.0.0.50",
			Selector:  map[string]string{"app": "api"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "same", Port: 81},
				{Name: "named", Port: 82, TargetPort: intstr.FromString("metrics")},
				{Name: "unresolved", Port: 83, TargetPort: intstr.FromString("nope")},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			},
		},
	}
	if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{FieldManager: "detour-test"}); err != nil {
		t.Fatal(err)
	}
	// No endpointslice controller runs here: write the slice it would.
	name, port, tcp := "named", int32(9090), corev1.ProtocolTCP
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "api-x", Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: "api", discoveryv1.LabelManagedBy: "detour-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.10"}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &tcp}},
	}
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{FieldManager: "detour-test"}); err != nil {
		t.Fatal(err)
	}

	wantSvc := inventory.Service{
		Name: "api", Namespace: ns, Selector: map[string]string{"app": "api"},
		Ports: []inventory.ServicePort{
			{Name: "http", Port: 80, TargetPort: 8080},
			{Name: "same", Port: 81, TargetPort: 81},
			{Name: "named", Port: 82, TargetPort: 9090},
			{Name: "unresolved", Port: 83, TargetPort: 83},
		},
		ClusterIP: "10.0.0.50",
	}
	apiPod := inventory.Pod{Name: "api-0", Namespace: ns, Labels: map[string]string{"app": "api"}, IP: "10.0.0.10", Node: "node-a"}
	webPod := inventory.Pod{Name: "web-0", Namespace: ns, Labels: map[string]string{"app": "web"}, IP: "10.0.1.20", Node: "node-b", NotReady: true}

	// The envtest API server has a "kubernetes" service in default: look at
	// our namespace only.
	mine := func(inv *inventory.Inventory) inventory.Inventory {
		out := inventory.Inventory{Node: inv.Node}
		for _, p := range inv.Pods {
			if p.Namespace == ns {
				out.Pods = append(out.Pods, p)
			}
		}
		for _, s := range inv.Services {
			if s.Namespace == ns {
				out.Services = append(out.Services, s)
			}
		}
		return out
	}
	equal := func(want inventory.Inventory) func(*inventory.Inventory) error {
		return func(inv *inventory.Inventory) error {
			if got := mine(inv); !reflect.DeepEqual(got, want) {
				return fmt.Errorf("got %+v, want %+v", got, want)
			}
			return nil
		}
	}

	inv := waitFor(ctx, t, all, "cluster-wide inventory",
		equal(inventory.Inventory{Pods: []inventory.Pod{apiPod, webPod}, Services: []inventory.Service{wantSvc}}))
	s, err := inv.Service(ns, "api")
	if err != nil {
		t.Fatal(err)
	}
	if eps := inv.Endpoints(s); len(eps) != 1 || eps[0].Name != "api-0" {
		t.Errorf("endpoints of api: %+v, want api-0", eps)
	}
	waitFor(ctx, t, nodeA, "node-a inventory",
		equal(inventory.Inventory{Node: "node-a", Pods: []inventory.Pod{apiPod}, Services: []inventory.Service{wantSvc}}))

	// A new IP: Changed fires and Get shows it.
	drain(all)
	p, err := c.CoreV1().Pods(ns).Get(ctx, "api-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setIP(ctx, t, c, p, "10.0.0.99")
	select {
	case <-all.Changed():
	case <-ctx.Done():
		t.Fatal("no Changed after the pod's IP changed")
	}
	apiPod.IP = "10.0.0.99"
	waitFor(ctx, t, all, "new IP cluster-wide",
		equal(inventory.Inventory{Pods: []inventory.Pod{apiPod, webPod}, Services: []inventory.Service{wantSvc}}))
	waitFor(ctx, t, nodeA, "new IP on node-a",
		equal(inventory.Inventory{Node: "node-a", Pods: []inventory.Pod{apiPod}, Services: []inventory.Service{wantSvc}}))

	// A change on another node moves node-b's pod only.
	if err := c.CoreV1().Pods(ns).Delete(ctx, "web-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, all, "web-0 deleted",
		equal(inventory.Inventory{Pods: []inventory.Pod{apiPod}, Services: []inventory.Service{wantSvc}}))
}

func drain(s *kube.Source) {
	for {
		select {
		case <-s.Changed():
		default:
			return
		}
	}
}

func TestRunGivesUpWithoutServer(t *testing.T) {
	// Run against an unreachable server: it must give up when ctx ends.
	c, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	src := kube.New(c, kube.Options{Node: "n"})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := src.Run(ctx); err == nil {
		t.Fatal("Run synced against no server")
	}
	if _, err := src.Get(); !errors.Is(err, kube.ErrNotSynced) {
		t.Fatalf("Get: %v, want ErrNotSynced", err)
	}
}
