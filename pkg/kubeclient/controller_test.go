package kubeclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
)

var controllerLabels = map[string]string{"app.kubernetes.io/name": "detour-controller"}

// The pod the CLI forwards to is the Ready controller pod (the leader);
// without one the error says what the pods are doing and how to install.
func TestControllerPod(t *testing.T) {
	env := envtest.Start(t)
	kube := kubetest.Clientset(t, env.Kubeconfig)
	ctx := context.Background()
	const ns = "detour-system"

	_, _, err := ControllerPod(ctx, kube, ns)
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "no Detour controller pod (app.kubernetes.io/name=detour-controller) in namespace detour-system") ||
		!strings.Contains(err.Error(), "run `detour install`") {
		t.Fatalf("no namespace: %v", err)
	}
	kubetest.Namespace(t, kube, ns)
	kubetest.Pod(t, kube, ns, "detour-controller-b", controllerLabels, kubetest.PodState{})
	kubetest.Pod(t, kube, ns, "detour-controller-a", controllerLabels, kubetest.PodState{Phase: corev1.PodRunning})
	// A Ready pod that is not the controller's.
	kubetest.Pod(t, kube, ns, "aaa-other", map[string]string{"app.kubernetes.io/name": "other"}, kubetest.PodState{Phase: corev1.PodRunning, Ready: true})
	_, _, err = ControllerPod(ctx, kube, ns)
	if !errors.Is(err, ErrNotInstalled) ||
		!strings.Contains(err.Error(), "no Ready Detour controller pod in namespace detour-system (detour-controller-a: running, not Ready; detour-controller-b: Pending)") {
		t.Fatalf("no Ready pod: %v", err)
	}

	// The leader: Ready. A terminating Ready pod before it is passed over.
	kubetest.Pod(t, kube, ns, "detour-controller-c", controllerLabels, kubetest.PodState{Phase: corev1.PodRunning, Ready: true})
	old := kubetest.Pod(t, kube, ns, "detour-controller-0", controllerLabels, kubetest.PodState{Phase: corev1.PodRunning, Ready: true})
	old.Finalizers = []string{"test.detour.dev/hold"}
	if _, err := kube.CoreV1().Pods(ns).Update(ctx, old, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kube.CoreV1().Pods(ns).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, old.Name, metav1.GetOptions{})
		if err == nil {
			p.Finalizers = nil
			_, _ = kube.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{})
		}
	})
	pod, port, err := ControllerPod(ctx, kube, ns)
	if err != nil {
		t.Fatal(err)
	}
	if pod.Name != "detour-controller-c" || port != 7070 {
		t.Errorf("chose %s port %d, want detour-controller-c port 7070", pod.Name, port)
	}

	// The user of the CLI without the detour-client Role is refused by the
	// API server, and told so.
	user := kubetest.Clientset(t, env.UserKubeconfig)
	if _, _, err := ControllerPod(ctx, user, ns); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("user without rights: %v", err)
	}
}

// The CA comes from ConfigMap detour-ca and the name checked is the
// controller Service's; OpenController forwards to the Ready pod's grpc
// port only when both are there.
func TestOpenController(t *testing.T) {
	env := envtest.Start(t)
	kube := kubetest.Clientset(t, env.Kubeconfig)
	ctx := context.Background()
	const ns = "detour-other"
	kubetest.Namespace(t, kube, ns)
	kubetest.Pod(t, kube, ns, "ctl-1", controllerLabels, kubetest.PodState{Phase: corev1.PodRunning, Ready: true})

	var forwarded []string
	fwd := func(_ context.Context, ns, pod string, port int32) (string, func(), error) {
		forwarded = append(forwarded, fmt.Sprintf("%s/%s:%d", ns, pod, port))
		return "127.0.0.1:12345", func() { forwarded = append(forwarded, "stopped") }, nil
	}
	if _, err := OpenController(ctx, kube, ns, fwd); !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "ConfigMap detour-other/detour-ca") {
		t.Fatalf("without the CA: %v", err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: CAConfigMap, Namespace: ns}, Data: map[string]string{CAKey: "not a certificate"}}
	if _, err := kube.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenController(ctx, kube, ns, fwd); err == nil || !strings.Contains(err.Error(), `no PEM certificate under "ca.crt"`) {
		t.Fatalf("with a bad CA: %v", err)
	}
	if len(forwarded) != 0 {
		t.Fatalf("forwarded before the CA was read: %v", forwarded)
	}

	ca := testutil.NewCA(t)
	leaf := ca.Issue(t, ControllerServerName(ns)).Leaf
	cm.Data[CAKey] = string(ca.PEM)
	if _, err := kube.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var gotPort int32
	ep, err := OpenController(ctx, kube, ns, func(c context.Context, fns, pod string, port int32) (string, func(), error) {
		gotPort = port
		return fwd(c, fns, pod, port)
	})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Addr != "127.0.0.1:12345" || ep.Pod != "detour-other/ctl-1" || gotPort != 7070 {
		t.Errorf("endpoint %+v, port %d", ep, gotPort)
	}
	if ep.TLS.ServerName != "detour-controller.detour-other.svc" {
		t.Errorf("server name %q", ep.TLS.ServerName)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ep.TLS.RootCAs, DNSName: ep.TLS.ServerName}); err != nil {
		t.Errorf("the controller's certificate does not verify with the published CA: %v", err)
	}
	ep.Close()
	if forwarded[len(forwarded)-1] != "stopped" {
		t.Errorf("Close did not stop the forwarding: %v", forwarded)
	}
}

// envtest has no kubelet, so no port-forward can succeed; but the request
// reaches the API server, which answers for the pod (it has no node), and
// the error comes back at once, as do refusals.
func TestPortForwarderWithoutKubelet(t *testing.T) {
	env := envtest.Start(t)
	kube := kubetest.Clientset(t, env.Kubeconfig)
	kubetest.Namespace(t, kube, "pf")
	kubetest.Pod(t, kube, "pf", "ctl", controllerLabels, kubetest.PodState{Phase: corev1.PodRunning, Ready: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tt := range []struct {
		kubeconfig, want string
		forbidden        bool
	}{
		{env.Kubeconfig, "pod ctl does not have a host assigned", false},
		{env.UserKubeconfig, `cannot create resource "pods/portforward"`, true},
	} {
		_, stop, err := PortForwarder(kubetest.Config(t, tt.kubeconfig), kube)(ctx, "pf", "ctl", 7070)
		if err == nil {
			stop()
			t.Fatal("a port-forward without a kubelet")
		}
		if !strings.Contains(err.Error(), tt.want) || apierrors.IsForbidden(err) != tt.forbidden {
			t.Errorf("got %v (forbidden: %v), want %q", err, apierrors.IsForbidden(err), tt.want)
		}
	}
}
