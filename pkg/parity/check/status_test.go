package check

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/parity"
)

func strp(s string) *string { return &s }

// A large drift fits the status: at most MaxStatusDifferences, the failing
// ones first, values cut on a rune boundary, notes bounded; the summary
// counts them all.
func TestReportStatusBounds(t *testing.T) {
	rep := &parity.Report{FailOn: parity.SeverityMedium, Summary: parity.Summary{Total: 150, Unexpected: 120, Expected: 20, Ignored: 10, Failing: 60, Result: parity.ResultDrift,
		ByCategory: map[parity.Category]int{parity.CategoryConfig: 120}, BySeverity: map[parity.Severity]int{parity.SeverityMedium: 60, parity.SeverityLow: 60}}}
	long := strings.Repeat("é", 300) // 600 bytes
	for i := range 150 {
		d := parity.Difference{Kind: "ConfigMap", Name: "c", Path: "/data/k" + string(rune('a'+i%26)), Category: parity.CategoryConfig, Change: parity.Changed,
			Severity: parity.SeverityLow, Left: strp(long), Right: strp("x")}
		switch {
		case i < 20:
			d.Expected, d.Reason = true, "by design"
		case i < 30:
			d.Ignored = true
		case i >= 90:
			d.Severity = parity.SeverityMedium // the 60 failing ones, last in the report
		}
		rep.Differences = append(rep.Differences, d)
	}
	for i := range 30 {
		rep.Notes = append(rep.Notes, "note "+string(rune('a'+i%26)))
	}
	now := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	st := reportStatus(&v1alpha1.ParityCheckStatus{}, 3, rep, now)
	if len(st.Differences) != v1alpha1.MaxStatusDifferences || !st.Truncated {
		t.Fatalf("%d differences, truncated %v", len(st.Differences), st.Truncated)
	}
	for i, d := range st.Differences {
		failing := d.Severity == v1alpha1.ParitySeverity(parity.SeverityMedium) && !d.Expected && !d.Ignored
		if (i < 60) != failing {
			t.Fatalf("difference %d failing %v: the failing ones must come first", i, failing)
		}
		if len(*d.Left) > v1alpha1.MaxStatusValue || !utf8.ValidString(*d.Left) || !strings.HasSuffix(*d.Left, "…") {
			t.Fatalf("difference %d: left value of %d bytes (valid UTF-8: %v)", i, len(*d.Left), utf8.ValidString(*d.Left))
		}
	}
	// 60 failing, then the 60 other unexpected: no room for the expected.
	if st.Differences[99].Expected || st.Differences[99].Ignored {
		t.Errorf("an expected or ignored difference before an unexpected one")
	}
	if len(st.Notes) != v1alpha1.MaxStatusNotes || st.Notes[len(st.Notes)-1] != "... and 11 more notes" {
		t.Errorf("notes %q", st.Notes)
	}
	if s := st.Summary; s.Total != 150 || s.Failing != 60 || s.Result != "drift" || s.ByCategory["config"] != 120 || s.BySeverity["low"] != 60 {
		t.Errorf("summary %+v", s)
	}
	if st.ObservedGeneration != 3 || !st.LastRunTime.Time.Equal(now) {
		t.Errorf("generation %d, last run %v", st.ObservedGeneration, st.LastRunTime)
	}
	ready, drift := meta.FindStatusCondition(st.Conditions, v1alpha1.ParityConditionReady), meta.FindStatusCondition(st.Conditions, v1alpha1.ParityConditionDrift)
	if ready == nil || ready.Status != metav1.ConditionTrue || drift == nil || drift.Status != metav1.ConditionTrue || drift.Reason != ReasonDrift {
		t.Errorf("conditions %+v", st.Conditions)
	}

	// A failed run keeps the report and its Drift condition; Ready says
	// why, and keeps its transition time only while its status stays.
	later := now.Add(time.Hour)
	failed := failedStatus(&st, 4, ReasonNamespaceNotFound, "namespace prod: namespace not found", later)
	if len(failed.Differences) != 100 || failed.Summary.Total != 150 {
		t.Errorf("a failed run dropped the last report")
	}
	r := meta.FindStatusCondition(failed.Conditions, v1alpha1.ParityConditionReady)
	if r.Status != metav1.ConditionFalse || r.Reason != ReasonNamespaceNotFound || !r.LastTransitionTime.Time.Equal(later) {
		t.Errorf("ready after a failure %+v", r)
	}
	again := reportStatus(&failed, 4, &parity.Report{FailOn: parity.SeverityLow, Summary: parity.Summary{Result: parity.ResultPass}}, later.Add(time.Hour))
	if d := meta.FindStatusCondition(again.Conditions, v1alpha1.ParityConditionDrift); d.Status != metav1.ConditionFalse || !d.LastTransitionTime.Time.Equal(later.Add(time.Hour)) {
		t.Errorf("drift after a pass %+v", d)
	}
	if len(again.Differences) != 0 || again.Truncated || len(again.Notes) != 0 {
		t.Errorf("a pass kept the old differences")
	}
	// applyStatus carries what the status holds.
	a := applyStatus(&st)
	if len(a.Differences) != 100 || *a.Summary.Failing != 60 || len(a.Conditions) != 2 || a.Truncated == nil || !*a.Truncated {
		t.Errorf("apply configuration %+v", a)
	}
}

func TestCut(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"abcdefghij", 10, "abcdefghij"},
		{"abcdefghijk", 10, "abcdefg…"},
		{"ééééé", 8, "éé…"}, // 10 bytes; é is 2, … is 3
	} {
		if got := cut(tt.in, tt.n); got != tt.want || len(got) > tt.n {
			t.Errorf("cut(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func TestConvertPolicy(t *testing.T) {
	pol, err := convertPolicy(&v1alpha1.ParityPolicy{
		FailOn:   "medium",
		Severity: map[v1alpha1.ParityCategory]v1alpha1.ParitySeverity{"replicas": "info"},
		Ignore:   []v1alpha1.ParityRule{{Path: "/metadata/labels/team"}},
		Expected: []v1alpha1.ParityRule{{Kind: "Deployment", Path: "/spec/replicas", Category: "replicas", Reason: "scaled per environment"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if pol.FailOn != parity.SeverityMedium || pol.SeverityOf(parity.CategoryReplicas) != parity.SeverityInfo ||
		len(pol.Ignore) != 1 || pol.Expected[0].Category != parity.CategoryReplicas || pol.Expected[0].Origin != "spec.policy.expected[0]" {
		t.Errorf("policy %+v", pol)
	}
	for _, bad := range []*v1alpha1.ParityPolicy{
		{Ignore: []v1alpha1.ParityRule{{Name: "web-["}}},
		{Expected: []v1alpha1.ParityRule{{Path: "/spec/[", Reason: "x"}}},
		{FailOn: "severe"},
		{Severity: map[v1alpha1.ParityCategory]v1alpha1.ParitySeverity{"images": "high"}},
	} {
		if _, err := convertPolicy(bad); !errors.Is(err, errPolicy) {
			t.Errorf("%+v: %v, want a policy error", bad, err)
		}
	}
}
