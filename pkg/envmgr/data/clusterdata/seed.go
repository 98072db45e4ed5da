package clusterdata

import (
	"context"
	"fmt"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/envmgr/data"
)

// seed makes or reports a seed Job, made once the branches are ready and
// the forks up (mayStart).
func (r *Runner) seed(ctx context.Context, env *v1alpha1.Environment, d *v1alpha1.DataSource, mayStart bool) (envmgr.DataObservation, error) {
	ns := env.Namespace
	name := data.BranchName(d.Name, env.Name)
	hash := specHash(env, d)
	st := v1alpha1.DataStatus{Job: name}
	if d.Job.Image == "" {
		return observation(v1alpha1.DataFailed, "a seed job needs an image in a cluster", st), nil
	}
	job, err := r.jobs.Jobs(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		if !mayStart {
			return observation(v1alpha1.DataPending, "waits for the branches and the forks to be ready", st), nil
		}
		_, err := r.kube.BatchV1().Jobs(ns).Create(ctx, seedJob(env, d, name, hash), metav1.CreateOptions{FieldManager: r.fieldManager})
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			return observation(v1alpha1.DataFailed, "create seed Job "+name+": "+err.Error(), st), nil
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return observation(v1alpha1.DataPending, "making seed Job "+name, st), err
		}
		return observation(v1alpha1.DataSeeding, "seed Job "+name+" starting", st), nil
	case err != nil:
		return observation(v1alpha1.DataSeeding, "reading seed Job "+name, st), err
	}
	if !owned(job, env) {
		return observation(v1alpha1.DataFailed, fmt.Sprintf("Job %s/%s exists and does not belong to environment %s", ns, name, env.Name), st), nil
	}
	if job.Annotations[HashAnnotation] != hash {
		if err := r.deleteJob(ctx, ns, name); err != nil {
			return observation(v1alpha1.DataPending, "the entry changed; removing its Job", st), err
		}
		return observation(v1alpha1.DataPending, "the entry changed; its Job runs again", st), nil
	}
	start := job.CreationTimestamp.Time
	logs := fmt.Sprintf("kubectl logs -n %s job/%s", ns, name)
	if c := jobCondition(job, batchv1.JobFailed); c != nil {
		var red data.Redactor
		r.redactBranches(ctx, env, &red)
		pods, _ := r.pods(ns, labelsOf(env.Name, d.Name, RoleSeed))
		msg := fmt.Sprintf("seed Job %s failed (%s: %s)", name, c.Reason, c.Message)
		if container, code, out := failedContainer(pods); container != "" {
			msg += fmt.Sprintf(": exit code %d", code)
			if out != "" {
				msg += ": " + out
			}
		}
		o := observation(v1alpha1.DataFailed, red.Redact(msg+"; read its logs: "+logs), st)
		o.Status.Duration = &metav1.Duration{Duration: c.LastTransitionTime.Sub(start).Round(time.Second)}
		return o, nil
	}
	if jobCondition(job, batchv1.JobComplete) != nil {
		if job.Status.CompletionTime != nil {
			st.Duration = &metav1.Duration{Duration: job.Status.CompletionTime.Sub(start).Round(time.Second)}
		}
		return observation(v1alpha1.DataReady, "seed Job "+name+" done", st), nil
	}
	pods, err := r.pods(ns, labelsOf(env.Name, d.Name, RoleSeed))
	if err != nil {
		return observation(v1alpha1.DataSeeding, "reading seed Job "+name+"'s pod", st), err
	}
	if msg, bad := podsFailing(pods); bad {
		return observation(v1alpha1.DataFailed, "seed Job "+name+" cannot run: "+msg+"; "+logs, st), nil
	}
	return observation(v1alpha1.DataSeeding, "seed Job "+name+" running", st), nil
}

// redactBranches adds the environment's branches' passwords to red: a
// seed job's output may repeat them.
func (r *Runner) redactBranches(ctx context.Context, env *v1alpha1.Environment, red *data.Redactor) {
	for _, d := range env.Spec.Data {
		if d.PostgresBranch == nil {
			continue
		}
		if s, err := r.kube.CoreV1().Secrets(env.Namespace).Get(ctx, data.BranchName(d.Name, env.Name), metav1.GetOptions{}); err == nil {
			red.Add(string(s.Data[string(v1alpha1.ConnectionPassword)]))
		}
	}
}
