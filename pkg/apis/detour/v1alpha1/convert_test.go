package v1alpha1

import (
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// pair is one spec in both forms; each must convert to the other exactly.
type pair struct {
	name  string
	crd   InterceptSpec
	proto *detourv1.InterceptSpec
}

func pairs() []pair {
	return []pair{
		{
			name: "session",
			crd: InterceptSpec{
				Service:     ServiceRef{Name: "payments", Port: 8080},
				Match:       []Condition{{Kind: ConditionSession, Value: "alice"}},
				Destination: "alice-dev:8080",
			},
			proto: &detourv1.InterceptSpec{
				ServiceNamespace: "staging", ServiceName: "payments", Port: 8080,
				Match:       []*detourv1.Condition{{Kind: detourv1.Condition_KIND_SESSION, Value: "alice"}},
				Destination: "alice-dev:8080",
			},
		},
		{
			name: "every kind, ttl, sources",
			crd: InterceptSpec{
				Service: ServiceRef{Name: "web", Port: 65535},
				Match: []Condition{
					{Kind: ConditionSession, Value: "bob"},
					{Kind: ConditionHeaderExact, Name: "X-Team", Value: "blue"},
					{Kind: ConditionHeaderPrefix, Name: "x-b", Value: "ab"},
					{Kind: ConditionHeaderRegex, Name: "x-r", Value: "^a.*z$"},
					{Kind: ConditionBaggage, Name: "tenant", Value: "t1"},
					{Kind: ConditionPathExact, Value: "/healthz"},
					{Kind: ConditionPathPrefix, Value: "/api/"},
					{Kind: ConditionMethod, Value: "POST"},
				},
				Destination: "dev/bob-pod:9000",
				TTL:         &metav1.Duration{Duration: 90*time.Minute + 5*time.Nanosecond},
				Sources:     &Sources{Pods: []string{"client-1", "other/client-2"}, Namespaces: []string{"qa"}},
			},
			proto: &detourv1.InterceptSpec{
				ServiceNamespace: "staging", ServiceName: "web", Port: 65535,
				Match: []*detourv1.Condition{
					{Kind: detourv1.Condition_KIND_SESSION, Value: "bob"},
					{Kind: detourv1.Condition_KIND_HEADER_EXACT, Name: "X-Team", Value: "blue"},
					{Kind: detourv1.Condition_KIND_HEADER_PREFIX, Name: "x-b", Value: "ab"},
					{Kind: detourv1.Condition_KIND_HEADER_REGEX, Name: "x-r", Value: "^a.*z$"},
					{Kind: detourv1.Condition_KIND_BAGGAGE, Name: "tenant", Value: "t1"},
					{Kind: detourv1.Condition_KIND_PATH_EXACT, Value: "/healthz"},
					{Kind: detourv1.Condition_KIND_PATH_PREFIX, Value: "/api/"},
					{Kind: detourv1.Condition_KIND_METHOD, Value: "POST"},
				},
				Destination:      "dev/bob-pod:9000",
				Ttl:              &durationpb.Duration{Seconds: 5400, Nanos: 5},
				SourcePods:       []string{"client-1", "other/client-2"},
				SourceNamespaces: []string{"qa"},
			},
		},
		{
			name: "l4, zero ttl, namespaces only",
			crd: InterceptSpec{
				Service:     ServiceRef{Name: "db", Port: 1},
				Destination: "10.0.0.7:5432",
				TTL:         &metav1.Duration{},
				L4:          true,
				Sources:     &Sources{Namespaces: []string{"a", "b"}},
			},
			proto: &detourv1.InterceptSpec{
				ServiceNamespace: "staging", ServiceName: "db", Port: 1,
				Destination:      "10.0.0.7:5432",
				Ttl:              &durationpb.Duration{},
				L4:               true,
				SourceNamespaces: []string{"a", "b"},
			},
		},
		{
			name: "pods only, ipv6 destination",
			crd: InterceptSpec{
				Service:     ServiceRef{Name: "api", Port: 443},
				Match:       []Condition{{Kind: ConditionMethod, Value: "GET"}},
				Destination: "[fd00::7]:8443",
				Sources:     &Sources{Pods: []string{"c"}},
			},
			proto: &detourv1.InterceptSpec{
				ServiceNamespace: "staging", ServiceName: "api", Port: 443,
				Match:       []*detourv1.Condition{{Kind: detourv1.Condition_KIND_METHOD, Value: "GET"}},
				Destination: "[fd00::7]:8443",
				SourcePods:  []string{"c"},
			},
		},
	}
}

func TestSpecToProto(t *testing.T) {
	for _, tc := range pairs() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.crd.ToProto("staging")
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tc.proto) {
				t.Fatalf("ToProto:\n got %v\nwant %v", got, tc.proto)
			}
			back, err := InterceptSpecFromProto(got)
			if err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(back, tc.crd) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", back, tc.crd)
			}
		})
	}
}

