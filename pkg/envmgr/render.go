package envmgr

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/inventory"
)

// Environment variables every fork's containers get.
const (
	EnvVarEnvironment = "DETOUR_ENV"     // the environment's name
	EnvVarSession     = "DETOUR_SESSION" // the environment's key
)

// Baseline is a workload of the baseline namespace as a runtime found it.
type Baseline struct {
	Namespace string
	Ref       v1alpha1.WorkloadRef
	// Template is the workload's pod template.
	Template corev1.PodTemplateSpec
	// Selector is the workload's own pod selector (its matchLabels).
	Selector map[string]string
	// Object is the runtime's own form of the workload (an
	// *appsv1.Deployment, say), which Apply copies the rest of the fork from.
	Object any
}

// ForkPlan is one fork as a runtime must create it.
type ForkPlan struct {
	Name      string
	Namespace string
	Env       string
	Baseline  v1alpha1.WorkloadRef
	Replicas  int32
	// Selector selects the fork's pods and nothing else.
	Selector map[string]string
	Template corev1.PodTemplateSpec
}

// Images lists the fork's containers' images as container=image, init
// containers first, as the status shows them.
func (p *ForkPlan) Images() []string {
	var out []string
	for _, c := range append(append([]corev1.Container(nil), p.Template.Spec.InitContainers...), p.Template.Spec.Containers...) {
		if c.Image != "" { // the lab's pods run commands
			out = append(out, c.Name+"="+c.Image)
		}
	}
	return out
}

// Key is the session key of env: spec.key, or its name.
func Key(env *v1alpha1.Environment) string {
	if env.Spec.Key != "" {
		return env.Spec.Key
	}
	return env.Name
}

// RenderFork makes the fork of b that f asks for: a copy of its pod template
// with f's overrides, labelled so that no Service of services that selects
// the baseline's pods (nor the baseline workload itself) selects the fork's,
// with DETOUR_ENV and DETOUR_SESSION in every container. The baseline is not
// modified. Errors name what in f does not fit b.
func RenderFork(env *v1alpha1.Environment, f *v1alpha1.Fork, b *Baseline, services []inventory.Service) (*ForkPlan, error) {
	what := fmt.Sprintf("fork of %s %s", f.Workload.Kind, f.Workload.Name)
	t := b.Template.DeepCopy()
	c := containerSet{spec: &t.Spec}
	for _, im := range f.Images {
		ct := c.find(im.Container)
		if ct == nil {
			return nil, fmt.Errorf("%s: image for container %q: %s", what, im.Container, c.missing(im.Container))
		}
		ct.Image = im.Image
	}
	for _, co := range f.Commands {
		ct := c.find(co.Container)
		if ct == nil {
			return nil, fmt.Errorf("%s: command for container %q: %s", what, co.Container, c.missing(co.Container))
		}
		if co.Command != nil {
			ct.Command = slices.Clone(co.Command)
		}
		if co.Args != nil {
			ct.Args = slices.Clone(co.Args)
		}
	}
	for _, e := range f.Env {
		targets, err := c.targets(e.Container)
		if err != nil {
			return nil, fmt.Errorf("%s: env %s: %w", what, e.Name, err)
		}
		for _, ct := range targets {
			if e.Delete {
				ct.Env = slices.DeleteFunc(ct.Env, func(v corev1.EnvVar) bool { return v.Name == e.Name })
				continue
			}
			v := corev1.EnvVar{Name: e.Name, ValueFrom: e.ValueFrom.DeepCopy()}
			if e.Value != nil {
				v.Value = *e.Value
			}
			upsertEnv(ct, v)
		}
	}
	if f.Patch != nil && len(f.Patch.Raw) > 0 {
		patched, err := patchTemplate(t, f.Patch.Raw)
		if err != nil {
			return nil, fmt.Errorf("%s: patch: %w", what, err)
		}
		t = patched
		c = containerSet{spec: &t.Spec}
	}
	// What keeps the fork apart comes last, so a patch cannot undo it.
	keys := map[string]bool{}
	for k := range b.Selector {
		keys[k] = true
	}
	probe := inventory.Pod{Namespace: b.Namespace, Labels: b.Template.Labels}
	for i := range services {
		if services[i].Selects(&probe) {
			for k := range services[i].Selector {
				keys[k] = true
			}
		}
	}
	if t.Labels == nil {
		t.Labels = map[string]string{}
	}
	for k := range keys {
		if v, ok := t.Labels[k]; ok {
			t.Labels[k] = forkLabelValue(v, env.Name)
		}
	}
	t.Labels[v1alpha1.LabelEnvironment] = env.Name
	t.Labels[v1alpha1.LabelForkOf] = b.Ref.Name
	forked := inventory.Pod{Namespace: b.Namespace, Labels: t.Labels}
	for i := range services {
		if services[i].Selects(&forked) {
			// Only a patch that sets a label the Service selects on to
			// the value it wants can get here.
			return nil, fmt.Errorf("%s: service %s would select the fork's pods: the patch must not set the labels %s selects on",
				what, services[i].Name, services[i].Name)
		}
	}
	for _, ct := range c.all() {
		upsertEnv(ct, corev1.EnvVar{Name: EnvVarEnvironment, Value: env.Name})
		upsertEnv(ct, corev1.EnvVar{Name: EnvVarSession, Value: Key(env)})
	}
	replicas := int32(1)
	if f.Replicas != nil {
		replicas = *f.Replicas
	}
	return &ForkPlan{
		Name:      ForkName(b.Ref.Name, env.Name),
		Namespace: b.Namespace,
		Env:       env.Name,
		Baseline:  b.Ref,
		Replicas:  replicas,
		Selector:  ForkSelector(env.Name, b.Ref.Name),
		Template:  *t,
	}, nil
}

