package loadtest

// This file owns the capacity suite behind `make bench`: the scenarios, how
// each is run against its own broker, redis-server and geckohook processes,
// and how its figures are taken.

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/shard"
)

// ScenarioNames are the scenarios of `make bench`, in the order they run.
var ScenarioNames = []string{"healthy", "dead-endpoints", "recovering", "churn", "registry-scale", "registry-million", "partitions", "outage"}

// SuiteOptions configures a capacity run.
type SuiteOptions struct {
	Out       string   // results directory (report files, process logs)
	Short     bool     // the smoke version of every scenario
	Scenarios []string // names to run (empty: all)
	Log       io.Writer

	Geckohook string // geckohook binary, for the processes the suite starts
	RedisBin  string // redis-server binary

	// Existing deployment (all three set: nothing is started; the
	// partitions scenario, which must start its own processes, is skipped).
	Brokers    []string
	RedisAddr  string
	API        string
	AdminToken string
	Topic      string // events topic (default geckohook.events)

	Workers         int // geckohook's --workers, also the ceiling's largest concurrency (default 1024)
	MaxConnsPerHost int // geckohook's --max-conns-per-host, also the ceiling's (default 64)
	// Profile: take a CPU profile of the first geckohook process during
	// each flood, saved beside the process logs (cpu.pprof).
	Profile bool
	// PacedRate is the events/s of the paced phases: the healthy
	// scenario's latency phase and the outage scenario's flood after its
	// lead-in (0: half the rate each one's unpaced flood sustained).
	PacedRate float64
	// CeilingClient is the geckoload binary, run as `-ceiling-client` so
	// that the raw ceiling's client has a process, and a CPU time, of its
	// own (empty: the client runs in this process, its CPU unmeasured).
	CeilingClient string
	// Outage is how long the outage scenario's failing hosts stay down:
	// the first quarter refusing connections, the rest hanging (0: 60 s,
	// short 24 s).
	Outage time.Duration
}