func TestSpecFromProto(t *testing.T) {
	for _, tc := range pairs() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := InterceptSpecFromProto(tc.proto)
			if err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(got, tc.crd) {
				t.Fatalf("FromProto:\n got %+v\nwant %+v", got, tc.crd)
			}
			back, err := got.ToProto(tc.proto.GetServiceNamespace())
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(back, tc.proto) {
				t.Fatalf("round trip:\n got %v\nwant %v", back, tc.proto)
			}
		})
	}
}

// Every kind the API knows must have a name here, or an intercept made with
// the CLI could not be stored as a resource.
func TestEveryProtoKindConverts(t *testing.T) {
	kinds := map[ConditionKind]bool{}
	for _, k := range allKinds {
		kinds[k] = true
	}
	for v, name := range detourv1.Condition_Kind_name {
		k := detourv1.Condition_Kind(v)
		if k == detourv1.Condition_KIND_UNSPECIFIED {
			continue
		}
		spec, err := InterceptSpecFromProto(&detourv1.InterceptSpec{Match: []*detourv1.Condition{{Kind: k}}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := spec.Match[0].Kind; !kinds[got] {
			t.Errorf("%s converts to %q, which is not a declared ConditionKind", name, got)
		}
		delete(kinds, spec.Match[0].Kind)
	}
	for k := range kinds {
		t.Errorf("ConditionKind %q has no API kind", k)
	}
}

func TestConversionErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func() error
		want string
	}{
		{"nil spec", func() error { _, err := InterceptSpecFromProto(nil); return err }, "no spec"},
		{"unspecified kind", func() error {
			_, err := InterceptSpecFromProto(&detourv1.InterceptSpec{Match: []*detourv1.Condition{
				{Kind: detourv1.Condition_KIND_METHOD, Value: "GET"}, {Value: "x"}}})
			return err
		}, "match condition 2"},
		{"unknown api kind", func() error {
			_, err := InterceptSpecFromProto(&detourv1.InterceptSpec{Match: []*detourv1.Condition{{Kind: 99}}})
			return err
		}, "unknown condition kind"},
		{"port too big", func() error { _, err := InterceptSpecFromProto(&detourv1.InterceptSpec{Port: 65536}); return err }, "port 65536"},
		{"negative ttl", func() error {
			_, err := InterceptSpecFromProto(&detourv1.InterceptSpec{Ttl: durationpb.New(-time.Second)})
			return err
		}, "negative"},
		{"invalid ttl", func() error {
			_, err := InterceptSpecFromProto(&detourv1.InterceptSpec{Ttl: &durationpb.Duration{Seconds: 1, Nanos: -1}})
			return err
		}, "ttl"},
		{"unknown crd kind", func() error {
			s := InterceptSpec{Match: []Condition{{Kind: "cookie", Value: "x"}}}
			_, err := s.ToProto("ns")
			return err
		}, `unknown condition kind "cookie"`},
		{"negative crd port", func() error {
			s := InterceptSpec{Service: ServiceRef{Port: -1}}
			_, err := s.ToProto("ns")
			return err
		}, "port -1"},
		{"negative crd ttl", func() error {
			s := InterceptSpec{TTL: &metav1.Duration{Duration: -time.Minute}}
			_, err := s.ToProto("ns")
			return err
		}, "negative"},
		{"namespaces differ", func() error {
			_, err := InterceptFromProto(&detourv1.Intercept{Namespace: "a", Name: "x", Spec: &detourv1.InterceptSpec{ServiceNamespace: "b"}})
			return err
		}, "differs"},
		{"nil intercept", func() error { _, err := InterceptFromProto(nil); return err }, "no intercept"},
		{"intercept without spec", func() error {
			_, err := InterceptFromProto(&detourv1.Intercept{Namespace: "a", Name: "x"})
			return err
		}, "no spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestInterceptConversion(t *testing.T) {
	created := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	expires := created.Add(time.Hour)
	spec := pairs()[0]
	for _, tc := range []struct {
		name string
		in   *detourv1.Intercept
		ns   string // the resource's namespace
	}{
		{"both namespaces", &detourv1.Intercept{Namespace: "staging", Name: "alice", Spec: spec.proto,
			CreatedAt: timestamppb.New(created), ExpiresAt: timestamppb.New(expires)}, "staging"},
		{"service namespace only", &detourv1.Intercept{Name: "alice", Spec: spec.proto}, "staging"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ic, err := InterceptFromProto(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if ic.Namespace != tc.ns || ic.Name != tc.in.GetName() {
				t.Fatalf("object %s/%s, want %s/%s", ic.Namespace, ic.Name, tc.ns, tc.in.GetName())
			}
			if ic.APIVersion != "detour.dev/v1alpha1" || ic.Kind != "Intercept" {
				t.Fatalf("type %s %s", ic.APIVersion, ic.Kind)
			}
			if !equality.Semantic.DeepEqual(ic.Spec, spec.crd) {
				t.Fatalf("spec %+v, want %+v", ic.Spec, spec.crd)
			}
			out, err := ic.ToProto()
			if err != nil {
				t.Fatal(err)
			}
			want := proto.Clone(tc.in).(*detourv1.Intercept)
			want.Namespace = tc.ns
			if !proto.Equal(out, want) {
				t.Fatalf("round trip:\n got %v\nwant %v", out, want)
			}
		})
	}
}

func TestNodeStatusConversion(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto *detourv1.InterceptNodeStatus
		crd   InterceptNodeStatus
		back  *detourv1.InterceptNodeStatus // nil: same as proto
	}{
		{"plain",
			&detourv1.InterceptNodeStatus{Node: "n1", SteeringAttached: true, Matched: 3, Fallbacks: 2, SteeredConnections: 7, Error: "e"},
			InterceptNodeStatus{Node: "n1", SteeringAttached: true, Matched: 3, Fallbacks: 2, SteeredConnections: 7, Error: "e"},
			nil},
		{"zero", &detourv1.InterceptNodeStatus{Node: "n2"}, InterceptNodeStatus{Node: "n2"}, nil},
		{"saturates",
			&detourv1.InterceptNodeStatus{Node: "n3", Matched: math.MaxUint64},
			InterceptNodeStatus{Node: "n3", Matched: math.MaxInt64},
			&detourv1.InterceptNodeStatus{Node: "n3", Matched: math.MaxInt64}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NodeStatusFromProto(tc.proto)
			if got != tc.crd {
				t.Fatalf("FromProto = %+v, want %+v", got, tc.crd)
			}
			want := tc.back
			if want == nil {
				want = tc.proto
			}
			if back := got.ToProto(); !proto.Equal(back, want) {
				t.Fatalf("ToProto = %v, want %v", back, want)
			}
		})
	}
	if got := (&InterceptNodeStatus{Fallbacks: -1}).ToProto().GetFallbacks(); got != 0 {
		t.Fatalf("negative counter became %d", got)
	}
}

