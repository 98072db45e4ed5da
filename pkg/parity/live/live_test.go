package live

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/manifest"
	"github.com/detourdev/detour/pkg/parity/render"
)

// Where each kind of the fixtures is served.
var resources = map[string]schema.GroupVersionResource{
	"Deployment":              {Group: "apps", Version: "v1", Resource: "deployments"},
	"StatefulSet":             {Group: "apps", Version: "v1", Resource: "statefulsets"},
	"DaemonSet":               {Group: "apps", Version: "v1", Resource: "daemonsets"},
	"CronJob":                 {Group: "batch", Version: "v1", Resource: "cronjobs"},
	"Job":                     {Group: "batch", Version: "v1", Resource: "jobs"},
	"ConfigMap":               {Version: "v1", Resource: "configmaps"},
	"Secret":                  {Version: "v1", Resource: "secrets"},
	"Service":                 {Version: "v1", Resource: "services"},
	"Ingress":                 {Group: "networking.k8s.io", Version: "v1", Resource: "ingresses"},
	"NetworkPolicy":           {Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
	"HorizontalPodAutoscaler": {Group: "autoscaling", Version: "v2", Resource: "horizontalpodautoscalers"},
	"PodDisruptionBudget":     {Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
}

// apply creates the fixture's objects in namespace ns, as kubectl apply
// would from a fresh namespace.
func apply(t *testing.T, dyn dynamic.Interface, dir, ns string) []map[string]any {
	t.Helper()
	objs, err := manifest.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		u := &unstructured.Unstructured{Object: toJSONTypes(t, o)}
		u.SetNamespace(ns)
		gvr, ok := resources[u.GetKind()]
		if !ok {
			t.Fatalf("no resource for %s", u.GetKind())
		}
		if _, err := dyn.Resource(gvr).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s/%s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	return objs
}

// toJSONTypes turns json.Numbers into what unstructured takes.
func toJSONTypes(t *testing.T, o map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var fix func(v any) any
	fix = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				x[k] = fix(e)
			}
		case []any:
			for i, e := range x {
				x[i] = fix(e)
			}
		case float64:
			if x == float64(int64(x)) {
				return int64(x)
			}
		}
		return v
	}
	return fix(m).(map[string]any)
}

