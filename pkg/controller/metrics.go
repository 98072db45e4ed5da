package controller

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// metrics are the controller's Prometheus series. Labels are bounded: an
// operation's result is one of a handful of words, never a name or a header
// value from a request. No series is per intercept: intercepts come and go
// by the thousand over a controller's life, and per-intercept numbers are in
// their status (matched, fallbacks). A per-intercept series would have to be
// deleted when its intercept goes, as the agent's are
// (TestSeriesAfterInterceptChurn holds the controller to its series).
type metrics struct {
	activeIntercepts prometheus.Gauge
	connectedAgents  prometheus.Gauge
	creates          *prometheus.CounterVec
	deletes          *prometheus.CounterVec
	renewals         *prometheus.CounterVec
	expirations      *prometheus.CounterVec
	// For intercepts written to the store by others (kubectl).
	refusedIntercepts prometheus.Gauge
	externalRefusals  *prometheus.CounterVec
}

// The values each result label can take, set up front so that every series
// exists (at zero) from the start and rate() sees the first increment.
var (
	createResults = []string{"ok", "invalid", "not_found", "exists", "conflict", "error"}
	changeResults = []string{"ok", "invalid", "not_found", "error"} // delete, renew
	expireResults = []string{"ok", "error"}
	refuseResults = []string{"invalid", "conflict"}
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "detour", Subsystem: "controller", Name: name, Help: help,
		}, []string{"result"})
	}
	m := &metrics{
		activeIntercepts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "detour", Subsystem: "controller", Name: "intercepts_active",
			Help: "Intercepts the controller holds.",
		}),
		connectedAgents: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "detour", Subsystem: "controller", Name: "agents_connected",
			Help: "Nodes with at least one open desired-state watch.",
		}),
		creates:     counter("intercept_creates_total", "CreateIntercept calls by result."),
		deletes:     counter("intercept_deletes_total", "DeleteIntercept calls by result."),
		renewals:    counter("intercept_renewals_total", "RenewIntercept calls by result."),
		expirations: counter("intercept_expirations_total", "Intercepts removed because their lease ended, by result."),
		refusedIntercepts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "detour", Subsystem: "controller", Name: "intercepts_refused",
			Help: "Intercepts in the store (written with kubectl, say) that the controller does not apply because they are invalid or overlap another.",
		}),
		externalRefusals: counter("external_intercept_refusals_total",
			"Versions of intercepts written to the store by others that the controller refused, by result (invalid or conflict)."),
	}
	for v, rs := range map[*prometheus.CounterVec][]string{
		m.creates: createResults, m.deletes: changeResults, m.renewals: changeResults, m.expirations: expireResults,
		m.externalRefusals: refuseResults,
	} {
		for _, r := range rs {
			v.WithLabelValues(r)
		}
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.activeIntercepts, m.connectedAgents, m.creates, m.deletes, m.renewals, m.expirations, m.refusedIntercepts, m.externalRefusals} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// result names the outcome of an RPC for the result label.
func result(err error) string {
	if err == nil {
		return "ok"
	}
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return "error"
	}
	switch se.GRPCStatus().Code() {
	case codes.InvalidArgument:
		return "invalid"
	case codes.NotFound:
		return "not_found"
	case codes.AlreadyExists:
		return "exists"
	case codes.FailedPrecondition:
		return "conflict"
	}
	return "error"
}
