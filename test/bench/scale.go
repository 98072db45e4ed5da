package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apiconv"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// The scale stage: alice's matched request on a port with alice's
// intercept alone, and with many more session intercepts beside it (one per
// environment sharing the service), measured in alternating slices
// (docs/performance.md, "Cost flat in intercept count").
var (
	caseScale1 = caseDef{"scale-1", kindHTTP, podApp, 8080, "alice", podDev, true, "", false, "", false}
	caseScaleN = caseDef{"scale-n", kindHTTP, podApp, 8080, "alice", podDev, true, "scale-1", false, "", false}
)

type scaleResult struct {
	Intercepts int     `json:"intercepts"` // on the port in scale-n
	One        *sample `json:"one"`        // scale-1
	Many       *sample `json:"many"`       // scale-n; ratios to scale-1
	// PairedP50 is the median over slices of scale-n's p50 over
	// scale-1's in the same slice: what the target is held to.
	PairedP50 float64 `json:"paired_ratio_p50"`
	// Pairs are the per-slice ratios PairedP50 is the median of.
	Pairs []float64 `json:"paired_ratios_p50"`
	// CreateSeconds and DeleteSeconds: the extra intercepts created and
	// deleted through the controller's API, eight calls at a time, until
	// the agent applied them all (median over slices).
	CreateSeconds float64 `json:"create_s"`
	DeleteSeconds float64 `json:"delete_s"`
	// AgentRSSMiB is the agent's resident set with them all, at most
	// over the slices.
	AgentRSSMiB float64 `json:"agent_rss_mib"`
	// Idle is the share of a core the agent and the controller used
	// with no traffic, for a second before each measurement (median over
	// slices): the background cost of the intercepts, which lands on the
	// same two cores as the requests.
	Idle1   idleCPU `json:"idle_with_one"`
	IdleN   idleCPU `json:"idle_with_n"`
	Skipped string  `json:"skipped,omitempty"`
}

type idleCPU struct {
	Agent      float64 `json:"agent_core_share"`
	Controller float64 `json:"controller_core_share"`
	agent, ctl []float64
}

// sample measures the agent's and the controller's CPU over d.
func (ic *idleCPU) sample(ctx context.Context, b *bench, d time.Duration) {
	a0, c0, t0 := procTicks(b.agent), procTicks(b.ctlProc), time.Now()
	select {
	case <-ctx.Done():
		return
	case <-time.After(d):
	}
	el := time.Since(t0).Seconds() * b.clkTck
	ic.agent = append(ic.agent, float64(procTicks(b.agent)-a0)/el)
	ic.ctl = append(ic.ctl, float64(procTicks(b.ctlProc)-c0)/el)
	ic.Agent, ic.Controller = median(ic.agent), median(ic.ctl)
}

// scale runs the stage; intercepts is the count on the port in scale-n.
func (b *bench) scale(ctx context.Context, intercepts int) *scaleResult {
	res := &scaleResult{Intercepts: intercepts}
	if err := b.scaleSlices(ctx, res); err != nil {
		res.Skipped = err.Error()
		say("scale stage: %v", err)
	}
	return res
}

