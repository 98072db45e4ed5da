package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
)

// TestRunKubeInventory runs the controller with both the intercepts and the
// inventory in the API server: an intercept on a Service made with the
// Kubernetes API is accepted once the informers have seen it, and one on a
// Service that does not exist is refused as not found.
func TestRunKubeInventory(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := env.InstallCRDs(ctx, "../../deploy/crds/detour.dev_intercepts.yaml"); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(cfg)
	for _, p := range []struct{ name, app, ip string }{{"api-0", "api", "10.0.0.10"}, {"api-alice", "api-alice", "10.0.0.20"}} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: "default", Labels: map[string]string{"app": p.app}},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "x",
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
		}
		created, err := kc.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Phase = corev1.PodRunning
		created.Status.PodIP = p.ip
		created.Status.PodIPs = []corev1.PodIP{{IP: p.ip}}
		if _, err := kc.CoreV1().Pods("default").UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "default"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "api"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if _, err := kc.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	o := &options{listen: freeAddr(t), metricsListen: freeAddr(t), storeBackend: "kube",
		inventoryFrom: "kube", kubeconfig: env.Kubeconfig}
	stop := runController(t, ctx, o)
	c := dialControl(t, o.listen)
	req := func(svc string) *detourv1.CreateInterceptRequest {
		return &detourv1.CreateInterceptRequest{Intercept: &detourv1.Intercept{Name: "alice", Spec: &detourv1.InterceptSpec{
			ServiceNamespace: "default", ServiceName: svc, Port: 80, Destination: "api-alice:8080",
			Match: []*detourv1.Condition{{Kind: detourv1.Condition_KIND_SESSION, Value: "alice"}},
		}}}
	}
	// The informers may still be syncing: wait until the service is known.
	testutil.Eventually(t, 30*time.Second, func() error {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		if _, err := c.CreateIntercept(cctx, req("api"), grpc.WaitForReady(true)); err != nil {
			if status.Code(err) != codes.NotFound {
				t.Fatalf("intercept on a Service from the API server: %v", err)
			}
			return fmt.Errorf("intercept on a Service from the API server: %w", err)
		}
		return nil
	})
	_, err = c.CreateIntercept(ctx, req("nope"))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("intercept on a missing Service: %v, want NotFound", err)
	}
	stop()
}
