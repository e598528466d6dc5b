package dispatch

import (
	"context"
	"errors"
	"time"

	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/retry"
	"github.com/geckohook/geckohook/shard"
)

// maxBatch is the most deliveries the writer takes in one batch.
const maxBatch = 512

// nextBatch waits for one item on ch, then takes whatever else is already
// there, up to cap(batch). It reports false once ctx ends.
func nextBatch[T any](ctx context.Context, ch <-chan T, batch []T) ([]T, bool) {
	batch = batch[:0]
	select {
	case <-ctx.Done():
		return batch, false
	case x := <-ch:
		batch = append(batch, x)
	}
	for len(batch) < cap(batch) {
		select {
		case x := <-ch:
			batch = append(batch, x)
		default:
			return batch, true
		}
	}
	return batch, true
}

// writeLoop is the shard's one writer: in batches, it deletes the webhooks
// that answered 410, writes each decision to the shard's retry queue in
// pipelined commands, publishes what the writes make true (a delivery gone
// dead, a webhook gone), and only then completes the deliveries. While
// Redis is away it retries with backoff and the windows fill up, which
// stops fetching and claiming: nothing is dropped. Once ctx ends (the
// shard has let its partition go), what it has not written, in its batch
// or its queue, is abandoned: the next owner replays or re-claims it, and
// the claims it held are given back here.
func (s *shardRun) writeLoop(ctx context.Context) {
	batch := make([]*delivery, 0, maxBatch)
	entries := make([]shard.Entry, 0, maxBatch)
	ops := make([]shard.Op, 0, maxBatch)
	defer func() {
		for _, dl := range batch { // none completed: every exit is before that
			s.abandon(dl)
		}
		for {
			select {
			case dl := <-s.writes:
				s.abandon(dl)
			default:
				return
			}
		}
	}()
	// The management API finds deliveries through the set of shards.
	if !s.retry(ctx, "register the shard", func() error { return s.d.store.Register(ctx, s.d.o.Topic, s.partition) }) {
		return
	}
	for {
		var ok bool
		if batch, ok = nextBatch(ctx, s.writes, batch); !ok {
			return
		}
		for _, dl := range batch {
			if dl.deleteHook && !s.deleteGone(ctx, dl) {
				return
			}
		}
		var soonest time.Time
		entries, ops, soonest = queueWrites(batch, entries[:0], ops[:0])
		if !s.retry(ctx, "schedule retries", func() error { return s.queue.Schedule(ctx, entries) }) {
			return
		}
		if !s.applyOps(ctx, ops) {
			return
		}
		died := false
		for _, dl := range batch {
			switch dl.write {
			case retry.Schedule:
				s.d.Stats.Scheduled.Inc()
			case retry.Kill:
				s.d.Stats.Dead.Inc()
				died = true
			}
			if dl.published != 0 {
				s.d.publish(dl.published, dl)
			}
		}
		if died {
			s.trimDead(ctx)
		}
		if !soonest.IsZero() {
			s.claims.wakeBy(soonest)
		}
		for _, dl := range batch {
			s.complete(dl)
		}
	}
}

// queueWrites turns a batch's decisions into the queue's writes: new
// records for first turns (entries), changes to claimed ones (ops), and the
// soonest time a claimed retry falls due again.
func queueWrites(batch []*delivery, entries []shard.Entry, ops []shard.Op) ([]shard.Entry, []shard.Op, time.Time) {
	var soonest time.Time
	for _, dl := range batch {
		switch {
		case dl.write == retry.Nothing:
		case !dl.queued:
			entries = append(entries, shard.Entry{Rec: dl.rec, Due: dl.due, Dead: dl.write == retry.Kill})
		case dl.write == retry.Remove:
			ops = append(ops, shard.Op{Kind: shard.OpRemove, Rec: dl.rec})
		case dl.write == retry.Kill:
			ops = append(ops, shard.Op{Kind: shard.OpKill, Rec: dl.rec, At: dl.due})
		default:
			ops = append(ops, shard.Op{Kind: shard.OpReschedule, Rec: dl.rec, At: dl.due})
			if soonest.IsZero() || dl.due.Before(soonest) {
				soonest = dl.due
			}
		}
	}
	return entries, ops, soonest
}

