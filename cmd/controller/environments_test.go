package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/deploy"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/kubeclient"
)

// TestEnvironmentsKube runs the controller on a real API server with the
// shipped CRDs, admission policy and roles: an Environment made with
// kubectl becomes a fork Deployment and two owned Intercepts, goes Ready once
// the fork's pod is ready and an agent reports steering, shows its columns
// as kubectl prints them, and on delete its finalizer holds it until the
// fork and intercepts are gone; an Environment made through gRPC is the same
// resource and expires with its TTL; and the admission policy refuses a
// user who may not create Deployments there.
func TestEnvironmentsKube(t *testing.T) {
	env := envtest.StartWith(t, envtest.Options{Users: []envtest.User{{Name: "alice"}, {Name: "mallory"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := kubetest.Clientset(t, env.Kubeconfig)
	applyShipped(t, ctx, env, "CustomResourceDefinition", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ClusterRole")
	kubetest.Namespace(t, admin, "shop")
	bind := func(user, kind, role string) {
		if _, err := admin.RbacV1().RoleBindings("shop").Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user + "-" + role},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: role},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	bind("alice", "ClusterRole", "detour-ci") // the shipped CI role: environments, and creating Deployments
	if _, err := admin.RbacV1().Roles("shop").Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "env-only"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"detour.dev"}, Resources: []string{"environments"}, Verbs: []string{"create", "get"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bind("mallory", "Role", "env-only")
	for _, user := range []string{"alice", "mallory"} {
		kubetest.Allowed(t, admin, user, authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "create", Group: "detour.dev", Resource: "environments"})
	}

	// The baseline: web and api, each a Deployment with one ready pod on
	// node n1 and a Service.
	for i, app := range []string{"web", "api"} {
		baselineApp(t, ctx, admin, app, fmt.Sprintf("10.1.0.%d", 10+i))
	}

	o := &options{
		listen: freeAddr(t), metricsListen: freeAddr(t),
		storeBackend: "kube", inventoryFrom: "kube", kubeconfig: env.Kubeconfig,
		environments: "auto", envDefaultTTL: time.Hour, envMaxTTL: 24 * time.Hour,
	}
	runController(t, ctx, o)
	fakeAgent(t, ctx, o.listen, "n1")

	alice := versionedAs(t, env, "alice")
	envs := alice.DetourV1alpha1().Environments("shop")

	// The admission policy: mallory may create Environments but not
	// Deployments, so not an Environment that forks one.
	_, err := versionedAs(t, env, "mallory").DetourV1alpha1().Environments("shop").Create(ctx, envObject("pr-0"), metav1.CreateOptions{})
	if err == nil || !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) ||
		!strings.Contains(err.Error(), "user mallory may not create deployments.apps in namespace shop") {
		t.Fatalf("mallory's Environment: %v", err)
	}

	// A database branch reads with the baseline's credentials, a seed job
	// is a Job: detour-ci allows neither (its user would need get on the
	// Secret and create on jobs).
	for _, tc := range []struct {
		data v1alpha1.DataSource
		want string
	}{
		{v1alpha1.DataSource{Name: "db", Kind: v1alpha1.DataPostgresBranch, PostgresBranch: &v1alpha1.PostgresBranch{
			Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadStatefulSet, Name: "postgres"}, Credentials: v1alpha1.PostgresCredentials{Secret: "pg-creds"}}},
			"user alice may not get the secrets pg-creds in namespace shop"},
		{v1alpha1.DataSource{Name: "seed", Kind: v1alpha1.DataJobKind, Job: &v1alpha1.DataJob{Image: "reg/seed:1"}},
			"user alice may not create jobs.batch in namespace shop"},
	} {
		e := envObject("pr-d")
		e.Spec.Data = []v1alpha1.DataSource{tc.data}
		if _, err := envs.Create(ctx, e, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("alice's Environment with data %s: %v, want %q", tc.data.Name, err, tc.want)
		}
	}

	// alice may: made with kubectl, reconciled like any other.
	if _, err := envs.Create(ctx, envObject("pr-1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var fork *appsv1.Deployment
	testutil.Eventually(t, 30*time.Second, func() error {
		var err error
		fork, err = admin.AppsV1().Deployments("shop").Get(ctx, "api-pr-1", metav1.GetOptions{})
		return err
	})
	if c := metav1.GetControllerOf(fork); c == nil || c.Kind != "Environment" || c.Name != "pr-1" {
		t.Errorf("fork's owner: %+v", c)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if ics := interceptsOf(t, ctx, env, "pr-1"); !slices.Equal(ics, []string{"pr-1-api-80", "pr-1-api-80-forks"}) {
			return fmt.Errorf("pr-1's intercepts: %v", ics)
		}
		return nil
	})
	waitPhase(t, ctx, envs, "pr-1", v1alpha1.EnvironmentProvisioning, "fork api-pr-1: 0/1 pods ready")

	// The fork's pod comes up as a kubelet would leave it.
	forkReady(t, ctx, admin, fork, "10.1.0.20")
	e := waitPhase(t, ctx, envs, "pr-1", v1alpha1.EnvironmentReady, "forks ready, routes active")
	if e.Status.Key != "pr-1" || e.Status.ForkSummary != "api" || e.Status.ExpiresAt == nil || !slices.Contains(e.Finalizers, v1alpha1.EnvironmentFinalizer) {
		t.Errorf("Ready environment: %+v", e)
	}
	// A Ready environment shows its parity against its baseline: the
	// fork copies api unchanged, so nothing differs.
	testutil.Eventually(t, 30*time.Second, func() error {
		e, err := envs.Get(ctx, "pr-1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p := e.Status.Parity; p == nil || p.Differences != 0 {
			return fmt.Errorf("status.parity: %+v", p)
		}
		return nil
	})
	// kubectl get environments: the printer columns.
	table := kubectlTable(t, ctx, env, "/apis/detour.dev/v1alpha1/namespaces/shop/environments/pr-1")
	if !strings.Contains(table, "Key=pr-1") || !strings.Contains(table, "Forks=api") || !strings.Contains(table, "Phase=Ready") {
		t.Errorf("kubectl's columns: %s", table)
	}
	// An Event says it.
	testutil.Eventually(t, 10*time.Second, func() error {
		evs, err := admin.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=pr-1"})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.Reason == "Ready" && ev.InvolvedObject.Kind == "Environment" {
				return nil
			}
		}
		return fmt.Errorf("no Ready event for pr-1 among %d", len(evs.Items))
	})

	// The same through gRPC: the same resource; its TTL removes it.
	c := dialControl(t, o.listen)
	_, err = c.CreateEnvironment(ctx, &detourv1.CreateEnvironmentRequest{Environment: &detourv1.Environment{
		Namespace: "shop", Name: "pr-2",
		Spec: &detourv1.EnvironmentSpec{Forks: []*detourv1.Fork{{Workload: &detourv1.WorkloadRef{Name: "web"}}}, Ttl: durationpb.New(4 * time.Second)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envs.Get(ctx, "pr-2", metav1.GetOptions{}); err != nil {
		t.Fatalf("the gRPC-made environment as a resource: %v", err)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if _, err := envs.Get(ctx, "pr-2", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("pr-2 after its TTL: %v", err)
		}
		if _, err := admin.AppsV1().Deployments("shop").Get(ctx, "web-pr-2", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("web-pr-2 after its TTL: %v", err)
		}
		return nil
	})

	// kubectl delete: the finalizer holds it until the fork and the
	// intercepts are gone.
	if err := envs.Delete(ctx, "pr-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if _, err := envs.Get(ctx, "pr-1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("pr-1 after delete: %v", err)
		}
		return nil
	})
	if _, err := admin.AppsV1().Deployments("shop").Get(ctx, "api-pr-1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("api-pr-1 after pr-1 was deleted: %v", err)
	}
	if ics := interceptsOf(t, ctx, env, "pr-1"); len(ics) != 0 {
		t.Errorf("pr-1's intercepts after delete: %v", ics)
	}
	for _, name := range []string{"web", "api"} {
		if d, err := admin.AppsV1().Deployments("shop").Get(ctx, name, metav1.GetOptions{}); err != nil || d.Generation != 1 {
			t.Errorf("baseline %s: %v (generation %d: it must never be written)", name, err, d.Generation)
		}
	}
}

// applyShipped applies the shipped manifests of these kinds, as
// `detour install` would.
func applyShipped(t *testing.T, ctx context.Context, env *envtest.Env, kinds ...string) {
	t.Helper()
	objs, err := deploy.Objects()
	if err != nil {
		t.Fatal(err)
	}
	var want []*unstructured.Unstructured
	for _, o := range objs {
		if slices.Contains(kinds, o.GetKind()) {
			want = append(want, o)
		}
	}
	in, err := kubeclient.NewInstaller(kubetest.AdminConfig(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Apply(ctx, kubeclient.ApplyOrder(want)); err != nil {
		t.Fatal(err)
	}
}

func versionedAs(t *testing.T, env *envtest.Env, user string) versioned.Interface {
	t.Helper()
	cs, err := versioned.NewForConfig(&rest.Config{Host: env.URL, BearerToken: env.Tokens[user], TLSClientConfig: rest.TLSClientConfig{CAData: env.CAPEM}})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func envObject(name string) *v1alpha1.Environment {
	return &v1alpha1.Environment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.EnvironmentSpec{
			Forks: []v1alpha1.Fork{{Workload: v1alpha1.WorkloadRef{Name: "api"}}},
		},
	}
}

// baselineApp makes a Deployment, a ready pod of it on node n1 at ip, and
// a Service on port 80 to 8080.
func baselineApp(t *testing.T, ctx context.Context, kube kubernetes.Interface, app, ip string) {
	t.Helper()
	labels := map[string]string{"app": app}
	one := int32(1)
	tmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: app, Image: "reg/" + app + ":1"}}},
	}
	if _, err := kube.AppsV1().Deployments("shop").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: app},
		Spec:       appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tmpl},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: app},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	runPod(t, ctx, kube, app+"-0", tmpl, ip)
}

