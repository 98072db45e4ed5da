package clusterdata

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
)

const baselinePassword = "baseline-Secret-4711"

// shop makes a baseline database on a real API server: a StatefulSet whose
// pod template reads its credentials from Secret pg-creds and keeps its
// data on a claim, its Service on 5432, and the Secret.
func shop(t *testing.T, ctx context.Context, kube kubernetes.Interface) {
	t.Helper()
	kubetest.Namespace(t, kube, "shop")
	ref := func(key string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "pg-creds"}, Key: key}}
	}
	one := int32(1)
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "postgres", Namespace: "shop"},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &one, ServiceName: "postgres",
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "postgres"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "postgres"}},
				Spec: corev1.PodSpec{
					SecurityContext: &corev1.PodSecurityContext{FSGroup: new(int64(999))},
					Containers: []corev1.Container{{
						Name: "db", Image: "reg/postgres:15",
						Env: []corev1.EnvVar{
							{Name: "POSTGRES_USER", ValueFrom: ref("username")},
							{Name: "POSTGRES_PASSWORD", ValueFrom: ref("password")},
							{Name: "PGDATA", Value: "/var/lib/postgresql/data/pgdata"},
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/var/lib/postgresql/data"}},
					}},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "data"},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resourceQty("5Gi")}},
				},
			}},
		},
	}
	if _, err := kube.AppsV1().StatefulSets("shop").Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "postgres", Namespace: "shop"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "postgres"},
			Ports: []corev1.ServicePort{{Port: 5432, TargetPort: intstr.FromInt32(5432)}}},
	}
	if _, err := kube.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "pg-creds", Namespace: "shop"},
		Data:       map[string][]byte{"username": []byte("app"), "password": []byte(baselinePassword), "database": []byte("orders"), "unused": []byte("x")},
	}
	if _, err := kube.CoreV1().Secrets("shop").Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func testEnv(name string, data ...v1alpha1.DataSource) *v1alpha1.Environment {
	return &v1alpha1.Environment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), Generation: 1},
		// As the reconciler shows it once it wrote a status: entries
		// removed from the spec are not looked for.
		Status: v1alpha1.EnvironmentStatus{ObservedGeneration: 1},
		Spec: v1alpha1.EnvironmentSpec{
			Forks: []v1alpha1.Fork{{Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "api"}},
				{Workload: v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadDeployment, Name: "worker"}}},
			Data: data,
		},
	}
}

func branchEntry() v1alpha1.DataSource {
	return v1alpha1.DataSource{Name: "orders-db", Kind: v1alpha1.DataPostgresBranch, PostgresBranch: &v1alpha1.PostgresBranch{
		Workload:    v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadStatefulSet, Name: "postgres"},
		Credentials: v1alpha1.PostgresCredentials{Secret: "pg-creds", DatabaseKey: "database"},
		Anonymize: &v1alpha1.SQLScript{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "anon"}, Key: "orders.sql"}},
		Forks: []string{"api"},
	}}
}

// TestRunner runs branches and seed jobs against a real API server (which
// runs no pods: the test writes the status the kubelet and the Job
// controller would): what is made and how (the baseline only read, no
// password in any spec), the phases as the restore Job's containers go,
// the report, a failed Job's message (with the command to read its logs,
// without the password it printed), and cleanup.
func TestRunner(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kube := kubetest.Clientset(t, env.Kubeconfig)
	shop(t, ctx, kube)
	r := New(kube, "detour-test", nil)
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Run("branch and seed", func(t *testing.T) { testBranch(t, ctx, kube, r) })
	t.Run("failures", func(t *testing.T) { testFailures(t, ctx, kube, r) })
}

