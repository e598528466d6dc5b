// Package coordinator is the coordinator role: it consumes the outcomes
// topic in a consumer group, keeps every failing webhook's health in Redis
// (pipelined, one round of reads and one of version-checked writes per
// batch), deletes webhooks that answered 410 Gone or failed without a
// success for DeleteAfter (on the failure that crosses it and in a periodic
// sweep), and records per mail day what failed and what was deleted, for
// the daily digest (package mail). Kafka offsets are committed only after
// Redis has the batch; a replayed batch is recognised by the partition and
// offset stored with each webhook's health and not counted twice. The sweep
// and the 3-day check against the clock judge at a safe time, the catch-up
// watermark less a grace (see judgeAt and lag.go), so they run however busy
// the topic is and never act on outcomes not applied yet; the same
// watermark tells the mail job which days are complete.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/streak"
)

// Options configure a Coordinator. Zero values mean the defaults in brackets.
type Options struct {
	Brokers []string
	Topic   string // outcomes topic ("geckohook.outcomes")
	Group   string // consumer group ("geckohook-coordinators")

	Redis    redis.UniversalClient
	Prefix   string // Redis key prefix ("gh:")
	Registry *registry.Registry

	// Policy: DeleteAfter (72h) and MailAt (00:00), which sets the mail day
	// failures are counted in.
	Policy streak.Policy
	// SweepEvery is how often the failing set is swept for the 3-day rule
	// (1m). A sweep judges at min(now, watermark) - Grace; it is skipped
	// only while no catch-up watermark exists yet.
	SweepEvery time.Duration
	// Grace is how long an outcome may take from the dispatcher's buffer
	// into Kafka (2m, the mail's --mail-grace): the 3-day rule against the
	// clock is judged this far behind the catch-up watermark, and on a
	// failure's arrival this far behind the failure's own time.
	Grace time.Duration
	// WatermarkEvery is how often the group's lag is read and the catch-up
	// watermark moved (5s).
	WatermarkEvery time.Duration
	// MaxBatch outcomes per Redis round (500).
	MaxBatch int
	// SessionTimeout of the group member (30s).
	SessionTimeout time.Duration

	// Metrics is the process's set; the coordinator's metrics go in it
	// (nil: a set of its own).
	Metrics *metrics.Set

	Now func() time.Time // clock (time.Now)
	Log zerolog.Logger
}

// Stats are cumulative counters of a Coordinator; the ops.Counters are in
// its metrics set.
type Stats struct {
	// Outcomes applied; Bad: unreadable, skipped.
	Outcomes, Bad ops.Counter
	// Conflicts: health updates re-read because another coordinator wrote
	// first. DeletedFailing and DeletedGone: webhooks deleted, by reason.
	Conflicts, DeletedFailing, DeletedGone ops.Counter
	Batches, Swept                         atomic.Int64
	// Sweeps run by the loop; SweepsSkipped: skipped because there is no
	// catch-up watermark yet.
	Sweeps, SweepsSkipped atomic.Int64
	// CommitFailures: offset commits that failed (and are retried).
	CommitFailures ops.Counter
}

// Coordinator is one coordinator process's consumer and sweeper.
type Coordinator struct {
	o      Options
	keys   Keys
	client *kafka.Client
	lag    atomic.Pointer[lagState] // the last lag check; nil: none or it failed
	wm     atomic.Int64             // the catch-up watermark as last seen in Redis (unix ms; 0: none)
	id     string                   // names this process's sweep holds
	Stats  Stats

	lagMu    sync.Mutex
	lagNames map[int]string // partition → its consumer-lag series

	afterStore func() // tests: runs between a settle's health write and its effects
}

