package agent

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// metrics are the agent's Prometheus series. Labels are bounded: intercept
// names come from the controller, never from request bytes.
type metrics struct {
	requests       *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	intercepts     prometheus.Gauge
	attachments    prometheus.Gauge
	steeredPorts   prometheus.Gauge
	bpfErrors      *prometheus.CounterVec
	syncConnected  prometheus.Gauge
	syncReconnects prometheus.Counter
	syncEvents     *prometheus.CounterVec

	// Resolved children of requests and latency, for the per-request path.
	unmatched *requestMetrics                                    // intercept ""
	latencyOf [len(outcomes)]atomic.Pointer[prometheus.Observer] // by outcomeIndex
}

// outcomes are the outcomes a router reports, in outcomeIndex order.
var outcomes = [...]proxy.Outcome{proxy.OutcomeMatched, proxy.OutcomeUnmatched, proxy.OutcomePassthrough, proxy.OutcomeFallback}

func outcomeIndex(o proxy.Outcome) int {
	switch o {
	case proxy.OutcomeMatched:
		return 0
	case proxy.OutcomeUnmatched:
		return 1
	case proxy.OutcomePassthrough:
		return 2
	case proxy.OutcomeFallback:
		return 3
	}
	return -1
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_agent_requests_total",
			Help: "Requests routed by the agent, by outcome: matched (sent to the developer's pod), unmatched (sent to the app), passthrough (connection not HTTP/1.x, passed to the app untouched), fallback (developer's pod unreachable, sent to the app).",
		}, []string{"intercept", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "detour_agent_request_duration_seconds",
			Help:    "Time from a request head read by the agent to the last byte of its response forwarded.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18),
		}, []string{"outcome"}),
		intercepts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_agent_active_intercepts",
			Help: "Intercepts the agent currently applies on its node.",
		}),
		attachments: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_agent_steering_attachments",
			Help: "Network namespaces with the sk_lookup steering program attached.",
		}),
		steeredPorts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_agent_steered_ports",
			Help: "Pod ports whose new connections are steered to the agent.",
		}),
		bpfErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_agent_bpf_errors_total",
			Help: "Failures to load, attach or update the eBPF steering, by operation.",
		}, []string{"op"}),
		syncConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_agent_sync_connected",
			Help: "1 while the agent's desired-state watch with the controller is open.",
		}),
		syncReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_agent_sync_reconnects_total",
			Help: "Times the agent re-established its watch with the controller.",
		}),
		syncEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_agent_sync_events_total",
			Help: "Desired-state events received from the controller, by type.",
		}, []string{"type"}),
	}
	reg.MustRegister(m.requests, m.latency, m.intercepts, m.attachments, m.steeredPorts,
		m.bpfErrors, m.syncConnected, m.syncReconnects, m.syncEvents)
	m.unmatched = m.forIntercept("")
	return m
}

// observe records one routed request, looking its series up by label; the
// per-request path uses requestMetrics instead.
func (m *metrics) observe(intercept string, o proxy.Outcome, d time.Duration) {
	m.requests.WithLabelValues(intercept, string(o)).Inc()
	m.latency.WithLabelValues(string(o)).Observe(d.Seconds())
}

// requestMetrics are the series one intercept's requests count in (or the
// requests no intercept took, for intercept ""), each resolved once, on
// first use, and then kept: WithLabelValues hashes the labels and locks the
// vector, too much for every request. Resolving on first use rather than up
// front keeps the exported series as they were: a series appears once a
// request was counted in it.
type requestMetrics struct {
	m         *metrics
	intercept string
	requests  [len(outcomes)]atomic.Pointer[prometheus.Counter]
}

func (m *metrics) forIntercept(intercept string) *requestMetrics {
	return &requestMetrics{m: m, intercept: intercept}
}

// observe is metrics.observe for r's intercept: atomic adds once resolved.
func (r *requestMetrics) observe(o proxy.Outcome, d time.Duration) {
	i := outcomeIndex(o)
	if i < 0 {
		r.m.observe(r.intercept, o, d)
		return
	}
	c := r.requests[i].Load()
	if c == nil {
		// Racing resolutions store the same child: the vector has one per
		// label set.
		cc := r.m.requests.WithLabelValues(r.intercept, string(o))
		c = &cc
		r.requests[i].Store(c)
	}
	(*c).Inc()
	h := r.m.latencyOf[i].Load()
	if h == nil {
		hh := r.m.latency.WithLabelValues(string(o))
		h = &hh
		r.m.latencyOf[i].Store(h)
	}
	(*h).Observe(d.Seconds())
}