func snapshot(t *testing.T, kube kubernetes.Interface, ns string, fp *parity.Fingerprinter, rt bool) *parity.Snapshot {
	t.Helper()
	s, err := Snapshot(context.Background(), kube, ns, Options{Runtime: rt, PageSize: 3}, parity.Options{Fingerprint: fp})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func manifests(t *testing.T, dir string, fp *parity.Fingerprinter) *parity.Snapshot {
	t.Helper()
	objs, err := manifest.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := parity.Normalize(objs, parity.Options{Source: dir, Fingerprint: fp})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func compare(t *testing.T, l, r *parity.Snapshot) *parity.Report {
	t.Helper()
	rep, err := parity.Diff(l, r, parity.DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// key is what identifies a reported difference, values included.
func keys(r *parity.Report) []string {
	var out []string
	for _, d := range r.Differences {
		out = append(out, strings.Join([]string{d.Object(), d.Path, string(d.Change), string(d.Category), val(d.Left), val(d.Right)}, " | "))
	}
	return out
}

func val(p *string) string {
	if p == nil {
		return "-"
	}
	return *p
}

func sameKeys(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got:\n  %s\n want:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// plantedSecrets are the Secret values of the fixtures, and one planted in
// a last-applied annotation: none may appear in any output.
var plantedSecrets = []string{"planted-LEFT-db-password", "planted-RIGHT-db-password", "planted-RIGHT-api-token",
	"planted-LEFT-tls-cert", "planted-LEFT-tls-key", "planted-in-last-applied"}

// Two namespaces of a real API server hold the drift fixture's two sides,
// plus noise: the server's defaults, reordered lists, status, generated
// objects, a last-applied annotation, revisions. Exactly the planted drift
// is reported; each side read live equals its manifests; a snapshot
// compares as the live side; no Secret value reaches any output.
func TestLiveNamespaces(t *testing.T) {
	env := envtest.Start(t)
	kube := kubetest.Clientset(t, env.Kubeconfig)
	dyn, err := dynamic.NewForConfig(kubetest.Config(t, env.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kubetest.Namespace(t, kube, "staging")
	kubetest.Namespace(t, kube, "production")
	apply(t, dyn, "../testdata/drift/left", "staging")
	apply(t, dyn, "../testdata/drift/right", "production")
	plantNoise(t, kube)

	fp, err := parity.NewFingerprinter([]byte("live-test-key-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	staging := snapshot(t, kube, "staging", fp, false)
	production := snapshot(t, kube, "production", fp, false)

	// Exactly the planted drift: the report of the fixtures' manifests,
	// which TestDriftFixture pins to the planted list.
	live := compare(t, staging, production)
	fixtures := compare(t, manifests(t, "../testdata/drift/left", fp), manifests(t, "../testdata/drift/right", fp))
	sameKeys(t, "live staging vs live production", keys(live), keys(fixtures))

	// Each side read live is what was applied: the server's defaults and
	// the rest of the noise are no difference.
	for _, side := range []struct {
		dir  string
		snap *parity.Snapshot
	}{{"../testdata/drift/left", staging}, {"../testdata/drift/right", production}} {
		sameKeys(t, "manifests vs live "+side.snap.Namespace, keys(compare(t, manifests(t, side.dir, fp), side.snap)), nil)
	}

	// A snapshot, written and read back, compares as the live side.
	var file bytes.Buffer
	if err := parity.WriteSnapshot(&file, staging); err != nil {
		t.Fatal(err)
	}
	back, err := parity.ReadSnapshot(file.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	sameKeys(t, "snapshot vs live", keys(compare(t, back, production)), keys(live))

	// No Secret value anywhere: the formats, the snapshot.
	outputs := map[string][]byte{"snapshot": file.Bytes()}
	for _, f := range render.Formats {
		var b bytes.Buffer
		if err := render.Write(&b, f, live); err != nil {
			t.Fatal(err)
		}
		outputs[f] = b.Bytes()
	}
	for name, out := range outputs {
		for _, p := range plantedSecrets {
			if bytes.Contains(out, []byte(p)) || bytes.Contains(out, []byte(base64.StdEncoding.EncodeToString([]byte(p)))) {
				t.Errorf("%s holds the planted value %q", name, p)
			}
		}
	}

	t.Run("runtime", func(t *testing.T) { testRuntime(t, kube, fp, live) })
	t.Run("read-only rights", func(t *testing.T) { testReadOnly(t, env, kube, fp) })
	if _, err := Read(ctx, kube, "nowhere", Options{}); err == nil || !strings.Contains(err.Error(), ErrNamespaceNotFound.Error()) {
		t.Errorf("a missing namespace: %v", err)
	}
}

// plantNoise adds to both namespaces what differs without being drift.
func plantNoise(t *testing.T, kube kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	for i, ns := range []string{"staging", "production"} {
		// Status, as controllers write it.
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Status = appsv1.DeploymentStatus{Replicas: int32(2 + i), ReadyReplicas: int32(i), ObservedGeneration: 1,
			Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionStatus([]string{"True", "False"}[i])}}}
		if _, err := kube.AppsV1().Deployments(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The revision annotation the Deployment controller writes.
		d, err = kube.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		metav1.SetMetaDataAnnotation(&d.ObjectMeta, "deployment.kubernetes.io/revision", []string{"3", "11"}[i])
		if _, err := kube.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// kube-root-ca.crt, as the controller manager publishes it.
		if _, err := kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"},
			Data: map[string]string{"ca.crt": "-----BEGIN CERTIFICATE----- " + ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// kubectl apply's annotation, holding the Secret's data.
	s, err := kube.CoreV1().Secrets("staging").Get(ctx, "web-db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	metav1.SetMetaDataAnnotation(&s.ObjectMeta, "kubectl.kubernetes.io/last-applied-configuration",
		`{"apiVersion":"v1","kind":"Secret","stringData":{"password":"planted-in-last-applied"}}`)
	if _, err := kube.CoreV1().Secrets("staging").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A Job the CronJob made, and a Helm release, in production only.
	cj, err := kube.BatchV1().CronJobs("production").Get(ctx, "report", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "report-29000000",
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(cj, batchv1.SchemeGroupVersion.WithKind("CronJob"))}},
		Spec: *cj.Spec.JobTemplate.Spec.DeepCopy(),
	}
	if _, err := kube.BatchV1().Jobs("production").Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Secrets("production").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sh.helm.release.v1.web.v1"},
		Type: "helm.sh/release.v1", Data: map[string][]byte{"release": []byte("H4sI")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// testRuntime runs pods for Deployment web on a node per namespace, with
// different digests, restarts and kernels: with --runtime on both sides,
// exactly those are added to the report.
func testRuntime(t *testing.T, kube kubernetes.Interface, fp *parity.Fingerprinter, without *parity.Report) {
	ctx := context.Background()
	for i, ns := range []string{"staging", "production"} {
		node := []string{"node-a", "node-b"}[i]
		n, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.33.13", KernelVersion: []string{"6.1.0-28-amd64", "6.12.9-amd64"}[i],
			OSImage: "Debian GNU/Linux 12 (bookworm)", ContainerRuntimeVersion: "containerd://1.7.24"}
		if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rs, err := kube.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: "web-5d8f7c9b6", Labels: map[string]string{"app": "web"},
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
			Spec: appsv1.ReplicaSetSpec{Selector: d.Spec.Selector, Template: d.Spec.Template},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for p := 0; p < 2; p++ {
			pod, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "web-5d8f7c9b6-" + []string{"a", "b"}[p], Labels: map[string]string{"app": "web", "pod-template-hash": "5d8f7c9b6"},
					OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}},
				Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "web", Image: "example/web"}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "web", Image: "example/web",
				ImageID:      "docker.io/example/web@sha256:" + strings.Repeat([]string{"a", "b"}[i], 64),
				RestartCount: int32(i * 4)}}
			if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	with := compare(t, snapshot(t, kube, "staging", fp, true), snapshot(t, kube, "production", fp, true))
	want := append(keys(without),
		"Deployment/web | /runtime/containers/web/imageDigests | changed | image | [\"sha256:"+strings.Repeat("a", 64)+"\"] | [\"sha256:"+strings.Repeat("b", 64)+"\"]",
		"Deployment/web | /runtime/containers/web/restarts | changed | runtime | 0 | 8",
		"Nodes/nodes | /kernelVersions | changed | runtime | [\"6.1.0-28-amd64\"] | [\"6.12.9-amd64\"]",
	)
	got := keys(with)
	sortStrings(got)
	sortStrings(want)
	sameKeys(t, "with --runtime", got, want)
	// One live side and one without what runs: not compared, and said so.
	one := compare(t, snapshot(t, kube, "staging", fp, true), manifests(t, "../testdata/drift/right", fp))
	sameKeys(t, "runtime on one side", keys(one), keys(compare(t, snapshot(t, kube, "staging", fp, false), manifests(t, "../testdata/drift/right", fp))))
}

// testReadOnly reads a namespace as a user who may only get and list, and
// not Secrets: the read succeeds (so it wrote nothing), and Secrets are
// reported unread and compared on neither side.
func testReadOnly(t *testing.T, env *envtest.Env, admin kubernetes.Interface, fp *parity.Fingerprinter) {
	ctx := context.Background()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "parity-reader"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps", "services", "pods", "namespaces"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets", "daemonsets", "replicasets"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"batch"}, Resources: []string{"cronjobs", "jobs"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses", "networkpolicies"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"autoscaling"}, Resources: []string{"horizontalpodautoscalers"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"policy"}, Resources: []string{"poddisruptionbudgets"}, Verbs: []string{"get", "list"}},
	}}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "parity-reader", Namespace: "staging"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: envtest.UserName}}}
	if _, err := admin.RbacV1().RoleBindings("staging").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Allowed(t, admin, envtest.UserName, authorizationv1.ResourceAttributes{Namespace: "staging", Verb: "list", Resource: "configmaps"})
	user := kubetest.Clientset(t, env.UserKubeconfig)
	res, err := Read(ctx, user, "staging", Options{Runtime: true})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Unread, ",") != "Secret,Nodes" {
		t.Errorf("unread %v, want Secret (no right) and Nodes (cluster-scoped, no right)", res.Unread)
	}
	s, err := parity.Normalize(res.Objects, parity.Options{Source: "staging", Namespace: "staging", Fingerprint: fp, Unread: res.Unread})
	if err != nil {
		t.Fatal(err)
	}
	rep := compare(t, s, snapshot(t, admin, "production", fp, false))
	for _, d := range rep.Differences {
		if d.Kind == "Secret" {
			t.Errorf("a Secret was compared: %s %s", d.Object(), d.Path)
		}
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "Secret objects of the left side could not be read") {
		t.Errorf("notes %q", rep.Notes)
	}
	// No right at all in production: every kind unread, not a failure.
	none, err := Read(ctx, user, "production", Options{})
	if err != nil || len(none.Unread) != len(parity.Kinds) || len(none.Objects) != 0 {
		t.Errorf("production without rights: %+v, %v", none, err)
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
