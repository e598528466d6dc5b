package loadtest

// This file owns the outage scenario: 30% of the pairs go to hosts that go
// down for a while, first refusing connections, then accepting and never
// answering (beyond geckohook's 10 s limit), and then come back. The flood
// is paced below what the deployment sustains, so the scenario asks what
// an operator asks: at a load geckohook keeps up with, does a big
// receiver's outage slow the other receivers? It measures the healthy
// pairs' rate and latency while the hosts are down against the phase
// before, what the retry queues cost in Redis, and how fast geckohook
// takes overdue retries out once the hosts are back; every pair of the
// failing hosts must still be delivered.

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/geckohook/geckohook/shard"
)

// The outage scenario's targets.
const (
	targetRedisBytesPerQueued = 250  // bytes of Redis memory per queued delivery, at most
	targetDrainRatio          = 0.5  // drain rate over the healthy flood rate, at least
	targetHealthyShare        = 0.95 // healthy pairs' rate while the hosts are down over their offered rate, at least
)

// backlogAge is how long a delivery must have been due, and not taken, to
// count in the drain's backlog. Polling and scheduling leave deliveries
// due in the last few hundred milliseconds untaken at any instant even
// when geckohook keeps up (up to ~500 seen at a sample on the loaded
// 2-core machine, none due longer than 250 ms); one due a second ago was
// missed by geckohook, not by the schedule.
const backlogAge = time.Second

// overdueBy is how long before the instant they are made due the
// retries are made due: well past backlogAge, so every one counts as
// overdue at once.
const overdueBy = time.Minute

// overdueAfter is how long after the hosts' return the retries are made
// due: past geckohook's 10 s attempt limit, so every attempt sent while
// the hosts hung has ended. Until then those attempts time out one by
// one after the return, and each halves its host's concurrency limit
// (engine/dispatch/hosts.go), so what geckohook claims for those hosts
// then is mostly deferred by 15-25 s: the drain would measure when the
// burst came, not how fast geckohook takes a backlog out.
const overdueAfter = 11 * time.Second

// outage runs a plan's flood in four phases: the lead-in, as fast as
// possible with every host up (its rate is the healthy flood rate); then,
// paced at half that rate (or -paced-rate), the warm phase with every
// host up, the refuse phase (the failing hosts refuse connections) and
// the hang phase (they accept and never answer). The flood stops when the
// hosts come back; overdueAfter later every queued retry is made due
// (shard.Store.DueBy), and the monitor's samples follow the drain.
type outage struct {
	lead, warm, refuse, hang time.Duration
	failing                  func(h *PlanHook) bool
	// pacedRate is the paced phases' events/s (0: half the lead-in's
	// rate, over the plan's fan-out).
	pacedRate float64

	// Set by flood; read once it returned.
	leadFrom, leadTo       time.Time // the span the lead-in's rate is taken over
	leadEvents             int       // events of the lead-in: 0 to leadEvents-1
	rate                   float64   // the paced phases' events/s
	warmAt, downAt, backAt time.Time
	harnessCPU             [3]time.Duration // this process's CPU at warmAt, downAt and backAt

	// back is closed once backAt is set; due once the retries were made
	// overdue (at overdueAt, overdue of them, overdueErr), which took
	// overdueTook.
	back, due   chan struct{}
	ledger      *Ledger
	overdueAt   time.Time
	overdueTook time.Duration
	overdue     int64
	overdueErr  error
	// profile, when set, is started once the retries are made overdue.
	profile func()
	// claimsOf, when set, reads geckohook's retry claims so far; claims
	// and requests (the farm's, of every pair) are read when the retries
	// are made overdue and when the queues are seen empty after.
	claimsOf   func() (int64, error)
	claims     [2]int64
	requests   [2]int64
	claimsRead bool // both read
	claimsErr  error
}

// outageScenario is the outage scenario's spec: 1,000 webhooks, one per
// account, of which those of accounts 7, 8 and 9 (mod 10), 30% of the
// pairs, live on 10 hosts of their own that go down.
func (s *suite) outageScenario(ctx context.Context) ([]Scenario, error) {
	down := s.o.Outage
	if down <= 0 {
		// Long enough past the 10 s limit that attempts time out while
		// the hosts are still down, and that the queues hold enough
		// when they come back for the drain to last several seconds.
		down = s.sizes(60*time.Second, 24*time.Second)
	}
	o := &outage{lead: s.sizes(15*time.Second, 6*time.Second), warm: s.sizes(15*time.Second, 6*time.Second),
		refuse: down / 4, hang: down - down/4, pacedRate: s.o.PacedRate,
		failing: func(h *PlanHook) bool { return h.Account%10 >= 7 }}
	p := singles(1000, 10, 26, func(i int) (int, EndpointBehaviour) {
		if i%10 >= 7 {
			return 16 + (i/10)%10, EndpointBehaviour{}
		}
		return i % 16, EndpointBehaviour{}
	})
	return s.runOne(ctx, spec{name: "outage", partitions: 8, dispatchers: 1, servers: 26, plan: p,
		flood: o.lead + o.warm + o.refuse + o.hang, settle: s.sizes(5*time.Minute, 100*time.Second),
		deliverable: func(h *PlanHook) bool { return !o.failing(h) }, outage: o})
}

