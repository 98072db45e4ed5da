package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// The control stage: how long from `detour intercept create` being run
// until a new connection with the intercept's key reaches the developer's
// pod, and from `detour intercept delete` until one reaches the app again
// (docs/performance.md, "Create to effective"). The port has no other
// intercept, so each create attaches the steering and each delete takes it
// away: the longest path.
type controlResult struct {
	Creations int `json:"creations"`
	// Effective: from the CLI's start to the first answer, by the pod
	// that should answer, to a request on a new connection begun after
	// that start. CLI: the CLI's own run, start to exit (create with
	// --wait: until the controller reports the steering attached).
	CreateP50ms    float64   `json:"create_effective_p50_ms"`
	CreateP99ms    float64   `json:"create_effective_p99_ms"`
	DeleteP50ms    float64   `json:"delete_effective_p50_ms"`
	DeleteP99ms    float64   `json:"delete_effective_p99_ms"`
	CreateCLIP50ms float64   `json:"create_cli_p50_ms"`
	DeleteCLIP50ms float64   `json:"delete_cli_p50_ms"`
	Creates        []float64 `json:"create_effective_ms"`
	Deletes        []float64 `json:"delete_effective_ms"`
	// ProbeMs is the median time of one probe (a new connection, one
	// request): the resolution of the numbers above.
	ProbeMs float64 `json:"probe_ms"`
	Skipped string  `json:"skipped,omitempty"`
}

func (b *bench) controlStage(ctx context.Context, n int) *controlResult {
	res := &controlResult{Creations: n}
	if err := b.controlRuns(ctx, res); err != nil {
		res.Skipped = err.Error()
		say("control stage: %v", err)
	}
	return res
}

func (b *bench) controlRuns(ctx context.Context, res *controlResult) error {
	if err := b.waitSteered(ctx, 0); err != nil {
		return err
	}
	var createCLI, deleteCLI, probes []float64
	for i := 0; i < res.Creations; i++ {
		name := fmt.Sprintf("ctl-%02d", i)
		// --wait, as a script that sends traffic next would run it: the
		// CLI's own time then includes learning that the steering is on.
		create := []string{"intercept", "create", name, "--service", "default/app", "--port", "80",
			"--session", name, "--to", podDev + ":8080", "--wait", "5s"}
		eff, cli, probe, err := b.timeEffective(ctx, name, podDev, create)
		if err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		res.Creates, createCLI, probes = append(res.Creates, eff), append(createCLI, cli), append(probes, probe)
		eff, cli, probe, err = b.timeEffective(ctx, name, podApp, []string{"intercept", "delete", name})
		if err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		res.Deletes, deleteCLI, probes = append(res.Deletes, eff), append(deleteCLI, cli), append(probes, probe)
		if err := b.waitSteered(ctx, 0); err != nil {
			return err
		}
	}
	res.CreateP50ms, res.CreateP99ms = median(res.Creates), quantile(res.Creates, 0.99)
	res.DeleteP50ms, res.DeleteP99ms = median(res.Deletes), quantile(res.Deletes, 0.99)
	res.CreateCLIP50ms, res.DeleteCLIP50ms = median(createCLI), median(deleteCLI)
	res.ProbeMs = median(probes)
	return nil
}

// quantile is the nearest-rank q-quantile of xs (the largest for 20
// values and q 0.99).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	ys := slices.Clone(xs)
	slices.Sort(ys)
	return ys[int(math.Ceil(q*float64(len(ys))))-1]
}

// timeEffective runs the CLI with args while requests with session key go,
// each on a new connection from b-client, one after the other, to b-app;
// it returns the milliseconds from the CLI's start until the first request
// begun after it is answered by want, the CLI's own run, and the median
// probe.
func (b *bench) timeEffective(ctx context.Context, key, want string, args []string) (eff, cli, probe float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var (
		mu    sync.Mutex
		start time.Time // zero until the CLI starts
		hit   = make(chan time.Time, 1)
		took  []float64
	)
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			t0 := time.Now()
			got, err := b.who(ctx, b.url(podApp, 8080), key, false)
			t1 := time.Now()
			mu.Lock()
			s := start
			took = append(took, float64(t1.Sub(t0).Microseconds())/1e3)
			mu.Unlock()
			if err == nil && got == want && !s.IsZero() && !t0.Before(s) {
				hit <- t1
				return
			}
		}
	})
	mu.Lock()
	start = time.Now()
	mu.Unlock()
	_, cerr := b.detour(ctx, args...)
	cliDone := time.Now()
	var at time.Time
	select {
	case at = <-hit:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	if cerr != nil {
		return 0, 0, 0, cerr
	}
	if at.IsZero() {
		return 0, 0, 0, fmt.Errorf("no request with key %s reached %s within 10 s", key, want)
	}
	return float64(at.Sub(start).Microseconds()) / 1e3, float64(cliDone.Sub(start).Microseconds()) / 1e3, median(took), nil
}
