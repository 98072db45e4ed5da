package v1alpha1

import (
	"errors"
	"fmt"
	"maps"
	"math"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apiconv"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// Conversions between the resource and the gRPC API. The condition kinds go
// through pkg/apiconv's table, whose names are this API's, so the three
// representations cannot drift apart.

// ToProto converts the spec to the gRPC API's form. namespace is the
// Intercept's own, which is the Service's namespace: an intercept lives
// beside its Service. It fails only on what the schema would have refused
// (an unknown condition kind, a port out of range, a negative ttl).
func (s *InterceptSpec) ToProto(namespace string) (*detourv1.InterceptSpec, error) {
	if s.Service.Port < 0 || s.Service.Port > math.MaxUint16 {
		return nil, fmt.Errorf("port %d is not from 1 to 65535", s.Service.Port)
	}
	out := &detourv1.InterceptSpec{
		ServiceNamespace: namespace,
		ServiceName:      s.Service.Name,
		Port:             uint32(s.Service.Port),
		Destination:      s.Destination,
		L4:               s.L4,
	}
	for i, c := range s.Match {
		k, err := apiconv.KindToProto(match.Kind(c.Kind))
		if err != nil {
			return nil, fmt.Errorf("match condition %d: %w", i+1, err)
		}
		out.Match = append(out.Match, &detourv1.Condition{Kind: k, Name: c.Name, Value: c.Value})
	}
	if s.TTL != nil {
		if s.TTL.Duration < 0 {
			return nil, fmt.Errorf("ttl %s is negative", s.TTL.Duration)
		}
		out.Ttl = durationpb.New(s.TTL.Duration)
	}
	if s.Sources != nil {
		out.SourcePods = cloneStrings(s.Sources.Pods)
		out.SourceNamespaces = cloneStrings(s.Sources.Namespaces)
		out.SourceSelector = maps.Clone(s.Sources.Selector)
	}
	if d := s.DestinationPods; d != nil {
		if d.Port < 0 || d.Port > math.MaxUint16 {
			return nil, fmt.Errorf("destination pods: port %d is not from 1 to 65535", d.Port)
		}
		out.DestinationPods = &detourv1.PodSelector{Labels: maps.Clone(d.Labels), Port: uint32(d.Port)}
	}
	return out, nil
}

// InterceptSpecFromProto converts a gRPC API spec. Its service_namespace is
// not part of the result: it is the namespace the Intercept is made in (see
// InterceptFromProto).
func InterceptSpecFromProto(p *detourv1.InterceptSpec) (InterceptSpec, error) {
	if p == nil {
		return InterceptSpec{}, errors.New("no spec")
	}
	if p.GetPort() > math.MaxUint16 {
		return InterceptSpec{}, fmt.Errorf("port %d is not from 1 to 65535", p.GetPort())
	}
	out := InterceptSpec{
		Service:     ServiceRef{Name: p.GetServiceName(), Port: int32(p.GetPort())},
		Destination: p.GetDestination(),
		L4:          p.GetL4(),
	}
	for i, c := range p.GetMatch() {
		k, err := apiconv.KindFromProto(c.GetKind())
		if err != nil {
			return InterceptSpec{}, fmt.Errorf("match condition %d: %w", i+1, err)
		}
		out.Match = append(out.Match, Condition{Kind: ConditionKind(k), Name: c.GetName(), Value: c.GetValue()})
	}
	if ttl := p.GetTtl(); ttl != nil {
		if err := ttl.CheckValid(); err != nil {
			return InterceptSpec{}, fmt.Errorf("ttl: %w", err)
		}
		if ttl.AsDuration() < 0 {
			return InterceptSpec{}, fmt.Errorf("ttl %s is negative", ttl.AsDuration())
		}
		out.TTL = &metav1.Duration{Duration: ttl.AsDuration()}
	}
	if len(p.GetSourcePods())+len(p.GetSourceNamespaces())+len(p.GetSourceSelector()) > 0 {
		out.Sources = &Sources{
			Pods:       cloneStrings(p.GetSourcePods()),
			Namespaces: cloneStrings(p.GetSourceNamespaces()),
			Selector:   maps.Clone(p.GetSourceSelector()),
		}
	}
	if d := p.GetDestinationPods(); d != nil {
		if d.GetPort() > math.MaxUint16 {
			return InterceptSpec{}, fmt.Errorf("destination pods: port %d is not from 1 to 65535", d.GetPort())
		}
		out.DestinationPods = &PodSelector{Labels: maps.Clone(d.GetLabels()), Port: int32(d.GetPort())}
	}
	return out, nil
}

// MatchSummary is the human form of what the spec selects, exactly as the
// CLI prints it: the controller writes it to status.matchSummary for
// kubectl's Match column.
func (s *InterceptSpec) MatchSummary() string {
	p, err := s.ToProto("")
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return apiconv.DescribeSpec(p)
}

// ToProto converts the Intercept to the gRPC API's form: created_at is the
// object's creationTimestamp, expires_at its status.expiresAt.
func (ic *Intercept) ToProto() (*detourv1.Intercept, error) {
	spec, err := ic.Spec.ToProto(ic.Namespace)
	if err != nil {
		return nil, fmt.Errorf("intercept %s/%s: %w", ic.Namespace, ic.Name, err)
	}
	out := &detourv1.Intercept{Namespace: ic.Namespace, Name: ic.Name, Spec: spec}
	for _, r := range ic.OwnerReferences {
		if r.Kind == "Environment" && r.APIVersion == SchemeGroupVersion.String() {
			out.Owner = &detourv1.Owner{Kind: r.Kind, Name: r.Name, Uid: string(r.UID)}
		}
	}
	if !ic.CreationTimestamp.IsZero() {
		out.CreatedAt = timestamppb.New(ic.CreationTimestamp.Time)
	}
	if ic.Status.ExpiresAt != nil {
		out.ExpiresAt = timestamppb.New(ic.Status.ExpiresAt.Time)
	}
	return out, nil
}

// InterceptFromProto converts a gRPC API intercept. Its namespace is the
// intercept's namespace or, when that is empty, the spec's
// service_namespace; the two must agree when both are given. created_at
// becomes creationTimestamp (which the API server sets itself on create) and
// expires_at status.expiresAt.
func InterceptFromProto(p *detourv1.Intercept) (*Intercept, error) {
	if p == nil {
		return nil, errors.New("no intercept")
	}
	ns := p.GetNamespace()
	switch sns := p.GetSpec().GetServiceNamespace(); {
	case ns == "":
		ns = sns
	case sns != "" && sns != ns:
		return nil, fmt.Errorf("intercept namespace %q differs from the service's namespace %q", ns, sns)
	}
	spec, err := InterceptSpecFromProto(p.GetSpec())
	if err != nil {
		return nil, fmt.Errorf("intercept %s/%s: %w", ns, p.GetName(), err)
	}
	out := &Intercept{
		TypeMeta:   metav1.TypeMeta{APIVersion: SchemeGroupVersion.String(), Kind: "Intercept"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.GetName()},
		Spec:       spec,
	}
	if o := p.GetOwner(); o != nil {
		// The owner holds the intercept: deleting the Environment deletes
		// it (kubectl's garbage collection), and the label finds them.
		yes := true
		out.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: SchemeGroupVersion.String(), Kind: o.GetKind(), Name: o.GetName(), UID: types.UID(o.GetUid()),
			Controller: &yes, BlockOwnerDeletion: &yes,
		}}
		if o.GetKind() == "Environment" {
			out.Labels = map[string]string{LabelEnvironment: o.GetName()}
		}
	}
	if t := p.GetCreatedAt(); t != nil {
		out.CreationTimestamp = metav1.NewTime(t.AsTime())
	}
	if t := p.GetExpiresAt(); t != nil {
		e := metav1.NewTime(t.AsTime())
		out.Status.ExpiresAt = &e
	}
	return out, nil
}

