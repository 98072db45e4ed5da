// Package clusterdata makes an environment's data in a Kubernetes cluster
// (docs/architecture.md, "Environment data"). A postgres-branch is a
// StatefulSet that copies the baseline database's pod template (same image
// and settings; its own storage, labels and password), a Service and a
// Secret holding its connection, and a Job that runs the baseline's own
// image to fill it: init container snapshot (pg_dump of the baseline),
// init container restore (pg_restore into the branch), container
// anonymise (the script, ANALYZE, and the report as its termination
// message), following data.BranchPlan. A seed job is a Job. Everything is
// owned by the Environment, so it goes with it even without the
// controller; the controller deletes it too, storage included.
package clusterdata

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/envmgr/data"
)

// Labels on everything an environment's data makes. Not the forks' label
// (detour.dev/environment): the forks' runtime must never take a branch
// for a fork, nor a route select its pods.
const (
	LabelDataOf = "detour.dev/data-of"   // the environment
	LabelData   = "detour.dev/data"      // the data entry
	LabelRole   = "detour.dev/data-role" // branch, restore or seed
	// HashAnnotation is a hash of the entry's spec an object was made
	// for: a changed entry is made again.
	HashAnnotation = "detour.dev/data-hash"
	// Annotations a restore Job gets once done: what the branch holds.
	RowsAnnotation  = "detour.dev/rows"
	BytesAnnotation = "detour.dev/bytes"
)

// The roles, and the containers of a restore Job.
const (
	RoleBranch  = "branch"
	RoleRestore = "restore"
	RoleSeed    = "seed"

	workDir      = "/work"
	anonymizeDir = "/detour/anonymize"
)

// specHash identifies what a data entry asks for, of this environment.
func specHash(env *v1alpha1.Environment, d *v1alpha1.DataSource) string {
	j, _ := json.Marshal(struct {
		UID  string
		Data *v1alpha1.DataSource
	}{string(env.UID), d})
	sum := sha256.Sum256(j)
	return hex.EncodeToString(sum[:12])
}

func labelsOf(env, entry, role string) map[string]string {
	return map[string]string{LabelDataOf: env, LabelData: entry, LabelRole: role}
}

// meta is the metadata of an object an entry makes: owned (controlled) by
// the Environment.
func meta(env *v1alpha1.Environment, entry, role, name, hash string) metav1.ObjectMeta {
	yes := true
	return metav1.ObjectMeta{
		Name: name, Namespace: env.Namespace,
		Labels:      labelsOf(env.Name, entry, role),
		Annotations: map[string]string{HashAnnotation: hash},
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "Environment",
			Name: env.Name, UID: env.UID, Controller: &yes, BlockOwnerDeletion: &yes,
		}},
	}
}

// baseline is what a branch copies and reads.
type baseline struct {
	Template corev1.PodTemplateSpec
	// Claims are a StatefulSet's volume claim templates.
	Claims []corev1.PersistentVolumeClaim
	// Container is the database container's index in Template.
	Container int
	// Service and Port reach the baseline's database; Host is the
	// Service's cluster IP (or its name when it has none), so that no
	// cluster DNS is needed; TargetPort is what the Service sends to.
	Service    string
	Host       string
	Port       int32
	TargetPort intstr.IntOrString
	// User, Database: of the credentials (the database after the spec's
	// choice); Keys: the values of the credentials Secret's keys the
	// template uses.
	User, Database string
	Keys           map[string][]byte
}

// dbContainer picks the database container: the named one, else the only
// or first container.
func dbContainer(t *corev1.PodTemplateSpec, name string) (int, error) {
	if len(t.Spec.Containers) == 0 {
		return 0, fmt.Errorf("the workload has no containers")
	}
	if name == "" {
		return 0, nil
	}
	for i, c := range t.Spec.Containers {
		if c.Name == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("the workload has no container %q", name)
}

// usedKeys are the keys of the Secret secret that the template reads: nil
// with all=true when it takes the whole Secret (envFrom, a volume).
func usedKeys(t *corev1.PodTemplateSpec, secret string) (keys []string, all bool) {
	for _, c := range allContainers(&t.Spec) {
		for _, e := range c.Env {
			if r := e.ValueFrom; r != nil && r.SecretKeyRef != nil && r.SecretKeyRef.Name == secret && !slices.Contains(keys, r.SecretKeyRef.Key) {
				keys = append(keys, r.SecretKeyRef.Key)
			}
		}
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil && e.SecretRef.Name == secret {
				all = true
			}
		}
	}
	for _, v := range t.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			all = true
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret != nil && s.Secret.Name == secret {
					all = true
				}
			}
		}
	}
	return keys, all
}

