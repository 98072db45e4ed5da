package clusterdata

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	batchlisters "k8s.io/client-go/listers/batch/v1"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/envmgr/data"
)

// Runner is envmgr.Data in a cluster. It reads what it made from informer
// caches of the objects that carry LabelDataOf (the reconciler looks four
// times a second at an environment that is not Ready: that must cost the
// API server nothing), and writes through the API.
type Runner struct {
	kube         kubernetes.Interface
	fieldManager string
	log          *slog.Logger
	// Jobs is pg_restore's --jobs for rows and indexes.
	Jobs int

	factory      informers.SharedInformerFactory
	secrets      corelisters.SecretLister
	services     corelisters.ServiceLister
	podLister    corelisters.PodLister
	statefulSets appslisters.StatefulSetLister
	jobs         batchlisters.JobLister
}

var _ envmgr.Data = (*Runner)(nil)

// New returns a Runner that writes as fieldManager; Start it before use.
func New(kube kubernetes.Interface, fieldManager string, log *slog.Logger) *Runner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := informers.NewSharedInformerFactoryWithOptions(kube, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelDataOf }))
	return &Runner{
		kube: kube, fieldManager: fieldManager, log: log, Jobs: 2, factory: f,
		secrets:      f.Core().V1().Secrets().Lister(),
		services:     f.Core().V1().Services().Lister(),
		podLister:    f.Core().V1().Pods().Lister(),
		statefulSets: f.Apps().V1().StatefulSets().Lister(),
		jobs:         f.Batch().V1().Jobs().Lister(),
	}
}

// Start fills the caches, waiting up to a minute, and keeps them current
// until ctx ends.
func (r *Runner) Start(ctx context.Context) error {
	r.factory.Start(ctx.Done())
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for typ, ok := range r.factory.WaitForCacheSync(wait.Done()) {
		if !ok {
			return fmt.Errorf("environment data: the cache of %v did not sync", typ)
		}
	}
	context.AfterFunc(ctx, r.factory.Shutdown)
	return nil
}

// refusal is a problem waiting does not cure (a baseline that is not
// there, a setting a cluster cannot do): the entry fails with it.
type refusal struct{ msg string }

func (e *refusal) Error() string { return e.msg }

func refused(format string, a ...any) error { return &refusal{fmt.Sprintf(format, a...)} }

