package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// wrkResult is what one wrk run reports. Latencies are in microseconds.
type wrkResult struct {
	P50, P75, P90, P99 float64 // 0 when wrk ran without --latency
	Requests           int64
	Seconds            float64
	RPS                float64
	Non2xx             int64
	SocketErrors       int64
}

// parseWrk reads wrk's text report. wrk prints its latency distribution in
// adaptive units (us, ms, s); they are normalised to microseconds.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	inDist := false
	sawRPS := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
		case len(f) == 2 && f[0] == "Latency" && f[1] == "Distribution":
			inDist = true
		case inDist && len(f) == 2 && strings.HasSuffix(f[0], "%"):
			us, err := durationUS(f[1])
			if err != nil {
				return r, fmt.Errorf("wrk latency %q: %w", f[1], err)
			}
			switch f[0] {
			case "50%", "50.000%":
				r.P50 = us
			case "75%", "75.000%":
				r.P75 = us
			case "90%", "90.000%":
				r.P90 = us
			case "99%", "99.000%":
				r.P99 = us
			}
		case len(f) >= 4 && f[1] == "requests" && f[2] == "in":
			inDist = false
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return r, fmt.Errorf("wrk request count %q: %w", f[0], err)
			}
			r.Requests = n
			s, err := durationUS(strings.TrimSuffix(f[3], ","))
			if err == nil {
				r.Seconds = s / 1e6
			}
		case f[0] == "Requests/sec:" && len(f) == 2:
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk requests/sec %q: %w", f[1], err)
			}
			r.RPS, sawRPS = v, true
		case len(f) >= 5 && f[0] == "Non-2xx":
			r.Non2xx, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
		case len(f) >= 3 && f[0] == "Socket" && f[1] == "errors:":
			// Socket errors: connect 0, read 0, write 0, timeout 0
			for i := 2; i+1 < len(f); i += 2 {
				n, _ := strconv.ParseInt(strings.TrimSuffix(f[i+1], ","), 10, 64)
				r.SocketErrors += n
			}
		}
	}
	if !sawRPS || r.Requests == 0 {
		return r, errors.New("wrk printed no requests/sec (did it reach the server?)")
	}
	return r, nil
}

// durationUS converts wrk's "85.32us", "1.23ms", "2.00s", "1.00m" to µs.
func durationUS(s string) (float64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"us", 1}, {"ms", 1e3}, {"s", 1e6}, {"m", 60e6}, {"h", 3600e6}}
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, err
			}
			return f * u.mult, nil
		}
	}
	return 0, fmt.Errorf("no unit in %q", s)
}

// h2Result is what one h2load run reports.
type h2Result struct {
	RPS       float64
	Requests  int64 // succeeded
	Failed    int64
	Non2xx    int64
	P50, P99  float64 // µs, from the per-request log; 0 without one
	LogSample int
}

// parseH2load reads h2load's text report.
func parseH2load(out string) (h2Result, error) {
	var r h2Result
	sawFinished := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "finished in "):
			// finished in 5.00s, 12345.67 req/s, 1.23MB/s
			parts := strings.Split(line, ",")
			if len(parts) < 2 {
				return r, fmt.Errorf("h2load: odd line %q", line)
			}
			v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(parts[1]), " req/s"), 64)
			if err != nil {
				return r, fmt.Errorf("h2load req/s in %q: %w", line, err)
			}
			r.RPS, sawFinished = v, true
		case strings.HasPrefix(line, "requests: "):
			// requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout
			for _, p := range strings.Split(strings.TrimPrefix(line, "requests: "), ",") {
				f := strings.Fields(p)
				if len(f) != 2 {
					continue
				}
				n, _ := strconv.ParseInt(f[0], 10, 64)
				switch f[1] {
				case "succeeded":
					r.Requests = n
				case "failed", "errored", "timeout":
					r.Failed += n
				}
			}
		case strings.HasPrefix(line, "status codes: "):
			for _, p := range strings.Split(strings.TrimPrefix(line, "status codes: "), ",") {
				f := strings.Fields(p)
				if len(f) == 2 && f[1] != "2xx" {
					n, _ := strconv.ParseInt(f[0], 10, 64)
					r.Non2xx += n
				}
			}
		}
	}
	if !sawFinished {
		return r, errors.New("h2load printed no 'finished in' line")
	}
	if r.Requests == 0 {
		return r, fmt.Errorf("h2load: no request succeeded (%d failed)", r.Failed)
	}
	return r, nil
}

