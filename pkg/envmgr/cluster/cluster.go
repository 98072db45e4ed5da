// Package cluster runs an environment's forks in a Kubernetes cluster: a
// fork of a Deployment is a Deployment, a fork of a StatefulSet a
// StatefulSet, each owned by its Environment (ownerReferences), so deleting
// the Environment with kubectl leaves nothing even without the controller.
// The baseline is only read.
package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
)

// HashAnnotation holds a hash of the fork as last applied, so an unchanged
// plan is not written again on every reconcile.
const HashAnnotation = "detour.dev/fork-hash"

// Workloads is envmgr.Workloads on a cluster.
type Workloads struct {
	kube         kubernetes.Interface
	fieldManager string
}

var _ envmgr.Workloads = (*Workloads)(nil)

// New returns Workloads that write as fieldManager.
func New(kube kubernetes.Interface, fieldManager string) *Workloads {
	return &Workloads{kube: kube, fieldManager: fieldManager}
}

// Baseline implements envmgr.Workloads.
func (w *Workloads) Baseline(ctx context.Context, namespace string, ref v1alpha1.WorkloadRef) (*envmgr.Baseline, error) {
	b := &envmgr.Baseline{Namespace: namespace, Ref: ref}
	var sel *metav1.LabelSelector
	switch ref.Kind {
	case v1alpha1.WorkloadDeployment, "":
		b.Ref.Kind = v1alpha1.WorkloadDeployment
		d, err := w.kube.AppsV1().Deployments(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return nil, notFound(err, b.Ref, namespace)
		}
		b.Template, sel, b.Object = d.Spec.Template, d.Spec.Selector, d
	case v1alpha1.WorkloadStatefulSet:
		s, err := w.kube.AppsV1().StatefulSets(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return nil, notFound(err, ref, namespace)
		}
		b.Template, sel, b.Object = s.Spec.Template, s.Spec.Selector, s
	default:
		return nil, fmt.Errorf("kind %s: only Deployment and StatefulSet can be forked: %w", ref.Kind, envmgr.ErrUnsupported)
	}
	if _, ok := b.Object.(metav1.Object).GetLabels()[v1alpha1.LabelEnvironment]; ok {
		return nil, fmt.Errorf("%s %s is itself a fork: fork its baseline: %w", b.Ref.Kind, ref.Name, envmgr.ErrUnsupported)
	}
	if sel != nil {
		b.Selector = sel.MatchLabels
	}
	return b, nil
}

func notFound(err error, ref v1alpha1.WorkloadRef, namespace string) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s %s/%s: %w", ref.Kind, namespace, ref.Name, envmgr.ErrWorkloadNotFound)
	}
	return fmt.Errorf("read %s %s/%s: %w", ref.Kind, namespace, ref.Name, err)
}

// ownerRef makes env the controller of a fork.
func ownerRef(env *v1alpha1.Environment) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{
		APIVersion:         v1alpha1.SchemeGroupVersion.String(),
		Kind:               "Environment",
		Name:               env.Name,
		UID:                env.UID,
		Controller:         &yes,
		BlockOwnerDeletion: &yes,
	}
}

func forkMeta(env *v1alpha1.Environment, p *envmgr.ForkPlan, hash string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      p.Name,
		Namespace: p.Namespace,
		Labels: map[string]string{
			v1alpha1.LabelEnvironment: env.Name,
			v1alpha1.LabelForkOf:      p.Baseline.Name,
		},
		Annotations:     map[string]string{HashAnnotation: hash},
		OwnerReferences: []metav1.OwnerReference{ownerRef(env)},
	}
}

// planHash identifies what Apply writes for p on top of the baseline's
// spec: the baseline's generation is in it, so a changed baseline reaches
// the fork too.
func planHash(env *v1alpha1.Environment, b *envmgr.Baseline, p *envmgr.ForkPlan) (string, error) {
	j, err := json.Marshal(struct {
		UID      string
		Gen      int64
		Replicas int32
		Template corev1.PodTemplateSpec
	}{string(env.UID), b.Object.(metav1.Object).GetGeneration(), p.Replicas, p.Template})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(j)
	return hex.EncodeToString(sum[:16]), nil
}

// Check implements envmgr.Workloads: a cluster runs any fork the API
// server accepts.
func (w *Workloads) Check(*envmgr.Baseline, *envmgr.ForkPlan) error { return nil }

