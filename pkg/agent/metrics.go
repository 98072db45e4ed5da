package agent

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourdev/detour/pkg/redirect/proxy"
)

// metrics are the agent's Prometheus series. Labels are bounded: intercept
// names come from the controller, never from request bytes, and an
// intercept's series are deleted when it leaves the node (forget), so a
// churn of intercepts leaves none behind.
type metrics struct {
	requests       *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	passthroughs   *prometheus.CounterVec
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
		passthroughs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_agent_passthroughs_total",
			Help: "Connections, or the rest of one, passed to the app untouched, by reason: not_http (TLS, another protocol), no_request (nothing within the first second: the server speaks first), malformed_head, head_too_large (over 64 KiB), head_timeout (not complete within --head-timeout), slow_heads_full (not complete within the first second with --max-slow-heads connections already waiting).",
		}, []string{"reason"}),
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
	reg.MustRegister(m.requests, m.latency, m.passthroughs, m.intercepts, m.attachments, m.steeredPorts,
		m.bpfErrors, m.syncConnected, m.syncReconnects, m.syncEvents)
	for _, r := range proxy.Reasons {
		m.passthroughs.WithLabelValues(string(r))
	}
	m.unmatched = m.forIntercept("")
	return m
}

// slowHeadsGauge exports how many connections wait for the rest of a
// request head beyond the first second, over all ports.
func slowHeadsGauge(s *proxy.SlowHeads) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "detour_agent_slow_heads",
		Help: "Connections waiting for the rest of a request head beyond the first second (up to --head-timeout), over all ports; at most --max-slow-heads.",
	}, func() float64 { return float64(s.Waiting()) })
}

// observeGone records a request of an intercept that has left the node
// while the request was being routed: in the latency only, since the
// intercept's series are gone with it and must not be made again.
func (m *metrics) observeGone(o proxy.Outcome, d time.Duration) {
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

	// mu makes resolving a series and forgetting them all exclusive, so
	// that a request finishing as its intercept leaves cannot make a
	// series again after forget deleted them.
	mu   sync.Mutex
	gone bool
}

func (m *metrics) forIntercept(intercept string) *requestMetrics {
	return &requestMetrics{m: m, intercept: intercept}
}

// observe is metrics.observe for r's intercept: atomic adds once resolved.
func (r *requestMetrics) observe(o proxy.Outcome, d time.Duration) {
	i := outcomeIndex(o)
	if i < 0 {
		return // not an outcome the proxy reports
	}
	c := r.requests[i].Load()
	if c == nil {
		c = r.resolve(i, o)
	}
	if c != nil {
		// Once forgotten, a child resolved before only counts where
		// nobody scrapes: it is no longer in the vector.
		(*c).Inc()
	}
	h := r.m.latencyOf[i].Load()
	if h == nil {
		hh := r.m.latency.WithLabelValues(string(o))
		h = &hh
		r.m.latencyOf[i].Store(h)
	}
	(*h).Observe(d.Seconds())
}

// resolve finds the series of outcome o (index i), unless the intercept's
// series were forgotten.
func (r *requestMetrics) resolve(i int, o proxy.Outcome) *prometheus.Counter {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone {
		return nil
	}
	if c := r.requests[i].Load(); c != nil {
		return c
	}
	c := r.m.requests.WithLabelValues(r.intercept, string(o))
	r.requests[i].Store(&c)
	return &c
}

// forget deletes the intercept's series: it has left the node. Requests of
// it still being routed then count in the latency only.
func (r *requestMetrics) forget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gone = true
	for i := range r.requests {
		r.requests[i].Store(nil)
	}
	r.m.requests.DeletePartialMatch(prometheus.Labels{"intercept": r.intercept})
}