// New returns a Coordinator; Run starts it.
func New(o Options) *Coordinator {
	if o.Topic == "" {
		o.Topic = outcomes.DefaultTopic
	}
	if o.Group == "" {
		o.Group = "geckohook-coordinators"
	}
	if o.Prefix == "" {
		o.Prefix = contract.DefaultRedisPrefix
	}
	if o.SweepEvery <= 0 {
		o.SweepEvery = time.Minute
	}
	if o.WatermarkEvery <= 0 {
		o.WatermarkEvery = 5 * time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 500
	}
	if o.Grace <= 0 {
		o.Grace = 2 * time.Minute
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	c := &Coordinator{o: o, keys: Keys{Prefix: o.Prefix}, id: strconv.FormatUint(rand.Uint64(), 36),
		client:   &kafka.Client{Addr: kafka.TCP(o.Brokers...), Timeout: 10 * time.Second},
		lagNames: make(map[int]string)}
	c.register(o.Metrics)
	return c
}

// register puts the coordinator's metrics in set.
func (c *Coordinator) register(set *metrics.Set) {
	n := func(name string) ops.Counter { return ops.NewCounter(set, name) }
	st := &c.Stats
	st.Outcomes, st.Bad = n(`geckohook_coordinator_outcomes_total{result="applied"}`), n(`geckohook_coordinator_outcomes_total{result="bad"}`)
	st.DeletedFailing, st.DeletedGone = n(`geckohook_webhooks_deleted_total{reason="failing"}`), n(`geckohook_webhooks_deleted_total{reason="gone"}`)
	st.CommitFailures = n("geckohook_coordinator_commit_failures_total")
	st.Conflicts = n("geckohook_health_conflicts_total")
	// 1 when the last lag check found every outcome applied.
	set.NewGauge("geckohook_coordinator_caught_up", func() float64 {
		if c.lag.Load().caughtUp() {
			return 1
		}
		return 0
	})
}

// Keys returns the key layout in use.
func (c *Coordinator) Keys() Keys { return c.keys }

// Run consumes outcomes and sweeps until ctx ends; the batch in hand is
// finished (or left uncommitted) before it returns.
func (c *Coordinator) Run(ctx context.Context) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:     c.o.Brokers,
		GroupID:     c.o.Group,
		Topic:       c.o.Topic,
		MinBytes:    1,
		MaxBytes:    4 << 20,
		MaxWait:     200 * time.Millisecond,
		StartOffset: kafka.FirstOffset,
		// Only geckohook's own writer (not transactional) writes outcomes,
		// so no marker or aborted record can appear; read_committed keeps
		// it that way should a transactional writer ever be added.
		IsolationLevel:    kafka.ReadCommitted,
		SessionTimeout:    c.o.SessionTimeout,
		HeartbeatInterval: c.o.SessionTimeout / 4,
		RebalanceTimeout:  c.o.SessionTimeout,
		JoinGroupBackoff:  time.Second,
		// Partitions added to the outcomes topic are read too (the group
		// rebalances when the leader sees them); otherwise they would be
		// lag that is never read and the watermark would stall.
		WatchPartitionChanges:  true,
		PartitionWatchInterval: c.o.WatermarkEvery,
		CommitInterval:         0, // synchronous: CommitMessages returns once committed
		QueueCapacity:          c.o.MaxBatch,
		// An idle partition's fetch timing out is debug, not a warning.
		ErrorLogger: kafkaio.ErrorLogger(c.o.Log),
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.sweepLoop(ctx) }()
	go func() { defer wg.Done(); c.watermarkLoop(ctx) }()
	c.consume(ctx, r)
	wg.Wait()
	if err := r.Close(); err != nil {
		return fmt.Errorf("cannot close outcomes reader: %w", err)
	}
	return nil
}

// outcomeReader is the part of *kafka.Reader consume uses.
type outcomeReader interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

