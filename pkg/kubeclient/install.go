package kubeclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// FieldManager owns the fields detour install sets.
const FieldManager = "detour"

// applyOrder is the order of kinds in which objects are applied: what an
// object refers to exists before it. Other kinds come after these.
var applyOrder = []string{
	"Namespace", "CustomResourceDefinition", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
	"ServiceAccount", "ClusterRole", "ClusterRoleBinding",
	"Role", "RoleBinding", "ConfigMap", "Secret", "Service", "Deployment", "DaemonSet",
}

func kindRank(kind string) int {
	for i, k := range applyOrder {
		if k == kind {
			return i
		}
	}
	return len(applyOrder)
}

// ApplyOrder returns objs sorted for applying, keeping the manifests'
// order within a kind.
func ApplyOrder(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	out := append([]*unstructured.Unstructured(nil), objs...)
	sort.SliceStable(out, func(i, j int) bool { return kindRank(out[i].GetKind()) < kindRank(out[j].GetKind()) })
	return out
}

// DeleteOrder returns objs sorted for removal: DaemonSets first (their
// pods, the agents, detach their programs as they stop), then the rest in
// reverse apply order, which puts the CRDs just before the Namespace.
func DeleteOrder(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	out := ApplyOrder(objs)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	sort.SliceStable(out, func(i, j int) bool {
		return out[i].GetKind() == "DaemonSet" && out[j].GetKind() != "DaemonSet"
	})
	return out
}

// Ref names an object the way kubectl prints it: kind.group/name.
func Ref(u *unstructured.Unstructured) string {
	gk := u.GroupVersionKind().GroupKind()
	k := strings.ToLower(gk.Kind)
	if gk.Group != "" {
		k += "." + gk.Group
	}
	return k + "/" + u.GetName()
}

// Installer applies and removes objects with the dynamic client.
type Installer struct {
	dyn    dynamic.Interface
	mapper meta.ResettableRESTMapper
	// Out receives one line per object applied or deleted; Progress the
	// states of what is waited for (Out when nil).
	Out, Progress io.Writer
	// Poll is the interval of status checks while waiting.
	Poll time.Duration
	// EnvironmentGrace bounds how long Delete waits for the controller to
	// remove the environments before it takes their finalizers away itself
	// (see removeEnvironments); 30 s when zero.
	EnvironmentGrace time.Duration
}

// NewInstaller connects to the cluster of rc.
func NewInstaller(rc *rest.Config, out io.Writer) (*Installer, error) {
	// Waiting polls a few objects twice a second: more than client-go's
	// default 5 requests per second allow without delay.
	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst = 50, 100
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Installer{
		dyn:    dyn,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)),
		Out:    out,
		Poll:   500 * time.Millisecond,
	}, nil
}

// resource returns the client of u's resource, in u's namespace if it has
// one. A kind the server does not know yet (a CRD just made) gets a fresh
// discovery before it is reported.
func (in *Installer) resource(u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := in.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		in.mapper.Reset()
		m, err = in.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Ref(u), err)
	}
	if m.Scope.Name() != meta.RESTScopeNameNamespace {
		return in.dyn.Resource(m.Resource), nil
	}
	if u.GetNamespace() == "" {
		return nil, fmt.Errorf("%s: a namespaced object without metadata.namespace", Ref(u))
	}
	return in.dyn.Resource(m.Resource).Namespace(u.GetNamespace()), nil
}

// Apply applies objs in ApplyOrder with server-side apply, forcing
// conflicts: these fields are Detour's. Before the first object that is
// not a CRD, it waits until every CRD is Established. It prints one line
// per object: created, configured or unchanged.
func (in *Installer) Apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	var crds []*unstructured.Unstructured
	waited := false
	for _, u := range ApplyOrder(objs) {
		if isCRD(u) {
			crds = append(crds, u)
		} else if !waited && len(crds) > 0 {
			if err := in.waitEstablished(ctx, crds); err != nil {
				return err
			}
			waited = true
		}
		r, err := in.resource(u)
		if err != nil {
			return err
		}
		before, err := r.Get(ctx, u.GetName(), metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("apply %s: %w", Ref(u), err)
		}
		after, err := r.Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		if err != nil {
			return fmt.Errorf("apply %s: %w", Ref(u), err)
		}
		what := "created"
		switch {
		case before == nil || before.GetResourceVersion() == "":
		case before.GetResourceVersion() == after.GetResourceVersion():
			what = "unchanged"
		default:
			what = "configured"
		}
		fmt.Fprintf(in.Out, "%s %s\n", Ref(u), what)
	}
	if !waited && len(crds) > 0 {
		return in.waitEstablished(ctx, crds)
	}
	return nil
}

