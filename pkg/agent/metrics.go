package agent

import (
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
	return m
}

// observe records one routed request.
func (m *metrics) observe(intercept string, o proxy.Outcome, d time.Duration) {
	m.requests.WithLabelValues(intercept, string(o)).Inc()
	m.latency.WithLabelValues(string(o)).Observe(d.Seconds())
}
