// Package kubetest holds the client-go helpers shared by tests that run
// against an envtest API server: clients, namespaces, pods left as a
// kubelet would leave them, kubeconfig files. It is apart from testutil so
// that tests without Kubernetes do not build client-go.
package kubetest

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
)

// AdminConfig is a rest.Config for env's admin (system:masters).
func AdminConfig(env *envtest.Env) *rest.Config {
	return &rest.Config{Host: env.URL, BearerToken: env.AdminToken, TLSClientConfig: rest.TLSClientConfig{CAData: env.CAPEM}}
}

// Config loads the kubeconfig file's current context.
func Config(t testing.TB, kubeconfig string) *rest.Config {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// Clientset is a clientset for the kubeconfig file's current context
// (envtest's Kubeconfig for the admin, UserKubeconfig for the user).
func Clientset(t testing.TB, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(Config(t, kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// WriteKubeconfig writes a kubeconfig with one cluster, server trusted with
// ca, and a context per entry of contexts: its name → its user (a key of
// users) and namespace ("" for none). It returns the file's path.
func WriteKubeconfig(t testing.TB, server string, ca []byte, current string, users map[string]*clientcmdapi.AuthInfo, contexts map[string][2]string) string {
	t.Helper()
	c := clientcmdapi.NewConfig()
	c.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	c.AuthInfos = users
	for name, uns := range contexts {
		c.Contexts[name] = &clientcmdapi.Context{Cluster: "c", AuthInfo: uns[0], Namespace: uns[1]}
	}
	c.CurrentContext = current
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// Namespace creates a namespace.
func Namespace(t testing.TB, kube kubernetes.Interface, name string) {
	t.Helper()
	if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// PodState is how a kubelet would leave a pod: its phase (none: the pod
// stays as created, Pending) and its Ready condition.
type PodState struct {
	Phase corev1.PodPhase
	Ready bool
}

// Pod creates a pod shaped like the controller's (one container, ports
// metrics 9470 and grpc 7070, grpc second so that a lookup by name is
// tested) and leaves it in st. envtest has no kubelet: nothing else moves
// it on.
func Pod(t testing.TB, kube kubernetes.Interface, ns, name string, labels map[string]string, st PodState) *corev1.Pod {
	t.Helper()
	p, err := kube.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "controller", Image: "detour.local/detour-controller:dev",
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9470}, {Name: "grpc", ContainerPort: 7070}},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase == "" {
		return p
	}
	return setState(t, kube, p, st)
}

// SetPodState leaves an existing pod in st, as its kubelet would.
func SetPodState(t testing.TB, kube kubernetes.Interface, ns, name string, st PodState) *corev1.Pod {
	t.Helper()
	p, err := kube.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return setState(t, kube, p, st)
}

func setState(t testing.TB, kube kubernetes.Interface, p *corev1.Pod, st PodState) *corev1.Pod {
	t.Helper()
	ready := corev1.ConditionFalse
	if st.Ready {
		ready = corev1.ConditionTrue
	}
	p.Status.Phase = st.Phase
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}
	p, err := kube.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// WaitAllowed waits until the API server lets user do what attrs say: the
// authorizer learns of a new RoleBinding through a watch, so a request
// made at once after creating one may still be refused (a loaded machine
// shows it). It asks with a SubjectAccessReview, as kubectl auth can-i
// does.
func WaitAllowed(kube kubernetes.Interface, user string, attrs authorizationv1.ResourceAttributes) error {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user, ResourceAttributes: &attrs}}
	return testutil.Poll(30*time.Second, func() error {
		got, err := kube.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), sar, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if !got.Status.Allowed {
			return fmt.Errorf("%s may still not %s %s in %q after the binding: %s", user, attrs.Verb, attrs.Resource, attrs.Namespace, got.Status.Reason)
		}
		return nil
	})
}

// Allowed is WaitAllowed for a test, which it fails.
func Allowed(t testing.TB, kube kubernetes.Interface, user string, attrs authorizationv1.ResourceAttributes) {
	t.Helper()
	if err := WaitAllowed(kube, user, attrs); err != nil {
		t.Fatal(err)
	}
}