func TestMatchSummary(t *testing.T) {
	for _, tc := range []struct {
		spec InterceptSpec
		want string
	}{
		{pairs()[0].crd, "session=alice"},
		{InterceptSpec{L4: true, Sources: &Sources{Pods: []string{"c"}, Namespaces: []string{"qa"}}}, "l4 & from-pod=c & from-namespace=qa"},
		{InterceptSpec{Match: []Condition{{Kind: ConditionHeaderExact, Name: "x", Value: "y"}, {Kind: ConditionMethod, Value: "GET"}}}, "header:x=y & method=GET"},
		{InterceptSpec{Match: []Condition{{Kind: "cookie"}}}, `(match condition 1: unknown condition kind "cookie")`},
	} {
		if got := tc.spec.MatchSummary(); got != tc.want {
			t.Errorf("MatchSummary = %q, want %q", got, tc.want)
		}
	}
}

func TestDeepCopyIsDeep(t *testing.T) {
	ic := &Intercept{Spec: pairs()[1].crd}
	ic.Status.Nodes = []InterceptNodeStatus{{Node: "n"}}
	cp := ic.DeepCopy()
	cp.Spec.Match[0].Value = "changed"
	cp.Spec.TTL.Duration = 0
	cp.Spec.Sources.Pods[0] = "changed"
	cp.Status.Nodes[0].Node = "changed"
	if ic.Spec.Match[0].Value == "changed" || ic.Spec.TTL.Duration == 0 || ic.Spec.Sources.Pods[0] == "changed" || ic.Status.Nodes[0].Node == "changed" {
		t.Fatal("DeepCopy shares memory with the original")
	}
}
