package controller

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// seriesNames lists the controller's series as name{labels}, values aside.
func (h *harness) seriesNames(t *testing.T) []string {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			out = append(out, mf.GetName()+"{"+strings.Join(ls, ",")+"}")
		}
	}
	slices.Sort(out)
	return out
}

// TestSeriesAfterInterceptChurn: intercepts created, reported on by an
// agent, renewed and deleted leave the controller with the series it had
// before: no series is per intercept (see metrics.go).
func TestSeriesAfterInterceptChurn(t *testing.T) {
	h := newHarness(t)
	base := h.seriesNames(t)
	for i := range 20 {
		name := fmt.Sprintf("churn-%d", i)
		h.create(req(name, "api-alice:8080", 0, session(name)))
		if _, err := h.agents.ReportStatus(ctx(t), &detourv1.ReportStatusRequest{Node: "lab", Intercepts: []*detourv1.InterceptReport{
			{Namespace: "default", Name: name, SteeringAttached: true, Matched: 3, Fallbacks: 1},
		}}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.ctl.RenewIntercept(ctx(t), &detourv1.RenewInterceptRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.ctl.DeleteIntercept(ctx(t), &detourv1.DeleteInterceptRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.seriesNames(t); !slices.Equal(got, base) {
		t.Fatalf("after the churn:\n%v\nwant the series before:\n%v", got, base)
	}
}
