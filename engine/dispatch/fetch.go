package dispatch

import (
	"context"
	"time"

	"github.com/segmentio/kafka-go"
)

// fetchLoop reads the partition from offset and fans each event out, until
// ctx ends. It never holds more than Window unfinished deliveries: it waits
// for the window before each fetch.
func (s *shardRun) fetchLoop(ctx context.Context, offset int64) {
	d := s.d
	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        d.o.Brokers,
		Topic:          d.o.Topic,
		Partition:      s.partition,
		MinBytes:       1,
		MaxBytes:       8 << 20,
		MaxWait:        100 * time.Millisecond,
		QueueCapacity:  1024,
		ReadBackoffMin: 10 * time.Millisecond,
		ReadBackoffMax: 250 * time.Millisecond,
		ErrorLogger:    kafka.LoggerFunc(func(f string, args ...any) { s.log.Warn().Msgf(f, args...) }),
	})
	defer func() {
		if err := reader.Close(); err != nil {
			s.log.Warn().Err(err).Msg("closing partition reader")
		}
	}()
	if err := reader.SetOffset(offset); err != nil {
		s.log.Error().Err(err).Msg("cannot seek partition reader")
	}
	for {
		if err := s.tracker.WaitBelow(ctx, d.o.Window); err != nil {
			return
		}
		m, err := reader.FetchMessage(ctx)
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
		s.fanOut(ctx, m)
	}
}
