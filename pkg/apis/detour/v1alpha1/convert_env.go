package v1alpha1

import (
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// Conversions between the Environment resource and the gRPC API's
// Environment (api/detour/v1/environment.proto), which mirrors it field for
// field.

// EnvironmentToProto converts an Environment, status included.
func EnvironmentToProto(e *Environment) *detourv1.Environment {
	out := &detourv1.Environment{
		Namespace:  e.Namespace,
		Name:       e.Name,
		Spec:       environmentSpecToProto(&e.Spec),
		Status:     environmentStatusToProto(&e.Status),
		Uid:        string(e.UID),
		Generation: e.Generation,
	}
	if !e.CreationTimestamp.IsZero() {
		out.CreatedAt = timestamppb.New(e.CreationTimestamp.Time)
	}
	if e.DeletionTimestamp != nil {
		out.DeletingSince = timestamppb.New(e.DeletionTimestamp.Time)
	}
	return out
}

func environmentSpecToProto(s *EnvironmentSpec) *detourv1.EnvironmentSpec {
	out := &detourv1.EnvironmentSpec{Key: s.Key}
	for i := range s.Forks {
		out.Forks = append(out.Forks, forkToProto(&s.Forks[i]))
	}
	for i := range s.Data {
		out.Data = append(out.Data, dataSourceToProto(&s.Data[i]))
	}
	if s.TTL != nil {
		out.Ttl = durationpb.New(s.TTL.Duration)
	}
	if src := s.Source; src != nil {
		out.Source = &detourv1.EnvironmentSource{Repository: src.Repository, Branch: src.Branch, PullRequest: src.PullRequest, Commit: src.Commit}
	}
	return out
}

func forkToProto(f *Fork) *detourv1.Fork {
	out := &detourv1.Fork{
		Workload: &detourv1.WorkloadRef{Kind: string(f.Workload.Kind), Name: f.Workload.Name},
		Replicas: f.Replicas,
	}
	for _, im := range f.Images {
		out.Images = append(out.Images, &detourv1.ImageOverride{Container: im.Container, Image: im.Image})
	}
	for _, e := range f.Env {
		p := &detourv1.EnvOverride{Container: e.Container, Name: e.Name, Value: e.Value, Delete: e.Delete}
		if vf := e.ValueFrom; vf != nil {
			p.ValueFrom = &detourv1.EnvValueSource{}
			if r := vf.ConfigMapKeyRef; r != nil {
				p.ValueFrom.ConfigMapKey = &detourv1.KeyRef{Name: r.Name, Key: r.Key, Optional: r.Optional != nil && *r.Optional}
			}
			if r := vf.SecretKeyRef; r != nil {
				p.ValueFrom.SecretKey = &detourv1.KeyRef{Name: r.Name, Key: r.Key, Optional: r.Optional != nil && *r.Optional}
			}
			if r := vf.FieldRef; r != nil {
				p.ValueFrom.FieldPath = r.FieldPath
			}
		}
		out.Env = append(out.Env, p)
	}
	for _, c := range f.Commands {
		out.Commands = append(out.Commands, &detourv1.CommandOverride{Container: c.Container, Command: cloneStrings(c.Command), Args: cloneStrings(c.Args)})
	}
	if f.Patch != nil && len(f.Patch.Raw) > 0 {
		out.Patch = string(f.Patch.Raw)
	}
	return out
}

func environmentStatusToProto(s *EnvironmentStatus) *detourv1.EnvironmentStatus {
	out := &detourv1.EnvironmentStatus{
		ObservedGeneration: s.ObservedGeneration,
		Phase:              string(s.Phase),
		Key:                s.Key,
		ForkSummary:        s.ForkSummary,
	}
	if s.ExpiresAt != nil {
		out.ExpiresAt = timestamppb.New(s.ExpiresAt.Time)
	}
	for _, f := range s.Forks {
		out.Forks = append(out.Forks, &detourv1.ForkStatus{
			Name: f.Name, Workload: &detourv1.WorkloadRef{Kind: string(f.Workload.Kind), Name: f.Workload.Name},
			Replicas: f.Replicas, ReadyReplicas: f.ReadyReplicas, Images: cloneStrings(f.Images), Message: f.Message,
		})
	}
	for _, r := range s.Routes {
		out.Routes = append(out.Routes, &detourv1.RouteStatus{
			Intercept: r.Intercept, Kind: string(r.Kind), Service: r.Service, Port: r.Port, Fork: r.Fork, State: string(r.State),
		})
	}
	for i := range s.Data {
		out.Data = append(out.Data, dataStatusToProto(&s.Data[i]))
	}
	for _, c := range s.Conditions {
		out.Conditions = append(out.Conditions, &detourv1.StatusCondition{
			Type: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message,
			LastTransitionTime: timestamppb.New(c.LastTransitionTime.Time),
		})
	}
	return out
}

// EnvironmentFromProto converts a gRPC API environment, status included.
// It refuses what cannot be expressed in the resource (a patch that is not
// a JSON object, a value source naming nothing); the rest is left to
// validation.
func EnvironmentFromProto(p *detourv1.Environment) (*Environment, error) {
	if p == nil {
		return nil, errors.New("no environment")
	}
	out := &Environment{
		TypeMeta:   metav1.TypeMeta{APIVersion: SchemeGroupVersion.String(), Kind: "Environment"},
		ObjectMeta: metav1.ObjectMeta{Namespace: p.GetNamespace(), Name: p.GetName(), UID: types.UID(p.GetUid()), Generation: p.GetGeneration()},
	}
	if t := p.GetCreatedAt(); t != nil {
		out.CreationTimestamp = metav1.NewTime(t.AsTime())
	}
	if t := p.GetDeletingSince(); t != nil {
		d := metav1.NewTime(t.AsTime())
		out.DeletionTimestamp = &d
	}
	spec := p.GetSpec()
	if spec == nil {
		return nil, errors.New("environment has no spec")
	}
	out.Spec.Key = spec.GetKey()
	for i, f := range spec.GetForks() {
		fork, err := forkFromProto(f)
		if err != nil {
			return nil, fmt.Errorf("fork %d (%s): %w", i+1, f.GetWorkload().GetName(), err)
		}
		out.Spec.Forks = append(out.Spec.Forks, *fork)
	}
	for _, d := range spec.GetData() {
		ds, err := dataSourceFromProto(d)
		if err != nil {
			return nil, err
		}
		out.Spec.Data = append(out.Spec.Data, ds)
	}
	if ttl := spec.GetTtl(); ttl != nil {
		if err := ttl.CheckValid(); err != nil {
			return nil, fmt.Errorf("ttl: %w", err)
		}
		out.Spec.TTL = &metav1.Duration{Duration: ttl.AsDuration()}
	}
	if src := spec.GetSource(); src != nil {
		out.Spec.Source = &EnvironmentSource{Repository: src.GetRepository(), Branch: src.GetBranch(), PullRequest: src.GetPullRequest(), Commit: src.GetCommit()}
	}
	if st := p.GetStatus(); st != nil {
		out.Status = environmentStatusFromProto(st)
	}
	return out, nil
}

func forkFromProto(f *detourv1.Fork) (*Fork, error) {
	kind := WorkloadKind(f.GetWorkload().GetKind())
	if kind == "" {
		kind = WorkloadDeployment
	}
	out := &Fork{Workload: WorkloadRef{Kind: kind, Name: f.GetWorkload().GetName()}, Replicas: f.Replicas}
	for _, im := range f.GetImages() {
		out.Images = append(out.Images, ImageOverride{Container: im.GetContainer(), Image: im.GetImage()})
	}
	for _, e := range f.GetEnv() {
		o := EnvOverride{Container: e.GetContainer(), Name: e.GetName(), Value: e.Value, Delete: e.GetDelete()}
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
				return nil, fmt.Errorf("env %s: value_from must name exactly one of a ConfigMap key, a Secret key or a field", e.GetName())
			}
			o.ValueFrom = src
		}
		out.Env = append(out.Env, o)
	}
	for _, c := range f.GetCommands() {
		out.Commands = append(out.Commands, CommandOverride{Container: c.GetContainer(), Command: cloneStrings(c.GetCommand()), Args: cloneStrings(c.GetArgs())})
	}
	if patch := f.GetPatch(); patch != "" {
		var obj map[string]any
		if err := json.Unmarshal([]byte(patch), &obj); err != nil {
			return nil, fmt.Errorf("patch is not a JSON object: %w", err)
		}
		out.Patch = &runtime.RawExtension{Raw: []byte(patch)}
	}
	return out, nil
}

