package dispatch

import (
	"context"
	"sync"
	"time"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/kafkaio"
)

// fetchLoop reads the partition from offset and fans each event out, until
// ctx ends. A fetcher goroutine it owns reads the next batch while this one
// fans out the last, so the broker's round trip overlaps the fan-out. It
// never holds more than Window unfinished deliveries: it waits for the
// window before each event. With read_committed isolation (the default),
// records of aborted transactions and transaction markers are skipped,
// their offsets counted as done.
func (s *shardRun) fetchLoop(ctx context.Context, offset int64) {
	d := s.d
	ctx, stop := context.WithCancel(ctx)
	// Unbuffered: the fetcher hands a batch over only once the last one is
	// fanned out, and the reader's records stay valid for one more fetch.
	batches := make(chan []kafkaio.Record)
	var fetcher sync.WaitGroup
	goWith(&fetcher, func() { s.fetch(ctx, offset, batches) })
	defer fetcher.Wait()
	defer stop()
	for {
		var recs []kafkaio.Record
		select {
		case <-ctx.Done():
			return
		case recs = <-batches:
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

// fetch reads batches from offset into out until ctx ends, backing off
// after an error.
func (s *shardRun) fetch(ctx context.Context, offset int64, out chan<- []kafkaio.Record) {
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
		recs, err := r.Fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn().Err(err).Msg("cannot fetch from partition; retrying")
			backoff.Sleep(ctx, 200*time.Millisecond)
			continue
		}
		lag.Set(float64(r.Lag()))
		if len(recs) == 0 {
			continue
		}
		select {
		case out <- recs:
		case <-ctx.Done():
			return
		}
	}
}
