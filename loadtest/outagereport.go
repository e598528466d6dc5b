package loadtest

// This file turns what the outage scenario saw into its row's figures,
// notes and targets.

import (
	"fmt"
	"time"
)

// outageSeen is what report reads of a finished outage run besides the
// clock: the healthy pairs' windows from the ledger, and the monitor's
// samples from the instant the retries were made overdue.
type outageSeen struct {
	lead       Window        // every pair, over the lead-in's span
	warm, down Window        // the healthy pairs, warm phase and hosts down
	drain      []DrainSample // from the hosts' return on
	// geckohook's cores busy and waiting for a CPU in the warm phase and
	// while the hosts were down (ok false: not measured)
	warmUse, downUse usage
	leadUse          usage // geckohook over the lead-in's span
}

// usage is a process's CPU over a span: cores busy, and threads waiting,
// runnable, for a CPU.
type usage struct {
	busy, waiting float64
	ok            bool
}

// seen reads the ledger's windows and the drain's samples.
func (o *outage) seen(l *Ledger, p *Plan, mon *monitor) outageSeen {
	// The paced flood's pairs of the healthy webhooks: not the lead-in's,
	// some of which a loaded machine leaves to a retry.
	healthy := func(e, h int) bool { return e >= o.leadEvents && !o.failing(&p.Hooks[h]) }
	var s outageSeen
	s.lead = l.Window(nil, o.leadFrom, o.leadTo)
	s.leadUse.busy, s.leadUse.waiting, s.leadUse.ok = mon.usageOver(o.leadFrom, o.leadTo)
	if !o.downAt.IsZero() {
		s.warm = l.Window(healthy, o.warmAt, o.downAt)
		s.warmUse.busy, s.warmUse.waiting, s.warmUse.ok = mon.usageOver(o.warmAt, o.downAt)
	}
	if !o.backAt.IsZero() {
		s.down = l.Window(healthy, o.downAt, o.backAt)
		s.downUse.busy, s.downUse.waiting, s.downUse.ok = mon.usageOver(o.downAt, o.backAt)
		s.drain = mon.drainSamples(o.backAt)
	}
	return s
}

// report puts the outage's figures and targets in row.
func (o *outage) report(row *Scenario, s outageSeen) {
	row.FloodPerSec = RateBetween(0, s.lead.Delivered, o.leadFrom, o.leadTo)
	row.OfferedPerSec = o.rate
	how := "half the lead-in's rate"
	if o.pacedRate > 0 {
		how = "set by --paced-rate"
	}
	row.Notes = append(row.Notes, fmt.Sprintf("the flood ran %s as fast as possible with every host up (%.0f deliveries/s: the healthy flood rate of drain_ratio), then paced at %.0f events/s (%s): %s with every host up (the warm phase), then 30%% of the pairs' hosts refused connections for %s and hung for %s; it stopped when they came back",
		o.lead, row.FloodPerSec, o.rate, how, o.warm, o.refuse, o.hang))
	o.reportHealthy(row, s)
	if s.leadUse.ok && row.FloodPerSec > 0 {
		row.FloodUsPerDelivery = s.leadUse.busy * 1e6 / row.FloodPerSec
	}
	o.reportDrain(row, s.drain)
	if row.RedisBytesPerQueued != 0 {
		row.Targets = append(row.Targets, CheckTarget("redis_bytes_per_queued", row.RedisBytesPerQueued, "<=", targetRedisBytesPerQueued))
	}
	if row.DrainRatio != 0 || row.DrainWallSec != 0 {
		row.Targets = append(row.Targets, CheckTarget("drain_ratio", row.DrainRatio, ">=", targetDrainRatio))
	}
	if row.HealthyOfferedPerSec > 0 {
		t := CheckTarget("healthy_per_sec", row.HealthyPerSec, ">=", targetHealthyShare*row.HealthyOfferedPerSec)
		t.Against = fmt.Sprintf("%.2f × the healthy pairs' offered rate while the hosts were down, %.0f/s", targetHealthyShare, row.HealthyOfferedPerSec)
		row.Targets = append(row.Targets, t)
	}
}

