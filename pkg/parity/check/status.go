package check

import (
	"fmt"
	"sort"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	ac "github.com/detourdev/detour/pkg/generated/applyconfiguration/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/parity"
)

// Reasons of the conditions a run sets.
const (
	ReasonCompared          = "Compared"          // Ready: both sides were read and compared
	ReasonNamespaceNotFound = "NamespaceNotFound" // Ready: a side's namespace does not exist
	ReasonPolicyInvalid     = "PolicyInvalid"     // Ready: the policy (inline or its ConfigMap) is wrong
	ReasonReadFailed        = "ReadFailed"        // Ready: a side could not be read
	ReasonDrift             = "Drift"             // Drift: unexpected differences at or above failOn
	ReasonNoDrift           = "NoDrift"           // Drift: none
)

// maxNote bounds one note, maxMessage a condition's message.
const (
	maxNote    = 1024
	maxMessage = 4096
)

// reportStatus is the status of a run that compared both sides: the
// report's summary and its differences, bounded (the failing ones first,
// then the other unexpected ones, expected, ignored), values cut. prev is
// the status before, for the conditions' transition times.
func reportStatus(prev *v1alpha1.ParityCheckStatus, generation int64, rep *parity.Report, now time.Time) v1alpha1.ParityCheckStatus {
	t := metav1.NewTime(now).Rfc3339Copy()
	st := v1alpha1.ParityCheckStatus{
		ObservedGeneration: generation,
		LastRunTime:        &t,
		Summary:            summary(&rep.Summary),
		Conditions:         append([]metav1.Condition(nil), prev.Conditions...),
	}
	rank := func(d *parity.Difference) int {
		switch {
		case d.Failing(rep.FailOn):
			return 0
		case !d.Expected && !d.Ignored:
			return 1
		case d.Expected:
			return 2
		}
		return 3
	}
	ds := make([]*parity.Difference, len(rep.Differences))
	for i := range rep.Differences {
		ds[i] = &rep.Differences[i]
	}
	sort.SliceStable(ds, func(i, j int) bool { return rank(ds[i]) < rank(ds[j]) })
	for _, d := range ds {
		if len(st.Differences) == v1alpha1.MaxStatusDifferences {
			st.Truncated = true
			break
		}
		st.Differences = append(st.Differences, v1alpha1.ParityDifference{
			Kind: d.Kind, Name: d.Name, RightName: d.RightName, Path: d.Path,
			Category: v1alpha1.ParityCategory(d.Category), Change: string(d.Change), Severity: v1alpha1.ParitySeverity(d.Severity),
			Left: cutPtr(d.Left), Right: cutPtr(d.Right),
			Expected: d.Expected, Ignored: d.Ignored, Reason: cut(d.Reason, v1alpha1.MaxStatusValue),
		})
	}
	st.Notes = notes(rep.Notes)
	setCondition(&st, generation, now, v1alpha1.ParityConditionReady, true, ReasonCompared,
		fmt.Sprintf("compared %s (%d objects) with %s (%d objects)", rep.Left.Namespace, rep.Left.Objects, rep.Right.Namespace, rep.Right.Objects))
	if rep.Drift() {
		setCondition(&st, generation, now, v1alpha1.ParityConditionDrift, true, ReasonDrift,
			fmt.Sprintf("%d unexpected %s at or above %s", rep.Summary.Failing, plural(rep.Summary.Failing, "difference"), rep.FailOn))
	} else {
		setCondition(&st, generation, now, v1alpha1.ParityConditionDrift, false, ReasonNoDrift,
			fmt.Sprintf("no unexpected difference at or above %s", rep.FailOn))
	}
	return st
}

// failedStatus is the status of a run that could not compare: the last
// report stays, Ready says why.
func failedStatus(prev *v1alpha1.ParityCheckStatus, generation int64, reason, msg string, now time.Time) v1alpha1.ParityCheckStatus {
	st := *prev.DeepCopy()
	setCondition(&st, generation, now, v1alpha1.ParityConditionReady, false, reason, msg)
	return st
}

