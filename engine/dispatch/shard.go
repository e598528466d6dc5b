package dispatch

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/shard"
)

// shardRun is one partition's dispatcher while it is assigned here. Its
// goroutines have one owner, runShard, and two stop signals: the
// generation's context stops the feeders (the fetch loop and the retry
// poller), and life, cancelled once in-flight deliveries are drained, stops
// the sinks (the writer, the dead-letter writer and the committer) and
// tells the workers the partition is no longer ours.
type shardRun struct {
	d         *Dispatcher
	partition int
	tracker   *shard.Tracker
	queue     *shard.Queue
	writes    chan *delivery // decided turns with something to write
	dead      chan deadLetter
	claims    *claims
	life      context.Context
	log       zerolog.Logger
	failLog   zerolog.Logger    // sampled: a failing endpoint must not flood the log
	targets   []registry.Target // the fetch loop's scratch for matching
	// accounts are the fetch loop's account ids (see account); intern is
	// s.account bound once, so passing it per event allocates nothing.
	accounts map[string]string
	intern   func([]byte) string
}

// runShard runs partition a until gctx ends, then drains it: fetching and
// claiming stop, in-flight deliveries finish (or are written to the retry
// queue) within DrainTimeout, unfinished claims are handed back, the sinks
// stop, and the offset is committed while the generation is still ours.
func (d *Dispatcher) runShard(gctx context.Context, gen *kafka.Generation, a kafka.PartitionAssignment) {
	life, end := context.WithCancel(context.Background())
	defer end()
	s := &shardRun{
		d:         d,
		partition: a.ID,
		tracker:   shard.NewTracker(a.Offset),
		queue:     shard.NewQueue(d.o.Redis, d.o.RedisPrefix, d.o.Topic, a.ID),
		writes:    make(chan *delivery, d.o.Window),
		claims:    newClaims(d.o.RetryWindow, d.Stats.RetriesInFlight),
		dead:      make(chan deadLetter, 64),
		life:      life,
		log:       d.o.Log.With().Str("topic", d.o.Topic).Int("partition", a.ID).Logger(),
	}
	s.failLog = s.log.Sample(&zerolog.BurstSampler{Burst: 5, Period: time.Second})
	s.accounts, s.intern = map[string]string{}, s.account
	s.log.Info().Int64("offset", a.Offset).Msg("shard started")
	d.Stats.Shards.Add(1)
	defer d.Stats.Shards.Add(-1)

	var sinks, feeders sync.WaitGroup
	goWith(&sinks, func() { s.writeLoop(life) })
	goWith(&sinks, func() { s.deadLetterLoop(life) })
	goWith(&sinks, func() { s.commitLoop(life, gen) })
	goWith(&feeders, func() { s.pollLoop(gctx) })
	s.fetchLoop(gctx, a.Offset)
	feeders.Wait()

	s.drain()
	s.releaseLeases(s.claims.claimed())
	end()
	sinks.Wait()
	s.commitFinal(gen)
}

// goWith runs f in a goroutine counted by wg.
func goWith(wg *sync.WaitGroup, f func()) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		f()
	}()
}

// drain waits, up to DrainTimeout, for in-flight deliveries to finish or be
// written, and for claimed retries to be written back.
func (s *shardRun) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), s.d.o.DrainTimeout)
	defer cancel()
	if err := s.tracker.WaitBelow(ctx, 1); err != nil {
		s.log.Warn().Int("in_flight", s.tracker.InFlight()).Msg("drain timed out; unfinished events will be replayed by the next owner")
	}
	if err := s.claims.drain(ctx); err != nil {
		s.log.Warn().Int("retries_in_flight", s.claims.inFlight()).Msg("drain timed out; unfinished retries go back to the queue")
	}
}

// retry runs op until it succeeds (true) or ctx ends (false), backing off.
func (s *shardRun) retry(ctx context.Context, what string, op func() error) bool {
	return backoff.Hold(ctx, s.log, 50*time.Millisecond, what, op)
}