// runPod makes a pod of tmpl on node n1, running and ready at ip.
func runPod(t *testing.T, ctx context.Context, kube kubernetes.Interface, name string, tmpl corev1.PodTemplateSpec, ip string) {
	t.Helper()
	spec := tmpl.Spec
	spec.NodeName = "n1"
	p, err := kube.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: tmpl.Labels}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if _, err := kube.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// forkReady leaves the fork as its Deployment controller and kubelet would
// once its pod is up.
func forkReady(t *testing.T, ctx context.Context, kube kubernetes.Interface, d *appsv1.Deployment, ip string) {
	t.Helper()
	runPod(t, ctx, kube, d.Name+"-abc", d.Spec.Template, ip)
	d, err := kube.AppsV1().Deployments("shop").Get(ctx, d.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if _, err := kube.AppsV1().Deployments("shop").UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// interceptsOf lists the Intercept resources labelled with the
// environment, checking each is owned by it.
func interceptsOf(t *testing.T, ctx context.Context, env *envtest.Env, name string) []string {
	t.Helper()
	cs := versionedAs(t, env, envtest.AdminName)
	l, err := cs.DetourV1alpha1().Intercepts("shop").List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelEnvironment + "=" + name})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ic := range l.Items {
		if c := metav1.GetControllerOf(&ic); c == nil || c.Kind != "Environment" || c.Name != name {
			t.Errorf("intercept %s: owner %+v", ic.Name, c)
		}
		out = append(out, ic.Name)
	}
	slices.Sort(out)
	return out
}