func setCondition(st *v1alpha1.ParityCheckStatus, generation int64, now time.Time, typ string, ok bool, reason, msg string) {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	// SetStatusCondition keeps the transition time while the status stays.
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: typ, Status: s, Reason: reason, Message: cut(msg, maxMessage),
		ObservedGeneration: generation, LastTransitionTime: metav1.NewTime(now).Rfc3339Copy(),
	})
}

func summary(s *parity.Summary) *v1alpha1.ParitySummary {
	out := &v1alpha1.ParitySummary{
		Total: int32(s.Total), Unexpected: int32(s.Unexpected), Expected: int32(s.Expected),
		Ignored: int32(s.Ignored), Failing: int32(s.Failing), Result: s.Result,
	}
	for c, n := range s.ByCategory {
		if n > 0 {
			if out.ByCategory == nil {
				out.ByCategory = map[string]int32{}
			}
			out.ByCategory[string(c)] = int32(n)
		}
	}
	for sev, n := range s.BySeverity {
		if n > 0 {
			if out.BySeverity == nil {
				out.BySeverity = map[string]int32{}
			}
			out.BySeverity[string(sev)] = int32(n)
		}
	}
	return out
}

func notes(in []string) []string {
	var out []string
	for i, n := range in {
		if i == v1alpha1.MaxStatusNotes-1 && len(in) > v1alpha1.MaxStatusNotes {
			out = append(out, fmt.Sprintf("... and %d more notes", len(in)-i))
			break
		}
		out = append(out, cut(n, maxNote))
	}
	return out
}

// cut shortens s to at most n bytes, on a rune boundary, ending in "…"
// when cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ell = "…"
	i := n - len(ell)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + ell
}

func cutPtr(p *string) *string {
	if p == nil {
		return nil
	}
	s := cut(*p, v1alpha1.MaxStatusValue)
	return &s
}

func plural(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

// applyStatus is st as an apply configuration: the whole status is the
// reconciler's, so what it leaves out is removed.
func applyStatus(st *v1alpha1.ParityCheckStatus) *ac.ParityCheckStatusApplyConfiguration {
	out := ac.ParityCheckStatus().WithObservedGeneration(st.ObservedGeneration)
	if st.LastRunTime != nil {
		out.WithLastRunTime(*st.LastRunTime)
	}
	if s := st.Summary; s != nil {
		sum := ac.ParitySummary().WithTotal(s.Total).WithUnexpected(s.Unexpected).WithExpected(s.Expected).
			WithIgnored(s.Ignored).WithFailing(s.Failing).WithResult(s.Result)
		if len(s.ByCategory) > 0 {
			sum.WithByCategory(s.ByCategory)
		}
		if len(s.BySeverity) > 0 {
			sum.WithBySeverity(s.BySeverity)
		}
		out.WithSummary(sum)
	}
	for _, d := range st.Differences {
		dc := ac.ParityDifference().WithKind(d.Kind).WithName(d.Name).WithCategory(d.Category).
			WithChange(d.Change).WithSeverity(d.Severity)
		if d.RightName != "" {
			dc.WithRightName(d.RightName)
		}
		if d.Path != "" {
			dc.WithPath(d.Path)
		}
		if d.Left != nil {
			dc.WithLeft(*d.Left)
		}
		if d.Right != nil {
			dc.WithRight(*d.Right)
		}
		if d.Expected {
			dc.WithExpected(true)
		}
		if d.Ignored {
			dc.WithIgnored(true)
		}
		if d.Reason != "" {
			dc.WithReason(d.Reason)
		}
		out.WithDifferences(dc)
	}
	if st.Truncated {
		out.WithTruncated(true)
	}
	if len(st.Notes) > 0 {
		out.WithNotes(st.Notes...)
	}
	for _, c := range st.Conditions {
		out.WithConditions(metav1ac.Condition().WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).
			WithMessage(c.Message).WithObservedGeneration(c.ObservedGeneration).WithLastTransitionTime(c.LastTransitionTime))
	}
	return out
}