// Apply implements envmgr.Workloads: the baseline's spec with the fork's
// replicas, selector and template. An object of the fork's name that env
// does not own is left alone (ErrNotOurs).
func (w *Workloads) Apply(ctx context.Context, env *v1alpha1.Environment, b *envmgr.Baseline, p *envmgr.ForkPlan) error {
	hash, err := planHash(env, b, p)
	if err != nil {
		return err
	}
	meta := forkMeta(env, p, hash)
	sel := &metav1.LabelSelector{MatchLabels: p.Selector}
	replicas := p.Replicas
	switch base := b.Object.(type) {
	case *appsv1.Deployment:
		api := w.kube.AppsV1().Deployments(p.Namespace)
		want := &appsv1.Deployment{ObjectMeta: meta, Spec: *base.Spec.DeepCopy()}
		want.Spec.Replicas, want.Spec.Selector, want.Spec.Template, want.Spec.Paused = &replicas, sel, p.Template, false
		return apply(ctx, w, api, env, p, want, hash, func(cur *appsv1.Deployment) error {
			want.ResourceVersion = cur.ResourceVersion
			return nil
		})
	case *appsv1.StatefulSet:
		api := w.kube.AppsV1().StatefulSets(p.Namespace)
		want := &appsv1.StatefulSet{ObjectMeta: meta, Spec: *base.Spec.DeepCopy()}
		want.Spec.Replicas, want.Spec.Selector, want.Spec.Template = &replicas, sel, p.Template
		// The fork's volume claims go with it: a fork must leave nothing.
		want.Spec.PersistentVolumeClaimRetentionPolicy = &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
			WhenDeleted: appsv1.DeletePersistentVolumeClaimRetentionPolicyType,
			WhenScaled:  appsv1.DeletePersistentVolumeClaimRetentionPolicyType,
		}
		for i := range want.Spec.VolumeClaimTemplates {
			vct := &want.Spec.VolumeClaimTemplates[i]
			if vct.Labels == nil {
				vct.Labels = map[string]string{}
			}
			vct.Labels[v1alpha1.LabelEnvironment] = env.Name
		}
		return apply(ctx, w, api, env, p, want, hash, func(cur *appsv1.StatefulSet) error {
			if !equalSelectors(cur.Spec.Selector, sel) || !slices.EqualFunc(cur.Spec.VolumeClaimTemplates, want.Spec.VolumeClaimTemplates, sameClaim) {
				// A StatefulSet's selector and claim templates cannot
				// change: make it again.
				if err := w.Delete(ctx, p.Namespace, envmgr.ForkRef{Kind: v1alpha1.WorkloadStatefulSet, Name: p.Name}); err != nil {
					return err
				}
				return fmt.Errorf("fork %s: its immutable fields changed; deleted to be made again", p.Name)
			}
			want.ResourceVersion = cur.ResourceVersion
			want.Spec.Selector = cur.Spec.Selector
			want.Spec.VolumeClaimTemplates = cur.Spec.VolumeClaimTemplates
			want.Spec.ServiceName = cur.Spec.ServiceName
			return nil
		})
	}
	return fmt.Errorf("fork %s: baseline %T: %w", p.Name, b.Object, envmgr.ErrUnsupported)
}

// workloadAPI is the part of a typed workload client Apply uses.
type workloadAPI[T metav1.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// apply creates want, or, when an object of that name that env owns is
// there with another hash, lets update turn want into its replacement and
// writes it.
func apply[T metav1.Object](ctx context.Context, w *Workloads, api workloadAPI[T], env *v1alpha1.Environment, p *envmgr.ForkPlan, want T, hash string, update func(cur T) error) error {
	cur, err := api.Get(ctx, p.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, want, metav1.CreateOptions{FieldManager: w.fieldManager})
		return wrap(err, "create", p)
	case err != nil:
		return wrap(err, "read", p)
	}
	if err := owned(cur, env, p); err != nil || cur.GetAnnotations()[HashAnnotation] == hash {
		return err
	}
	if err := update(cur); err != nil {
		return err
	}
	_, err = api.Update(ctx, want, metav1.UpdateOptions{FieldManager: w.fieldManager})
	return wrap(err, "update", p)
}

func sameClaim(a, b corev1.PersistentVolumeClaim) bool { return a.Name == b.Name }

func equalSelectors(a, b *metav1.LabelSelector) bool {
	if a == nil || b == nil {
		return a == b
	}
	return labels.Set(a.MatchLabels).String() == labels.Set(b.MatchLabels).String() && len(a.MatchExpressions) == len(b.MatchExpressions)
}

func wrap(err error, verb string, p *envmgr.ForkPlan) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s fork %s/%s: %w", verb, p.Namespace, p.Name, err)
}