// waitPhase waits for the environment's phase with a Ready message holding
// msg.
func waitPhase(t *testing.T, ctx context.Context, envs interface {
	Get(context.Context, string, metav1.GetOptions) (*v1alpha1.Environment, error)
}, name string, phase v1alpha1.EnvironmentPhase, msg string) *v1alpha1.Environment {
	t.Helper()
	var e *v1alpha1.Environment
	testutil.Eventually(t, 30*time.Second, func() error {
		var err error
		if e, err = envs.Get(ctx, name, metav1.GetOptions{}); err != nil {
			return err
		}
		for _, c := range e.Status.Conditions {
			if c.Type == v1alpha1.EnvironmentConditionReady && e.Status.Phase == phase && strings.Contains(c.Message, msg) {
				return nil
			}
		}
		return fmt.Errorf("%s is %s (%+v), want %s with %q", name, e.Status.Phase, e.Status.Conditions, phase, msg)
	})
	return e
}

// kubectlTable reads an object as kubectl get does, and renders its row as
// Column=value pairs.
func kubectlTable(t *testing.T, ctx context.Context, env *envtest.Env, path string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, env.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+env.AdminToken)
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	hc, err := rest.HTTPClientFor(kubetest.AdminConfig(env))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tab metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&tab); err != nil || len(tab.Rows) != 1 {
		t.Fatalf("table: %v, %d rows", err, len(tab.Rows))
	}
	var parts []string
	for i, c := range tab.ColumnDefinitions {
		parts = append(parts, fmt.Sprintf("%s=%v", c.Name, tab.Rows[0].Cells[i]))
	}
	return strings.Join(parts, " ")
}

// fakeAgent stands for node's agent: it takes the desired state and
// reports every assignment's steering attached, as a real agent does once
// it has applied it. (The real agent is tested in the lab and in make e2e.)
func fakeAgent(t *testing.T, ctx context.Context, addr, node string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := detourv1.NewAgentSyncServiceClient(conn)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	var mu sync.Mutex
	have := map[string]*detourv1.Assignment{}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if _, err := c.Register(ctx, &detourv1.RegisterRequest{Node: node}, grpc.WaitForReady(true)); err != nil {
				continue
			}
			stream, err := c.WatchDesiredState(ctx, &detourv1.WatchDesiredStateRequest{Node: node})
			if err != nil {
				continue
			}
			for {
				ev, err := stream.Recv()
				if err != nil {
					break
				}
				mu.Lock()
				switch ev.GetType() {
				case detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT:
					have = map[string]*detourv1.Assignment{}
					fallthrough
				case detourv1.WatchDesiredStateResponse_TYPE_UPSERT:
					for _, a := range ev.GetAssignments() {
						have[a.GetNamespace()+"/"+a.GetName()] = a
					}
				case detourv1.WatchDesiredStateResponse_TYPE_DELETE:
					delete(have, ev.GetNamespace()+"/"+ev.GetName())
				}
				mu.Unlock()
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			mu.Lock()
			req := &detourv1.ReportStatusRequest{Node: node}
			for _, a := range have {
				req.Intercepts = append(req.Intercepts, &detourv1.InterceptReport{Namespace: a.GetNamespace(), Name: a.GetName(), SteeringAttached: true})
			}
			mu.Unlock()
			_, _ = c.ReportStatus(ctx, req)
		}
	}()
}
