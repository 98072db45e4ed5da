package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// kernelRequestsDesc: requests the kernel routed without the agent (the
// fast path, docs/architecture.md, data path step 7). A sibling of
// detour_agent_requests_total, which counts what the agent routes, so
// that the two add up to all requests of the intercepted ports.
var kernelRequestsDesc = prometheus.NewDesc(
	"detour_agent_kernel_requests_total",
	"Requests routed in the kernel by the HTTP/1.1 fast path (--fast-path), per intercept; intercept=\"\" counts those sent to the app. Not in detour_agent_requests_total. Counted per port while the port is intercepted: a port that stops being intercepted takes its counts with it.",
	[]string{"intercept"}, nil,
)

// kernelRequests reads the fast path's counts at each scrape.
type kernelRequests struct{ d *dataplane }

func (k kernelRequests) Describe(ch chan<- *prometheus.Desc) { ch <- kernelRequestsDesc }

func (k kernelRequests) Collect(ch chan<- prometheus.Metric) {
	for id, n := range k.d.kernelRouted() {
		ch <- prometheus.MustNewConstMetric(kernelRequestsDesc, prometheus.CounterValue, float64(n), id)
	}
}

// kernelRouted sums, per intercept ("" for the app), the requests the
// kernel routed on the ports that have the fast path.
func (d *dataplane) kernelRouted() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]uint64{}
	for _, p := range d.ports {
		if p.fast == nil {
			continue
		}
		for id, n := range p.fast.Routed() {
			out[id] += n
		}
	}
	return out
}
