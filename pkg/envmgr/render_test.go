package envmgr

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/inventory"
)

func testEnv(name, key string) *v1alpha1.Environment {
	return &v1alpha1.Environment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Generation: 3},
		Spec:       v1alpha1.EnvironmentSpec{Key: key},
	}
}

func apiBaseline() *Baseline {
	return &Baseline{
		Namespace: "shop",
		Ref:       v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "api"},
		Selector:  map[string]string{"app": "api"},
		Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "api", "tier": "backend", "team": "payments"}},
			Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: "migrate", Image: "reg/api-migrate:1"}},
				Containers: []corev1.Container{
					{Name: "api", Image: "reg/api:1", Command: []string{"/api"}, Args: []string{"--port=8080"},
						Env: []corev1.EnvVar{{Name: "LOG", Value: "info"}, {Name: "FEATURE_X", Value: "off"}, {Name: "URL", Value: "$(LOG)"}}},
					{Name: "proxy", Image: "reg/proxy:1"},
				},
			},
		},
	}
}

var shopServices = []inventory.Service{
	{Name: "api", Namespace: "shop", Selector: map[string]string{"app": "api"}, Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}}},
	{Name: "backends", Namespace: "shop", Selector: map[string]string{"tier": "backend"}, Ports: []inventory.ServicePort{{Port: 9000}}},
	{Name: "web", Namespace: "shop", Selector: map[string]string{"app": "web"}, Ports: []inventory.ServicePort{{Port: 80}}},
	{Name: "api", Namespace: "other", Selector: map[string]string{"app": "api"}, Ports: []inventory.ServicePort{{Port: 80}}},
}

func ptr[T any](v T) *T { return &v }

func envOf(t *testing.T, c *corev1.Container) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, e := range c.Env {
		if _, dup := m[e.Name]; dup {
			t.Errorf("container %s: %s set twice", c.Name, e.Name)
		}
		m[e.Name] = e.Value
		if e.ValueFrom != nil {
			m[e.Name] = "from:" + e.ValueFrom.ConfigMapKeyRef.Name + "/" + e.ValueFrom.ConfigMapKeyRef.Key
		}
	}
	return m
}

func TestRenderFork(t *testing.T) {
	env := testEnv("pr-42", "")
	b := apiBaseline()
	before := b.Template.DeepCopy()
	f := &v1alpha1.Fork{
		Workload: b.Ref,
		Images:   []v1alpha1.ImageOverride{{Container: "api", Image: "reg/api:pr-42"}},
		Env: []v1alpha1.EnvOverride{
			{Container: "api", Name: "FEATURE_X", Value: ptr("on")},
			{Container: "api", Name: "LOG", Delete: true},
			{Name: "REGION", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "region"}}},
		},
		Commands: []v1alpha1.CommandOverride{{Container: "proxy", Args: []string{"--verbose"}}},
		Replicas: ptr(int32(2)),
	}
	p, err := RenderFork(env, f, b, shopServices)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(b.Template, *before) {
		t.Error("RenderFork modified the baseline's template")
	}
	if p.Name != "api-pr-42" || p.Namespace != "shop" || p.Replicas != 2 || p.Env != "pr-42" {
		t.Errorf("plan = %s/%s replicas %d env %s", p.Namespace, p.Name, p.Replicas, p.Env)
	}
	wantLabels := map[string]string{
		"app":                     "api-pr-42",     // the workload's and Service api's selector key
		"tier":                    "backend-pr-42", // Service backends selects on it
		"team":                    "payments",      // nothing selects on it: kept
		v1alpha1.LabelEnvironment: "pr-42",
		v1alpha1.LabelForkOf:      "api",
	}
	if !reflect.DeepEqual(p.Template.Labels, wantLabels) {
		t.Errorf("labels = %v, want %v", p.Template.Labels, wantLabels)
	}
	if want := map[string]string{v1alpha1.LabelEnvironment: "pr-42", v1alpha1.LabelForkOf: "api"}; !reflect.DeepEqual(p.Selector, want) {
		t.Errorf("selector = %v", p.Selector)
	}
	// No Service of the namespace selects the fork; the fork's selector
	// selects its pods.
	pod := inventory.Pod{Namespace: "shop", Labels: p.Template.Labels}
	for _, s := range shopServices {
		if s.Selects(&pod) {
			t.Errorf("service %s/%s selects the fork", s.Namespace, s.Name)
		}
	}
	if sel := (inventory.Service{Namespace: "shop", Selector: p.Selector}); !sel.Selects(&pod) {
		t.Error("the fork's selector does not select its pods")
	}
	api, proxy, migrate := &p.Template.Spec.Containers[0], &p.Template.Spec.Containers[1], &p.Template.Spec.InitContainers[0]
	if api.Image != "reg/api:pr-42" || proxy.Image != "reg/proxy:1" || migrate.Image != "reg/api-migrate:1" {
		t.Errorf("images = %s", strings.Join(p.Images(), " "))
	}
	if got := strings.Join(p.Images(), " "); got != "migrate=reg/api-migrate:1 api=reg/api:pr-42 proxy=reg/proxy:1" {
		t.Errorf("Images() = %s", got)
	}
	if !reflect.DeepEqual(api.Command, []string{"/api"}) || !reflect.DeepEqual(proxy.Args, []string{"--verbose"}) {
		t.Errorf("command api %v, args proxy %v", api.Command, proxy.Args)
	}
	wantAPI := map[string]string{"FEATURE_X": "on", "URL": "$(LOG)", "REGION": "from:cfg/region", EnvVarEnvironment: "pr-42", EnvVarSession: "pr-42"}
	if got := envOf(t, api); !reflect.DeepEqual(got, wantAPI) {
		t.Errorf("api env = %v, want %v", got, wantAPI)
	}
	// An upsert keeps the variable's place: later ones may refer to it.
	if api.Env[0].Name != "FEATURE_X" {
		t.Errorf("FEATURE_X moved: %v", api.Env)
	}
	for _, c := range []*corev1.Container{proxy, migrate} {
		want := map[string]string{"REGION": "from:cfg/region", EnvVarEnvironment: "pr-42", EnvVarSession: "pr-42"}
		if got := envOf(t, c); !reflect.DeepEqual(got, want) {
			t.Errorf("%s env = %v, want %v", c.Name, got, want)
		}
	}
}