func (b *bench) scaleSlices(ctx context.Context, res *scaleResult) error {
	conn, err := grpc.NewClient("passthrough:///"+b.ctl, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctl := detourv1.NewControlServiceClient(conn)
	one, many := &sample{Name: caseScale1.name}, &sample{Name: caseScaleN.name}
	var creates, deletes []float64
	extra := res.Intercepts - 1
	if err := b.createIntercepts(ctx); err != nil {
		return fmt.Errorf("create alice: %w", err)
	}
	defer func() {
		if err := b.deleteIntercepts(context.WithoutCancel(ctx)); err != nil {
			say("scale stage: delete alice: %v", err)
		}
	}()
	base := b.activeIntercepts(ctx)
	for k := 0; k < b.slices(); k++ {
		// One before many, always. Measuring the many first every other
		// slice put the creation of 999 right after the previous
		// slice's deletion of 999, and the agent's and controller's
		// work after two bursts into scale-n's loaded pass: req/s 0.76
		// and 0.81x in two runs so, 1.15x in one without
		// (docs/performance.md, "Cost flat in intercept count").
		say("scale slice %d of %d: 1, then %d intercepts on the port", k+1, b.slices(), res.Intercepts)
		res.Idle1.sample(ctx, b, time.Second)
		for pass := 0; pass < 2; pass++ {
			if err := b.measure(ctx, one, caseScale1, pass); err != nil {
				return err
			}
		}
		t0 := time.Now()
		if err := b.sessionIntercepts(ctx, ctl, extra, true); err != nil {
			return err
		}
		if err := b.waitActive(ctx, base+extra); err != nil {
			return err
		}
		creates = append(creates, time.Since(t0).Seconds())
		if got, err := b.who(ctx, b.url(podApp, 8080), "alice", false); err != nil || got != podDev {
			return fmt.Errorf("with %d intercepts alice's request was answered by %q (%v), want %s", res.Intercepts, got, err, podDev)
		}
		res.IdleN.sample(ctx, b, time.Second)
		for pass := 0; pass < 2; pass++ {
			if err := b.measure(ctx, many, caseScaleN, pass); err != nil {
				return err
			}
		}
		res.AgentRSSMiB = max(res.AgentRSSMiB, agentRSS(b.agent))
		t0 = time.Now()
		if err := b.sessionIntercepts(ctx, ctl, extra, false); err != nil {
			return err
		}
		if err := b.waitActive(ctx, base); err != nil {
			return err
		}
		deletes = append(deletes, time.Since(t0).Seconds())
	}
	// Each slice measured both once: its own ratio is free of the drift
	// between slices, which on this machine is as large as the bound.
	var pairs []float64
	for i := range min(len(one.p50s), len(many.p50s)) {
		if one.p50s[i] > 0 {
			pairs = append(pairs, many.p50s[i]/one.p50s[i])
		}
	}
	res.PairedP50, res.Pairs = median(pairs), pairs
	one.finish()
	many.finish()
	many.RatioP50, many.RatioP99, many.RatioRPS = many.P50US/one.P50US, many.P99US/one.P99US, many.RPS/one.RPS
	for _, s := range []*sample{one, many} {
		if s.Requests > 0 {
			v := float64(s.cpuTicks) / b.clkTck / float64(s.Requests) * 1e5
			s.AgentCPUPer100k = &v
		}
	}
	res.One, res.Many = one, many
	res.CreateSeconds, res.DeleteSeconds = median(creates), median(deletes)
	return nil
}

// sessionIntercepts creates (or deletes) n session intercepts env-NNNN on
// alice's port, to b-dev, eight calls at a time.
func (b *bench) sessionIntercepts(ctx context.Context, ctl detourv1.ControlServiceClient, n int, create bool) error {
	work := make(chan int)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				name := fmt.Sprintf("env-%04d", i)
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				var err error
				if create {
					var conds []*detourv1.Condition
					conds, err = apiconv.ConditionsToProto([]match.Condition{{Kind: match.Session, Value: name}})
					if err == nil {
						_, err = ctl.CreateIntercept(cctx, &detourv1.CreateInterceptRequest{Intercept: &detourv1.Intercept{
							Namespace: "default", Name: name,
							Spec: &detourv1.InterceptSpec{
								ServiceNamespace: "default", ServiceName: "app", Port: 80,
								Match: conds, Destination: podDev + ":8080",
							},
						}})
					}
				} else {
					_, err = ctl.DeleteIntercept(cctx, &detourv1.DeleteInterceptRequest{Namespace: "default", Name: name})
				}
				cancel()
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", name, err))
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more", len(errs)-3))
	}
	return errors.Join(errs...)
}

func (b *bench) activeIntercepts(ctx context.Context) int {
	m, err := b.agentMetrics(ctx)
	if err != nil {
		return -1
	}
	v, _ := promValue(m, "detour_agent_active_intercepts")
	return int(v)
}

// waitActive waits until the agent applies n intercepts.
func (b *bench) waitActive(ctx context.Context, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := b.activeIntercepts(ctx)
		if got == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent applies %d intercepts after 60 s, want %d", got, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
