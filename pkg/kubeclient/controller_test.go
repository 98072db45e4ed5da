package kubeclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/detourdev/detour/internal/envtest"
)

func adminClient(t *testing.T, env *envtest.Env) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// podState is how a test pod is left: its phase and Ready condition.
type podState struct {
	phase corev1.PodPhase
	ready bool
}

// makePod creates a pod, as a kubelet would leave it in state.
func makePod(t *testing.T, kube kubernetes.Interface, ns, name string, labels map[string]string, st podState) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	p, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "controller", Image: "detour.local/detour-controller:dev",
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9470}, {Name: "grpc", ContainerPort: 7070}},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.phase == "" {
		return p
	}
	cond := corev1.ConditionFalse
	if st.ready {
		cond = corev1.ConditionTrue
	}
	p.Status.Phase = st.phase
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}
	p, err = kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func makeNamespace(t *testing.T, kube kubernetes.Interface, ns string) {
	t.Helper()
	if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

var controllerLabels = map[string]string{"app.kubernetes.io/name": "detour-controller"}

// The pod the CLI forwards to is the Ready controller pod (the leader);
// without one the error says what the pods are doing and how to install.
func TestControllerPod(t *testing.T) {
	env := envtest.Start(t)
	kube := adminClient(t, env)
	ctx := context.Background()
	const ns = "detour-system"

	_, _, err := ControllerPod(ctx, kube, ns)
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "no Detour controller pod (app.kubernetes.io/name=detour-controller) in namespace detour-system") ||
		!strings.Contains(err.Error(), "run `detour install`") {
		t.Fatalf("no namespace: %v", err)
	}
	makeNamespace(t, kube, ns)
	makePod(t, kube, ns, "detour-controller-b", controllerLabels, podState{})
	makePod(t, kube, ns, "detour-controller-a", controllerLabels, podState{phase: corev1.PodRunning})
	// A Ready pod that is not the controller's.
	makePod(t, kube, ns, "aaa-other", map[string]string{"app.kubernetes.io/name": "other"}, podState{phase: corev1.PodRunning, ready: true})
	_, _, err = ControllerPod(ctx, kube, ns)
	if !errors.Is(err, ErrNotInstalled) ||
		!strings.Contains(err.Error(), "no Ready Detour controller pod in namespace detour-system (detour-controller-a: running, not Ready; detour-controller-b: Pending)") {
		t.Fatalf("no Ready pod: %v", err)
	}

	// The leader: Ready. A terminating Ready pod before it is passed over.
	makePod(t, kube, ns, "detour-controller-c", controllerLabels, podState{phase: corev1.PodRunning, ready: true})
	old := makePod(t, kube, ns, "detour-controller-0", controllerLabels, podState{phase: corev1.PodRunning, ready: true})
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
	user := userClient(t, env)
	if _, _, err := ControllerPod(ctx, user, ns); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("user without rights: %v", err)
	}
}

func userClient(t *testing.T, env *envtest.Env) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", env.UserKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// testCA is a CA and a serving certificate for the controller's name.
type testCA struct {
	caPEM            []byte
	certPEM, keyPEM  []byte
	caCert, leafCert *x509.Certificate
}

func newTestCA(t *testing.T, dnsName string) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "detour test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	kder, _ := x509.MarshalECPrivateKey(key)
	return &testCA{
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
		caCert:  caCert, leafCert: leaf,
	}
}

// The CA comes from ConfigMap detour-ca and the name checked is the
// controller Service's; OpenController forwards to the Ready pod's grpc
// port only when both are there.
func TestOpenController(t *testing.T) {
	env := envtest.Start(t)
	kube := adminClient(t, env)
	ctx := context.Background()
	const ns = "detour-other"
	makeNamespace(t, kube, ns)
	makePod(t, kube, ns, "ctl-1", controllerLabels, podState{phase: corev1.PodRunning, ready: true})

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

	ca := newTestCA(t, ControllerServerName(ns))
	cm.Data[CAKey] = string(ca.caPEM)
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
	if _, err := ca.leafCert.Verify(x509.VerifyOptions{Roots: ep.TLS.RootCAs, DNSName: ep.TLS.ServerName}); err != nil {
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
	kube := adminClient(t, env)
	makeNamespace(t, kube, "pf")
	makePod(t, kube, "pf", "ctl", controllerLabels, podState{phase: corev1.PodRunning, ready: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tt := range []struct {
		kubeconfig, want string
		forbidden        bool
	}{
		{env.Kubeconfig, "pod ctl does not have a host assigned", false},
		{env.UserKubeconfig, `cannot create resource "pods/portforward"`, true},
	} {
		rc, err := clientcmd.BuildConfigFromFlags("", tt.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		_, stop, err := PortForwarder(rc, kube)(ctx, "pf", "ctl", 7070)
		if err == nil {
			stop()
			t.Fatal("a port-forward without a kubelet")
		}
		if !strings.Contains(err.Error(), tt.want) || apierrors.IsForbidden(err) != tt.forbidden {
			t.Errorf("got %v (forbidden: %v), want %q", err, apierrors.IsForbidden(err), tt.want)
		}
	}
}