// reportHealthy says what the healthy pairs got while the hosts were
// down, against what they were offered then and what they got before.
func (o *outage) reportHealthy(row *Scenario, s outageSeen) {
	if o.backAt.IsZero() {
		return
	}
	span := o.backAt.Sub(o.downAt)
	row.HealthyPerSec = RateBetween(0, s.down.Delivered, o.downAt, o.backAt)
	row.HealthyOfferedPerSec = RateBetween(0, s.down.Offered, o.downAt, o.backAt)
	row.HealthyWarmPerSec = RateBetween(0, s.warm.Delivered, o.warmAt, o.downAt)
	row.HealthyP99Ms, row.HealthyWarmP99Ms = ms(s.down.Latency.P99), ms(s.warm.Latency.P99)
	warmOffered := RateBetween(0, s.warm.Offered, o.warmAt, o.downAt)
	row.Notes = append(row.Notes, fmt.Sprintf("healthy pairs while the hosts were down (%s): %.0f delivered/s of %.0f offered/s (%.3f), p99 %.1f ms; in the warm phase: %.0f delivered/s of %.0f offered/s (%.3f), p99 %.1f ms",
		span.Round(time.Millisecond), row.HealthyPerSec, row.HealthyOfferedPerSec, RatioOf(row.HealthyPerSec, row.HealthyOfferedPerSec),
		row.HealthyP99Ms, row.HealthyWarmPerSec, warmOffered, RatioOf(row.HealthyWarmPerSec, warmOffered), row.HealthyWarmP99Ms))
	if row.HealthyWarmPerSec < targetHealthyShare*warmOffered {
		row.Notes = append(row.Notes, "the warm phase, every host up, did not keep up with the paced rate either: the machine did not sustain that rate then, and healthy_per_sec says nothing of the outage")
	}
	if s.warmUse.ok && s.downUse.ok {
		row.Notes = append(row.Notes, fmt.Sprintf("geckohook kept %.2f cores busy in the warm phase, %.2f while the hosts were down; its threads waited for a CPU %.2f and %.2f s per second",
			s.warmUse.busy, s.downUse.busy, s.warmUse.waiting, s.downUse.waiting))
		if s.downUse.waiting > s.downUse.busy {
			row.Notes = append(row.Notes, "while the hosts were down geckohook's threads waited for a CPU longer than they ran: other processes had the cores")
		}
	}
	warm, down := o.downAt.Sub(o.warmAt), o.backAt.Sub(o.downAt)
	if o.harnessCPU[0] > 0 && warm > 0 && down > 0 {
		row.Notes = append(row.Notes, fmt.Sprintf("the harness (receiver farm of every host, generator, ledger) used %.2f cores in the warm phase and %.2f while the hosts were down",
			cores(o.harnessCPU[1]-o.harnessCPU[0], warm), cores(o.harnessCPU[2]-o.harnessCPU[1], down)))
	}
}

// reportDrain reads the drain from the samples taken from the hosts'
// return on: how long until the queues were empty, and, from the instant
// every queued retry was made due, how fast geckohook took them out.
func (o *outage) reportDrain(row *Scenario, samples []DrainSample) {
	if o.overdueErr != nil {
		row.Notes = append(row.Notes, "making the retries overdue: "+o.overdueErr.Error())
	}
	if len(samples) == 0 {
		row.Notes = append(row.Notes, "the hosts' return was not sampled: no drain figures")
		return
	}
	if all := DrainOf(samples); all.Emptied {
		row.DrainWallSec = all.Sec
	} else {
		row.Notes = append(row.Notes, fmt.Sprintf("the retry queues were not seen empty in the %.0f s sampled after the hosts' return", all.Sec))
	}
	k := 0
	for k < len(samples) && (o.overdueAt.IsZero() || samples[k].At.Before(o.overdueAt)) {
		k++
	}
	if k == len(samples) {
		row.Notes = append(row.Notes, "the retries were not made overdue while the queues were sampled: no drain rate")
		return
	}
	first := samples[k]
	row.DrainDepth = first.Depth
	d := DrainOf(samples[k:])
	row.DrainPerSec, row.DrainBacklogSec, row.DrainCores, row.DrainDeliveredPerSec = d.PerSec, d.BacklogSec, d.Cores, d.DeliveredPerSec
	row.DrainRatio = RatioOf(d.PerSec, row.FloodPerSec)
	kafka := first.Expected - first.Delivered - first.Depth
	row.Notes = append(row.Notes, fmt.Sprintf("%.1f s after the hosts' return the queues held %d deliveries, which were all made due %s before (%d moved: the retry schedule no longer paced them; the scripts held Redis for %d ms, before the drain's first second), and %d produced pairs were neither delivered nor queued (in Kafka or in flight); drain_per_sec is the queues' fall over the %.1f s that began with deliveries overdue and not claimed",
		first.At.Sub(o.backAt).Seconds(), first.Depth, overdueBy, o.overdue, o.overdueTook.Milliseconds(), max(kafka, 0), d.BacklogSec))
	if first.Depth > 0 && o.claimsRead {
		row.DrainClaimsPerRetry = float64(o.claims[1]-o.claims[0]) / float64(first.Depth)
		row.DrainAttemptsPerRetry = float64(o.requests[1]-o.requests[0]) / float64(first.Depth)
		row.Notes = append(row.Notes, fmt.Sprintf("from then until the queues were empty geckohook claimed each of those deliveries %.2f times and sent %.2f requests for it (a claim beyond the first is a deferral: its host was at its limit)",
			row.DrainClaimsPerRetry, row.DrainAttemptsPerRetry))
	}
	if d.Cores > 0 && d.DeliveredPerSec > 0 {
		row.DrainUsPerDelivery = d.Cores * 1e6 / d.DeliveredPerSec
		lead := ""
		if row.FloodUsPerDelivery > 0 {
			lead = fmt.Sprintf(" (%.1f µs in the lead-in)", row.FloodUsPerDelivery)
		}
		row.Notes = append(row.Notes, fmt.Sprintf("over those seconds geckohook kept %.2f cores busy, %.1f µs per pair delivered%s, and its threads waited for a CPU %.2f s per second",
			d.Cores, row.DrainUsPerDelivery, lead, d.Waiting))
		if d.RedisCores > 0 {
			row.DrainRedisUsPerDelivery = d.RedisCores * 1e6 / d.DeliveredPerSec
			row.Notes = append(row.Notes, fmt.Sprintf("redis-server kept %.2f cores busy over them, %.1f µs per pair delivered (the retry scripts)",
				d.RedisCores, row.DrainRedisUsPerDelivery))
		}
		if d.Waiting > d.Cores {
			row.Notes = append(row.Notes, "geckohook's threads waited for a CPU longer than they ran during the drain: other processes had the cores, and drain_per_sec is more the machine's than geckohook's")
		}
	}
}
