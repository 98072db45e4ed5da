package v1alpha1

import (
	"fmt"

	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// Conversions of an Environment's data entries and their status, beside
// convert_env.go's of the rest.

func dataSourceToProto(d *DataSource) *detourv1.DataSource {
	out := &detourv1.DataSource{Name: d.Name, Kind: d.Kind}
	if b := d.PostgresBranch; b != nil {
		pb := &detourv1.PostgresBranch{
			Workload:  &detourv1.WorkloadRef{Kind: string(b.Workload.Kind), Name: b.Workload.Name},
			Container: b.Container,
			Service:   b.Service,
			Port:      b.Port,
			Database:  b.Database,
			Credentials: &detourv1.PostgresCredentials{
				Secret: b.Credentials.Secret, UserKey: b.Credentials.UserKey,
				PasswordKey: b.Credentials.PasswordKey, DatabaseKey: b.Credentials.DatabaseKey,
			},
			Mode:  string(b.Mode),
			Forks: cloneStrings(b.Forks),
		}
		for _, f := range b.Filters {
			pb.Filters = append(pb.Filters, &detourv1.RowFilter{Table: f.Table, Where: f.Where})
		}
		if a := b.Anonymize; a != nil {
			pb.Anonymize = &detourv1.SQLScript{File: a.File}
			if r := a.ConfigMapKeyRef; r != nil {
				pb.Anonymize.ConfigMapKey = &detourv1.KeyRef{Name: r.Name, Key: r.Key, Optional: r.Optional != nil && *r.Optional}
			}
		}
		for _, e := range b.Env {
			pb.Env = append(pb.Env, &detourv1.ConnectionEnv{Name: e.Name, Part: string(e.Part)})
		}
		if s := b.Storage; s != nil {
			pb.Storage = &detourv1.BranchStorage{Type: string(s.Type)}
			if s.StorageClassName != nil {
				pb.Storage.StorageClassName = *s.StorageClassName
			}
			if s.Size != nil {
				pb.Storage.Size = s.Size.String()
			}
		}
		out.PostgresBranch = pb
	}
	if j := d.Job; j != nil {
		pj := &detourv1.DataJob{Image: j.Image, Command: cloneStrings(j.Command), Args: cloneStrings(j.Args)}
		for _, e := range j.Env {
			v := &detourv1.JobEnvVar{Name: e.Name, Value: e.Value}
			if vf := e.ValueFrom; vf != nil {
				v.ValueFrom = &detourv1.EnvValueSource{}
				if r := vf.ConfigMapKeyRef; r != nil {
					v.ValueFrom.ConfigMapKey = &detourv1.KeyRef{Name: r.Name, Key: r.Key, Optional: r.Optional != nil && *r.Optional}
				}
				if r := vf.SecretKeyRef; r != nil {
					v.ValueFrom.SecretKey = &detourv1.KeyRef{Name: r.Name, Key: r.Key, Optional: r.Optional != nil && *r.Optional}
				}
				if r := vf.FieldRef; r != nil {
					v.ValueFrom.FieldPath = r.FieldPath
				}
			}
			pj.Env = append(pj.Env, v)
		}
		if j.Timeout != nil {
			pj.Timeout = durationpb.New(j.Timeout.Duration)
		}
		out.Job = pj
	}
	return out
}

// dataSourceFromProto converts one data entry; it refuses what the
// resource cannot hold (a size that is not a quantity, a value source
// naming nothing).
func dataSourceFromProto(p *detourv1.DataSource) (DataSource, error) {
	out := DataSource{Name: p.GetName(), Kind: p.GetKind()}
	if b := p.GetPostgresBranch(); b != nil {
		kind := WorkloadKind(b.GetWorkload().GetKind())
		if kind == "" {
			kind = WorkloadDeployment
		}
		pb := &PostgresBranch{
			Workload:  WorkloadRef{Kind: kind, Name: b.GetWorkload().GetName()},
			Container: b.GetContainer(),
			Service:   b.GetService(),
			Port:      b.GetPort(),
			Database:  b.GetDatabase(),
			Credentials: PostgresCredentials{
				Secret: b.GetCredentials().GetSecret(), UserKey: b.GetCredentials().GetUserKey(),
				PasswordKey: b.GetCredentials().GetPasswordKey(), DatabaseKey: b.GetCredentials().GetDatabaseKey(),
			},
			Mode:  BranchMode(b.GetMode()),
			Forks: cloneStrings(b.GetForks()),
		}
		for _, f := range b.GetFilters() {
			pb.Filters = append(pb.Filters, RowFilter{Table: f.GetTable(), Where: f.GetWhere()})
		}
		if a := b.GetAnonymize(); a != nil {
			pb.Anonymize = &SQLScript{File: a.GetFile()}
			if r := a.GetConfigMapKey(); r != nil {
				pb.Anonymize.ConfigMapKeyRef = &corev1.ConfigMapKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: r.GetName()}, Key: r.GetKey(), Optional: optional(r.GetOptional()),
				}
			}
		}
		for _, e := range b.GetEnv() {
			pb.Env = append(pb.Env, ConnectionEnv{Name: e.GetName(), Part: ConnectionPart(e.GetPart())})
		}
		if s := b.GetStorage(); s != nil {
			typ := StorageType(s.GetType())
			if typ == "" {
				typ = StorageEmptyDir
			}
			pb.Storage = &BranchStorage{Type: typ}
			if c := s.GetStorageClassName(); c != "" {
				pb.Storage.StorageClassName = &c
			}
			if sz := s.GetSize(); sz != "" {
				q, err := resource.ParseQuantity(sz)
				if err != nil {
					return out, fmt.Errorf("data %s: storage size %q: %w", p.GetName(), sz, err)
				}
				pb.Storage.Size = &q
			}
		}
		out.PostgresBranch = pb
	}
	if j := p.GetJob(); j != nil {
		dj := &DataJob{Image: j.GetImage(), Command: cloneStrings(j.GetCommand()), Args: cloneStrings(j.GetArgs())}
		for _, e := range j.GetEnv() {
			v := corev1.EnvVar{Name: e.GetName(), Value: e.GetValue()}
			if vf := e.GetValueFrom(); vf != nil {
				src := &corev1.EnvVarSource{}
				n := 0
				if r := vf.GetConfigMapKey(); r != nil {
					src.ConfigMapKeyRef = &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: r.GetName()}, Key: r.GetKey(), Optional: optional(r.GetOptional())}
					n++
				}
				if r := vf.GetSecretKey(); r != nil {
					src.SecretKeyRef = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: r.GetName()}, Key: r.GetKey(), Optional: optional(r.GetOptional())}
					n++
				}
				if fp := vf.GetFieldPath(); fp != "" {
					src.FieldRef = &corev1.ObjectFieldSelector{FieldPath: fp}
					n++
				}
				if n != 1 {
					return out, fmt.Errorf("data %s: env %s: value_from must name exactly one of a ConfigMap key, a Secret key or a field", p.GetName(), e.GetName())
				}
				v.ValueFrom = src
			}
			dj.Env = append(dj.Env, v)
		}
		if t := j.GetTimeout(); t != nil {
			if err := t.CheckValid(); err != nil {
				return out, fmt.Errorf("data %s: timeout: %w", p.GetName(), err)
			}
			dj.Timeout = &metav1.Duration{Duration: t.AsDuration()}
		}
		out.Job = dj
	}
	return out, nil
}

func dataStatusToProto(d *DataStatus) *detourv1.DataStatus {
	out := &detourv1.DataStatus{
		Name: d.Name, Kind: d.Kind, Phase: string(d.Phase), Rows: d.Rows, Bytes: d.Bytes,
		Endpoint: d.Endpoint, Secret: d.Secret, Job: d.Job, Message: d.Message,
	}
	if d.Duration != nil {
		out.Duration = durationpb.New(d.Duration.Duration)
	}
	return out
}

func dataStatusFromProto(p *detourv1.DataStatus) DataStatus {
	out := DataStatus{
		Name: p.GetName(), Kind: p.GetKind(), Phase: DataPhase(p.GetPhase()), Rows: p.GetRows(), Bytes: p.GetBytes(),
		Endpoint: p.GetEndpoint(), Secret: p.GetSecret(), Job: p.GetJob(), Message: p.GetMessage(),
	}
	if d := p.GetDuration(); d != nil {
		out.Duration = &metav1.Duration{Duration: d.AsDuration()}
	}
	return out
}