// flood produces the outage's flood (at most count events) and runs its
// clock: the lead-in, then the paced phases, taking the failing hosts
// down and bringing them back. deliverable counts the pairs of the first
// n events that can be delivered while the hosts are down.
func (o *outage) flood(ctx context.Context, gen *Generator, l *Ledger, farm *Farm, store *shard.Store, count int, deliverable func(n int) int64) (int, error) {
	o.back, o.due, o.ledger = make(chan struct{}), make(chan struct{}), l
	// Every host is up in the lead-in: all its pairs can be delivered.
	all := gen.Plan.PairCounter(nil)
	start := time.Now()
	n, err := gen.Run(ctx, Flood{Count: count, Duration: o.lead, MaxAhead: maxAhead,
		Ahead: func(n int) int64 { return all(n) - l.Delivered() }}, nil)
	if err != nil {
		return n, err
	}
	// The rate leaves out the first second, the ramp; the paced phases
	// start once the lead-in's events left Kafka, delivered or queued for
	// a retry (a loaded machine can make attempts time out even here).
	o.leadFrom, o.leadTo, o.leadEvents = start.Add(time.Second), time.Now(), n
	if err := waitOutOfKafka(ctx, l, store, all(n), time.Minute); err != nil {
		return n, fmt.Errorf("the lead-in's events: %w", err)
	}
	o.rate = o.pacedRate
	if o.rate <= 0 {
		lead := l.Window(nil, o.leadFrom, o.leadTo)
		o.rate = RateBetween(0, lead.Delivered, o.leadFrom, o.leadTo) / 2 / gen.Plan.MeanFanout()
	}
	if o.rate < 1 {
		return n, fmt.Errorf("the lead-in delivered too little to pace the flood by (%.1f events/s)", o.rate)
	}
	o.warmAt = time.Now()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var clock sync.WaitGroup
	clock.Go(func() { o.clock(cctx, farm, gen.Plan) })
	// The paced phases' pairs of the failing hosts are not delivered
	// until they are back: they do not count as ahead.
	m, err := gen.Run(ctx, Flood{From: n, Count: count - n, Rate: o.rate, Duration: o.warm + o.refuse + o.hang,
		MaxAhead: maxAhead, Ahead: func(k int) int64 { return all(n) + deliverable(k) - deliverable(n) - l.Delivered() }}, nil)
	if err != nil {
		cancel()
	}
	clock.Wait()
	return n + m, err
}

// clock takes the failing hosts down at the end of the warm phase and
// brings them back after the refuse and hang phases.
func (o *outage) clock(ctx context.Context, farm *Farm, p *Plan) {
	o.harnessCPU[0] = ownCPU()
	if !sleepUntil(ctx, o.warmAt.Add(o.warm)) {
		return
	}
	o.downAt, o.harnessCPU[1] = time.Now(), ownCPU()
	refuseUntil := o.downAt.Add(o.refuse)
	back := refuseUntil.Add(o.hang)
	for i := range p.Hooks {
		if o.failing(&p.Hooks[i]) {
			farm.SetBehaviour(i, EndpointBehaviour{RefuseUntil: refuseUntil, HangUntil: back})
		}
	}
	if !sleepUntil(ctx, back) {
		return
	}
	o.backAt, o.harnessCPU[2] = time.Now(), ownCPU()
	close(o.back)
}

// makeOverdue is the monitor's hook (monitorProbes.before). The retry
// schedule alone spreads the failing pairs' retries out at about the rate
// they were offered, so at a load the deployment sustains it never leaves
// geckohook behind; a backlog of overdue retries is what geckohook meets
// after its dispatchers were down for a while. So at its first
// sample overdueAfter the hosts' return, every queued retry is made due,
// so the samples from that one on follow geckohook taking an overdue
// backlog out. It runs on the monitor's goroutine only.
func (o *outage) makeOverdue(ctx context.Context, store *shard.Store) func(now time.Time) {
	return func(now time.Time) {
		select {
		case <-o.due:
			return
		default:
		}
		select {
		case <-o.back:
		default:
			return
		}
		if now.Before(o.backAt.Add(overdueAfter)) {
			return
		}
		o.overdue, o.overdueErr = store.DueBy(ctx, now.Add(-overdueBy))
		o.overdueAt = time.Now() // when the scripts are done: the drain starts there
		o.overdueTook = o.overdueAt.Sub(now)
		o.readClaims(0)
		close(o.due)
		if o.profile != nil {
			o.profile()
		}
	}
}

// readClaims reads the retry claims and the farm's requests into slot i.
func (o *outage) readClaims(i int) {
	if o.claimsOf == nil || o.claimsErr != nil {
		return
	}
	o.claims[i], o.claimsErr = o.claimsOf()
	o.requests[i] = o.ledger.Requests()
}

// finish waits up to limit for the retries to be made overdue and the
// monitor to see the queues empty after.
func (o *outage) finish(mon *monitor, limit time.Duration) {
	if o.due == nil {
		return
	}
	select {
	case <-o.due:
	case <-time.After(limit):
		return
	}
	if mon.waitEmpty(o.overdueAt, limit) {
		o.readClaims(1)
		o.claimsRead = o.claimsOf != nil && o.claimsErr == nil
	}
}

// waitOutOfKafka waits up to limit for want pairs to be delivered or in
// the retry queues.
func waitOutOfKafka(ctx context.Context, l *Ledger, store *shard.Store, want int64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		sched, dead, err := store.Depth(ctx)
		if err == nil && l.Delivered()+sched+dead >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d pairs delivered and %d queued after %s", l.Delivered(), want, sched+dead, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sleepUntil waits until t; false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	select {
	case <-time.After(time.Until(t)):
		return true
	case <-ctx.Done():
		return false
	}
}

// ownCPU is this process's CPU time so far (0: not readable).
func ownCPU() time.Duration {
	u, err := ReadUsage(os.Getpid())
	if err != nil {
		return 0
	}
	return u.CPU
}