func isCRD(u *unstructured.Unstructured) bool {
	gk := u.GroupVersionKind().GroupKind()
	return gk.Group == "apiextensions.k8s.io" && gk.Kind == "CustomResourceDefinition"
}

// waitEstablished waits until the API server serves every CRD.
func (in *Installer) waitEstablished(ctx context.Context, crds []*unstructured.Unstructured) error {
	err := in.poll(ctx, "Established", func() (map[string]string, error) {
		pending := map[string]string{}
		for _, u := range crds {
			r, err := in.resource(u)
			if err != nil {
				return nil, err
			}
			got, err := r.Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			if !conditionTrue(got, "Established") {
				pending[Ref(u)] = "not Established yet"
			}
		}
		return pending, nil
	})
	if err != nil {
		return err
	}
	in.mapper.Reset() // the new kinds
	return nil
}

func conditionTrue(u *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		cm, _ := c.(map[string]any)
		if cm["type"] == typ {
			return cm["status"] == "True"
		}
	}
	return false
}

// TimeoutError names what was not done when a wait ended.
type TimeoutError struct {
	Pending map[string]string // object → its state
}

func (e *TimeoutError) Error() string {
	keys := make([]string, 0, len(e.Pending))
	for k := range e.Pending {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + " (" + e.Pending[k] + ")"
	}
	return "timed out waiting for " + strings.Join(parts, ", ")
}

// poll calls check until it reports nothing pending, printing each
// object's state when it changes. When ctx ends first it returns a
// *TimeoutError naming what is still pending.
func (in *Installer) poll(ctx context.Context, done string, check func() (map[string]string, error)) error {
	w := in.Progress
	if w == nil {
		w = in.Out
	}
	last := map[string]string{}
	var pending map[string]string
	for {
		p, err := check()
		switch {
		case err == nil:
			pending = p
			keys := make([]string, 0, len(p))
			for k := range p {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if last[k] != p[k] {
					fmt.Fprintf(w, "waiting for %s: %s\n", k, p[k])
				}
			}
			for k := range last {
				if _, still := p[k]; !still {
					fmt.Fprintf(w, "%s %s\n", k, done)
				}
			}
			last = p
			if len(p) == 0 {
				return nil
			}
		case ctx.Err() == nil && !wouldMissDeadline(err):
			return err
		}
		select {
		case <-ctx.Done():
			if pending == nil {
				return ctx.Err()
			}
			return &TimeoutError{Pending: pending}
		case <-time.After(in.Poll):
		}
	}
}

// wouldMissDeadline reports whether err is client-go's rate limiter
// refusing a request because waiting for its turn would pass the
// context's deadline: the wait has timed out a moment early, which is not
// an error of the cluster's to report. The limiter says so in words only,
// with no error to match (TestPollRateLimitedAtDeadline holds it to them).
func wouldMissDeadline(err error) bool {
	return strings.Contains(err.Error(), "would exceed context deadline")
}

// WaitReady waits until each Deployment of objs has a Ready replica (only
// the elected leader of Detour's controllers is Ready) and each DaemonSet
// has all its pods Ready, as seen by their controllers at their current
// generation.
func (in *Installer) WaitReady(ctx context.Context, objs []*unstructured.Unstructured) error {
	var workloads []*unstructured.Unstructured
	for _, u := range objs {
		if k := u.GetKind(); k == "Deployment" || k == "DaemonSet" {
			workloads = append(workloads, u)
		}
	}
	return in.poll(ctx, "ready", func() (map[string]string, error) {
		pending := map[string]string{}
		for _, u := range workloads {
			r, err := in.resource(u)
			if err != nil {
				return nil, err
			}
			got, err := r.Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("%s: %w", Ref(u), err)
			}
			if ready, state := workloadReady(got); !ready {
				pending[Ref(u)] = state
			}
		}
		return pending, nil
	})
}