// Sync implements envmgr.Data.
func (r *Runner) Sync(ctx context.Context, env *v1alpha1.Environment, stage envmgr.DataStage) (envmgr.DataResult, error) {
	res := envmgr.DataResult{BranchesReady: true, ForkEnv: map[string][]corev1.EnvVar{}}
	obs := make([]envmgr.DataObservation, len(env.Spec.Data))
	var errs []error
	for i := range env.Spec.Data {
		d := &env.Spec.Data[i]
		if d.Kind != v1alpha1.DataPostgresBranch || d.PostgresBranch == nil {
			continue
		}
		o, err := r.branch(ctx, env, d)
		if err != nil {
			errs = append(errs, fmt.Errorf("data %s: %w", d.Name, err))
		}
		obs[i] = o
		if !o.Ready {
			res.BranchesReady = false
		}
		// The variables name the branch's Secret, whatever its state:
		// the forks are made only once it is ready.
		name := data.BranchName(d.Name, env.Name)
		for _, f := range env.Spec.Forks {
			if data.ForkGetsEnv(d.PostgresBranch, f.Workload.Name) {
				res.ForkEnv[f.Workload.Name] = append(res.ForkEnv[f.Workload.Name], data.SecretEnv(d.PostgresBranch, name)...)
			}
		}
	}
	for i := range env.Spec.Data {
		d := &env.Spec.Data[i]
		if d.Kind != v1alpha1.DataJobKind || d.Job == nil {
			continue
		}
		o, err := r.seed(ctx, env, d, stage.ForksReady && res.BranchesReady)
		if err != nil {
			errs = append(errs, fmt.Errorf("data %s: %w", d.Name, err))
		}
		obs[i] = o
	}
	for i := range obs {
		obs[i].Name = env.Spec.Data[i].Name
		obs[i].Status.Kind = env.Spec.Data[i].Kind
		obs[i].Status.Message = obs[i].Message
	}
	res.Observations = obs
	// Entries the spec no longer has: looked for when the spec changed
	// since the status was last written, not on every look.
	if env.Generation != env.Status.ObservedGeneration {
		if err := r.removeUnlisted(ctx, env); err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// observation builds what the status shows.
func observation(phase v1alpha1.DataPhase, msg string, st v1alpha1.DataStatus) envmgr.DataObservation {
	st.Phase = phase
	return envmgr.DataObservation{Ready: phase == v1alpha1.DataReady, Failed: phase == v1alpha1.DataFailed, Message: msg, Status: st}
}

// owned reports whether env controls obj.
func owned(obj metav1.Object, env *v1alpha1.Environment) bool {
	c := metav1.GetControllerOf(obj)
	return c != nil && c.UID == env.UID
}

// branch makes or advances one branch: its Secret, Service, StatefulSet and
// restore Job, each made when missing (so a controller that stopped between
// two goes on), all made again when the entry changed.
func (r *Runner) branch(ctx context.Context, env *v1alpha1.Environment, d *v1alpha1.DataSource) (envmgr.DataObservation, error) {
	ns := env.Namespace
	name := data.BranchName(d.Name, env.Name)
	jobName := data.JobName(d.Name, env.Name)
	hash := specHash(env, d)
	st := v1alpha1.DataStatus{Secret: name, Job: jobName}
	fail := func(msg string) envmgr.DataObservation { return observation(v1alpha1.DataFailed, msg, st) }

	// Each object from the caches (never changed: they are the caches'),
	// or an empty one when it is not there.
	sec, svc, sts, job := &corev1.Secret{}, &corev1.Service{}, &appsv1.StatefulSet{}, &batchv1.Job{}
	if o, err := r.secrets.Secrets(ns).Get(name); err == nil {
		sec = o
	}
	if o, err := r.services.Services(ns).Get(name); err == nil {
		svc = o
	}
	if o, err := r.statefulSets.StatefulSets(ns).Get(name); err == nil {
		sts = o
	}
	if o, err := r.jobs.Jobs(ns).Get(jobName); err == nil {
		job = o
	}
	objs := []metav1.Object{sec, svc, sts, job}
	kinds := []string{"Secret", "Service", "StatefulSet", "Job"}
	missing := false
	for i, o := range objs {
		if o.GetName() == "" {
			missing = true
			continue
		}
		if !owned(o, env) {
			return fail(fmt.Sprintf("%s %s/%s exists and does not belong to environment %s", kinds[i], ns, o.GetName(), env.Name)), nil
		}
		if o.GetAnnotations()[HashAnnotation] != hash {
			// The entry changed: its branch is made again, from the start.
			if err := r.removeEntry(ctx, ns, env.Name, d.Name); err != nil {
				return observation(v1alpha1.DataStarting, "the entry changed; removing its branch", st), err
			}
			return observation(v1alpha1.DataStarting, "the entry changed; its branch is made again", st), nil
		}
	}
	if missing {
		err := r.create(ctx, env, d, hash, sec, svc, sts, job)
		var ref *refusal
		if errors.As(err, &ref) {
			return fail(ref.msg), nil
		}
		if err != nil {
			return observation(v1alpha1.DataStarting, "making the branch", st), err
		}
		return observation(v1alpha1.DataStarting, "starting the branch's database (StatefulSet "+name+")", st), nil
	}

	// All four are there: how far are they?
	port := int32(0)
	if len(svc.Spec.Ports) > 0 {
		port = svc.Spec.Ports[0].Port
	}
	st.Endpoint = net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(port)))
	start := sec.CreationTimestamp.Time
	// A message from a pod may repeat a password (a program that prints
	// its connection): the branch's and the baseline's are taken out.
	redact := func(msg string) string {
		var red data.Redactor
		red.Add(string(sec.Data[string(v1alpha1.ConnectionPassword)]))
		if cs, err := r.kube.CoreV1().Secrets(ns).Get(ctx, d.PostgresBranch.Credentials.Secret, metav1.GetOptions{}); err == nil {
			red.Add(string(cs.Data[passwordKey(d.PostgresBranch)]))
		}
		return red.Redact(msg)
	}
	branchPods, err := r.pods(ns, labelsOf(env.Name, d.Name, RoleBranch))
	if err != nil {
		return observation(v1alpha1.DataStarting, "reading the branch's pods", st), err
	}
	if msg, bad := podsFailing(branchPods); bad {
		return fail(redact("the branch's database cannot start: " + msg)), nil
	}
	logs := fmt.Sprintf("kubectl logs -n %s job/%s", ns, jobName)
	if c := jobCondition(job, batchv1.JobFailed); c != nil {
		pods, _ := r.pods(ns, labelsOf(env.Name, d.Name, RoleRestore))
		container, code, out := failedContainer(pods)
		msg := fmt.Sprintf("restore Job %s failed", jobName)
		if container != "" {
			msg += fmt.Sprintf(" while %s (container %s, exit code %d): %s; its logs: %s -c %s",
				strings.ToLower(string(phaseOf(container))), container, code, out, logs, container)
		} else {
			msg += fmt.Sprintf(" (%s: %s); its logs: %s", c.Reason, c.Message, logs)
		}
		o := fail(redact(msg))
		if t := c.LastTransitionTime; !t.IsZero() {
			o.Status.Duration = &metav1.Duration{Duration: t.Sub(start).Round(time.Second)}
		}
		return o, nil
	}
	if jobCondition(job, batchv1.JobComplete) == nil {
		pods, err := r.pods(ns, labelsOf(env.Name, d.Name, RoleRestore))
		if err != nil {
			return observation(v1alpha1.DataSnapshotting, "reading the restore Job's pod", st), err
		}
		if msg, bad := podsFailing(pods); bad {
			return fail(redact("restore Job " + jobName + " cannot run: " + msg + "; its logs: " + logs)), nil
		}
		ph := restorePhase(pods)
		msg := map[v1alpha1.DataPhase]string{
			v1alpha1.DataSnapshotting: "snapshotting the baseline's database (Job " + jobName + ")",
			v1alpha1.DataRestoring:    "restoring the snapshot into the branch (Job " + jobName + ")",
			v1alpha1.DataAnonymising:  "anonymising the branch (Job " + jobName + ")",
		}[ph]
		return observation(ph, msg, st), nil
	}
	// Done: what the branch holds, read once from the Job's report and
	// kept on the Job.
	rows, err1 := strconv.ParseInt(job.Annotations[RowsAnnotation], 10, 64)
	bytes, err2 := strconv.ParseInt(job.Annotations[BytesAnnotation], 10, 64)
	if err1 != nil || err2 != nil {
		pods, err := r.pods(ns, labelsOf(env.Name, d.Name, RoleRestore))
		if err != nil {
			return observation(v1alpha1.DataRestoring, "reading the restore Job's report", st), err
		}
		rep, err := report(pods)
		if err != nil {
			return fail(redact(fmt.Sprintf("restore Job %s: %v", jobName, err))), nil
		}
		rows, bytes = rep.Rows, rep.Bytes
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q,%q:%q}}}`, RowsAnnotation, strconv.FormatInt(rows, 10), BytesAnnotation, strconv.FormatInt(bytes, 10))
		if _, err := r.kube.BatchV1().Jobs(ns).Patch(ctx, jobName, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{FieldManager: r.fieldManager}); err != nil {
			r.log.Warn("keep the branch's report on its Job", "job", ns+"/"+jobName, "err", err)
		}
	}
	st.Rows, st.Bytes = rows, bytes
	if job.Status.CompletionTime != nil {
		st.Duration = &metav1.Duration{Duration: job.Status.CompletionTime.Sub(start).Round(time.Second)}
	}
	if sts.Status.ReadyReplicas < 1 {
		msg := "the branch is filled but its database is not ready"
		if m := podsMessage(branchPods); m != "" {
			msg += " (" + redact(m) + ")"
		}
		return observation(v1alpha1.DataRestoring, msg, st), nil
	}
	return observation(v1alpha1.DataReady, fmt.Sprintf("branch ready at %s: %d rows, %s", st.Endpoint, rows, sizeOf(bytes)), st), nil
}

// create makes what of a branch is missing, from the baseline.
func (r *Runner) create(ctx context.Context, env *v1alpha1.Environment, d *v1alpha1.DataSource, hash string,
	sec *corev1.Secret, svc *corev1.Service, sts *appsv1.StatefulSet, job *batchv1.Job) error {
	pb := d.PostgresBranch
	ns := env.Namespace
	name := data.BranchName(d.Name, env.Name)
	if a := pb.Anonymize; a != nil && a.ConfigMapKeyRef == nil {
		return refused("a cluster takes the anonymising script from a ConfigMap (anonymize.configMapKeyRef), not a file")
	}
	b, err := r.baseline(ctx, env, pb)
	if err != nil {
		return err
	}
	opts := metav1.CreateOptions{FieldManager: r.fieldManager}
	exists := func(err error, what string) error {
		if apierrors.IsAlreadyExists(err) {
			return nil // made meanwhile: the next look judges it
		}
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			return refused("create %s: %v", what, err)
		}
		return err
	}
	// The Service first: the Secret holds its cluster IP.
	if svc.Name == "" {
		made, err := r.kube.CoreV1().Services(ns).Create(ctx, branchService(env, d, b, name, hash), opts)
		if err := exists(err, "the branch's Service"); err != nil {
			return err
		}
		if err == nil {
			svc = made
		}
	}
	if sec.Name == "" {
		host := svc.Spec.ClusterIP
		if host == "" || host == corev1.ClusterIPNone {
			return errors.New("the branch's Service has no cluster IP yet")
		}
		_, err := r.kube.CoreV1().Secrets(ns).Create(ctx, branchSecret(env, d, b, name, host, data.NewPassword(), hash), opts)
		if err := exists(err, "the branch's Secret"); err != nil {
			return err
		}
	}
	if sts.Name == "" {
		_, err := r.kube.AppsV1().StatefulSets(ns).Create(ctx, branchStatefulSet(env, d, b, name, hash), opts)
		if err := exists(err, "the branch's StatefulSet"); err != nil {
			return err
		}
	}
	if job.Name == "" {
		plan, err := data.BranchPlan(pb, data.PlanOptions{Database: b.Database, Jobs: r.Jobs, Anonymize: pb.Anonymize != nil})
		if err != nil {
			return refused("%v", err)
		}
		_, err = r.kube.BatchV1().Jobs(ns).Create(ctx, restoreJob(env, d, b, plan, name, hash), opts)
		if err := exists(err, "the restore Job"); err != nil {
			return err
		}
	}
	r.log.Info("branch made", "environment", ns+"/"+env.Name, "data", d.Name, "branch", name)
	return nil
}

// baseline reads what a branch copies: the workload's pod template, the
// Service's port, and of the credentials Secret the user, the database and
// the keys the template reads (the password's value stays there).
func (r *Runner) baseline(ctx context.Context, env *v1alpha1.Environment, pb *v1alpha1.PostgresBranch) (*baseline, error) {
	ns := env.Namespace
	b := &baseline{}
	switch pb.Workload.Kind {
	case v1alpha1.WorkloadStatefulSet:
		s, err := r.kube.AppsV1().StatefulSets(ns).Get(ctx, pb.Workload.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, refused("the baseline's database StatefulSet %s/%s is not there", ns, pb.Workload.Name)
		} else if err != nil {
			return nil, err
		}
		b.Template, b.Claims = s.Spec.Template, s.Spec.VolumeClaimTemplates
	default:
		dep, err := r.kube.AppsV1().Deployments(ns).Get(ctx, pb.Workload.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, refused("the baseline's database Deployment %s/%s is not there", ns, pb.Workload.Name)
		} else if err != nil {
			return nil, err
		}
		b.Template = dep.Spec.Template
	}
	i, err := dbContainer(&b.Template, pb.Container)
	if err != nil {
		return nil, refused("%s %s: %v", pb.Workload.Kind, pb.Workload.Name, err)
	}
	b.Container = i
	b.Service = pb.Service
	if b.Service == "" {
		b.Service = pb.Workload.Name
	}
	b.Port = pb.Port
	if b.Port == 0 {
		b.Port = 5432
	}
	svc, err := r.kube.CoreV1().Services(ns).Get(ctx, b.Service, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, refused("the baseline database's Service %s/%s is not there", ns, b.Service)
	} else if err != nil {
		return nil, err
	}
	b.Host = svc.Spec.ClusterIP
	if b.Host == "" || b.Host == corev1.ClusterIPNone {
		b.Host = b.Service // a headless Service: its name, through the cluster's DNS
	}
	found := false
	for _, p := range svc.Spec.Ports {
		if p.Port == b.Port {
			b.TargetPort, found = p.TargetPort, true
			if b.TargetPort.Type == intstr.Int && b.TargetPort.IntVal == 0 {
				b.TargetPort = intstr.FromInt32(p.Port)
			}
		}
	}
	if !found {
		return nil, refused("Service %s/%s has no port %d", ns, b.Service, b.Port)
	}
	creds, err := r.kube.CoreV1().Secrets(ns).Get(ctx, pb.Credentials.Secret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, refused("the baseline's credentials Secret %s/%s is not there", ns, pb.Credentials.Secret)
	} else if err != nil {
		return nil, err
	}
	user, ok := creds.Data[userKey(pb)]
	if !ok {
		return nil, refused("Secret %s/%s has no key %s (the user)", ns, pb.Credentials.Secret, userKey(pb))
	}
	if _, ok := creds.Data[passwordKey(pb)]; !ok {
		return nil, refused("Secret %s/%s has no key %s (the password)", ns, pb.Credentials.Secret, passwordKey(pb))
	}
	b.User = string(user)
	b.Database = pb.Database
	if b.Database == "" && pb.Credentials.DatabaseKey != "" {
		b.Database = string(creds.Data[pb.Credentials.DatabaseKey])
	}
	if b.Database == "" {
		b.Database = b.User
	}
	if err := data.CheckIdent("database", b.Database); err != nil {
		return nil, refused("%v", err)
	}
	keys, all := usedKeys(&b.Template, pb.Credentials.Secret)
	b.Keys = map[string][]byte{}
	for k, v := range creds.Data {
		if (all || slices.Contains(keys, k)) && k != passwordKey(pb) {
			b.Keys[k] = v
		}
	}
	return b, nil
}

// pods lists the pods with these labels, from the cache.
func (r *Runner) pods(ns string, sel map[string]string) ([]corev1.Pod, error) {
	l, err := r.podLister.Pods(ns).List(labels.SelectorFromSet(sel))
	if err != nil {
		return nil, err
	}
	out := make([]corev1.Pod, len(l))
	for i, p := range l {
		out[i] = *p
	}
	return out, nil
}

// failingReasons are container waiting reasons that waiting does not cure.
var failingReasons = map[string]bool{
	"ImagePullBackOff": true, "ErrImagePull": true, "InvalidImageName": true, "CrashLoopBackOff": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
}

// podsMessage says what keeps pods from running.
func podsMessage(pods []corev1.Pod) string {
	var out []string
	for _, p := range pods {
		for _, cs := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
			if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "PodInitializing" && w.Reason != "ContainerCreating" {
				m := fmt.Sprintf("pod %s container %s: %s", p.Name, cs.Name, w.Reason)
				if w.Message != "" {
					m += ": " + firstLine(w.Message)
				}
				out = append(out, m)
			}
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// podsFailing reports what keeps pods from running for good.
func podsFailing(pods []corev1.Pod) (string, bool) {
	var out []string
	for _, p := range pods {
		for _, cs := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
			if w := cs.State.Waiting; w != nil && failingReasons[w.Reason] {
				m := fmt.Sprintf("pod %s container %s: %s", p.Name, cs.Name, w.Reason)
				if w.Message != "" {
					m += ": " + firstLine(w.Message)
				}
				out = append(out, m)
			}
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; "), len(out) > 0
}

func jobCondition(j *batchv1.Job, typ batchv1.JobConditionType) *batchv1.JobCondition {
	for i := range j.Status.Conditions {
		if c := &j.Status.Conditions[i]; c.Type == typ && c.Status == corev1.ConditionTrue {
			return c
		}
	}
	return nil
}

// restorePhase is where a restore Job's pod is: the phase of its first
// container that has not finished, or of its last once all have (the Job
// is about to say it is complete).
func restorePhase(pods []corev1.Pod) v1alpha1.DataPhase {
	for _, p := range pods {
		all := slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses)
		for _, cs := range all {
			if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
				return phaseOf(cs.Name)
			}
		}
		if len(all) > 0 {
			return phaseOf(all[len(all)-1].Name)
		}
	}
	return v1alpha1.DataSnapshotting
}

// failedContainer is the container of a Job's pods that failed: its name,
// exit code, and the end of what it said (its termination message, which
// is the end of its log for a failure).
func failedContainer(pods []corev1.Pod) (string, int32, string) {
	for _, p := range pods {
		for _, cs := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
			if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
				return cs.Name, t.ExitCode, lastLines(t.Message, 3)
			}
		}
	}
	return "", 0, ""
}

// report reads a finished restore Job's report from its last container's
// termination message.
func report(pods []corev1.Pod) (data.Report, error) {
	for _, p := range pods {
		n := len(p.Status.ContainerStatuses)
		if n == 0 {
			continue
		}
		if t := p.Status.ContainerStatuses[n-1].State.Terminated; t != nil && t.ExitCode == 0 {
			return data.ParseReport(t.Message)
		}
	}
	return data.Report{}, errors.New("no report: the Job's pod is gone")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// lastLines is the last n non-empty lines of s, on one line.
func lastLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := strings.Join(lines, " / ")
	if len(out) > 600 {
		out = "..." + out[len(out)-600:]
	}
	return out
}

func sizeOf(b int64) string {
	switch {
	case b >= 10<<20:
		return strconv.FormatInt(b>>20, 10) + " MiB"
	case b >= 10<<10:
		return strconv.FormatInt(b>>10, 10) + " KiB"
	}
	return strconv.FormatInt(b, 10) + " bytes"
}