func (c *Coordinator) consume(ctx context.Context, r outcomeReader) {
	batch := make([]kafka.Message, 0, c.o.MaxBatch)
	// Offsets applied to Redis and not committed yet: the newest message
	// per partition. A failed commit is retried with backoff before the
	// next fetch and, while the topic is idle, when the backoff ends, so the
	// group's lag (and with it the watermark) does not freeze on an idle
	// topic until a rebalance.
	pending := map[int]kafka.Message{}
	var nextCommit time.Time
	commitWaits := backoff.NewWaits(100*time.Millisecond, backoff.HoldLimit)
	commit := func() {
		if len(pending) == 0 {
			return
		}
		msgs := make([]kafka.Message, 0, len(pending))
		for _, m := range pending {
			msgs = append(msgs, m)
		}
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := r.CommitMessages(cctx, msgs...)
		cancel()
		if err == nil {
			clear(pending)
			commitWaits.Reset()
			return
		}
		c.Stats.CommitFailures.Inc()
		wait := commitWaits.Next()
		c.o.Log.Warn().Err(err).Dur("retry_in_ms", wait).Int("partitions", len(msgs)).
			Msg("cannot commit outcome offsets; retrying (a crash meanwhile replays the batch, applied once)")
		nextCommit = time.Now().Add(wait)
	}
	// On the way out, one last try: what stays uncommitted is replayed.
	defer commit()
	for ctx.Err() == nil {
		if len(pending) > 0 && !time.Now().Before(nextCommit) {
			commit()
		}
		batch = batch[:0]
		fctx, cancel := ctx, context.CancelFunc(func() {})
		if len(pending) > 0 {
			fctx, cancel = context.WithDeadline(ctx, nextCommit)
		}
		m, err := r.FetchMessage(fctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return
			}
			if len(pending) > 0 && fctx.Err() != nil {
				continue // time to retry the commit
			}
			c.o.Log.Warn().Err(err).Msg("cannot fetch outcomes; retrying")
			backoff.Sleep(ctx, 500*time.Millisecond)
			continue
		}
		batch = append(batch, m)
		for len(batch) < c.o.MaxBatch {
			fctx, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
			m, err := r.FetchMessage(fctx)
			cancel()
			if err != nil {
				break
			}
			batch = append(batch, m)
		}
		// The batch in hand is finished even during shutdown, so its
		// offsets can be committed; a crash instead replays it.
		if !c.retry(ctx, "apply outcomes", func() error { return c.process(batch) }) {
			return
		}
		for _, m := range batch {
			if p, ok := pending[m.Partition]; !ok || m.Offset > p.Offset {
				pending[m.Partition] = m
			}
		}
		if !time.Now().Before(nextCommit) {
			commit()
		}
	}
}

// process applies one batch of outcome records.
func (c *Coordinator) process(batch []kafka.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	items := make(map[string][]item, len(batch))
	ids := make([]string, 0, len(batch))
	newest := map[int]time.Time{} // per partition, the newest outcome time in the batch
	for _, m := range batch {
		o, err := outcomes.Decode(m.Value)
		if err != nil {
			c.Stats.Bad.Inc()
			c.o.Log.Warn().Err(err).Int("partition", m.Partition).Int64("offset", m.Offset).Msg("skipping unreadable outcome")
			continue
		}
		if _, ok := items[o.WebhookID]; !ok {
			ids = append(ids, o.WebhookID)
		}
		items[o.WebhookID] = append(items[o.WebhookID], item{o: o, part: m.Partition, off: m.Offset})
		if o.At.After(newest[m.Partition]) {
			newest[m.Partition] = o.At
		}
	}
	if len(ids) > 0 {
		// The 3-day rule against the clock at the safe time (see apply).
		now := c.o.Now()
		if err := c.settle(ctx, ids, items, now, c.judgeAt(now, c.wm.Load())); err != nil {
			return err
		}
	}
	if err := c.recordApplied(ctx, newest); err != nil {
		return err
	}
	c.Stats.Outcomes.Add(len(batch))
	c.Stats.Batches.Add(1)
	return nil
}

func (c *Coordinator) sweepLoop(ctx context.Context) {
	t := time.NewTicker(c.o.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := c.sweepTick(ctx); err != nil && ctx.Err() == nil {
			c.o.Log.Warn().Err(err).Msg("sweep failed; next one in a while")
		}
	}
}

// sweepTick moves the watermark (a failed lag check only leaves it where it
// is) and sweeps at the safe time; false: no watermark yet, nothing swept.
func (c *Coordinator) sweepTick(ctx context.Context) (bool, error) {
	if _, err := c.checkLag(ctx); err != nil && ctx.Err() == nil {
		c.o.Log.Warn().Err(err).Msg("cannot check the outcomes lag; sweeping at the last watermark")
	}
	swept, err := c.sweepSafe(ctx)
	if err != nil {
		return false, err
	}
	if swept {
		c.Stats.Sweeps.Add(1)
	} else {
		c.Stats.SweepsSkipped.Add(1)
	}
	return swept, nil
}

