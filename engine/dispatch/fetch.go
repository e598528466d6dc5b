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
	for ctx.Err() == nil {
		recs, err := r.Take(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn().Err(err).Msg("cannot fetch from partition; retrying")
			backoff.Sleep(ctx, 200*time.Millisecond)
			continue
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