func allContainers(s *corev1.PodSpec) []*corev1.Container {
	var out []*corev1.Container
	for i := range s.InitContainers {
		out = append(out, &s.InitContainers[i])
	}
	for i := range s.Containers {
		out = append(out, &s.Containers[i])
	}
	return out
}

// branchSecret is the branch's Secret: the keys of the baseline's
// credentials that the database's pod template reads (so the branch
// starts as the baseline does), its own password in place of the
// baseline's, and its connection under data.Parts, at host (its Service's
// cluster IP).
func branchSecret(env *v1alpha1.Environment, d *v1alpha1.DataSource, b *baseline, name, host, password, hash string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: meta(env, d.Name, RoleBranch, name, hash), Type: corev1.SecretTypeOpaque, Data: map[string][]byte{}}
	for k, v := range b.Keys {
		s.Data[k] = slices.Clone(v)
	}
	s.Data[passwordKey(d.PostgresBranch)] = []byte(password)
	conn := data.Connection{Host: host, Port: b.Port, User: b.User, Password: password, Database: b.Database}
	for k, v := range conn.SecretData() {
		s.Data[k] = v
	}
	return s
}

func passwordKey(b *v1alpha1.PostgresBranch) string {
	if b.Credentials.PasswordKey != "" {
		return b.Credentials.PasswordKey
	}
	return "password"
}

func userKey(b *v1alpha1.PostgresBranch) string {
	if b.Credentials.UserKey != "" {
		return b.Credentials.UserKey
	}
	return "username"
}

// branchService reaches the branch's database at the baseline's port.
func branchService(env *v1alpha1.Environment, d *v1alpha1.DataSource, b *baseline, name, hash string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: meta(env, d.Name, RoleBranch, name, hash),
		Spec: corev1.ServiceSpec{
			Selector: labelsOf(env.Name, d.Name, RoleBranch),
			Ports:    []corev1.ServicePort{{Name: "postgres", Port: b.Port, TargetPort: b.TargetPort, Protocol: corev1.ProtocolTCP}},
		},
	}
}

// branchStatefulSet copies the baseline's pod template: its labels are
// the branch's own (no baseline Service selects it), the credentials
// Secret is the branch's wherever the template reads it, and the data
// volumes (a StatefulSet's claims, any claim or host path of the
// template) are the branch's storage: emptyDir, or claims of the spec's
// class, deleted with the branch.
func branchStatefulSet(env *v1alpha1.Environment, d *v1alpha1.DataSource, b *baseline, name, hash string) *appsv1.StatefulSet {
	pb := d.PostgresBranch
	t := b.Template.DeepCopy()
	t.Labels = labelsOf(env.Name, d.Name, RoleBranch)
	creds := pb.Credentials.Secret
	for _, c := range allContainers(&t.Spec) {
		for i := range c.Env {
			if r := c.Env[i].ValueFrom; r != nil && r.SecretKeyRef != nil && r.SecretKeyRef.Name == creds {
				r.SecretKeyRef.Name = name
			}
		}
		for i := range c.EnvFrom {
			if r := c.EnvFrom[i].SecretRef; r != nil && r.Name == creds {
				r.Name = name
			}
		}
	}
	dataVols := map[string]bool{}
	for _, c := range b.Claims {
		dataVols[c.Name] = true
	}
	var vols []corev1.Volume
	for _, v := range t.Spec.Volumes {
		switch {
		case v.PersistentVolumeClaim != nil || v.HostPath != nil:
			dataVols[v.Name] = true
			continue // replaced below
		case v.Secret != nil && v.Secret.SecretName == creds:
			v.Secret.SecretName = name
		case v.Projected != nil:
			for i := range v.Projected.Sources {
				if s := v.Projected.Sources[i].Secret; s != nil && s.Name == creds {
					s.Name = name
				}
			}
		}
		vols = append(vols, v)
	}
	names := make([]string, 0, len(dataVols))
	for n := range dataVols {
		names = append(names, n)
	}
	slices.Sort(names)
	var claims []corev1.PersistentVolumeClaim
	if st := pb.Storage; st != nil && st.Type == v1alpha1.StoragePVC {
		size := resource.MustParse("1Gi")
		if st.Size != nil {
			size = *st.Size
		}
		for _, n := range names {
			claims = append(claims, corev1.PersistentVolumeClaim{
				ObjectMeta: metav1.ObjectMeta{Name: n, Labels: labelsOf(env.Name, d.Name, RoleBranch)},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: st.StorageClassName,
					Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
				},
			})
		}
	} else {
		for _, n := range names {
			vols = append(vols, corev1.Volume{Name: n, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		}
	}
	t.Spec.Volumes = vols
	one := int32(1)
	return &appsv1.StatefulSet{
		ObjectMeta: meta(env, d.Name, RoleBranch, name, hash),
		Spec: appsv1.StatefulSetSpec{
			Replicas:             &one,
			Selector:             &metav1.LabelSelector{MatchLabels: labelsOf(env.Name, d.Name, RoleBranch)},
			ServiceName:          name,
			Template:             *t,
			VolumeClaimTemplates: claims,
			PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: appsv1.DeletePersistentVolumeClaimRetentionPolicyType,
				WhenScaled:  appsv1.DeletePersistentVolumeClaimRetentionPolicyType,
			},
		},
	}
}