func TestRenderForkKey(t *testing.T) {
	p, err := RenderFork(testEnv("pr-42", "k-123"), &v1alpha1.Fork{Workload: apiBaseline().Ref}, apiBaseline(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := envOf(t, &p.Template.Spec.Containers[1]); got[EnvVarSession] != "k-123" || got[EnvVarEnvironment] != "pr-42" {
		t.Errorf("env = %v", got)
	}
	if p.Replicas != 1 {
		t.Errorf("replicas = %d, want 1 whatever the baseline runs", p.Replicas)
	}
}

func TestRenderForkPatch(t *testing.T) {
	patch := func(v any) *runtime.RawExtension {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return &runtime.RawExtension{Raw: b}
	}
	f := &v1alpha1.Fork{
		Workload: apiBaseline().Ref,
		Patch: patch(map[string]any{
			"metadata": map[string]any{"annotations": map[string]string{"debug": "true"}},
			"spec": map[string]any{
				"containers": []map[string]any{{"name": "api", "resources": map[string]any{"limits": map[string]string{"memory": "1Gi"}}}},
			},
		}),
	}
	p, err := RenderFork(testEnv("pr-1", ""), f, apiBaseline(), shopServices)
	if err != nil {
		t.Fatal(err)
	}
	api := p.Template.Spec.Containers[0]
	if api.Name != "api" || api.Image != "reg/api:1" || api.Resources.Limits.Memory().String() != "1Gi" {
		t.Errorf("patched api container = %+v", api)
	}
	if len(p.Template.Spec.Containers) != 2 || p.Template.Annotations["debug"] != "true" {
		t.Errorf("patch merged wrong: %d containers, annotations %v", len(p.Template.Spec.Containers), p.Template.Annotations)
	}
	if envOf(t, &api)[EnvVarEnvironment] != "pr-1" {
		t.Error("DETOUR_ENV missing after a patch")
	}
	// A patch cannot put the fork back under a Service: a label the
	// baseline's Services select on is rewritten whatever the patch says...
	f.Patch = patch(map[string]any{"metadata": map[string]any{"labels": map[string]string{"app": "web"}}})
	if p, err := RenderFork(testEnv("pr-1", ""), f, apiBaseline(), shopServices); err != nil || p.Template.Labels["app"] != "web-pr-1" {
		t.Errorf("patch relabelling app=web: %v, labels %v", err, p.Template.Labels)
	}
	// ...and one that would select the fork into another Service is refused.
	f.Patch = patch(map[string]any{"metadata": map[string]any{"labels": map[string]string{"role": "front"}}})
	fronts := append([]inventory.Service{{Name: "front", Namespace: "shop", Selector: map[string]string{"role": "front"}}}, shopServices...)
	if _, err := RenderFork(testEnv("pr-1", ""), f, apiBaseline(), fronts); err == nil || !strings.Contains(err.Error(), "service front would select") {
		t.Errorf("patch labelling into service front: %v", err)
	}
}

func TestRenderForkErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		fork v1alpha1.Fork
		want string
	}{
		{"image for a missing container", v1alpha1.Fork{Images: []v1alpha1.ImageOverride{{Container: "nope", Image: "x"}}},
			`fork of Deployment api: image for container "nope": no such container (it has: api, migrate, proxy)`},
		{"env for a missing container", v1alpha1.Fork{Env: []v1alpha1.EnvOverride{{Container: "nope", Name: "A", Value: ptr("1")}}},
			`env A: container "nope": no such container`},
		{"command for a missing container", v1alpha1.Fork{Commands: []v1alpha1.CommandOverride{{Container: "nope", Command: []string{"x"}}}},
			`command for container "nope"`},
		{"patch that is not JSON", v1alpha1.Fork{Patch: &runtime.RawExtension{Raw: []byte("{")}},
			"patch:"},
		{"patch with a field pods do not have", v1alpha1.Fork{Patch: &runtime.RawExtension{Raw: []byte(`{"spec":{"notAField":1}}`)}},
			"not a pod template"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.fork
			f.Workload = apiBaseline().Ref
			_, err := RenderFork(testEnv("pr-1", ""), &f, apiBaseline(), shopServices)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	long := strings.Repeat("a", 40)
	for _, tc := range []struct{ got, want string }{
		{ForkName("api", "pr-42"), "api-pr-42"},
		{InterceptName("pr-42", "api", 80, v1alpha1.RouteSession), "pr-42-api-80"},
		{InterceptName("pr-42", "api", 80, v1alpha1.RouteForks), "pr-42-api-80-forks"},
		{forkLabelValue("api", "pr-42"), "api-pr-42"},
		{forkLabelValue("", "pr-42"), "pr-42"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	a, b := ForkName(long, long), ForkName(long, long+"b")
	if len(a) > 63 || len(b) > 63 || a == b || strings.Contains(a, "--") {
		t.Errorf("long names %q and %q: want distinct labels of at most 63", a, b)
	}
}
