package main

import (
	"math"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6*math.Max(1, math.Abs(b)) }

func TestParseWrk(t *testing.T) {
	tests := []struct {
		name, out          string
		p50, p99, rps      float64
		requests, failures int64
	}{
		{
			name: "latency in us and ms",
			out: `Running 5s test @ http://10.219.0.2:8080/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   101.22us   75.01us   3.87ms   98.73%
    Req/Sec     9.93k   512.33    10.58k    78.43%
  Latency Distribution
     50%   92.00us
     75%  101.00us
     90%  115.00us
     99%    1.20ms
  50321 requests in 5.10s, 6.19MB read
Requests/sec:   9866.86
Transfer/sec:      1.21MB
`,
			p50: 92, p99: 1200, rps: 9866.86, requests: 50321,
		},
		{
			name: "errors and seconds",
			out: `Running 1s test @ http://10.219.0.4:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.01ms    1.00ms   1.20s    90.00%
    Req/Sec     5.00k   100.00     6.00k    70.00%
  10000 requests in 1.00s, 1.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  10000.00
Transfer/sec:      1.00MB
`,
			rps: 10000, requests: 10000, failures: 10,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseWrk(tt.out)
			if err != nil {
				t.Fatal(err)
			}
			if !near(r.P50, tt.p50) || !near(r.P99, tt.p99) || !near(r.RPS, tt.rps) ||
				r.Requests != tt.requests || r.Non2xx+r.SocketErrors != tt.failures {
				t.Errorf("got %+v", r)
			}
		})
	}
	if _, err := parseWrk("unable to connect to 10.219.0.2:8080 Connection refused\n"); err == nil {
		t.Error("a wrk run that reached nothing parsed without error")
	}
}

func TestDurationUS(t *testing.T) {
	for in, want := range map[string]float64{"85.32us": 85.32, "1.23ms": 1230, "2.00s": 2e6, "1.00m": 60e6} {
		if got, err := durationUS(in); err != nil || !near(got, want) {
			t.Errorf("durationUS(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := durationUS("12"); err == nil {
		t.Error("a number without a unit parsed")
	}
}

func TestParseH2load(t *testing.T) {
	out := `starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up phase is over for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 4321.00 req/s, 500.00KB/s
requests: 4321 total, 4322 started, 4321 done, 4320 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 4320 2xx, 0 3xx, 0 4xx, 1 5xx
traffic: 500.00KB (512000) total, 100.00KB (102400) headers (space savings 90.00%), 50.00KB (51200) data
                     min         max         mean         sd        +/- sd
time for request:      150us      2.50ms       220us        50us    95.00%
`
	r, err := parseH2load(out)
	if err != nil {
		t.Fatal(err)
	}
	if !near(r.RPS, 4321) || r.Requests != 4320 || r.Failed != 1 || r.Non2xx != 1 {
		t.Errorf("got %+v", r)
	}
	p50, p99, n, err := parseH2loadLog("1700000000000000\t200\t100\n1700000000000100\t200\t300\n1700000000000400\t200\t200\n")
	if err != nil || p50 != 200 || p99 != 300 || n != 3 {
		t.Errorf("log: p50 %v p99 %v n %d err %v", p50, p99, n, err)
	}
}

func TestParseIperf3(t *testing.T) {
	mib, err := parseIperf3([]byte(`{"start":{},"end":{"sum_received":{"bytes":1048576000,"bits_per_second":1677721600}}}`))
	if err != nil || !near(mib, 200) {
		t.Errorf("got %v, %v; want 200 MiB/s", mib, err)
	}
	if _, err := parseIperf3([]byte(`{"error":"the server is busy running a test. try again later"}`)); err == nil {
		t.Error("an iperf3 error parsed without error")
	}
}

func TestProc(t *testing.T) {
	ticks, err := parseProcStatCPU("1234 (detour agent) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 555 0 0")
	if err != nil || ticks != 325 {
		t.Errorf("ticks %d, %v; want 325", ticks, err)
	}
	rss, err := parseVmRSS("Name:\tdetour-agent\nVmRSS:\t   33792 kB\nRssAnon:\t1 kB\n")
	if err != nil || !near(rss, 33) {
		t.Errorf("rss %v, %v; want 33", rss, err)
	}
}

func TestPromValue(t *testing.T) {
	text := `# TYPE detour_agent_requests_total counter
detour_agent_requests_total{intercept="",outcome="unmatched"} 10
detour_agent_requests_total{intercept="default/alice",outcome="matched"} 5
detour_agent_requests_totally 99
detour_agent_steered_ports 2
`
	tests := []struct {
		metric string
		want   []string
		v      float64
		ok     bool
	}{
		{"detour_agent_requests_total", nil, 15, true},
		{"detour_agent_requests_total", []string{`outcome="matched"`}, 5, true},
		{"detour_agent_steered_ports", nil, 2, true},
		{"detour_agent_missing", nil, 0, false},
	}
	for _, tt := range tests {
		if v, ok := promValue(text, tt.metric, tt.want...); v != tt.v || ok != tt.ok {
			t.Errorf("promValue(%s, %v) = %v, %v; want %v, %v", tt.metric, tt.want, v, ok, tt.v, tt.ok)
		}
	}
}

func TestMedianAndDisagreements(t *testing.T) {
	if m := median([]float64{5, 1, 3}); m != 3 {
		t.Errorf("median = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
	prev := &roundResult{Cases: []*sample{{Name: "direct", RatioP50: 1}, {Name: "matched", RatioP50: 1.40, RatioRPS: 0.60}}}
	cur := &roundResult{Cases: []*sample{{Name: "direct", RatioP50: 2}, {Name: "matched", RatioP50: 1.45, RatioRPS: 0.40}}}
	d := disagreements(prev, cur, 0.10)
	if len(d) != 1 {
		t.Errorf("disagreements = %v; want only matched ratio_rps", d)
	}
}