// RunSuite runs the chosen scenarios one after the other and returns the
// report; a scenario that cannot run becomes a failed row, and the others
// still run.
func RunSuite(ctx context.Context, o SuiteOptions) (*Report, error) {
	if o.Topic == "" {
		o.Topic = "geckohook.events"
	}
	if o.Workers == 0 {
		o.Workers = 1024
	}
	if o.MaxConnsPerHost == 0 {
		o.MaxConnsPerHost = 64
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	names := o.Scenarios
	if len(names) == 0 {
		names = ScenarioNames
	}
	for _, n := range names {
		if !slices.Contains(ScenarioNames, n) {
			return nil, fmt.Errorf("unknown scenario %q (scenarios: %s)", n, strings.Join(ScenarioNames, ", "))
		}
	}
	s := &suite{o: o}
	rep := &Report{Started: time.Now().UTC(), Host: CurrentHost(), Short: o.Short}
	for _, n := range names {
		fmt.Fprintf(o.Log, "== %s\n", n)
		rows, err := s.scenario(ctx, n)
		if err != nil {
			fmt.Fprintf(o.Log, "%s: %v\n", n, err)
			rows = append(rows, Scenario{Name: n, Failures: []string{err.Error()}})
		}
		for _, r := range rows {
			if r.Name == "healthy" && r.Passed {
				s.healthyRate = r.DeliveriesPerSec
			}
		}
		rep.Scenarios = append(rep.Scenarios, rows...)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	return rep, nil
}

type suite struct {
	o           SuiteOptions
	healthyRate float64 // of the healthy scenario, for dead-endpoints
}

// sizes picks the full or the short figure.
func (s *suite) sizes(full, short time.Duration) time.Duration {
	if s.o.Short {
		return short
	}
	return full
}

// spec is one run of one scenario.
type spec struct {
	name, variant           string
	partitions, dispatchers int
	servers                 int
	plan                    *Plan
	flood                   time.Duration // how long to produce
	settle                  time.Duration // the most to wait after for every pair to settle
	paced                   time.Duration // > 0: then a latency phase at half the rate
	// deliverable: hooks whose attempts succeed during the flood (the
	// producer keeps at most maxAhead of their pairs undelivered).
	deliverable func(h *PlanHook) bool
	// queued: hooks whose pairs may end waiting in the retry queue.
	queued func(h *PlanHook) bool
	// deleted: hooks that must be deleted by the end.
	deleted func(h *PlanHook) bool
	// arm gives hooks their time-based behaviour when the flood starts.
	arm func(farm *Farm, p *Plan, t0 time.Time)
	// perWebhook: report the memory geckohook grew by per webhook registered.
	perWebhook bool
	// register, when set, registers the plan instead of the API calls of
	// Register; during, when set, runs while the flood runs.
	register func(ctx context.Context, st *Stack, p *Plan, row *Scenario) error
	during   func(ctx context.Context, st *Stack, row *Scenario) error
	// farm and ceiling, when set, are shared with other runs of the
	// scenario (the plan's URLs point at that farm).
	farm    *Farm
	ceiling *Ceiling
	// outage, when set, takes the failing hosts down during the flood and
	// measures the queues and the drain (outage.go).
	outage *outage
}

const maxAhead = 40_000

func (s *suite) scenario(ctx context.Context, name string) ([]Scenario, error) {
	ok := func(*PlanHook) bool { return true }
	zero := func(h *PlanHook) bool { return h.Behaviour == (EndpointBehaviour{}) }
	switch name {
	case "healthy":
		p := singles(1000, 10, 16, nil)
		return s.runOne(ctx, spec{name: name, partitions: 8, dispatchers: 1, servers: 16, plan: p,
			flood: s.sizes(30*time.Second, 10*time.Second), settle: 30 * time.Second,
			paced: s.sizes(15*time.Second, 6*time.Second), deliverable: ok})
	case "dead-endpoints":
		// 100 of 1,000 endpoints never answer, spread over 10 hosts of
		// their own; each attempt takes the whole 10 s limit.
		p := singles(1000, 10, 26, func(i int) (int, EndpointBehaviour) {
			if i%10 == 9 {
				return 16 + (i/10)%10, EndpointBehaviour{Hang: true}
			}
			return i % 16, EndpointBehaviour{}
		})
		hang := func(h *PlanHook) bool { return h.Behaviour.Hang }
		return s.runOne(ctx, spec{name: name, partitions: 8, dispatchers: 1, servers: 26, plan: p,
			flood: s.sizes(30*time.Second, 12*time.Second), settle: 40 * time.Second,
			deliverable: zero, queued: hang})
	case "recovering":
		// 200 of 1,000 endpoints answer 500 for the first part of the
		// flood, then 200: their deliveries wait for Sidekiq's first
		// retry (15-25 s later) and must all arrive.
		failFor := s.sizes(10*time.Second, 5*time.Second)
		p := singles(1000, 10, 16, nil)
		failing := func(h *PlanHook) bool { return h.Account%5 == 4 }
		return s.runOne(ctx, spec{name: name, partitions: 8, dispatchers: 1, servers: 16, plan: p,
			flood: s.sizes(20*time.Second, 10*time.Second), settle: 90 * time.Second,
			deliverable: func(h *PlanHook) bool { return !failing(h) },
			arm: func(farm *Farm, p *Plan, t0 time.Time) {
				for i := range p.Hooks {
					if failing(&p.Hooks[i]) {
						farm.SetBehaviour(i, EndpointBehaviour{FailUntil: t0.Add(failFor)})
					}
				}
			}})
	case "churn":
		// 100 of 1,000 endpoints start answering 410 a third of the way
		// into the flood: each webhook is deleted at its first 410 and
		// receives nothing after.
		flood := s.sizes(30*time.Second, 12*time.Second)
		p := singles(1000, 10, 16, nil)
		churned := func(h *PlanHook) bool { return h.Account%10 == 3 }
		return s.runOne(ctx, spec{name: name, partitions: 8, dispatchers: 1, servers: 16, plan: p,
			flood: flood, settle: 30 * time.Second,
			deliverable: func(h *PlanHook) bool { return !churned(h) }, deleted: churned,
			arm: func(farm *Farm, p *Plan, t0 time.Time) {
				for i := range p.Hooks {
					if churned(&p.Hooks[i]) {
						farm.SetBehaviour(i, EndpointBehaviour{GoneFrom: t0.Add(flood / 3)})
					}
				}
			}})
	case "outage":
		return s.outageScenario(ctx)
	case "registry-scale":
		// 100,000 webhooks (20,000 in the short run); account i has
		// 1 + i%10 of them, so an event fans out to 1 to 10.
		hooks := 100_000
		if s.o.Short {
			hooks = 20_000
		}
		p := fanouts(hooks, 10, 16)
		return s.runOne(ctx, spec{name: name, partitions: 8, dispatchers: 1, servers: 16, plan: p,
			flood: s.sizes(30*time.Second, 10*time.Second), settle: 30 * time.Second,
			deliverable: ok, perWebhook: true})
	case "registry-million":
		return s.registryMillion(ctx)
	case "partitions":
		if s.o.API != "" {
			fmt.Fprintf(s.o.Log, "partitions: skipped: it starts its own processes, and this run uses an existing deployment\n")
			return nil, nil
		}
		// One farm and one ceiling for every combination: each gets a
		// broker, redis-server and geckohook processes of its own.
		farm, err := NewFarm(16)
		if err != nil {
			return nil, err
		}
		defer farm.Close()
		var rows []Scenario
		var ceil *Ceiling
		for _, parts := range []int{1, 2, 4, 8} {
			for _, disp := range []int{1, 2} {
				r, err := s.runOne(ctx, spec{name: name, variant: fmt.Sprintf("%d partitions, %d dispatchers", parts, disp),
					partitions: parts, dispatchers: disp, servers: 16, plan: singles(1000, 10, 16, nil),
					flood: s.sizes(15*time.Second, 5*time.Second), settle: 30 * time.Second, deliverable: ok,
					farm: farm, ceiling: ceil})
				if err != nil {
					return rows, fmt.Errorf("%d partitions, %d dispatchers: %w", parts, disp, err)
				}
				ceil = &Ceiling{PerSec: r[0].CeilingPerSec, CPUPerRequest: time.Duration(r[0].CeilingCPUUsPerRequest * float64(time.Microsecond))}
				rows = append(rows, r...)
			}
		}
		return rows, nil
	}
	return nil, fmt.Errorf("unknown scenario %q", name)
}

// singles is a plan of n accounts with one webhook each, spread over apps
// applications and servers farm servers; place, when set, picks a hook's
// server and behaviour.
func singles(n, apps, servers int, place func(i int) (int, EndpointBehaviour)) *Plan {
	p := &Plan{Event: "order.create"}
	for a := 0; a < apps; a++ {
		p.Apps = append(p.Apps, PlanApp{Name: fmt.Sprintf("bench-app-%d", a)})
	}
	for i := 0; i < n; i++ {
		srv, b := i%servers, EndpointBehaviour{}
		if place != nil {
			srv, b = place(i)
		}
		p.AddAccount(int32(i%apps), []int{srv}, []EndpointBehaviour{b})
	}
	return p
}

// fanouts is a plan of about hooks webhooks where account i has 1 + i%10.
func fanouts(hooks, apps, servers int) *Plan {
	p := &Plan{Event: "order.create"}
	for a := 0; a < apps; a++ {
		p.Apps = append(p.Apps, PlanApp{Name: fmt.Sprintf("bench-app-%d", a)})
	}
	for i := 0; len(p.Hooks) < hooks; i++ {
		n := min(1+i%10, hooks-len(p.Hooks))
		srvs, bs := make([]int, n), make([]EndpointBehaviour, n)
		for k := range srvs {
			srvs[k] = (len(p.Hooks) + k) % servers
		}
		p.AddAccount(int32(i%apps), srvs, bs)
	}
	return p
}

// runOne runs one spec on a farm and stack of its own.
func (s *suite) runOne(ctx context.Context, sp spec) ([]Scenario, error) {
	o := s.o
	limit := sp.flood + sp.settle + 2*sp.paced + 3*time.Minute
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	row := Scenario{Name: sp.name, Variant: sp.variant, Partitions: sp.partitions, Dispatchers: sp.dispatchers, Webhooks: len(sp.plan.Hooks)}
	dirName := sp.name
	if sp.variant != "" {
		dirName += "-" + strings.NewReplacer(" ", "", ",", "-").Replace(sp.variant)
	}
	farm := sp.farm
	if farm == nil {
		var err error
		if farm, err = NewFarm(sp.servers); err != nil {
			return nil, err
		}
		defer farm.Close()
	}
	farm.Add(sp.plan)
	const group = "geckohook-dispatchers"
	stack, err := StartStack(ctx, StackOptions{
		Dir: filepath.Join(o.Out, dirName), Geckohook: o.Geckohook, RedisBin: o.RedisBin,
		Brokers: o.Brokers, RedisAddr: o.RedisAddr, API: o.API, AdminToken: o.AdminToken,
		Partitions: sp.partitions, Topic: o.Topic, Group: group, Dispatchers: sp.dispatchers,
		Args:  []string{"--workers", fmt.Sprint(o.Workers), "--max-conns-per-host", fmt.Sprint(o.MaxConnsPerHost)},
		Pprof: o.Profile,
	})
	if err != nil {
		return nil, err
	}
	defer stack.Stop()
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: strings.Split(stack.RedisAddr, ",")})
	defer rdb.Close()
	store := shard.NewStore(rdb, contract.DefaultRedisPrefix)

	before := s.geckohookRSS(stack)
	regStart := time.Now()
	register := func(ctx context.Context, st *Stack, p *Plan, _ *Scenario) error {
		return Register(ctx, st.API, st.AdminToken, p, 32, func(n int) {
			if n%20000 == 0 {
				fmt.Fprintf(o.Log, "%s: %d webhooks registered\n", sp.name, n)
			}
		})
	}
	if sp.register != nil {
		register = sp.register
	}
	if err := register(ctx, stack, sp.plan, &row); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Log, "%s: %d webhooks of %d applications registered in %s\n", sp.name, len(sp.plan.Hooks), len(sp.plan.Apps), time.Since(regStart).Round(time.Millisecond))
	farm.SetSecrets(sp.plan)
	if err := stack.WaitShards(ctx, group, sp.partitions, 60*time.Second); err != nil {
		return nil, err
	}
	if sp.perWebhook && before > 0 {
		row.BytesPerWebhook = float64(s.geckohookRSS(stack)-before) / float64(len(sp.plan.Hooks))
	}

	if sp.ceiling == nil {
		ceil, err := RunCeiling(ctx, farm, sp.plan, CeilingOptions{
			Duration: s.sizes(9*time.Second, 4500*time.Millisecond), Workers: o.Workers, MaxConnsPerHost: o.MaxConnsPerHost,
			Healthy: func(h *PlanHook) bool { return h.Behaviour == (EndpointBehaviour{}) && sp.deliverable(h) },
			Client:  o.CeilingClient,
		})
		if err != nil {
			return nil, err
		}
		sp.ceiling = &ceil
		fmt.Fprintf(o.Log, "%s: raw ceiling %.0f deliveries/s (best at %d concurrent requests, client CPU %.1f µs per request)\n",
			sp.name, ceil.PerSec, ceil.Workers, MicrosPer(ceil.CPUPerRequest, 1))
	}
	row.CeilingPerSec = sp.ceiling.PerSec

	// The flood.
	maxEvents := int(sp.flood.Seconds()*120_000) + 1000
	if f := int(sp.plan.MeanFanout()); f > 1 {
		maxEvents /= f
	}
	l := NewLedger(sp.plan, maxEvents)
	farm.Use(l)
	smp := newSampler(stack.Procs())
	probes, memBase := s.probes(ctx, stack, rdb)
	var profiling sync.WaitGroup
	defer profiling.Wait()
	profilePath := filepath.Join(o.Out, dirName, "cpu.pprof")
	if sp.outage != nil {
		probes.backlog = func(now time.Time) (int64, error) { return store.DueBacklog(ctx, now.Add(-backlogAge)) }
		probes.before = sp.outage.makeOverdue(ctx, store)
		if len(stack.Metrics) > 0 {
			sp.outage.claimsOf = func() (int64, error) { return metricSum(stack.Metrics, "geckohook_retries_claimed_total") }
		}
		if stack.Pprof != "" { // the drain, where the outage's question is
			sp.outage.profile = func() { profiling.Go(func() { s.profile(stack, profilePath, 10*time.Second) }) }
		}
	}
	gen := NewGenerator(stack.Brokers, o.Topic, sp.plan, l)
	defer gen.Close()
	t0 := time.Now()
	if sp.arm != nil {
		sp.arm(farm, sp.plan, t0)
	}
	mon := s.monitor(ctx, sp.name, store, smp, l, t0, probes)
	if stack.Pprof != "" && sp.outage == nil {
		d := min(max(sp.flood-2*time.Second, time.Second), 20*time.Second)
		profiling.Go(func() { s.profile(stack, profilePath, d) })
	}
	deliverable := sp.plan.PairCounter(sp.deliverable)
	var during sync.WaitGroup
	var duringErr error
	if sp.during != nil {
		during.Go(func() { duringErr = sp.during(ctx, stack, &row) })
	}
	var produced int
	if sp.outage != nil {
		produced, err = sp.outage.flood(ctx, gen, l, farm, store, maxEvents, deliverable)
	} else {
		produced, err = gen.Run(ctx, Flood{Count: maxEvents, Duration: sp.flood, MaxAhead: maxAhead,
			Ahead: func(n int) int64 { return deliverable(n) - l.Delivered() }}, nil)
	}
	during.Wait()
	if duringErr != nil {
		row.Failures = append(row.Failures, duringErr.Error())
	}
	if err != nil {
		mon.stop()
		return nil, err
	}
	// The rate's window ends when the deliverable webhooks' pairs are all
	// delivered, so a late straggler (a delivery its host shed, retried
	// 15-25 s on) does not stretch it.
	mon.target.Store(deliverable(produced))
	floodEnd := time.Now()
	acc, settleErr := s.settle(ctx, sp, stack, store, l, floodEnd.Add(sp.settle))
	if sp.outage != nil {
		sp.outage.finish(mon, 10*time.Second)
	}
	mon.stop()
	if settleErr != nil {
		row.Failures = append(row.Failures, settleErr.Error())
	}
	if err := stack.Check(); err != nil {
		row.Failures = append(row.Failures, err.Error())
	}
	end, delivered := mon.reachedAt, mon.deliveredAtReach
	if end.IsZero() || sp.name == "recovering" || sp.outage != nil { // the whole run, retries included
		end, delivered = mon.lastAt, mon.deliveredAtLast
	}
	// CPU per delivery covers the rate's window, as the rate does, to the
	// last once-a-second sample in it.
	row.CPUUsPerDelivery = mon.cpuPerDelivery(end)
	row.CeilingCPUUsPerRequest = MicrosPer(sp.ceiling.CPUPerRequest, 1)
	row.CPURatio = RatioOf(row.CPUUsPerDelivery, row.CeilingCPUUsPerRequest)
	if mon.mem != nil {
		row.RedisBytesPerQueued = BytesPerQueued(mon.memAtPeak, memBase, mon.depthAtPeak)
		if row.RedisBytesPerQueued != 0 {
			row.PeakQueueDepth = mon.depthAtPeak
		}
	}
	wall := end.Sub(t0)
	row.Events = int64(produced)
	row.Deliveries = acc.Delivered
	if wall > 0 {
		row.DeliveriesPerSec = float64(delivered) / wall.Seconds()
	}
	row.DurationSec = time.Since(t0).Seconds()
	row.Missing, row.Duplicates, row.BadSignatures = acc.Missing, acc.Duplicates, acc.BadSignatures
	row.Deleted, row.Queued, row.IDMismatches, row.Unexpected = acc.Deleted, acc.Queued, acc.IDMismatches, acc.Unexpected
	row.PeakRetryDepth = mon.peakDepth
	row.PeakRSSBytes = mon.peakRSS
	row.Roles = smp.roleUsage(time.Since(t0))
	q := l.Latency()
	row.P50Ms, row.P95Ms, row.P99Ms, row.MaxMs = ms(q.P50), ms(q.P95), ms(q.P99), ms(q.Max)
	row.LatencyNote = "produce→first 2xx during the saturated flood (includes the backlog kept ahead)"
	own := l.Own()
	row.OwnP50Ms, row.OwnP99Ms = ms(own.P50), ms(own.P99)
	row.Series = mon.points(l.Series())
	if sp.outage != nil {
		row.LatencyNote = "produce→first 2xx over the whole run: the lead-in as fast as possible, the paced flood, and the retries"
		sp.outage.report(&row, sp.outage.seen(l, sp.plan, mon))
	}
	switch sp.name {
	case "dead-endpoints":
		row.HealthyPerSec = row.DeliveriesPerSec
		if s.healthyRate > 0 {
			row.Notes = append(row.Notes, fmt.Sprintf("the healthy endpoints' rate is %.1f%% of the healthy scenario's %.0f/s",
				100*row.HealthyPerSec/s.healthyRate, s.healthyRate))
		}
	case "recovering":
		row.Notes = append(row.Notes, "deliveries/s covers the whole run, the retry drain included (Sidekiq's first retry waits 15-25 s)")
	}
	if sp.paced > 0 && row.DeliveriesPerSec > 0 && len(row.Failures) == 0 {
		if err := s.pacedPhase(ctx, sp, stack, farm, &row); err != nil {
			row.Failures = append(row.Failures, err.Error())
		}
	}
	if sp.name == "healthy" {
		row.Targets = append(row.Targets, healthyTargets(&row)...)
	}
	if row.Missing > 0 {
		row.Failures = append(row.Failures, fmt.Sprintf("%d pairs missing, e.g. %s", row.Missing, strings.Join(acc.MissingSamples, "; ")))
	}
	if row.BadSignatures > 0 {
		row.Failures = append(row.Failures, fmt.Sprintf("%d requests with a bad signature", row.BadSignatures))
	}
	if row.IDMismatches > 0 {
		row.Failures = append(row.Failures, fmt.Sprintf("%d re-sent pairs carried another delivery id", row.IDMismatches))
	}
	if row.Unexpected > 0 {
		row.Failures = append(row.Failures, fmt.Sprintf("%d requests no webhook expected", row.Unexpected))
	}
	row.Ratio = RatioOf(row.DeliveriesPerSec, row.CeilingPerSec)
	row.Passed = len(row.Failures) == 0
	fmt.Fprintf(o.Log, "%s %s: %d events, %d deliveries, %.0f/s (%.2f of the ceiling), missing %d, duplicates %d\n",
		sp.name, sp.variant, row.Events, row.Deliveries, row.DeliveriesPerSec, row.Ratio, row.Missing, row.Duplicates)
	return []Scenario{row}, nil
}

