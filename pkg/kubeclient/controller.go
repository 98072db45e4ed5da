package kubeclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Where the manifests under deploy/ put the controller.
const (
	// DetourNamespace is Detour's own namespace, where the controller,
	// the agents and their Secrets and ConfigMaps live.
	DetourNamespace = "detour-system"
	// ControllerSelector selects the controller's pods.
	ControllerSelector = "app.kubernetes.io/name=detour-controller"
	// ControllerPortName is the container port of its gRPC service (TLS).
	ControllerPortName = "grpc"
	// CAConfigMap and CAKey hold the CA that signed the controller's
	// serving certificate; the controller publishes it there.
	CAConfigMap = "detour-ca"
	CAKey       = "ca.crt"
)

// ErrNotInstalled says Detour's controller was not found in the cluster.
var ErrNotInstalled = errors.New("is Detour installed? run `detour install`")

// ControllerServerName is the DNS name on the controller's serving
// certificate: its Service's name in namespace ns.
func ControllerServerName(ns string) string { return "detour-controller." + ns + ".svc" }

// ControllerPod returns the Ready controller pod in namespace ns and the
// number of its gRPC port. The controllers elect a leader and only the
// leader is Ready, so the Ready pod is the one that answers.
func ControllerPod(ctx context.Context, kube kubernetes.Interface, ns string) (*corev1.Pod, int32, error) {
	pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: ControllerSelector})
	if err != nil {
		return nil, 0, fmt.Errorf("find the Detour controller: list pods %s in namespace %s: %w", ControllerSelector, ns, err)
	}
	if len(pods.Items) == 0 {
		return nil, 0, fmt.Errorf("no Detour controller pod (%s) in namespace %s: %w", ControllerSelector, ns, ErrNotInstalled)
	}
	items := pods.Items
	sort.Slice(items, func(i, j int) bool { return items[i].Name < items[j].Name })
	var states []string
	for i := range items {
		p := &items[i]
		if ready, why := podReady(p); !ready {
			states = append(states, p.Name+": "+why)
			continue
		}
		port, ok := containerPort(p, ControllerPortName)
		if !ok {
			return nil, 0, fmt.Errorf("controller pod %s/%s has no container port named %q", ns, p.Name, ControllerPortName)
		}
		return p, port, nil
	}
	return nil, 0, fmt.Errorf("no Ready Detour controller pod in namespace %s (%s); it may be starting or electing a leader, see `kubectl -n %s get pods -l %s`; %w",
		ns, strings.Join(states, "; "), ns, ControllerSelector, ErrNotInstalled)
}

// podReady says whether p serves, and if not, why not.
func podReady(p *corev1.Pod) (bool, string) {
	if p.DeletionTimestamp != nil {
		return false, "terminating"
	}
	if p.Status.Phase != corev1.PodRunning {
		phase := string(p.Status.Phase)
		if phase == "" {
			phase = "not scheduled"
		}
		return false, phase
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Status == corev1.ConditionTrue {
				return true, ""
			}
			break
		}
	}
	return false, "running, not Ready"
}

func containerPort(p *corev1.Pod, name string) (int32, bool) {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

// ControllerTLS returns the TLS configuration that verifies the controller
// of namespace ns: the CA it publishes in ConfigMap detour-ca, and the DNS
// name of its Service.
func ControllerTLS(ctx context.Context, kube kubernetes.Interface, ns string) (*tls.Config, error) {
	cm, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, CAConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("ConfigMap %s/%s, where the controller publishes its CA, does not exist: %w", ns, CAConfigMap, ErrNotInstalled)
	}
	if err != nil {
		return nil, fmt.Errorf("read the controller's CA: %w", err)
	}
	pem := cm.Data[CAKey]
	pool := x509.NewCertPool()
	if pem == "" || !pool.AppendCertsFromPEM([]byte(pem)) {
		return nil, fmt.Errorf("ConfigMap %s/%s has no PEM certificate under %q", ns, CAConfigMap, CAKey)
	}
	return &tls.Config{RootCAs: pool, ServerName: ControllerServerName(ns), MinVersion: tls.VersionTLS12}, nil
}

// Forwarder makes a local address reach port of a pod until stop is called.
// PortForwarder is the real one; tests, which have no kubelet, use others.
type Forwarder func(ctx context.Context, namespace, pod string, port int32) (addr string, stop func(), err error)

// Endpoint is a local address that reaches the controller.
type Endpoint struct {
	// Addr is the local address; TLS verifies the controller behind it.
	Addr string
	TLS  *tls.Config
	// Pod is the namespace/name of the controller pod it reaches.
	Pod string
	// Close stops the forwarding.
	Close func()
}

// OpenController finds the Ready controller pod in ns, reads its CA and
// forwards a local port to its gRPC port.
func OpenController(ctx context.Context, kube kubernetes.Interface, ns string, forward Forwarder) (*Endpoint, error) {
	pod, port, err := ControllerPod(ctx, kube, ns)
	if err != nil {
		return nil, err
	}
	tc, err := ControllerTLS(ctx, kube, ns)
	if err != nil {
		return nil, err
	}
	addr, stop, err := forward(ctx, ns, pod.Name, port)
	if err != nil {
		return nil, fmt.Errorf("port-forward to controller pod %s/%s: %w", ns, pod.Name, err)
	}
	return &Endpoint{Addr: addr, TLS: tc, Pod: ns + "/" + pod.Name, Close: stop}, nil
}
