package clusterdata

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// Cleanup implements envmgr.Data: every object the environment's data
// made, by label, storage included. Owner references would take them with
// the Environment anyway; the controller does not wait for the garbage
// collector, and catches what an owner reference cannot (an object made by
// a StatefulSet, its claims).
func (r *Runner) Cleanup(ctx context.Context, env *v1alpha1.Environment) error {
	return r.remove(ctx, env.Namespace, map[string]string{LabelDataOf: env.Name}, nil)
}

// removeEntry removes one entry's objects.
func (r *Runner) removeEntry(ctx context.Context, ns, env, entry string) error {
	return r.remove(ctx, ns, map[string]string{LabelDataOf: env, LabelData: entry}, nil)
}

// removeUnlisted removes the objects of entries the spec no longer has.
func (r *Runner) removeUnlisted(ctx context.Context, env *v1alpha1.Environment) error {
	keep := map[string]bool{}
	for _, d := range env.Spec.Data {
		keep[d.Name] = true
	}
	return r.remove(ctx, env.Namespace, map[string]string{LabelDataOf: env.Name}, keep)
}

// remove deletes what matches sel, except entries in keep.
func (r *Runner) remove(ctx context.Context, ns string, sel map[string]string, keep map[string]bool) error {
	opts := metav1.ListOptions{LabelSelector: labels.Set(sel).String()}
	bg := metav1.DeletePropagationBackground
	del := metav1.DeleteOptions{PropagationPolicy: &bg}
	var errs []error
	gone := func(err error, what string) {
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", what, err))
		}
	}
	skip := func(l map[string]string) bool { return keep != nil && keep[l[LabelData]] }

	if l, err := r.kube.BatchV1().Jobs(ns).List(ctx, opts); err != nil {
		errs = append(errs, err)
	} else {
		for _, o := range l.Items {
			if !skip(o.Labels) {
				gone(r.kube.BatchV1().Jobs(ns).Delete(ctx, o.Name, del), "Job "+o.Name)
			}
		}
	}
	if l, err := r.kube.AppsV1().StatefulSets(ns).List(ctx, opts); err != nil {
		errs = append(errs, err)
	} else {
		for _, o := range l.Items {
			if !skip(o.Labels) {
				gone(r.kube.AppsV1().StatefulSets(ns).Delete(ctx, o.Name, del), "StatefulSet "+o.Name)
			}
		}
	}
	if l, err := r.kube.CoreV1().Services(ns).List(ctx, opts); err != nil {
		errs = append(errs, err)
	} else {
		for _, o := range l.Items {
			if !skip(o.Labels) {
				gone(r.kube.CoreV1().Services(ns).Delete(ctx, o.Name, del), "Service "+o.Name)
			}
		}
	}
	if l, err := r.kube.CoreV1().Secrets(ns).List(ctx, opts); err != nil {
		errs = append(errs, err)
	} else {
		for _, o := range l.Items {
			if !skip(o.Labels) {
				gone(r.kube.CoreV1().Secrets(ns).Delete(ctx, o.Name, del), "Secret "+o.Name)
			}
		}
	}
	if l, err := r.kube.CoreV1().PersistentVolumeClaims(ns).List(ctx, opts); err != nil {
		errs = append(errs, err)
	} else {
		for _, o := range l.Items {
			if !skip(o.Labels) {
				gone(r.kube.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, o.Name, del), "PersistentVolumeClaim "+o.Name)
			}
		}
	}
	return errors.Join(errs...)
}

func (r *Runner) deleteJob(ctx context.Context, ns, name string) error {
	bg := metav1.DeletePropagationBackground
	err := r.kube.BatchV1().Jobs(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}