// workloadReady says whether a Deployment or DaemonSet is ready, and its
// state in words.
func workloadReady(u *unstructured.Unstructured) (bool, string) {
	st := func(f string) int64 { v, _, _ := unstructured.NestedInt64(u.Object, "status", f); return v }
	observed := st("observedGeneration") >= u.GetGeneration()
	if u.GetKind() == "Deployment" {
		want, ok, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
		if !ok {
			want = 1
		}
		state := fmt.Sprintf("%d of %d replicas ready, want 1", st("readyReplicas"), want)
		if !observed {
			return false, state + "; not yet seen by the deployment controller"
		}
		return st("readyReplicas") >= 1, state
	}
	desired, ready, updated := st("desiredNumberScheduled"), st("numberReady"), st("updatedNumberScheduled")
	state := fmt.Sprintf("%d of %d pods ready", ready, desired)
	if !observed {
		return false, state + "; not yet seen by the daemonset controller"
	}
	if updated < desired {
		state += fmt.Sprintf(", %d updated", updated)
	}
	return ready == desired && updated == desired, state
}

// Delete removes objs in DeleteOrder. It waits, up to ctx's deadline,
// until the pods of each DaemonSet are gone before it deletes anything
// else; with wait it also waits until every object is gone. An object
// already gone is reported as such, not as an error.
func (in *Installer) Delete(ctx context.Context, objs []*unstructured.Unstructured, wait bool) error {
	var daemonsets, rest, deleted []*unstructured.Unstructured
	for _, u := range DeleteOrder(objs) {
		if u.GetKind() == "DaemonSet" {
			daemonsets = append(daemonsets, u)
		} else {
			rest = append(rest, u)
		}
	}
	del := func(us []*unstructured.Unstructured) error {
		for _, u := range us {
			if isCRD(u) && in.exists(ctx, u) {
				fmt.Fprintf(in.Out, "deleting %s: every %s in the cluster is deleted with it\n", Ref(u), crdKind(u))
			}
			gone, err := in.delete(ctx, u)
			if err != nil {
				return err
			}
			if gone {
				fmt.Fprintf(in.Out, "%s not found\n", Ref(u))
				continue
			}
			fmt.Fprintf(in.Out, "%s deleted\n", Ref(u))
			deleted = append(deleted, u)
		}
		return nil
	}
	// Environments go while the controller still runs: it removes their
	// forks and routes, then their finalizers.
	if err := in.removeEnvironments(ctx); err != nil {
		return err
	}
	if err := del(daemonsets); err != nil {
		return err
	}
	if err := in.waitPodsGone(ctx, daemonsets); err != nil {
		return err
	}
	if err := del(rest); err != nil {
		return err
	}
	if !wait || len(deleted) == 0 {
		return nil
	}
	return in.poll(ctx, "gone", func() (map[string]string, error) {
		pending := map[string]string{}
		for _, u := range deleted {
			r, err := in.resource(u)
			if meta.IsNoMatchError(err) {
				continue // its CRD is gone, and it with it
			}
			if err != nil {
				return nil, err
			}
			got, err := r.Get(ctx, u.GetName(), metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", Ref(u), err)
			}
			state := "still there"
			if got.GetDeletionTimestamp() != nil {
				state = "terminating"
				if fs := got.GetFinalizers(); len(fs) > 0 {
					state += ", finalizers " + strings.Join(fs, ", ")
				}
				if sf, _, _ := unstructured.NestedStringSlice(got.Object, "spec", "finalizers"); len(sf) > 0 {
					state += ", finalizers " + strings.Join(sf, ", ")
				}
			}
			pending[Ref(u)] = state
		}
		return pending, nil
	})
}

// exists says whether u is there; when that cannot be told, it says yes.
func (in *Installer) exists(ctx context.Context, u *unstructured.Unstructured) bool {
	r, err := in.resource(u)
	if err != nil {
		return !meta.IsNoMatchError(err)
	}
	_, err = r.Get(ctx, u.GetName(), metav1.GetOptions{})
	return !apierrors.IsNotFound(err)
}

