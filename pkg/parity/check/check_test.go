package check

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/detourdev/detour/deploy"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/kubeclient"
)

// One API server for the package's tests (TestMain), with the ParityCheck
// CRD installed, and one reconciler running on it: each test works in
// namespaces of its own.
var (
	fx        *fixture
	noCluster string // why there is no fixture
)

type fixture struct {
	env    *envtest.Env
	kube   kubernetes.Interface
	detour versioned.Interface
	reg    *prometheus.Registry
}

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	env, err := envtest.Run(ctx, envtest.Options{Users: []envtest.User{{Name: controllerUser}, {Name: "carol"}}})
	if errors.Is(err, envtest.ErrNoBinaries) && !testutil.InCI() {
		noCluster = err.Error()
		return m.Run()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: %v\n", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if _, err := env.InstallCRDs(ctx, "../../../deploy/crds/detour.dev_paritychecks.yaml"); err != nil {
		fmt.Fprintf(os.Stderr, "install CRDs: %v\n", err)
		return 1
	}
	cfg := kubetest.AdminConfig(env)
	cfg.QPS = -1
	f := &fixture{env: env, reg: prometheus.NewRegistry()}
	if f.kube, err = kubernetes.NewForConfig(cfg); err == nil {
		f.detour, err = versioned.NewForConfig(cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The reconciler runs with the rights deploy/rbac/parity.yaml gives
	// the controller, and no more: every test shows they are enough.
	kube, detour, err := controllerClients(ctx, env, f.kube)
	if err != nil {
		fmt.Fprintf(os.Stderr, "controller's rights: %v\n", err)
		return 1
	}
	r, err := New(Config{Kube: kube, Detour: detour, FieldManager: "detour-test", Registerer: f.reg,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	fx = f
	code := m.Run()
	stop()
	if err := <-done; err != nil {
		fmt.Fprintf(os.Stderr, "reconciler: %v\n", err)
		return 1
	}
	return code
}

// controllerUser stands for the controller's service account.
const controllerUser = "detour-controller"

// controllerClients are clients of controllerUser, bound to the ClusterRole
// of deploy/rbac/parity.yaml.
func controllerClients(ctx context.Context, env *envtest.Env, admin kubernetes.Interface) (kubernetes.Interface, versioned.Interface, error) {
	b, err := os.ReadFile("../../../deploy/rbac/parity.yaml")
	if err != nil {
		return nil, nil, err
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal([]byte(strings.SplitN(string(b), "\n---\n", 2)[0]), &role); err != nil {
		return nil, nil, err
	}
	if role.Kind != "ClusterRole" || len(role.Rules) == 0 {
		return nil, nil, fmt.Errorf("the first object of parity.yaml is a %s with %d rules, want the ClusterRole", role.Kind, len(role.Rules))
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		return nil, nil, err
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: controllerUser}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, nil, err
	}
	r := role.Rules[0]
	if err := kubetest.WaitAllowed(admin, controllerUser, authorizationv1.ResourceAttributes{Verb: r.Verbs[0], Group: r.APIGroups[0], Resource: r.Resources[0]}); err != nil {
		return nil, nil, err
	}
	cfg := kubetest.AdminConfig(env)
	cfg.BearerToken, cfg.QPS = env.Tokens[controllerUser], -1
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	detour, err := versioned.NewForConfig(cfg)
	return kube, detour, err
}

func cluster(t *testing.T) *fixture {
	t.Helper()
	if fx == nil {
		t.Skipf("envtest: %s", noCluster)
	}
	return fx
}

// runs numbers the tests' runs, so that -count=N makes new namespaces on
// the shared API server.
var runs atomic.Int32

func names(prefix string) func(string) string {
	n := runs.Add(1)
	return func(s string) string { return fmt.Sprintf("%s%d-%s", prefix, n, s) }
}

// series reads one metric from the registry: its series' values by their
// labels, written name=value,... in label order.
func (f *fixture) series(t *testing.T, name string) map[string]float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[strings.Join(ls, ",")] = v
		}
	}
	return out
}

// Planted Secret values: none may reach the status, in clear or in base64.
var secretValues = []string{"staging-pw-7c1e9b", "production-pw-41d2aa", "only-left-token-9f3"}