// underLeases gives each op the lease its delivery is claimed under now
// (extended or re-claimed since the claim that read it, maybe), which its
// change requires of the queue.
func (s *shardRun) underLeases(ops []shard.Op) []shard.Op {
	for i := range ops {
		if l, ok := s.claims.lease(ops[i].Rec.ID); ok {
			ops[i].Lease = l
		}
	}
	return ops
}

// maxReapply bounds how often the writer applies an op again because its
// delivery's lease moved while the op was written.
const maxReapply = 3

// applyOps writes changes to claimed deliveries, each under the lease it
// holds now; false if ctx ended first. A claim or an extension of this
// shard may re-lease a delivery between the reading of its lease and the
// write (a claim does when the delivery was made due while its attempt
// ran, by retry-now or DueBy): the queue refuses the op, and left so, the
// delivery would stay claimed and go out again when the new lease ends.
// Such an op is applied again under the lease as it stands then. One
// refused under a lease that has not moved was claimed by another
// process once the lease ran out: that claimant owns the delivery now.
func (s *shardRun) applyOps(ctx context.Context, ops []shard.Op) bool {
	for try := 1; len(ops) > 0; try++ {
		var refused []int
		if !s.retry(ctx, "update retries", func() (err error) {
			refused, err = s.queue.ApplyHeld(ctx, s.underLeases(ops))
			return err
		}) {
			return false
		}
		ops = s.releasedOps(ops, refused, try < maxReapply)
	}
	return true
}

// releasedOps returns the refused ops whose delivery this shard has
// re-leased since their lease was read (none once again is false), and
// logs the others (sampled: a process whose leases ran out loses many at
// once): their lease is lost.
func (s *shardRun) releasedOps(ops []shard.Op, refused []int, again bool) []shard.Op {
	var next []shard.Op
	for _, k := range refused {
		op := ops[k]
		l, ok := s.claims.lease(op.Rec.ID)
		moved := ok && (!l.End.Equal(op.Lease.End) || !l.Pending.Equal(op.Lease.Pending))
		switch {
		case moved && again:
			next = append(next, op)
		case moved:
			s.failLog.Warn().Str("delivery", op.Rec.ID).Str("webhook_id", op.Rec.WebhookID).Time("lease_end", l.End).
				Msg("retry outcome not written: its lease moved at every try; the delivery goes out again when the lease ends")
		default:
			s.failLog.Info().Str("delivery", op.Rec.ID).Str("webhook_id", op.Rec.WebhookID).Time("lease_end", op.Lease.End).
				Msg("retry outcome not written: the delivery's lease ran out and another claim holds it, which sends it again")
		}
	}
	return next
}

// deleteGone deletes the webhook of a delivery that answered 410, retrying
// until Redis takes it; false if ctx ended first. Only the turn whose
// delete removed the webhook keeps its Gone outcome to publish, so
// concurrent 410s of one webhook report one deletion. A try that failed on
// the client may have been carried out by Redis all the same: a later try
// that finds the webhook gone then counts as this turn's (at worst a second
// report across processes, which the coordinator records once).
func (s *shardRun) deleteGone(ctx context.Context, dl *delivery) bool {
	s.d.Stats.Gone.Inc()
	id := dl.hook.ID
	removed, tried := false, false
	if s.d.o.Registry.Webhook(id) != nil {
		ok := s.retry(ctx, "delete a webhook that answered 410 Gone", func() error {
			tctx, cancel := context.WithTimeout(ctx, s.d.o.GoneDeleteTimeout)
			defer cancel()
			err := s.d.o.Registry.DeleteWebhook(tctx, id)
			switch {
			case err == nil:
				removed = true
			case errors.Is(err, registry.ErrNotFound):
				removed = tried
			default:
				tried = true
				return err
			}
			return nil
		})
		if !ok {
			return false
		}
	}
	if !removed {
		dl.published = 0
		return true
	}
	s.log.Info().Str("webhook_id", id).Str("app_id", dl.hook.AppID).Msg("webhook deleted: endpoint answered 410 Gone")
	return true
}

// trimDead keeps the shard's dead set within DeadRetention and DeadMax.
// A failure is only logged: the next death trims again.
func (s *shardRun) trimDead(ctx context.Context) {
	o := &s.d.o
	n, err := s.queue.TrimDead(ctx, o.Now().Add(-o.DeadRetention), int64(o.DeadMax))
	if err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Msg("cannot trim the dead set")
	}
	if n > 0 {
		s.log.Info().Int("dropped", n).Msg("oldest dead deliveries dropped (--dead-retention, --dead-max)")
	}
}