// NodeStatusFromProto converts one node's report. Counters beyond the
// schema's int64 are held at its maximum.
func NodeStatusFromProto(p *detourv1.InterceptNodeStatus) InterceptNodeStatus {
	return InterceptNodeStatus{
		Node:               p.GetNode(),
		SteeringAttached:   p.GetSteeringAttached(),
		Matched:            toInt64(p.GetMatched()),
		Fallbacks:          toInt64(p.GetFallbacks()),
		SteeredConnections: toInt64(p.GetSteeredConnections()),
		Error:              p.GetError(),
	}
}

// ToProto converts one node's report; a negative counter (which no agent
// reports) becomes zero.
func (n *InterceptNodeStatus) ToProto() *detourv1.InterceptNodeStatus {
	return &detourv1.InterceptNodeStatus{
		Node:               n.Node,
		SteeringAttached:   n.SteeringAttached,
		Matched:            toUint64(n.Matched),
		Fallbacks:          toUint64(n.Fallbacks),
		SteeredConnections: toUint64(n.SteeredConnections),
		Error:              n.Error,
	}
}

func toInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

func toUint64(v int64) uint64 {
	if v < 0 {
		return 0
	}
	return uint64(v)
}

// cloneStrings copies s, keeping nil nil so that a round trip leaves
// absent lists absent.
func cloneStrings(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}
