package dispatch

import (
	"context"
	"time"

	"github.com/segmentio/kafka-go"
)

// commitLoop commits the shard's offset whenever it moved, every
// CommitEvery, until ctx ends.
func (s *shardRun) commitLoop(ctx context.Context, gen *kafka.Generation) {
	t := time.NewTicker(s.d.o.CommitEvery)
	defer t.Stop()
	last := int64(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		off := s.tracker.Committable()
		if off < 0 || off == last {
			continue
		}
		if err := s.d.commit(gen, s.partition, off); err != nil {
			s.log.Warn().Err(err).Int64("offset", off).Msg("cannot commit offset; will retry")
			continue
		}
		last = off
	}
}

// commitFinal commits what the drained shard finished.
func (s *shardRun) commitFinal(gen *kafka.Generation) {
	off := s.tracker.Committable()
	if off < 0 {
		return
	}
	if err := s.d.commit(gen, s.partition, off); err != nil {
		s.log.Warn().Err(err).Int64("offset", off).Msg("final commit failed; events after the last commit will be replayed")
		return
	}
	s.log.Info().Int64("offset", off).Msg("shard stopped; offset committed")
}

// commit commits one partition's offset (the next to read) on the group's
// connection, one commit at a time.
func (d *Dispatcher) commit(gen *kafka.Generation, partition int, offset int64) error {
	d.commitMu.Lock()
	defer d.commitMu.Unlock()
	err := gen.CommitOffsets(map[string]map[int]int64{d.o.Topic: {partition: offset}})
	if err != nil {
		d.Stats.CommitFailures.Inc()
	}
	return err
}
