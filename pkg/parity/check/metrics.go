package check

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourdev/detour/pkg/parity"
)

// Results of a run, the label of detour_parity_runs_total.
const (
	resultPass  = "pass"
	resultDrift = "drift"
	resultError = "error"
)

// metrics are the checks' (docs/parity.md, "ParityCheck"). A check's
// series are labelled namespace/name: checks are made by whoever may create
// ParityCheck resources, so their number is bounded by the cluster's RBAC,
// and a deleted check's series are deleted with it.
type metrics struct {
	differences *prometheus.GaugeVec
	lastRun     *prometheus.GaugeVec
	runs        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		differences: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "detour_parity_differences",
			Help: "Unexpected differences a ParityCheck's last run found, by category and the severity its policy gives the category; 0 for a category without any.",
		}, []string{"check", "category", "severity"}),
		lastRun: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "detour_parity_last_run_timestamp_seconds",
			Help: "When a ParityCheck last compared its two namespaces (Unix time); it stops moving while runs fail.",
		}, []string{"check"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_parity_runs_total",
			Help: "ParityCheck runs by result: pass, drift, or error (a side or the policy could not be read).",
		}, []string{"result"}),
	}
	for _, r := range []string{resultPass, resultDrift, resultError} {
		m.runs.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.differences, m.lastRun, m.runs} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("parity check metrics: %w", err)
			}
		}
	}
	return m, nil
}

// observe sets a check's series from a run's report: one per category,
// under the severity the policy gives it (a policy change moves a series
// to another severity: the check's old ones are deleted first).
func (m *metrics) observe(check string, rep *parity.Report, pol *parity.Policy, at time.Time) {
	m.differences.DeletePartialMatch(prometheus.Labels{"check": check})
	for _, c := range parity.Categories {
		m.differences.WithLabelValues(check, string(c), string(pol.SeverityOf(c))).Set(float64(rep.Summary.ByCategory[c]))
	}
	m.lastRun.WithLabelValues(check).Set(float64(at.UnixNano()) / 1e9)
	if rep.Drift() {
		m.runs.WithLabelValues(resultDrift).Inc()
	} else {
		m.runs.WithLabelValues(resultPass).Inc()
	}
}

// forget deletes a check's series.
func (m *metrics) forget(check string) {
	m.differences.DeletePartialMatch(prometheus.Labels{"check": check})
	m.lastRun.DeleteLabelValues(check)
}