func optional(b bool) *bool {
	if !b {
		return nil
	}
	return &b
}

func environmentStatusFromProto(s *detourv1.EnvironmentStatus) EnvironmentStatus {
	out := EnvironmentStatus{
		ObservedGeneration: s.GetObservedGeneration(),
		Phase:              EnvironmentPhase(s.GetPhase()),
		Key:                s.GetKey(),
		ForkSummary:        s.GetForkSummary(),
	}
	if t := s.GetExpiresAt(); t != nil {
		e := metav1.NewTime(t.AsTime())
		out.ExpiresAt = &e
	}
	for _, f := range s.GetForks() {
		out.Forks = append(out.Forks, ForkStatus{
			Name: f.GetName(), Workload: WorkloadRef{Kind: WorkloadKind(f.GetWorkload().GetKind()), Name: f.GetWorkload().GetName()},
			Replicas: f.GetReplicas(), ReadyReplicas: f.GetReadyReplicas(), Images: cloneStrings(f.GetImages()), Message: f.GetMessage(),
		})
	}
	for _, r := range s.GetRoutes() {
		out.Routes = append(out.Routes, RouteStatus{
			Intercept: r.GetIntercept(), Kind: RouteKind(r.GetKind()), Service: r.GetService(), Port: r.GetPort(), Fork: r.GetFork(),
			State: InterceptState(r.GetState()),
		})
	}
	for _, d := range s.GetData() {
		out.Data = append(out.Data, dataStatusFromProto(d))
	}
	for _, c := range s.GetConditions() {
		out.Conditions = append(out.Conditions, metav1.Condition{
			Type: c.GetType(), Status: metav1.ConditionStatus(c.GetStatus()), Reason: c.GetReason(), Message: c.GetMessage(),
			LastTransitionTime: metav1.NewTime(c.GetLastTransitionTime().AsTime()),
		})
	}
	return out
}