// parseH2loadLog reads h2load --log-file (start µs, status, duration µs per
// line) and returns the median and 99th percentile of the durations.
func parseH2loadLog(log string) (p50, p99 float64, n int, err error) {
	var ds []float64
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		d, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			continue
		}
		ds = append(ds, d)
	}
	if len(ds) == 0 {
		return 0, 0, 0, errors.New("h2load log has no requests")
	}
	sort.Float64s(ds)
	return percentile(ds, 50), percentile(ds, 99), len(ds), nil
}

// percentile of sorted xs, nearest rank.
func percentile(xs []float64, p float64) float64 {
	i := int(math.Ceil(p/100*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// parseIperf3 returns the receiver's throughput in MiB/s from iperf3 -J.
func parseIperf3(out []byte) (float64, error) {
	var v struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return 0, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if v.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", v.Error)
	}
	if v.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("iperf3 reported no received bytes")
	}
	return v.End.SumReceived.BitsPerSecond / 8 / (1 << 20), nil
}

// parseProcStatCPU returns utime+stime in clock ticks from /proc/PID/stat.
func parseProcStatCPU(stat string) (int64, error) {
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted from the last ')'.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no ')' in /proc stat")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	u, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, err
	}
	s, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, err
	}
	return u + s, nil
}

// parseVmRSS returns VmRSS in MiB from /proc/PID/status.
func parseVmRSS(status string) (float64, error) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseFloat(f[0], 64)
				return kb / 1024, err
			}
		}
	}
	return 0, errors.New("no VmRSS")
}

// promValue sums the samples of metric (whose labels contain every one of
// want, e.g. `outcome="matched"`) in a Prometheus text exposition.
func promValue(text, metric string, want ...string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, metric) {
			continue
		}
		rest := line[len(metric):]
		if rest == "" || rest[0] != ' ' && rest[0] != '{' {
			continue // a longer metric name
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(rest, w)
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest) // label values here hold no spaces
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

// logLine is one line of the controller's or the agent's log (slog's text
// format: time=... level=... msg="..." key=value ...).
type logLine struct {
	Time  time.Time
	Msg   string
	Attrs map[string]string
}

// parseLogLine reads one slog text line; ok is false for anything else
// (a panic's trace, a line cut short).
func parseLogLine(line string) (l logLine, ok bool) {
	l.Attrs = map[string]string{}
	rest := strings.TrimSpace(line)
	for rest != "" {
		key, after, found := strings.Cut(rest, "=")
		if !found || key == "" || strings.ContainsAny(key, " \"") {
			return logLine{}, false
		}
		var val string
		if strings.HasPrefix(after, `"`) {
			// A quoted value ends at the first unescaped quote.
			end := 1
			for end < len(after) && after[end] != '"' {
				if after[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(after) {
				return logLine{}, false
			}
			v, err := strconv.Unquote(after[:end+1])
			if err != nil {
				return logLine{}, false
			}
			val, rest = v, after[end+1:]
		} else {
			val, rest, _ = strings.Cut(after, " ")
		}
		rest = strings.TrimLeft(rest, " ")
		switch key {
		case "time":
			t, err := time.Parse(time.RFC3339Nano, val)
			if err != nil {
				return logLine{}, false
			}
			l.Time = t
		case "msg":
			l.Msg = val
		default:
			l.Attrs[key] = val
		}
	}
	return l, !l.Time.IsZero() && l.Msg != ""
}

// parseLog reads every slog text line of a log, skipping the others.
func parseLog(log string) []logLine {
	var out []logLine
	for _, line := range strings.Split(log, "\n") {
		if l, ok := parseLogLine(line); ok {
			out = append(out, l)
		}
	}
	return out
}