// pacedPhase produces at half the flood's rate and takes the latency from it.
func (s *suite) pacedPhase(ctx context.Context, sp spec, stack *Stack, farm *Farm, row *Scenario) error {
	rate := row.DeliveriesPerSec / 2 / sp.plan.MeanFanout()
	how := "half the flood's rate"
	if s.o.PacedRate > 0 {
		rate, how = s.o.PacedRate, "set by --paced-rate"
	}
	n := int(rate*sp.paced.Seconds()) + 1
	// Numbered after the flood's events, so a straggler of the flood is
	// never taken for a paced pair.
	from := int(row.Events)
	l := NewLedger(sp.plan, from+n)
	farm.Use(l)
	gen := NewGenerator(stack.Brokers, s.o.Topic, sp.plan, l)
	defer gen.Close()
	before := readPhaseCPU(stack)
	produced, err := gen.Run(ctx, Flood{From: from, Count: n, Rate: rate}, nil)
	if err != nil {
		return err
	}
	pairs := sp.plan.PairCounter(nil)
	want := pairs(from+produced) - pairs(from)
	deadline := time.Now().Add(30 * time.Second)
	for l.Delivered() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("paced phase: %d of %d pairs delivered after 30 s", l.Delivered(), want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	cores, us := readPhaseCPU(stack).since(before, int64(want))
	row.PacedCores, row.PacedUsPerDelivery = &cores, us
	acc := l.Account(func(int) bool { return false }, func(int) int64 { return 0 })
	row.Duplicates += acc.Duplicates
	row.BadSignatures += acc.BadSignatures
	row.IDMismatches += acc.IDMismatches
	q, own := l.Latency(), l.Own()
	row.P50Ms, row.P95Ms, row.P99Ms, row.MaxMs = ms(q.P50), ms(q.P95), ms(q.P99), ms(q.Max)
	row.OwnP50Ms, row.OwnP99Ms = ms(own.P50), ms(own.P99)
	row.OfferedPerSec = rate
	row.LatencyNote = fmt.Sprintf("produce→answer, paced at %.0f events/s (%s) for %s", rate, how, sp.paced)
	if n := gen.Retried(); n > 0 {
		row.Notes = append(row.Notes, fmt.Sprintf("the generator sent %d produce requests of the paced phase again after a failure: their events' latency includes the wait", n))
	}
	fmt.Fprintf(s.o.Log, "%s: paced at %.0f events/s: p50 %.1f ms, p99 %.1f ms (geckohook's own p99 %.1f ms)\n", sp.name, rate, row.P50Ms, row.P99Ms, row.OwnP99Ms)
	return nil
}

// settle waits until every pair is accounted for or the deadline passes.
func (s *suite) settle(ctx context.Context, sp spec, stack *Stack, store *shard.Store, l *Ledger, deadline time.Time) (Accounting, error) {
	var queuedIDs []string
	for _, h := range sp.plan.Hooks {
		if sp.queued != nil && sp.queued(&h) {
			queuedIDs = append(queuedIDs, h.ID)
		}
	}
	var acc Accounting
	for {
		var existing map[string]bool
		var depths map[string]int64
		var err error
		if sp.deleted != nil {
			existing, err = Existing(stack.API, sp.plan)
		}
		if err == nil && len(queuedIDs) > 0 {
			depths, err = store.WebhookDepths(ctx, queuedIDs)
		}
		if err == nil {
			acc = l.Account(
				func(h int) bool {
					return existing != nil && sp.deleted(&sp.plan.Hooks[h]) && !existing[sp.plan.Hooks[h].ID]
				},
				func(h int) int64 { return depths[sp.plan.Hooks[h].ID] })
			if acc.Missing == 0 {
				return acc, s.checkDeleted(sp, existing)
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return acc, err
			}
			return acc, fmt.Errorf("%d pairs still unaccounted %s after the flood", acc.Missing, sp.settle)
		}
		if err := stack.Check(); err != nil {
			return acc, err
		}
		select {
		case <-ctx.Done():
			return acc, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// checkDeleted fails when a hook that had to be deleted still exists.
func (s *suite) checkDeleted(sp spec, existing map[string]bool) error {
	if sp.deleted == nil {
		return nil
	}
	left, lost := 0, 0
	for i := range sp.plan.Hooks {
		h := &sp.plan.Hooks[i]
		switch gone := !existing[h.ID]; {
		case sp.deleted(h) && !gone:
			left++
		case !sp.deleted(h) && gone:
			lost++
		}
	}
	if left > 0 || lost > 0 {
		return fmt.Errorf("%d webhooks that answered 410 were not deleted, %d that never did were", left, lost)
	}
	return nil
}

func (s *suite) geckohookRSS(stack *Stack) int64 {
	var rss int64
	for _, p := range stack.Geckohook {
		if u, err := ReadUsage(p.Pid()); err == nil {
			rss += u.RSS
		}
	}
	return rss
}

// profile saves a CPU profile of the first geckohook process over d.
func (s *suite) profile(stack *Stack, path string, d time.Duration) {
	code, body, err := apiDo("GET", fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", stack.Pprof, int(d.Seconds())), "", nil)
	if err == nil && code != 200 {
		err = fmt.Errorf("answered %d", code)
	}
	if err == nil {
		err = os.WriteFile(path, body, 0o644)
	}
	if err != nil {
		fmt.Fprintf(s.o.Log, "cannot take a CPU profile: %v\n", err)
		return
	}
	fmt.Fprintf(s.o.Log, "CPU profile of geckohook: %s (go tool pprof -top %s)\n", path, path)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// monitor follows a scenario while it runs: when the deliveries last grew,
// and once a second the retry-queue depth, geckohook's CPU and memory, and a
// progress line.
type monitor struct {
	mu              sync.Mutex
	lastAt          time.Time
	deliveredAtLast int64
	// target, once set, is the delivered count that ends the rate's
	// window; reachedAt is when it was reached.
	target           atomic.Int64
	reachedAt        time.Time
	deliveredAtReach int64
	peakDepth        int64
	peakRSS          int64
	secs             []sample
	done             chan struct{}
	wg               sync.WaitGroup

	// cpu0 is geckohook's CPU time when the monitor began, as the
	// sampler read it; cpuMeasured says whether the sampler follows a
	// geckohook process at all.
	cpu0        time.Duration
	cpuMeasured bool
	wait0       time.Duration // geckohook's run-queue wait at at0, the start
	at0         time.Time
	// mem reads Redis's data memory (nil: not measured); memAtPeak is its
	// reading at depthAtPeak, the deepest the queues were at a sample.
	mem                    func() (int64, error)
	memAtPeak, depthAtPeak int64
	backlog                func(now time.Time) (int64, error)
	before                 func(now time.Time)
	out                    io.Writer // the progress lines
}

// monitorProbes are what a monitor reads besides the ledger, the queues
// and the sampler.
type monitorProbes struct {
	mem func() (int64, error) // Redis's data memory now; nil: none
	// backlog counts the deliveries due backlogAge before now and not
	// yet taken; nil: not followed.
	backlog func(now time.Time) (int64, error)
	// before, when set, runs at each sample before anything is read (the
	// outage makes the retries overdue there, so the sample that follows
	// sees them).
	before func(now time.Time)
}

// sample is one second's reading: the queues, the ledger and geckohook's
// CPU (DrainSample), geckohook's memory and the cores it kept busy since
// the sample before.
type sample struct {
	DrainSample
	rss     int64
	cores   float64
	waiting float64 // geckohook's threads waiting for a CPU since the sample before, on average
}

// monitor follows a run from t0 until stop: the ledger's deliveries, the
// retry queues and the processes once a second, and whatever pr reads
// (monitorProbes{}: nothing more).
func (s *suite) monitor(ctx context.Context, name string, store *shard.Store, smp *sampler, l *Ledger, t0 time.Time, pr monitorProbes) *monitor {
	m := &monitor{lastAt: t0, done: make(chan struct{}), mem: pr.mem, backlog: pr.backlog, before: pr.before, out: s.o.Log}
	m.cpu0, m.wait0, m.cpuMeasured = smp.cpu("geckohook")
	m.at0 = time.Now()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		nextSample := t0.Add(time.Second)
		var last int64
		for {
			select {
			case <-m.done:
				return
			case <-ctx.Done():
				return
			case now := <-tick.C:
				if d := l.Delivered(); d != last {
					last = d
					m.mu.Lock()
					m.lastAt, m.deliveredAtLast = now, d
					m.mu.Unlock()
				}
				if t := m.target.Load(); t > 0 && last >= t {
					m.mu.Lock()
					if m.reachedAt.IsZero() {
						m.reachedAt, m.deliveredAtReach = now, last
					}
					m.mu.Unlock()
				}
				if now.Before(nextSample) {
					continue
				}
				nextSample = nextSample.Add(time.Second)
				m.sample(ctx, name, store, smp, l, t0, time.Now())
			}
		}
	}()
	return m
}

// sample takes one second's reading at now and prints the progress line.
func (m *monitor) sample(ctx context.Context, name string, store *shard.Store, smp *sampler, l *Ledger, t0, now time.Time) {
	if m.before != nil {
		m.before(now)
		// The hook may have held Redis (making every retry due runs a
		// script per shard, half a second at 120,000 queued, and
		// geckohook's claims wait behind it): the reading, and the
		// second it starts, begin once it is done.
		now = time.Now()
	}
	busy, rss := smp.sample("geckohook")
	cpu, wait, _ := smp.cpu("geckohook")
	redisCPU, _, _ := smp.cpu("redis") // 0 for a Redis the harness did not start
	sched, dead, err := store.Depth(ctx)
	var backlog int64
	if m.backlog != nil {
		backlog, _ = m.backlog(now) // a failed read shows as none
	}
	delivered, expected := l.Delivered(), l.Expected()
	m.mu.Lock()
	if err != nil && len(m.secs) > 0 { // keep the last depth seen
		sched, dead = m.secs[len(m.secs)-1].Depth, 0
	}
	depth := sched + dead
	prevWait, prevAt := m.wait0, m.at0
	if k := len(m.secs); k > 0 {
		prevWait, prevAt = m.secs[k-1].Wait, m.secs[k-1].At
	}
	waiting := cores(wait-prevWait, now.Sub(prevAt))
	m.secs = append(m.secs, sample{DrainSample: DrainSample{At: now, Depth: depth, Backlog: backlog, CPU: cpu, Wait: wait,
		RedisCPU: redisCPU, Delivered: delivered, Expected: expected}, rss: rss, cores: busy, waiting: waiting})
	m.peakDepth = max(m.peakDepth, depth)
	m.peakRSS = max(m.peakRSS, rss)
	deeper := err == nil && depth > m.depthAtPeak
	m.mu.Unlock()
	if deeper && m.mem != nil {
		if used, err := m.mem(); err == nil {
			m.mu.Lock()
			m.memAtPeak, m.depthAtPeak = used, depth
			m.mu.Unlock()
		}
	}
	el := now.Sub(t0).Seconds()
	due := ""
	if m.backlog != nil {
		due = fmt.Sprintf(" (%d overdue)", backlog)
	}
	fmt.Fprintf(m.out, "%s: %4.0fs produced %d, delivered %d of %d, in retry %d%s, %.0f deliveries/s, geckohook %.2f cores (%.2f waiting for one) %d MiB\n",
		name, el, l.ProducedCount(), delivered, expected, depth, due, float64(delivered)/math.Max(el, 1e-9), busy, waiting, rss>>20)
}

// cpuPerDelivery is geckohook's CPU microseconds per delivery from the
// monitor's start to the last sample at or before end (the first sample
// when none is), both read at that sample; 0 when the CPU was not
// measured or no sample was taken.
func (m *monitor) cpuPerDelivery(end time.Time) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.cpuMeasured || len(m.secs) == 0 {
		return 0
	}
	at := m.secs[0]
	for _, s := range m.secs[1:] {
		if s.At.After(end) {
			break
		}
		at = s
	}
	return MicrosPer(at.CPU-m.cpu0, at.Delivered)
}

// usageOver is geckohook's CPU and run-queue wait over [from, to], in
// cores, each read off the samples on either side of the ends and
// interpolated; false when the span is not within the samples.
func (m *monitor) usageOver(from, to time.Time) (busy, waiting float64, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// The monitor's start is a reading too, before the first sample.
	start := DrainSample{At: m.at0, CPU: m.cpu0, Wait: m.wait0}
	at := func(t time.Time) (cpu, wait time.Duration, ok bool) {
		for i := range m.secs {
			a, b := start, m.secs[i].DrainSample
			if i > 0 {
				a = m.secs[i-1].DrainSample
			}
			if t.Before(a.At) || t.After(b.At) || !b.At.After(a.At) {
				continue
			}
			f := float64(t.Sub(a.At)) / float64(b.At.Sub(a.At))
			return a.CPU + time.Duration(f*float64(b.CPU-a.CPU)), a.Wait + time.Duration(f*float64(b.Wait-a.Wait)), true
		}
		return 0, 0, false
	}
	c0, w0, ok0 := at(from)
	c1, w1, ok1 := at(to)
	if !ok0 || !ok1 || !m.cpuMeasured || !to.After(from) {
		return 0, 0, false
	}
	return cores(c1-c0, to.Sub(from)), cores(w1-w0, to.Sub(from)), true
}

// drainSamples are the samples taken at or after from.
func (m *monitor) drainSamples(from time.Time) []DrainSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []DrainSample
	for _, s := range m.secs {
		if !s.At.Before(from) {
			out = append(out, s.DrainSample)
		}
	}
	return out
}

// waitEmpty waits up to limit for a sample at or after from to find the
// retry queues empty; it reports whether one did.
func (m *monitor) waitEmpty(from time.Time, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		for _, s := range m.drainSamples(from) {
			if s.Depth == 0 {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-m.done:
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (m *monitor) stop() {
	close(m.done)
	m.wg.Wait()
}

// points joins the ledger's seconds with the monitor's samples.
func (m *monitor) points(secs []Second) []Point {
	n := len(m.secs)
	for _, s := range secs {
		n = max(n, s.At+1)
	}
	out := make([]Point, n)
	for i := range out {
		out[i].T = float64(i + 1)
	}
	for _, s := range secs {
		if s.At >= 0 && s.At < n {
			p := &out[s.At]
			p.DeliveredPerSec, p.P50Ms, p.P99Ms = float64(s.Delivered), ms(s.P50), ms(s.P99)
		}
	}
	for i, s := range m.secs {
		out[i].RetryDepth, out[i].DueBacklog, out[i].RSSBytes, out[i].CPUCores, out[i].CPUWaiting = s.Depth, s.Backlog, s.rss, s.cores, s.waiting
	}
	// Seconds the ledger saw after the last sample keep its depth and RSS.
	if k := len(m.secs); k > 0 {
		for i := k; i < n; i++ {
			out[i].RetryDepth, out[i].RSSBytes = m.secs[k-1].Depth, m.secs[k-1].rss
		}
	}
	return out
}