// judgeAt is the time the 3-day rule is judged at against the clock:
// min(now, watermark) - Grace, zero (no judging) without a watermark. Every
// outcome dated up to it is applied: the watermark vouches for what was in
// Kafka, the grace for what was still in a publisher's buffer or in its
// write retries. Since a streak only becomes due as time passes, judging at
// an earlier time than now never deletes wrongly; it deletes at most
// Grace (plus the coordinators' lag) late, and never waits for the topic
// to fall idle.
func (c *Coordinator) judgeAt(now time.Time, wmMS int64) time.Time {
	if wmMS <= 0 {
		return time.Time{}
	}
	at := time.UnixMilli(wmMS).UTC()
	if now.Before(at) {
		at = now
	}
	return at.Add(-c.o.Grace)
}

// Sweep deletes every webhook whose streak began at least DeleteAfter
// before the safe judging time (see judgeAt) with no success since. Any
// number of coordinators may sweep at once: the version-checked write makes
// each webhook's deletion happen once. Without a catch-up watermark in
// Redis it does nothing.
func (c *Coordinator) Sweep(ctx context.Context) error {
	_, err := c.sweepSafe(ctx)
	return err
}

// sweepHold bounds (in real time) how long a sweep holds the watermark; a
// sweep is cut off at half of it, and a hold past it is dropped as left by
// a crashed coordinator.
const sweepHold = 2 * time.Minute

func (c *Coordinator) sweepSafe(ctx context.Context) (bool, error) {
	// Hold the watermark at the time this sweep dates its deletions, so a
	// sweep running across the end of a mail day cannot record a deletion
	// in a day whose digest another coordinator has already sent.
	now := c.o.Now()
	hold := c.id + "|" + strconv.FormatInt(time.Now().Add(sweepHold).UnixMilli(), 10)
	_, err := c.o.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, c.keys.Sweeps(), redis.Z{Score: float64(now.UnixMilli()), Member: hold})
		p.PExpire(ctx, c.keys.Sweeps(), 2*sweepHold)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("cannot hold the catch-up watermark for a sweep: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := c.o.Redis.ZRem(rctx, c.keys.Sweeps(), hold).Err(); err != nil {
			c.o.Log.Warn().Err(err).Msg("cannot release the sweep's hold on the watermark; it lapses on its own")
		}
	}()
	// Read after the hold: the watermark may be past now (another
	// coordinator's clock, or it moved before the hold was in place); then
	// deletions are dated at it, which the hold keeps unmailed.
	wm, err := c.o.Redis.Get(ctx, c.keys.Watermark()).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("cannot read the catch-up watermark: %w", err)
	}
	c.raiseWatermark(wm)
	judge := c.judgeAt(now, wm)
	if judge.IsZero() {
		return false, nil
	}
	at := now
	if w := time.UnixMilli(wm).UTC(); w.After(at) {
		at = w
	}
	sctx, cancel := context.WithTimeout(ctx, sweepHold/2)
	defer cancel()
	return true, c.sweep(sctx, at, judge)
}

// raiseWatermark keeps the newest watermark seen.
func (c *Coordinator) raiseWatermark(wm int64) {
	for {
		cur := c.wm.Load()
		if wm <= cur || c.wm.CompareAndSwap(cur, wm) {
			return
		}
	}
}

func (c *Coordinator) sweep(ctx context.Context, now, judge time.Time) error {
	// Streaks that began at or before judge - DeleteAfter.
	limit := judge.Add(-c.o.Policy.After()).UnixMilli()
	// Every webhook settled leaves the range (deleted, re-scored or
	// removed), so this ends; the bound is a safety net.
	for round := 0; round < 1000; round++ {
		ids, err := c.o.Redis.ZRangeByScore(ctx, c.keys.Failing(), &redis.ZRangeBy{
			Min: "-inf", Max: strconv.FormatInt(limit, 10), Count: int64(c.o.MaxBatch),
		}).Result()
		if err != nil {
			return fmt.Errorf("cannot read the failing set: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		if err := c.settle(ctx, ids, nil, now, judge); err != nil {
			return err
		}
		c.Stats.Swept.Add(int64(len(ids)))
		if len(ids) < c.o.MaxBatch {
			return nil
		}
	}
	return nil
}

// retry runs op until it succeeds (true) or ctx ends (false), backing off.
func (c *Coordinator) retry(ctx context.Context, what string, op func() error) bool {
	return backoff.Hold(ctx, c.o.Log, 100*time.Millisecond, what, op)
}