// restoreTimeout bounds a restore Job.
const restoreTimeout = int64(3600)

// restoreJob fills the branch, in the baseline's image (which has the
// PostgreSQL programs) and with its security settings: one container per
// phase of the plan, the last writing the report as its termination
// message. No password is in the Job: each side's comes from its Secret.
func restoreJob(env *v1alpha1.Environment, d *v1alpha1.DataSource, b *baseline, plan data.Plan, name, hash string) *batchv1.Job {
	pb := d.PostgresBranch
	db := b.Template.Spec.Containers[b.Container]
	secretEnv := func(secret, key string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key}}
	}
	literal := func(kv []string) []corev1.EnvVar {
		var out []corev1.EnvVar
		for _, s := range kv {
			k, v, _ := strings.Cut(s, "=")
			out = append(out, corev1.EnvVar{Name: k, Value: v})
		}
		return out
	}
	branch := data.BranchName(d.Name, env.Name)
	sideEnv := map[data.Side][]corev1.EnvVar{
		data.Baseline: append([]corev1.EnvVar{
			{Name: "PGHOST", Value: b.Host},
			{Name: "PGPORT", Value: strconv.Itoa(int(b.Port))},
			{Name: "PGUSER", ValueFrom: secretEnv(pb.Credentials.Secret, userKey(pb))},
			{Name: "PGPASSWORD", ValueFrom: secretEnv(pb.Credentials.Secret, passwordKey(pb))},
			{Name: "PGDATABASE", Value: b.Database},
		}, literal(data.SideEnv(data.Baseline))...),
		data.Branch: append([]corev1.EnvVar{
			{Name: "PGHOST", ValueFrom: secretEnv(branch, string(v1alpha1.ConnectionHost))},
			{Name: "PGPORT", ValueFrom: secretEnv(branch, string(v1alpha1.ConnectionPort))},
			{Name: "PGUSER", ValueFrom: secretEnv(branch, string(v1alpha1.ConnectionUser))},
			{Name: "PGPASSWORD", ValueFrom: secretEnv(branch, string(v1alpha1.ConnectionPassword))},
			{Name: "PGDATABASE", ValueFrom: secretEnv(branch, string(v1alpha1.ConnectionDatabase))},
		}, literal(data.SideEnv(data.Branch))...),
	}
	mounts := []corev1.VolumeMount{{Name: "work", MountPath: workDir}}
	vols := []corev1.Volume{{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	if a := pb.Anonymize; a != nil && a.ConfigMapKeyRef != nil {
		vols = append(vols, corev1.Volume{Name: "anonymize", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: a.ConfigMapKeyRef.LocalObjectReference,
			Items:                []corev1.KeyToPath{{Key: a.ConfigMapKeyRef.Key, Path: data.AnonymizeFile}},
		}}})
		mounts = append(mounts, corev1.VolumeMount{Name: "anonymize", MountPath: anonymizeDir, ReadOnly: true})
	}
	phases := plan.Phases()
	var containers []corev1.Container
	for i, ph := range phases {
		steps := plan.StepsOf(ph)
		report, dir := "", workDir
		if i == len(phases)-1 {
			report = "/dev/termination-log"
		}
		if ph == v1alpha1.DataAnonymising {
			dir = anonymizeDir // where the ConfigMap puts the script
		}
		script := data.Script(steps, dir, report)
		containers = append(containers, corev1.Container{
			Name:                     containerName(ph),
			Image:                    db.Image,
			ImagePullPolicy:          db.ImagePullPolicy,
			Command:                  []string{"sh", "-c", script},
			Env:                      sideEnv[steps[0].Side],
			VolumeMounts:             mounts,
			SecurityContext:          db.SecurityContext.DeepCopy(),
			TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		})
	}
	zero, deadline, no := int32(0), restoreTimeout, false
	pod := corev1.PodSpec{
		RestartPolicy:                corev1.RestartPolicyNever,
		InitContainers:               containers[:len(containers)-1],
		Containers:                   containers[len(containers)-1:],
		Volumes:                      vols,
		SecurityContext:              b.Template.Spec.SecurityContext.DeepCopy(),
		ImagePullSecrets:             slices.Clone(b.Template.Spec.ImagePullSecrets),
		AutomountServiceAccountToken: &no,
	}
	return &batchv1.Job{
		ObjectMeta: meta(env, d.Name, RoleRestore, data.JobName(d.Name, env.Name), hash),
		Spec: batchv1.JobSpec{
			BackoffLimit:          &zero, // a restore is not run twice into one branch
			ActiveDeadlineSeconds: &deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labelsOf(env.Name, d.Name, RoleRestore)},
				Spec:       pod,
			},
		},
	}
}