// WithEnv sets vars in every container of the fork (a data branch's
// connection), in place of the baseline's variables of the same names.
func (p *ForkPlan) WithEnv(vars []corev1.EnvVar) {
	c := containerSet{spec: &p.Template.Spec}
	for _, ct := range c.all() {
		for _, v := range vars {
			upsertEnv(ct, *v.DeepCopy())
		}
	}
}

// ForkSelector selects the pods of env's fork of workload, and only those.
func ForkSelector(env, workload string) map[string]string {
	return map[string]string{v1alpha1.LabelEnvironment: env, v1alpha1.LabelForkOf: workload}
}

// EnvironmentSelector selects every fork pod of env.
func EnvironmentSelector(env string) map[string]string {
	return map[string]string{v1alpha1.LabelEnvironment: env}
}

// upsertEnv sets v in ct's env, in place of a variable of the same name if
// there is one (keeping its position, since later variables may refer to it
// as $(NAME)), else at the end.
func upsertEnv(ct *corev1.Container, v corev1.EnvVar) {
	for i := range ct.Env {
		if ct.Env[i].Name == v.Name {
			ct.Env[i] = v
			return
		}
	}
	ct.Env = append(ct.Env, v)
}

// patchTemplate applies a strategic-merge patch (JSON or YAML read as JSON
// by the API) to a pod template.
func patchTemplate(t *corev1.PodTemplateSpec, patch []byte) (*corev1.PodTemplateSpec, error) {
	orig, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	out, err := strategicpatch.StrategicMergePatch(orig, patch, corev1.PodTemplateSpec{})
	if err != nil {
		return nil, err
	}
	var res corev1.PodTemplateSpec
	dec := json.NewDecoder(strings.NewReader(string(out)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		return nil, fmt.Errorf("the patched template is not a pod template: %w", err)
	}
	return &res, nil
}

// containerSet finds a pod spec's containers, init containers included.
type containerSet struct{ spec *corev1.PodSpec }

func (c containerSet) all() []*corev1.Container {
	var out []*corev1.Container
	for i := range c.spec.InitContainers {
		out = append(out, &c.spec.InitContainers[i])
	}
	for i := range c.spec.Containers {
		out = append(out, &c.spec.Containers[i])
	}
	return out
}

// find is the named container, or for "" the pod's only (non-init)
// container.
func (c containerSet) find(name string) *corev1.Container {
	if name == "" {
		if len(c.spec.Containers) == 1 {
			return &c.spec.Containers[0]
		}
		return nil
	}
	for _, ct := range c.all() {
		if ct.Name == name {
			return ct
		}
	}
	return nil
}

// targets is the named container, or all of them for "".
func (c containerSet) targets(name string) ([]*corev1.Container, error) {
	if name == "" {
		return c.all(), nil
	}
	if ct := c.find(name); ct != nil {
		return []*corev1.Container{ct}, nil
	}
	return nil, fmt.Errorf("container %q: %s", name, c.missing(name))
}

func (c containerSet) missing(name string) string {
	if name == "" {
		return "the workload has several containers: name one"
	}
	var names []string
	for _, ct := range c.all() {
		names = append(names, ct.Name)
	}
	sort.Strings(names)
	return "no such container (it has: " + strings.Join(names, ", ") + ")"
}