// namespaceSide creates one side: a Deployment, a ConfigMap, a Secret and
// a NetworkPolicy, with what differs between the sides planted.
func (f *fixture) namespaceSide(t *testing.T, ns, logLevel, password string, extraKey bool, port int32) {
	t.Helper()
	ctx := context.Background()
	kubetest.Namespace(t, f.kube, ns)
	create := metav1.CreateOptions{}
	labels := map[string]string{"app": "api"}
	two := int32(2)
	if _, err := f.kube.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: appsv1.DeploymentSpec{Replicas: &two, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "api", Image: "reg/api:1",
				Env: []corev1.EnvVar{{Name: "DB_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password"}}}},
			}}}}},
	}, create); err != nil {
		t.Fatal(err)
	}
	if _, err := f.kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg"},
		Data: map[string]string{"LOG_LEVEL": logLevel}}, create); err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{"password": []byte(password)}
	if extraKey {
		data["token"] = []byte(secretValues[2])
	}
	if _, err := f.kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"}, Data: data}, create); err != nil {
		t.Fatal(err)
	}
	tcp := corev1.ProtocolTCP
	if _, err := f.kube.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: labels},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: portOf(port)}}}}}}, create); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) createCheck(t *testing.T, ns string, pc *v1alpha1.ParityCheck) {
	t.Helper()
	if _, err := f.detour.DetourV1alpha1().ParityChecks(ns).Create(context.Background(), pc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// status waits until the check's status satisfies ok.
func (f *fixture) status(t *testing.T, ns, name string, ok func(*v1alpha1.ParityCheck) error) *v1alpha1.ParityCheck {
	t.Helper()
	var got *v1alpha1.ParityCheck
	testutil.Eventually(t, 30*time.Second, func() error {
		pc, err := f.detour.DetourV1alpha1().ParityChecks(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		got = pc
		return ok(pc)
	})
	return got
}

// runNow asks for a run with RunAnnotation.
func (f *fixture) runNow(t *testing.T, ns, name, value string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, RunAnnotation, value)
	if _, err := f.detour.DetourV1alpha1().ParityChecks(ns).Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func condition(pc *v1alpha1.ParityCheck, typ string) string {
	c := meta.FindStatusCondition(pc.Status.Conditions, typ)
	if c == nil {
		return "(none)"
	}
	return string(c.Status) + "/" + c.Reason
}

// A ParityCheck between two namespaces: its status and metrics show what
// differs; a ConfigMap value changed moves both at the next run; no Secret
// value ever reaches the status; deleting the check deletes its series.
func TestParityCheck(t *testing.T) {
	f := cluster(t)
	ctx := context.Background()
	n := names("pc")
	staging, production, ops := n("staging"), n("production"), n("ops")
	f.namespaceSide(t, staging, "info", secretValues[0], true, 8080)
	f.namespaceSide(t, production, "info", secretValues[1], false, 8443)
	kubetest.Namespace(t, f.kube, ops)
	f.createCheck(t, ops, &v1alpha1.ParityCheck{
		ObjectMeta: metav1.ObjectMeta{Name: "shop"},
		Spec: v1alpha1.ParityCheckSpec{Left: staging, Right: production, Interval: &metav1.Duration{Duration: time.Hour},
			Policy: &v1alpha1.ParityPolicy{Expected: []v1alpha1.ParityRule{{Kind: "Secret", Path: "/data/password", Reason: "each side has its own password"}}}},
	})
	check := "check=" + ops + "/shop"
	diffKey := func(category, severity string) string {
		return "category=" + category + "," + check + ",severity=" + severity
	}
	pc := f.status(t, ops, "shop", func(pc *v1alpha1.ParityCheck) error {
		if pc.Status.Summary == nil || condition(pc, v1alpha1.ParityConditionReady) != "True/Compared" {
			return fmt.Errorf("status %+v", pc.Status)
		}
		return nil
	})
	// Planted: the Secret's password (expected by the policy), its token
	// on the left only, the NetworkPolicy's port.
	want := map[string]string{
		"Secret/creds /data/password":                 "changed secret expected (differs)/(differs)",
		"Secret/creds /data/token":                    "only-left secret (set)/(none)",
		"NetworkPolicy/api /spec/ingress/" + "<rule>": "",
	}
	got := map[string]string{}
	for _, d := range pc.Status.Differences {
		k := d.Kind + "/" + d.Name + " " + d.Path
		if d.Kind == "NetworkPolicy" {
			k = "NetworkPolicy/api /spec/ingress/<rule>"
			got[k] = ""
			continue
		}
		exp := ""
		if d.Expected {
			exp = " expected"
		}
		got[k] = fmt.Sprintf("%s %s%s %s/%s", d.Change, d.Category, exp, deref(d.Left), deref(d.Right))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("differences\n%v\nwant\n%v", got, want)
	}
	// Every kind was read: the controller's rights are enough.
	if len(pc.Status.Notes) != 0 {
		t.Errorf("notes %q", pc.Status.Notes)
	}
	if s := pc.Status.Summary; s.Unexpected != 3 || s.Expected != 1 || s.Failing != 3 || s.Result != "drift" || condition(pc, v1alpha1.ParityConditionDrift) != "True/Drift" {
		t.Errorf("summary %+v, drift %s", s, condition(pc, v1alpha1.ParityConditionDrift))
	}
	diffs := f.series(t, "detour_parity_differences")
	for labels, v := range map[string]float64{
		diffKey("secret", "high"):    1,
		diffKey("network", "medium"): 2, // a rule on each side only
		diffKey("config", "medium"):  0,
		diffKey("image", "high"):     0,
	} {
		if got, ok := diffs[labels]; !ok || got != v {
			t.Errorf("detour_parity_differences{%s} = %v (present %v), want %v", labels, got, ok, v)
		}
	}
	firstRun := f.series(t, "detour_parity_last_run_timestamp_seconds")[check]
	if firstRun == 0 {
		t.Errorf("no detour_parity_last_run_timestamp_seconds{%s}", check)
	}

	// A ConfigMap value changes on one side; the next run (asked for now,
	// the interval being an hour) sees it.
	cm, err := f.kube.CoreV1().ConfigMaps(production).Get(ctx, "cfg", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["LOG_LEVEL"] = "debug"
	if _, err := f.kube.CoreV1().ConfigMaps(production).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.runNow(t, ops, "shop", "1")
	pc = f.status(t, ops, "shop", func(pc *v1alpha1.ParityCheck) error {
		for _, d := range pc.Status.Differences {
			if d.Kind == "ConfigMap" && d.Path == "/data/LOG_LEVEL" && deref(d.Left) == "info" && deref(d.Right) == "debug" {
				return nil
			}
		}
		return fmt.Errorf("no ConfigMap difference yet: %+v", pc.Status.Differences)
	})
	if pc.Status.Summary.Unexpected != 4 {
		t.Errorf("summary after the change %+v", pc.Status.Summary)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if v := f.series(t, "detour_parity_differences")[diffKey("config", "medium")]; v != 1 {
			return fmt.Errorf("config differences %v, want 1", v)
		}
		if v := f.series(t, "detour_parity_last_run_timestamp_seconds")[check]; v <= firstRun {
			return fmt.Errorf("last run %v, not after %v", v, firstRun)
		}
		return nil
	})

	// Secret values appear nowhere in the object, status included.
	b, err := json.Marshal(pc)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range secretValues {
		for _, form := range []string{v, base64.StdEncoding.EncodeToString([]byte(v))} {
			if strings.Contains(string(b), form) {
				t.Errorf("the ParityCheck holds a Secret value (%q)", form)
			}
		}
	}

	// Deleted: its series go.
	if err := f.detour.DetourV1alpha1().ParityChecks(ops).Delete(ctx, "shop", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, name := range []string{"detour_parity_differences", "detour_parity_last_run_timestamp_seconds"} {
			for labels := range f.series(t, name) {
				if strings.Contains(labels, check) {
					return fmt.Errorf("%s{%s} is still exported", name, labels)
				}
			}
		}
		return nil
	})
}

// A check that cannot compare says why in Ready and keeps no metrics it
// never had; once what was wrong is fixed, it runs.
func TestParityCheckFailures(t *testing.T) {
	f := cluster(t)
	ctx := context.Background()
	n := names("pcf")
	ops, a, b := n("ops"), n("a"), n("b")
	kubetest.Namespace(t, f.kube, ops)
	f.namespaceSide(t, a, "info", secretValues[0], false, 80)

	f.createCheck(t, ops, &v1alpha1.ParityCheck{ObjectMeta: metav1.ObjectMeta{Name: "missing"},
		Spec: v1alpha1.ParityCheckSpec{Left: a, Right: n("nowhere")}})
	pc := f.status(t, ops, "missing", func(pc *v1alpha1.ParityCheck) error {
		if c := condition(pc, v1alpha1.ParityConditionReady); c != "False/NamespaceNotFound" {
			return fmt.Errorf("ready %s", c)
		}
		return nil
	})
	if pc.Status.Summary != nil || pc.Status.LastRunTime != nil {
		t.Errorf("a check that never compared has a summary or a last run: %+v", pc.Status)
	}

	// The policy in a ConfigMap, with a mistake on line 2.
	policyCM := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "policy"},
		Data: map[string]string{"parity.yaml": "failOn: high\nignroe: []\n"}}
	if _, err := f.kube.CoreV1().ConfigMaps(ops).Create(ctx, policyCM, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.namespaceSide(t, b, "debug", secretValues[0], false, 80)
	f.createCheck(t, ops, &v1alpha1.ParityCheck{ObjectMeta: metav1.ObjectMeta{Name: "from-cm"},
		Spec: v1alpha1.ParityCheckSpec{Left: a, Right: b, PolicyFrom: &v1alpha1.ParityPolicySource{ConfigMap: "policy"}}})
	f.status(t, ops, "from-cm", func(pc *v1alpha1.ParityCheck) error {
		c := meta.FindStatusCondition(pc.Status.Conditions, v1alpha1.ParityConditionReady)
		if c == nil || c.Reason != ReasonPolicyInvalid || !strings.Contains(c.Message, `configmap/policy/parity.yaml:2: unknown key "ignroe"`) {
			return fmt.Errorf("ready %+v", c)
		}
		return nil
	})
	// Fixed: the ConfigMap is read again at the next run.
	policyCM.Data["parity.yaml"] = "failOn: high\nignore: [{kind: ConfigMap, path: /data/LOG_LEVEL, reason: levels differ}]\n"
	if _, err := f.kube.CoreV1().ConfigMaps(ops).Update(ctx, policyCM, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.runNow(t, ops, "from-cm", "fixed")
	pc = f.status(t, ops, "from-cm", func(pc *v1alpha1.ParityCheck) error {
		if c := condition(pc, v1alpha1.ParityConditionReady); c != "True/Compared" {
			return fmt.Errorf("ready %s", c)
		}
		return nil
	})
	if s := pc.Status.Summary; s.Ignored != 1 || s.Unexpected != 0 || s.Result != "pass" || condition(pc, v1alpha1.ParityConditionDrift) != "False/NoDrift" {
		t.Errorf("summary %+v, drift %s", s, condition(pc, v1alpha1.ParityConditionDrift))
	}
	if len(pc.Status.Differences) != 1 || !pc.Status.Differences[0].Ignored || pc.Status.Differences[0].Reason != "levels differ" {
		t.Errorf("differences %+v", pc.Status.Differences)
	}
}

func portOf(n int32) *intstr.IntOrString {
	p := intstr.FromInt32(n)
	return &p
}

func deref(p *string) string {
	if p == nil {
		return "(none)"
	}
	return *p
}

// The shipped admission policy: who creates a ParityCheck must be allowed
// to list ConfigMaps and Secrets in both namespaces it compares.
func TestParityCheckAdmission(t *testing.T) {
	f := cluster(t)
	ctx := context.Background()
	var policy []*unstructured.Unstructured
	objs, err := deploy.Objects()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetName() == "detour-paritycheck-namespaces" {
			policy = append(policy, o)
		}
	}
	in, err := kubeclient.NewInstaller(kubetest.AdminConfig(f.env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Apply(ctx, kubeclient.ApplyOrder(policy)); err != nil || len(policy) != 2 {
		t.Fatalf("apply the policy (%d objects): %v", len(policy), err)
	}
	t.Cleanup(func() {
		_ = f.kube.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, "detour-paritycheck-namespaces", metav1.DeleteOptions{})
		_ = f.kube.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, "detour-paritycheck-namespaces", metav1.DeleteOptions{})
	})
	n := names("pca")
	ops, a, b := n("ops"), n("a"), n("b")
	for _, ns := range []string{ops, a, b} {
		kubetest.Namespace(t, f.kube, ns)
	}
	grant := func(ns string, resources ...string) {
		t.Helper()
		name := "carol-" + strings.Join(resources, "-")
		if _, err := f.kube.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{"", "detour.dev"}, Resources: resources, Verbs: []string{"list", "create", "get"}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.kube.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "carol"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.Allowed(t, f.kube, "carol", authorizationv1.ResourceAttributes{Namespace: ns, Verb: "list", Resource: resources[0]})
	}
	grant(ops, "paritychecks")
	grant(a, "configmaps", "secrets")
	grant(b, "configmaps") // not secrets
	cfg := kubetest.AdminConfig(f.env)
	cfg.BearerToken = f.env.Tokens["carol"]
	carol, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	create := func(name string) error {
		_, err := carol.DetourV1alpha1().ParityChecks(ops).Create(ctx, &v1alpha1.ParityCheck{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1alpha1.ParityCheckSpec{Left: a, Right: b}}, metav1.CreateOptions{})
		return err
	}
	// The policy takes effect once the API server has loaded it.
	testutil.Eventually(t, 30*time.Second, func() error {
		err := create("refused")
		if err == nil {
			_ = f.detour.DetourV1alpha1().ParityChecks(ops).Delete(ctx, "refused", metav1.DeleteOptions{})
			return errors.New("carol's check was admitted")
		}
		if want := "user carol may not list configmaps and secrets in namespace " + b; !strings.Contains(err.Error(), want) {
			return fmt.Errorf("refusal %q does not say %q", err, want)
		}
		return nil
	})
	grant(b, "secrets")
	testutil.Eventually(t, 10*time.Second, func() error { return create("admitted") })
}
