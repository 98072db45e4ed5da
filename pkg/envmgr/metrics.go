package envmgr

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// metrics are the reconciler's: how many environments are in each phase,
// how long they take to become Ready, how many expired.
type metrics struct {
	phase   *prometheus.GaugeVec
	toReady prometheus.Histogram
	expired prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "detour_environments",
			Help: "Environments by phase.",
		}, []string{"phase"}),
		toReady: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "detour_environment_ready_seconds",
			Help:    "Time from an environment's creation to its first Ready.",
			Buckets: []float64{0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600},
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_environments_expired_total",
			Help: "Environments removed because their TTL ran out.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.phase, m.toReady, m.expired} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("environment metrics: %w", err)
			}
		}
	}
	return m, nil
}

// observe records env's phase, and its time to Ready the first time.
func (r *Reconciler) observe(env *v1alpha1.Environment, st v1alpha1.EnvironmentStatus, now time.Time) {
	k := env.Namespace + "/" + env.Name
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev, ok := r.phases[k]; ok {
		r.m.phase.WithLabelValues(string(prev)).Dec()
	}
	r.phases[k] = st.Phase
	r.m.phase.WithLabelValues(string(st.Phase)).Inc()
	if st.Phase == v1alpha1.EnvironmentReady && !r.ready[k] {
		r.ready[k] = true
		if !env.CreationTimestamp.IsZero() {
			r.m.toReady.Observe(now.Sub(env.CreationTimestamp.Time).Seconds())
		}
	}
}

// forget drops a removed environment from the metrics.
func (r *Reconciler) forget(env *v1alpha1.Environment) {
	k := env.Namespace + "/" + env.Name
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev, ok := r.phases[k]; ok {
		r.m.phase.WithLabelValues(string(prev)).Dec()
	}
	delete(r.phases, k)
	delete(r.ready, k)
}