// owned refuses to touch an object env does not control.
func owned(obj metav1.Object, env *v1alpha1.Environment, p *envmgr.ForkPlan) error {
	if c := metav1.GetControllerOf(obj); c != nil && c.UID == env.UID {
		return nil
	}
	return fmt.Errorf("%s %s/%s: %w %s", p.Baseline.Kind, p.Namespace, p.Name, envmgr.ErrNotOurs, env.Name)
}

// failingReasons are container waiting reasons that waiting does not cure.
var failingReasons = map[string]bool{
	"ImagePullBackOff":           true,
	"InvalidImageName":           true,
	"CrashLoopBackOff":           true,
	"CreateContainerConfigError": true,
	"CreateContainerError":       true,
	"RunContainerError":          true,
}

// Observe implements envmgr.Workloads: ready pods from the workload's
// status, and what keeps its pods from running from the pods themselves.
func (w *Workloads) Observe(ctx context.Context, p *envmgr.ForkPlan) (envmgr.ForkObservation, error) {
	o := envmgr.ForkObservation{Plan: p}
	var gen, observed int64
	switch p.Baseline.Kind {
	case v1alpha1.WorkloadStatefulSet:
		s, err := w.kube.AppsV1().StatefulSets(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return o, nil
		} else if err != nil {
			return o, wrap(err, "read", p)
		}
		o.Exists, o.Ready, gen, observed = true, s.Status.ReadyReplicas, s.Generation, s.Status.ObservedGeneration
	default:
		d, err := w.kube.AppsV1().Deployments(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return o, nil
		} else if err != nil {
			return o, wrap(err, "read", p)
		}
		o.Exists, o.Ready, gen, observed = true, d.Status.ReadyReplicas, d.Generation, d.Status.ObservedGeneration
		if d.Status.UpdatedReplicas < p.Replicas {
			// Ready pods of an older version of the fork do not count.
			o.Ready = min(o.Ready, d.Status.UpdatedReplicas)
		}
		for _, c := range d.Status.Conditions {
			if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
				o.Failed, o.Message = true, "rollout stuck: "+c.Message
			}
		}
	}
	if observed < gen {
		o.Ready = 0
		o.Message = "the workload controller has not seen the fork's last change yet"
	}
	pods, err := w.kube.CoreV1().Pods(p.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.Set(p.Selector).String()})
	if err != nil {
		return o, wrap(err, "list pods of", p)
	}
	var problems []string
	for _, pod := range pods.Items {
		for _, cs := range append(slices.Clone(pod.Status.InitContainerStatuses), pod.Status.ContainerStatuses...) {
			wt := cs.State.Waiting
			if wt == nil || wt.Reason == "" {
				continue
			}
			msg := fmt.Sprintf("pod %s container %s: %s", pod.Name, cs.Name, wt.Reason)
			if wt.Message != "" {
				msg += ": " + firstLine(wt.Message)
			}
			if failingReasons[wt.Reason] {
				o.Failed = true
			}
			problems = append(problems, msg)
		}
		if pod.Status.Phase == corev1.PodPending && len(pod.Status.ContainerStatuses) == 0 {
			for _, c := range pod.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
					problems = append(problems, fmt.Sprintf("pod %s not scheduled: %s", pod.Name, firstLine(c.Message)))
				}
			}
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		o.Message = strings.Join(problems, "; ")
	}
	return o, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// Forks implements envmgr.Workloads.
func (w *Workloads) Forks(ctx context.Context, namespace, env string) ([]envmgr.ForkRef, error) {
	sel := labels.Set(envmgr.EnvironmentSelector(env)).String()
	var out []envmgr.ForkRef
	ds, err := w.kube.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("list forks: %w", err)
	}
	for _, d := range ds.Items {
		out = append(out, envmgr.ForkRef{Kind: v1alpha1.WorkloadDeployment, Name: d.Name})
	}
	ss, err := w.kube.AppsV1().StatefulSets(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("list forks: %w", err)
	}
	for _, s := range ss.Items {
		out = append(out, envmgr.ForkRef{Kind: v1alpha1.WorkloadStatefulSet, Name: s.Name})
	}
	return out, nil
}

// Delete implements envmgr.Workloads. Pods and a StatefulSet's claims go
// with the workload through the garbage collector (background deletion).
func (w *Workloads) Delete(ctx context.Context, namespace string, f envmgr.ForkRef) error {
	bg := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &bg}
	var err error
	switch f.Kind {
	case v1alpha1.WorkloadStatefulSet:
		err = w.kube.AppsV1().StatefulSets(namespace).Delete(ctx, f.Name, opts)
	default:
		err = w.kube.AppsV1().Deployments(namespace).Delete(ctx, f.Name, opts)
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete fork %s/%s: %w", namespace, f.Name, err)
	}
	return nil
}
