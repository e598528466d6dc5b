package loadtest

// This file owns the outage scenario: 30% of the flood's pairs go to hosts
// that go down for a while, first refusing connections, then accepting and
// never answering (beyond geckohook's 10 s limit), and then come back. It
// measures what the retry queues cost in Redis, how fast they drain once
// the hosts are back, and whether the healthy pairs kept their rate; every
// pair of the failing hosts must still be delivered.

import (
	"context"
	"fmt"
	"time"

	"github.com/geckohook/geckohook/shard"
)

// The outage scenario's targets.
const (
	targetRedisBytesPerQueued = 250  // bytes of Redis memory per queued delivery, at most
	targetDrainRatio          = 0.5  // drain rate over the healthy flood rate, at least
	targetHealthyShare        = 0.95 // healthy pairs' rate during the outage over the healthy rate, at least
)

// backlogAge is how long a delivery must have been due, and not taken, to
// count in the drain's backlog. Polling and scheduling leave deliveries
// due in the last few hundred milliseconds untaken at any instant even
// when geckohook keeps up (up to ~500 seen at a sample on the loaded
// 2-core machine, none due longer than 250 ms); one due a second ago was
// missed by geckohook, not by the schedule.
const backlogAge = time.Second

// outage takes a plan's failing hosts down during a flood and follows the
// retry queues until they are empty again. The flood runs warm (every host
// up), then refuse (the failing hosts refuse connections), then hang (they
// accept and never answer); it stops when the hosts come back, and the
// queues drain.
type outage struct {
	warm, refuse, hang time.Duration
	failing            func(h *PlanHook) bool

	stop chan struct{}
	done chan struct{}
	// Set by run, read once done is closed.
	warmRate    float64   // deliveries/s of the warm phase, from its second second
	healthyRate float64   // deliveries/s while the hosts were down: the healthy pairs'
	backAt      time.Time // the hosts came back
	emptyAt     time.Time // the queues were empty again (zero: not seen)
	drained     int64     // the deepest the queues were from backAt on
	samples     []DrainSample
	err         error

	// cpu reads geckohook's CPU time so far (nil: not measured).
	cpu func() time.Duration
}

// outageScenario is the outage scenario's spec: 1,000 webhooks, one per
// account, of which those of accounts 7, 8 and 9 (mod 10), 30% of the
// pairs, live on 10 hosts of their own that go down.
func (s *suite) outageScenario(ctx context.Context) ([]Scenario, error) {
	down := s.o.Outage
	if down <= 0 {
		// Long enough in the short run that, when the hosts come back,
		// more deliveries come due at once than geckohook takes, so the
		// drain measures geckohook and not only the retry schedule
		// (24 s: a backlog overdue by a second formed in each run
		// tried; 16 s: in one of two).
		down = s.sizes(60*time.Second, 24*time.Second)
	}
	// A quarter refusing, the rest hanging: long enough past the 10 s
	// limit that attempts time out while the hosts are still down, and
	// short enough that the retries' waits keep the drain within a
	// minute of the hosts' return in the short run.
	o := &outage{warm: s.sizes(15*time.Second, 6*time.Second), refuse: down / 4, hang: down - down/4,
		failing: func(h *PlanHook) bool { return h.Account%10 >= 7 }}
	p := singles(1000, 10, 26, func(i int) (int, EndpointBehaviour) {
		if i%10 >= 7 {
			return 16 + (i/10)%10, EndpointBehaviour{}
		}
		return i % 16, EndpointBehaviour{}
	})
	return s.runOne(ctx, spec{name: "outage", partitions: 8, dispatchers: 1, servers: 26, plan: p,
		flood: o.warm + o.refuse + o.hang, settle: s.sizes(5*time.Minute, 100*time.Second),
		deliverable: func(h *PlanHook) bool { return !o.failing(h) }, outage: o})
}

// start runs the outage's clock from t0, when the flood began.
func (o *outage) start(ctx context.Context, farm *Farm, p *Plan, store *shard.Store, l *Ledger, t0 time.Time) {
	o.stop, o.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(o.done)
		o.err = o.run(ctx, farm, p, store, l, t0)
	}()
}

// finish waits up to limit for the queues to be seen empty, then stops
// the clock.
func (o *outage) finish(limit time.Duration) {
	select {
	case <-o.done:
	case <-time.After(limit):
	}
	close(o.stop)
	<-o.done
}