func testBranch(t *testing.T, ctx context.Context, kube kubernetes.Interface, r *Runner) {
	e := testEnv("pr-42", branchEntry(), v1alpha1.DataSource{Name: "seed", Kind: v1alpha1.DataJobKind, Job: &v1alpha1.DataJob{
		Image: "reg/seed:1", Command: []string{"/seed"}, Env: []corev1.EnvVar{{Name: "ROWS", Value: "10"}}}})
	sync := func(e *v1alpha1.Environment, forksReady bool) envmgr.DataResult {
		t.Helper()
		res, err := r.Sync(ctx, e, envmgr.DataStage{ForksReady: forksReady})
		if err != nil {
			t.Fatalf("Sync: %v", err)
		}
		return res
	}
	// until syncs until cond holds: the runner reads informer caches,
	// which follow the API server's changes a moment later.
	until := func(e *v1alpha1.Environment, forksReady bool, cond func(envmgr.DataResult) error) envmgr.DataResult {
		t.Helper()
		var res envmgr.DataResult
		testutil.Eventually(t, 10*time.Second, func() error {
			res = sync(e, forksReady)
			return cond(res)
		})
		return res
	}
	res := sync(e, false)
	if o := res.Observations[0]; o.Status.Phase != v1alpha1.DataStarting || res.BranchesReady {
		t.Fatalf("first look: %+v", o)
	}
	if o := res.Observations[1]; o.Status.Phase != v1alpha1.DataPending {
		t.Errorf("the seed before the branch: %+v", o)
	}
	// Forks get the branch's URL from its Secret, only the forks named.
	if got := res.ForkEnv["api"]; len(got) != 1 || got[0].Name != "DATABASE_URL" || got[0].ValueFrom.SecretKeyRef.Name != "orders-db-pr-42" || got[0].ValueFrom.SecretKeyRef.Key != "url" {
		t.Errorf("api's env: %+v", got)
	}
	if got := res.ForkEnv["worker"]; len(got) != 0 {
		t.Errorf("worker's env: %+v", got)
	}

	sec, err := kube.CoreV1().Secrets("shop").Get(ctx, "orders-db-pr-42", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pw := string(sec.Data["password"])
	svc, err := kube.CoreV1().Services("shop").Get(ctx, "orders-db-pr-42", metav1.GetOptions{})
	if err != nil || svc.Spec.Selector[LabelRole] != RoleBranch || svc.Spec.Ports[0].Port != 5432 {
		t.Errorf("the branch's Service: %+v %v", svc.Spec, err)
	}
	branchIP := svc.Spec.ClusterIP // no cluster DNS needed
	if len(pw) < 20 || pw == baselinePassword || string(sec.Data["username"]) != "app" || sec.Data["unused"] != nil ||
		string(sec.Data["url"]) != "postgres://app:"+pw+"@"+branchIP+":5432/orders" || string(sec.Data["host"]) != branchIP {
		t.Errorf("the branch's Secret: %v", keysOf(sec.Data))
	}
	if c := metav1.GetControllerOf(sec); c == nil || c.UID != e.UID || c.Kind != "Environment" {
		t.Errorf("the Secret's owner: %+v", sec.OwnerReferences)
	}
	sts, err := kube.AppsV1().StatefulSets("shop").Get(ctx, "orders-db-pr-42", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tpl := sts.Spec.Template
	switch {
	case tpl.Labels["app"] != "" || tpl.Labels[LabelRole] != RoleBranch:
		t.Errorf("the branch's pods are labelled %v: a baseline Service would select them", tpl.Labels)
	case tpl.Spec.Containers[0].Env[1].ValueFrom.SecretKeyRef.Name != "orders-db-pr-42":
		t.Errorf("the branch reads its password from %+v", tpl.Spec.Containers[0].Env[1].ValueFrom)
	case len(sts.Spec.VolumeClaimTemplates) != 0 || len(tpl.Spec.Volumes) != 1 || tpl.Spec.Volumes[0].EmptyDir == nil || tpl.Spec.Volumes[0].Name != "data":
		t.Errorf("the branch's storage: claims %v, volumes %+v", sts.Spec.VolumeClaimTemplates, tpl.Spec.Volumes)
	case *sts.Spec.Replicas != 1 || sts.Spec.PersistentVolumeClaimRetentionPolicy.WhenDeleted != appsv1.DeletePersistentVolumeClaimRetentionPolicyType:
		t.Errorf("the branch's StatefulSet: %+v", sts.Spec)
	}
	base, _ := kube.AppsV1().StatefulSets("shop").Get(ctx, "postgres", metav1.GetOptions{})
	if base.Generation != 1 || base.Spec.Template.Labels["app"] != "postgres" {
		t.Errorf("the baseline changed: %+v", base.ObjectMeta)
	}
	job, err := kube.BatchV1().Jobs("shop").Get(ctx, "orders-db-pr-42-restore", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := job.Spec.Template.Spec
	if len(pod.InitContainers) != 2 || pod.InitContainers[0].Name != "snapshot" || pod.InitContainers[1].Name != "restore" ||
		pod.Containers[0].Name != "anonymise" || pod.Containers[0].Image != "reg/postgres:15" || *job.Spec.BackoffLimit != 0 ||
		pod.SecurityContext == nil || *pod.SecurityContext.FSGroup != 999 {
		t.Errorf("the restore Job: %+v", pod)
	}
	if !strings.Contains(pod.InitContainers[0].Command[2], "pg_dump") || !strings.Contains(pod.Containers[0].Command[2], "anonymize.sql") {
		t.Errorf("the scripts:\n%s\n%s", pod.InitContainers[0].Command[2], pod.Containers[0].Command[2])
	}
	for _, o := range []any{job, sts, svc} {
		b, _ := json.Marshal(o)
		if strings.Contains(string(b), baselinePassword) || strings.Contains(string(b), pw) {
			t.Errorf("a password in a %T's spec", o)
		}
	}

	// The Job's pod goes through its containers; the status follows.
	jobPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "orders-db-pr-42-restore-x", Namespace: "shop", Labels: job.Spec.Template.Labels},
		Spec:       pod,
	}
	if jobPod, err = kube.CoreV1().Pods("shop").Create(ctx, jobPod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	done := func(msg string) corev1.ContainerState {
		return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", Message: msg}}
	}
	for _, tc := range []struct {
		states []corev1.ContainerState
		want   v1alpha1.DataPhase
	}{
		{[]corev1.ContainerState{running, {}, {}}, v1alpha1.DataSnapshotting},
		{[]corev1.ContainerState{done(""), running, {}}, v1alpha1.DataRestoring},
		{[]corev1.ContainerState{done(""), done(""), running}, v1alpha1.DataAnonymising},
		// All done, the Job not complete yet: still the last phase.
		{[]corev1.ContainerState{done(""), done(""), done("27|8675309\n")}, v1alpha1.DataAnonymising},
	} {
		setStates(t, ctx, kube, jobPod, tc.states)
		until(e, false, func(res envmgr.DataResult) error {
			if o := res.Observations[0]; o.Status.Phase != tc.want || o.Ready {
				return fmt.Errorf("states %v: %+v, want %s", tc.states, o, tc.want)
			}
			return nil
		})
	}
	setStates(t, ctx, kube, jobPod, []corev1.ContainerState{done(""), done(""), done("27|8675309\n")})
	now := metav1.Now()
	job.Status = batchv1.JobStatus{
		StartTime: &now, CompletionTime: &now, Succeeded: 1,
		Conditions: []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	if _, err := kube.BatchV1().Jobs("shop").UpdateStatus(ctx, job, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	until(e, false, func(res envmgr.DataResult) error {
		if o := res.Observations[0]; o.Ready || !strings.Contains(o.Message, "database is not ready") {
			return fmt.Errorf("filled, the branch's pod not ready: %+v", o)
		}
		return nil
	})
	sts.Status = appsv1.StatefulSetStatus{Replicas: 1, ReadyReplicas: 1, ObservedGeneration: sts.Generation}
	if _, err := kube.AppsV1().StatefulSets("shop").UpdateStatus(ctx, sts, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	res = until(e, false, func(res envmgr.DataResult) error {
		if o := res.Observations[0]; !o.Ready || o.Status.Rows != 27 || o.Status.Bytes != 8675309 || o.Status.Endpoint != branchIP+":5432" || !res.BranchesReady {
			return fmt.Errorf("the branch filled: %+v", o)
		}
		return nil
	})
	if job, _ := kube.BatchV1().Jobs("shop").Get(ctx, "orders-db-pr-42-restore", metav1.GetOptions{}); job.Annotations[RowsAnnotation] != "27" {
		t.Errorf("the report is not kept on the Job: %v", job.Annotations)
	}
	if o := res.Observations[1]; o.Status.Phase != v1alpha1.DataPending {
		t.Errorf("the seed before the forks: %+v", o)
	}

	// The seed job, once the forks are up: the environment's key and the
	// branch's connection, from its Secret.
	if o := sync(e, true).Observations[1]; o.Status.Phase != v1alpha1.DataSeeding {
		t.Errorf("the seed: %+v", o)
	}
	seed, err := kube.BatchV1().Jobs("shop").Get(ctx, "seed-pr-42", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]corev1.EnvVar{}
	for _, v := range seed.Spec.Template.Spec.Containers[0].Env {
		vars[v.Name] = v
	}
	if vars["DETOUR_SESSION"].Value != "pr-42" || vars["ROWS"].Value != "10" || vars["DETOUR_DATA_ORDERS_DB_URL"].ValueFrom.SecretKeyRef.Name != "orders-db-pr-42" ||
		vars["DATABASE_URL"].ValueFrom == nil {
		t.Errorf("the seed's env: %+v", vars)
	}
	// It fails, printing the password: Failed, with how to read its logs,
	// and no password.
	seedPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "seed-pr-42-x", Namespace: "shop", Labels: seed.Spec.Template.Labels},
		Spec:       seed.Spec.Template.Spec,
	}
	if seedPod, err = kube.CoreV1().Pods("shop").Create(ctx, seedPod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	seedPod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "seed", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: 3, Reason: "Error", Message: "connecting to postgres://app:" + pw + "@" + branchIP + ":5432/orders\nseed: table missing"}}}}
	if _, err := kube.CoreV1().Pods("shop").UpdateStatus(ctx, seedPod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	seed.Status = batchv1.JobStatus{StartTime: &now, Failed: 1, Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit", LastTransitionTime: now},
		{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit", LastTransitionTime: now},
	}}
	if _, err := kube.BatchV1().Jobs("shop").UpdateStatus(ctx, seed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	o := until(e, true, func(res envmgr.DataResult) error {
		if o := res.Observations[1]; !o.Failed {
			return fmt.Errorf("the seed: %+v", o)
		}
		return nil
	}).Observations[1]
	if !strings.Contains(o.Message, "BackoffLimitExceeded") || !strings.Contains(o.Message, "exit code 3") ||
		!strings.Contains(o.Message, "seed: table missing") || !strings.Contains(o.Message, "kubectl logs -n shop job/seed-pr-42") {
		t.Errorf("the failed seed: %+v", o)
	}
	if strings.Contains(o.Message, pw) {
		t.Errorf("the failed seed's message shows the branch's password: %s", o.Message)
	}

	// Cleanup: nothing of the environment's data is left.
	if err := r.Cleanup(ctx, e); err != nil {
		t.Fatal(err)
	}
	sel := metav1.ListOptions{LabelSelector: labels.Set{LabelDataOf: "pr-42"}.String()}
	if l, _ := kube.AppsV1().StatefulSets("shop").List(ctx, sel); len(l.Items) != 0 {
		t.Errorf("StatefulSets left: %d", len(l.Items))
	}
	if l, _ := kube.CoreV1().Secrets("shop").List(ctx, sel); len(l.Items) != 0 {
		t.Errorf("Secrets left: %d", len(l.Items))
	}
	if l, _ := kube.CoreV1().Services("shop").List(ctx, sel); len(l.Items) != 0 {
		t.Errorf("Services left: %d", len(l.Items))
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if l, _ := kube.BatchV1().Jobs("shop").List(ctx, sel); len(l.Items) != 0 {
			return fmt.Errorf("%d Jobs left", len(l.Items))
		}
		return nil
	})
	if _, err := kube.CoreV1().Secrets("shop").Get(ctx, "pg-creds", metav1.GetOptions{}); err != nil {
		t.Errorf("the baseline's Secret: %v", err)
	}
}

// testFailures: a restore that fails says where and how to read its logs,
// without the password it printed; what cannot be made fails at once.
func testFailures(t *testing.T, ctx context.Context, kube kubernetes.Interface, r *Runner) {
	e := testEnv("pr-7", branchEntry())
	if _, err := r.Sync(ctx, e, envmgr.DataStage{}); err != nil {
		t.Fatal(err)
	}
	job, err := kube.BatchV1().Jobs("shop").Get(ctx, "orders-db-pr-7-restore", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "restore-x", Namespace: "shop", Labels: job.Spec.Template.Labels},
		Spec:       job.Spec.Template.Spec,
	}
	if pod, err = kube.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setStates(t, ctx, kube, pod, []corev1.ContainerState{
		{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}},
		{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: "detour: rows\npg_restore: error: password " + baselinePassword + " in a query\npg_restore: error: COPY failed for table \"orders\""}},
		{},
	})
	now := metav1.Now()
	job.Status = batchv1.JobStatus{StartTime: &now, Failed: 1, Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: now},
		{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: now},
	}}
	if _, err := kube.BatchV1().Jobs("shop").UpdateStatus(ctx, job, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var o envmgr.DataObservation
	testutil.Eventually(t, 10*time.Second, func() error {
		res, err := r.Sync(ctx, e, envmgr.DataStage{})
		if err != nil {
			return err
		}
		if o = res.Observations[0]; !o.Failed {
			return fmt.Errorf("the restore: %+v", o)
		}
		return nil
	})
	if !o.Failed || !strings.Contains(o.Message, "while restoring (container restore, exit code 1)") ||
		!strings.Contains(o.Message, `COPY failed for table "orders"`) || !strings.Contains(o.Message, "kubectl logs -n shop job/orders-db-pr-7-restore -c restore") {
		t.Errorf("a failed restore: %+v", o)
	}
	if strings.Contains(o.Message, baselinePassword) {
		t.Errorf("the message shows the baseline's password: %s", o.Message)
	}

	for _, tc := range []struct {
		name   string
		change func(*v1alpha1.PostgresBranch)
		want   string
	}{
		{"no workload", func(b *v1alpha1.PostgresBranch) { b.Workload.Name = "mysql" }, "StatefulSet shop/mysql is not there"},
		{"no secret", func(b *v1alpha1.PostgresBranch) { b.Credentials.Secret = "nope" }, "Secret shop/nope is not there"},
		{"no such port", func(b *v1alpha1.PostgresBranch) { b.Port = 5433 }, "has no port 5433"},
		{"a script file", func(b *v1alpha1.PostgresBranch) { b.Anonymize = &v1alpha1.SQLScript{File: "/tmp/a.sql"} }, "from a ConfigMap"},
	} {
		d := branchEntry()
		tc.change(d.PostgresBranch)
		res, err := r.Sync(ctx, testEnv("bad", d), envmgr.DataStage{})
		if err != nil || !res.Observations[0].Failed || !strings.Contains(res.Observations[0].Message, tc.want) {
			t.Errorf("%s: %+v %v, want Failed with %q", tc.name, res.Observations, err, tc.want)
		}
	}
}

func setStates(t *testing.T, ctx context.Context, kube kubernetes.Interface, pod *corev1.Pod, states []corev1.ContainerState) {
	t.Helper()
	p, err := kube.CoreV1().Pods("shop").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.InitContainerStatuses, p.Status.ContainerStatuses = nil, nil
	names := append(append([]corev1.Container(nil), p.Spec.InitContainers...), p.Spec.Containers...)
	for i, c := range names {
		cs := corev1.ContainerStatus{Name: c.Name, State: states[i], Image: c.Image}
		if states[i] == (corev1.ContainerState{}) {
			cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}
		}
		if i < len(p.Spec.InitContainers) {
			p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, cs)
		} else {
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, cs)
		}
	}
	if _, err := kube.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func resourceQty(s string) *resource.Quantity { q := resource.MustParse(s); return &q }