// containerName is the restore Job's container for a phase.
func containerName(ph v1alpha1.DataPhase) string {
	switch ph {
	case v1alpha1.DataSnapshotting:
		return "snapshot"
	case v1alpha1.DataAnonymising:
		return "anonymise"
	}
	return "restore"
}

// phaseOf is the phase a restore Job's container does.
func phaseOf(container string) v1alpha1.DataPhase {
	switch container {
	case "snapshot":
		return v1alpha1.DataSnapshotting
	case "anonymise":
		return v1alpha1.DataAnonymising
	}
	return v1alpha1.DataRestoring
}

const defaultSeedTimeout = int64(600)

// seedJob runs a seed job with the environment's name and key and each
// branch's connection (from its Secret) in its environment, once.
func seedJob(env *v1alpha1.Environment, d *v1alpha1.DataSource, name, hash string) *batchv1.Job {
	j := d.Job
	vars := []corev1.EnvVar{{Name: envmgr.EnvVarEnvironment, Value: env.Name}, {Name: envmgr.EnvVarSession, Value: envmgr.Key(env)}}
	for _, o := range env.Spec.Data {
		if o.PostgresBranch == nil {
			continue
		}
		branch := data.BranchName(o.Name, env.Name)
		vars = append(vars, data.SecretEnv(o.PostgresBranch, branch)...)
		vars = append(vars, corev1.EnvVar{Name: data.SeedVar(o.Name), ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: branch}, Key: string(v1alpha1.ConnectionURL),
		}}})
	}
	for _, e := range j.Env {
		vars = append(vars, *e.DeepCopy())
	}
	zero, deadline := int32(0), defaultSeedTimeout
	if j.Timeout != nil {
		deadline = int64(j.Timeout.Seconds())
	}
	return &batchv1.Job{
		ObjectMeta: meta(env, d.Name, RoleSeed, name, hash),
		Spec: batchv1.JobSpec{
			BackoffLimit:          &zero, // a failed seed fails the environment
			ActiveDeadlineSeconds: &deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labelsOf(env.Name, d.Name, RoleSeed)},
				Spec: corev1.PodSpec{
					RestartPolicy: corev1.RestartPolicyNever,
					Containers: []corev1.Container{{
						Name: "seed", Image: j.Image, Command: slices.Clone(j.Command), Args: slices.Clone(j.Args), Env: vars,
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
					}},
				},
			},
		},
	}
}