func crdKind(u *unstructured.Unstructured) string {
	k, _, _ := unstructured.NestedString(u.Object, "spec", "names", "kind")
	if k == "" {
		return "resource of " + u.GetName()
	}
	return k
}

// delete deletes u in the background (its dependents are collected after
// it) and says whether it was already gone.
func (in *Installer) delete(ctx context.Context, u *unstructured.Unstructured) (gone bool, err error) {
	r, err := in.resource(u)
	if meta.IsNoMatchError(err) {
		return true, nil // the kind itself is gone: its CRD was deleted
	}
	if err != nil {
		return false, err
	}
	bg := metav1.DeletePropagationBackground
	err = r.Delete(ctx, u.GetName(), metav1.DeleteOptions{PropagationPolicy: &bg})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete %s: %w", Ref(u), err)
	}
	return false, nil
}

// waitPodsGone waits until no pod matches the DaemonSets' selectors.
func (in *Installer) waitPodsGone(ctx context.Context, daemonsets []*unstructured.Unstructured) error {
	pods := in.dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "pods"})
	if len(daemonsets) == 0 {
		return nil
	}
	return in.poll(ctx, "gone", func() (map[string]string, error) {
		pending := map[string]string{}
		for _, ds := range daemonsets {
			sel, ok, _ := unstructured.NestedStringMap(ds.Object, "spec", "selector", "matchLabels")
			if !ok || len(sel) == 0 {
				continue
			}
			list, err := pods.Namespace(ds.GetNamespace()).List(ctx, metav1.ListOptions{
				LabelSelector: labels.SelectorFromSet(sel).String(),
			})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("list the pods of %s: %w", Ref(ds), err)
			}
			if n := len(list.Items); n > 0 {
				pending["the pods of "+Ref(ds)] = fmt.Sprintf("%d still there", n)
			}
		}
		return pending, nil
	})
}

// IsTimeout says whether err is a wait that ran out of time.
func IsTimeout(err error) bool {
	var te *TimeoutError
	return errors.As(err, &te)
}

// environmentsGVR is the Environment resource.
var environmentsGVR = schema.GroupVersionResource{Group: "detour.dev", Version: "v1alpha1", Resource: "environments"}

// removeEnvironments deletes every Environment and waits for the
// controller to remove them (their forks, routes, then the finalizer).
// Left without a controller (it is down), an Environment would hold its CRD
// forever: after environmentGrace its finalizer is removed, and the
// garbage collector takes its forks and intercepts (they are owned by it).
func (in *Installer) removeEnvironments(ctx context.Context) error {
	grace := in.EnvironmentGrace
	if grace <= 0 {
		grace = 30 * time.Second
	}
	api := in.dyn.Resource(environmentsGVR)
	l, err := api.List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
		return nil // no Environment CRD: nothing to remove
	}
	if err != nil {
		return fmt.Errorf("list environments: %w", err)
	}
	if len(l.Items) == 0 {
		return nil
	}
	fmt.Fprintf(in.Out, "deleting %d environments: the controller removes their forks and routes\n", len(l.Items))
	for _, e := range l.Items {
		err := api.Namespace(e.GetNamespace()).Delete(ctx, e.GetName(), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete environment %s/%s: %w", e.GetNamespace(), e.GetName(), err)
		}
	}
	gctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	check := func() (map[string]string, error) {
		l, err := api.List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		pending := map[string]string{}
		for _, e := range l.Items {
			pending["environment "+e.GetNamespace()+"/"+e.GetName()] = "being removed by the controller"
		}
		return pending, nil
	}
	err = in.poll(gctx, "gone", check)
	var te *TimeoutError
	if !errors.As(err, &te) || ctx.Err() != nil {
		return err
	}
	l, err = api.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list environments: %w", err)
	}
	for _, e := range l.Items {
		fmt.Fprintf(in.Out, "environment %s/%s: the controller did not remove it in %s; removing its finalizer (its forks go with it)\n",
			e.GetNamespace(), e.GetName(), grace)
		patch := []byte(`{"metadata":{"finalizers":null}}`)
		if _, err := api.Namespace(e.GetNamespace()).Patch(ctx, e.GetName(), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("environment %s/%s: remove finalizer: %w", e.GetNamespace(), e.GetName(), err)
		}
	}
	return in.poll(ctx, "gone", check)
}
