package apiconv

import (
	"testing"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/redirect/match"
)

func TestRoundTripEveryKind(t *testing.T) {
	// Every API kind but UNSPECIFIED must map, or a new proto enum value
	// would silently be refused by the controller.
	for v, name := range detourv1.Condition_Kind_name {
		k := detourv1.Condition_Kind(v)
		if k == detourv1.Condition_KIND_UNSPECIFIED {
			continue
		}
		in := &detourv1.Condition{Kind: k, Name: "x-n", Value: "v"}
		mc, err := ConditionFromProto(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out, err := ConditionToProto(mc)
		if err != nil {
			t.Fatalf("%s back: %v", name, err)
		}
		if out.GetKind() != k || out.GetName() != "x-n" || out.GetValue() != "v" {
			t.Errorf("%s: round trip gave %v", name, out)
		}
	}
}

func TestUnknownKinds(t *testing.T) {
	tests := []struct {
		name string
		run  func() error
	}{
		{"api unspecified", func() error {
			_, err := ConditionFromProto(&detourv1.Condition{Kind: detourv1.Condition_KIND_UNSPECIFIED})
			return err
		}},
		{"api out of range", func() error { _, err := ConditionFromProto(&detourv1.Condition{Kind: 99}); return err }},
		{"api nil", func() error { _, err := ConditionFromProto(nil); return err }},
		{"match unknown", func() error { _, err := ConditionToProto(match.Condition{Kind: "cookie"}); return err }},
		{"list names position", func() error {
			_, err := ConditionsFromProto([]*detourv1.Condition{{Kind: detourv1.Condition_KIND_METHOD, Value: "GET"}, {Kind: 42}})
			if err != nil && err.Error() != "condition 2: unknown condition kind 42" {
				t.Errorf("message %q", err)
			}
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.run() == nil {
				t.Fatal("no error")
			}
		})
	}
}

func TestLists(t *testing.T) {
	in := []match.Condition{{Kind: match.Session, Value: "alice"}, {Kind: match.HeaderPrefix, Name: "x-user", Value: "al"}}
	api, err := ConditionsToProto(in)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ConditionsFromProto(api)
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != 2 || back[0] != in[0] || back[1] != in[1] {
		t.Fatalf("got %v", back)
	}
}
