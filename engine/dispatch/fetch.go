package dispatch

import (
	"context"
	"time"

	"github.com/geckohook/geckohook/engine/kafkaio"
)

// fetchLoop reads the partition from offset and fans each event out, until
// ctx ends. It never holds more than Window unfinished deliveries: it waits
// for the window before each event. With read_committed isolation (the
// default), records of aborted transactions and transaction markers are
// skipped, their offsets counted as done.
func (s *shardRun) fetchLoop(ctx context.Context, offset int64) {
	d := s.d
	r := kafkaio.NewPartitionReader(kafkaio.PartitionConfig{
		Brokers:   d.o.Brokers,
		Topic:     d.o.Topic,
		Partition: s.partition,
		Isolation: d.o.Isolation,
		MinBytes:  1,
		MaxBytes:  1 << 20, // ~10,000 events a fetch, held until fanned out
		MaxWait:   100 * time.Millisecond,
	}, offset)
	defer r.Close()
	lag, name := d.lagGauge(s.partition)
	defer d.m.set.UnregisterMetric(name)
	for ctx.Err() == nil {
		recs, err := r.Fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn().Err(err).Msg("cannot fetch from partition; retrying")
			t := time.NewTimer(200 * time.Millisecond)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			continue
		}
		lag.Set(float64(r.Lag()))
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