func (o *outage) run(ctx context.Context, farm *Farm, p *Plan, store *shard.Store, l *Ledger, t0 time.Time) error {
	// The warm phase's rate leaves out its first second, the ramp.
	if !o.sleepUntil(ctx, t0.Add(time.Second)) {
		return nil
	}
	n1, at1 := l.Delivered(), time.Now()
	if !o.sleepUntil(ctx, t0.Add(o.warm)) {
		return nil
	}
	n2, downAt := l.Delivered(), time.Now()
	refuseUntil := downAt.Add(o.refuse)
	back := refuseUntil.Add(o.hang)
	for i := range p.Hooks {
		if o.failing(&p.Hooks[i]) {
			farm.SetBehaviour(i, EndpointBehaviour{RefuseUntil: refuseUntil, HangUntil: back})
		}
	}
	if !o.sleepUntil(ctx, back) {
		return nil
	}
	n3, backAt := l.Delivered(), time.Now()
	o.warmRate, o.healthyRate, o.backAt = RateBetween(n1, n2, at1, downAt), RateBetween(n2, n3, downAt, backAt), backAt
	// The depth every 100 ms, to see the queues empty; once a second, and
	// then, a sample for the drain's figures.
	next := backAt
	for {
		sched, dead, err := store.Depth(ctx)
		if now := time.Now(); err == nil {
			depth := sched + dead
			o.drained = max(o.drained, depth)
			if depth == 0 || !now.Before(next) {
				err = o.sample(ctx, store, l, now, depth)
				for !next.After(now) {
					next = next.Add(time.Second)
				}
			}
			if depth == 0 {
				o.emptyAt = now
				return err
			}
		}
		select {
		case <-o.stop:
			return err
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sample reads the backlog (deliveries due by backlogAge before now and
// not taken) and geckohook's CPU at now, when the queues held depth.
func (o *outage) sample(ctx context.Context, store *shard.Store, l *Ledger, now time.Time, depth int64) error {
	backlog, err := store.DueBacklog(ctx, now.Add(-backlogAge))
	if err != nil {
		return err
	}
	var cpu time.Duration
	if o.cpu != nil {
		cpu = o.cpu()
	}
	o.samples = append(o.samples, DrainSample{At: now, Depth: depth, Backlog: backlog, CPU: cpu, Delivered: l.Delivered(), Expected: l.Expected()})
	return nil
}

// sleepUntil waits until t; false if the outage was stopped first.
func (o *outage) sleepUntil(ctx context.Context, t time.Time) bool {
	select {
	case <-time.After(time.Until(t)):
		return true
	case <-o.stop:
		return false
	case <-ctx.Done():
		return false
	}
}

// report puts the outage's figures and targets in row; healthyScenario is
// the healthy scenario's rate in this run (0: it did not run first).
func (o *outage) report(row *Scenario, healthyScenario float64) {
	row.HealthyPerSec = o.healthyRate
	d := DrainOf(o.samples)
	row.DrainPerSec, row.DrainBacklogSec, row.DrainCores, row.DrainDeliveredPerSec = d.PerSec, d.BacklogSec, d.Cores, d.DeliveredPerSec
	row.DrainRatio = RatioOf(d.PerSec, o.warmRate)
	row.DrainFreePerSec, row.DrainFreeRatio, row.DrainFreeSec = d.FreePerSec, RatioOf(d.FreePerSec, o.warmRate), d.FreeSec
	row.DrainPacedPerSec = DrainRate(o.drained, o.backAt, o.emptyAt)
	if !o.emptyAt.IsZero() {
		row.DrainWallSec = o.emptyAt.Sub(o.backAt).Seconds()
	}
	row.Notes = append(row.Notes, fmt.Sprintf("30%% of the pairs' hosts refused connections for %s, then hung for %s; the flood ran %s before with every host up (%.0f deliveries/s: the healthy flood rate of drain_ratio) and stopped when they came back; deliveries/s and CPU per delivery cover the whole run, the drain included",
		o.refuse, o.hang, o.warm, o.warmRate))
	switch {
	case o.emptyAt.IsZero():
		row.Notes = append(row.Notes, "the retry queues were not seen empty: no drain_paced_per_sec")
	default:
		row.Notes = append(row.Notes, fmt.Sprintf("the queues held up to %d deliveries once the hosts were back and were empty %.1f s later (drain_paced_per_sec): a retry waits for its time (Sidekiq's 15-25 s, then 16-35 s, ...), which paces that figure",
			o.drained, row.DrainWallSec))
	}
	switch {
	case d.BacklogSec > 0:
		row.Notes = append(row.Notes, fmt.Sprintf("%.1f s of the drain began with deliveries due for %s or more and not yet taken (up to %d at once): drain_per_sec is the rate over those seconds, when geckohook, not the retry schedule, set the pace",
			d.BacklogSec, backlogAge, d.PeakBacklog))
	case d.LowerBound:
		row.Notes = append(row.Notes, fmt.Sprintf("no second of the drain began with a delivery due for %s or more and not yet taken (geckohook kept up with the retry schedule throughout): drain_per_sec is the best second's rate, a lower bound of its capacity",
			backlogAge))
	}
	if o.err != nil {
		row.Notes = append(row.Notes, "reading the queues' depth: "+o.err.Error())
	}
	if row.RedisBytesPerQueued != 0 {
		row.Targets = append(row.Targets, CheckTarget("redis_bytes_per_queued", row.RedisBytesPerQueued, "<=", targetRedisBytesPerQueued))
	}
	if row.DrainRatio != 0 || !o.emptyAt.IsZero() {
		row.Targets = append(row.Targets, CheckTarget("drain_ratio", row.DrainRatio, ">=", targetDrainRatio))
	}
	ref, against := healthyScenario, fmt.Sprintf("%.2f × the healthy scenario's %.0f/s", targetHealthyShare, healthyScenario)
	if ref <= 0 {
		ref, against = o.warmRate, fmt.Sprintf("%.2f × this run's warm phase, %.0f/s", targetHealthyShare, o.warmRate)
	}
	if ref > 0 {
		t := CheckTarget("healthy_per_sec", o.healthyRate, ">=", targetHealthyShare*ref)
		t.Against = against
		row.Targets = append(row.Targets, t)
	}
}
