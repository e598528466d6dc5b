package dispatch

import (
	"context"
	"time"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/kafkaio"
)

// fetchLoop reads the partition from offset and fans each event out, until
// ctx ends. Once a batch is in, the next is asked for at once, so the
// broker's round trip overlaps the batch's fan-out (the reader keeps a
// batch's records valid until the fetch after the next one returns
// records). It never holds more than Window unfinished deliveries: it
// waits for the window before each event. With read_committed isolation
// (the default), records of aborted transactions and transaction markers
// are skipped, their offsets counted as done.
func (s *shardRun) fetchLoop(ctx context.Context, offset int64) {
	d := s.d
	r := kafkaio.NewPartitionReader(kafkaio.PartitionConfig{
		Brokers:   d.o.Brokers,
		Topic:     d.o.Topic,
		Partition: s.partition,
		Isolation: d.o.Isolation,
		MaxBytes:  1 << 20, // ~10,000 events a fetch
		Session:   d.fetches,
	}, offset)
	defer r.Close()
	lag, name := d.lagGauge(s.partition)
	defer d.m.set.UnregisterMetric(name)
	var fails fetchFailures
	for ctx.Err() == nil {
		recs, err := r.Take(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if n := fails.failed(d.o.Now()); n > 0 {
				s.log.Warn().Err(err).Int("failures", n).Msg("cannot fetch from partition; retrying every 200ms")
			}
			backoff.Sleep(ctx, fetchRetry)
			continue
		}
		if n, took := fails.recovered(d.o.Now()); n > 0 {
			s.log.Info().Int("failures", n).Int64("failing_ms", took.Milliseconds()).Msg("fetching from partition again")
		}
		lag.Set(float64(r.Lag()))
		if len(recs) > 0 {
			// An ask that cannot go out now is tried again by Take.
			_ = r.Ask(ctx)
		}
		for i := range recs {
			rec := &recs[i]
			if rec.Skip {
				s.tracker.Add(rec.Offset, 0)
				continue
			}
			if err := s.tracker.WaitBelow(ctx, d.o.Window); err != nil {
				return
			}
			s.fanOut(ctx, rec)
		}
	}
}

// fetchRetry is the wait after a failed fetch before the next.
const fetchRetry = 200 * time.Millisecond

// failureLogEvery is how often a partition whose fetches keep failing
// logs again. A leader change fails them until the client's metadata
// catches up, which takes seconds: a line per failed fetch would be a
// line per partition every fetchRetry.
const failureLogEvery = 10 * time.Second

// fetchFailures decides which of a partition's failed fetches are
// logged: the first of a run of failures at once, then one each
// failureLogEvery, each line counting the failures since the one before.
// A zerolog sampler (like the shard's failLog) would drop lines without
// saying how many, and could not say when the run ended and how long it
// lasted.
type fetchFailures struct {
	since, logged time.Time
	total, quiet  int // failures in this run; those not logged yet
}

// failed records a failure at now and returns how many failures a log
// line for it covers, or 0 when it is not to be logged.
func (f *fetchFailures) failed(now time.Time) int {
	if f.total == 0 {
		f.since = now
	}
	f.total++
	f.quiet++
	if !f.logged.IsZero() && now.Sub(f.logged) < failureLogEvery {
		return 0
	}
	n := f.quiet
	f.logged, f.quiet = now, 0
	return n
}

// recovered ends a run of failures at now, the first fetch that worked
// after them: how many there were and how long they lasted (0 and 0
// after none).
func (f *fetchFailures) recovered(now time.Time) (int, time.Duration) {
	if f.total == 0 {
		return 0, 0
	}
	n, took := f.total, now.Sub(f.since)
	*f = fetchFailures{}
	return n, took
}
