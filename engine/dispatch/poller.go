package dispatch

import (
	"context"
	"errors"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/retry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// errMalformedRecord marks a retry record geckohook cannot send.
var errMalformedRecord = errors.New("malformed_record: the delivery id is not a geckohook delivery id")

// claimBatch is the most deliveries one claim takes.
const claimBatch = 256

// claimGather is the longest the poller waits, while most of the retry
// window is in flight, for outcomes to free a full claim's slots.
const claimGather = 50 * time.Millisecond

// pollLoop claims due deliveries from the shard's queue under a lease and
// hands them to the workers, until ctx ends. It sleeps until the earliest
// due delivery or PollEvery, whichever is sooner, and wakes early when the
// shard schedules something sooner.
func (s *shardRun) pollLoop(ctx context.Context) {
	d := s.d
	r := s.claims
	// A queue written before the compact layout moves to it before the
	// first claim, and again if a process of that version wrote to it
	// since (during a rolling upgrade).
	if !s.retry(ctx, "migrate the retry queue", func() error { return s.migrate(ctx) }) {
		return
	}
	remigrate := time.NewTicker(migrateEvery)
	defer remigrate.Stop()
	renew := time.NewTicker(d.o.Lease / 3)
	defer renew.Stop()
	for ctx.Err() == nil {
		select {
		case <-renew.C:
			s.extendLeases(ctx)
		case <-remigrate.C:
			if err := s.migrate(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn().Err(err).Msg("cannot migrate the retry queue")
			}
		default:
		}
		// Every slot taken: wait until a retry's outcome is written,
		// keeping the leases of those in flight.
		for r.free() == 0 {
			select {
			case <-ctx.Done():
				return
			case <-r.space:
			case <-renew.C:
				s.extendLeases(ctx)
			}
		}
		if !r.gather(ctx, claimGather, renew.C, func() { s.extendLeases(ctx) }) {
			return
		}
		now := d.o.Now()
		leaseEnd := now.Add(d.o.Lease)
		var recs []*shard.Record
		var bad []shard.Bad
		var next time.Time
		r.claiming(leaseEnd)
		failed := false
		ok := s.retry(ctx, "claim due retries", func() error {
			var err error
			recs, bad, next, err = s.queue.Claim(ctx, now, leaseEnd, min(r.free(), claimBatch))
			failed = failed || err != nil
			return err
		})
		if !ok {
			return
		}
		for _, b := range bad {
			s.log.Error().Str("delivery", b.ID()).Str("webhook_id", b.Hook).Msg("unreadable retry record moved to the dead set as it is")
			if !s.retry(ctx, "move an unreadable retry record", func() error { return s.queue.Quarantine(ctx, b, now) }) {
				return
			}
		}
		for i, rec := range recs {
			if !r.take(rec.Lease(leaseEnd)) {
				continue
			}
			d.Stats.Retried.Inc()
			if !s.handRetry(ctx, rec) {
				s.releaseUntaken(recs[i:], leaseEnd)
				return
			}
		}
		if failed {
			// A try that failed after Redis ran it (its reply lost, a
			// body form not read) may have re-leased retries in flight
			// here to leaseEnd, which the try that worked did not
			// return: extend them while leaseEnd is still pending, so
			// their lease is known before settled forgets it.
			s.extendLeases(ctx)
		}
		r.settled()
		if len(recs) == claimBatch {
			continue // more may be due
		}
		wait := d.o.PollEvery
		if !next.IsZero() {
			wait = min(wait, max(next.Sub(now), time.Millisecond))
		}
		r.wakeAtMs.Store(now.Add(wait).UnixMilli())
		if !sleep(ctx, r.wake, wait) {
			return
		}
	}
}

// gather waits, while more than three quarters of the retry window are in
// flight, until outcomes free a quarter of it (claimBatch at most) or
// limit passes, calling extend on each tick of renew; false if ctx ended
// first. A claim costs Redis about as much for each webhook it visits as
// for each delivery it takes, so a drain that claimed the few slots each
// outcome batch frees would cost Redis several times as much per retry;
// the retries in flight keep the workers busy meanwhile.
func (r *claims) gather(ctx context.Context, limit time.Duration, renew <-chan time.Time, extend func()) bool {
	want := min(claimBatch, cap(r.slots)/4)
	if r.free() >= want {
		return true
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	for r.free() < want {
		select {
		case <-ctx.Done():
			return false
		case <-r.space:
		case <-renew:
			extend()
		case <-t.C:
			return true
		}
	}
	return true
}

// migrateEvery is how often a shard looks for deliveries written in the
// layout before the compact one.
const migrateEvery = time.Minute

// migrate moves the shard's deliveries in the old layout to the compact one.
func (s *shardRun) migrate(ctx context.Context) error {
	n, err := s.queue.Migrate(ctx, s.d.o.Now())
	if n > 0 {
		s.log.Info().Int("deliveries", n).Msg("retry queue migrated to the compact layout")
	}
	return err
}

// sleep waits for d, a wake-up, or ctx's end (false).
func sleep(ctx context.Context, wake <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-wake:
	case <-t.C:
	}
	return true
}

// handRetry turns a claimed record into a delivery for the workers. A
// webhook deleted since the failure has nothing left to deliver, and a
// record geckohook cannot send is kept for inspection: both are concluded
// here without an attempt. It reports false if ctx ended first (the
// claim's lease brings the delivery back).
func (s *shardRun) handRetry(ctx context.Context, rec *shard.Record) bool {
	d := s.d
	dl := deliveryPool.Get().(*delivery)
	dl.sh, dl.rec, dl.body, dl.queued = s, rec, rec.Body, true
	if len(rec.ID) != len(dl.id) {
		s.log.Error().Str("delivery", rec.ID).Str("webhook_id", rec.WebhookID).Msg("retry record with a malformed delivery id moved to the dead set")
		dl.res = sender.Result{Outcome: contract.Failure, Err: errMalformedRecord}
		return s.conclude(ctx, dl, retry.Malformed, d.o.Now())
	}
	copy(dl.id[:], rec.ID)
	hook, _ := d.o.Registry.Target(rec.WebhookID)
	if hook == nil {
		return s.conclude(ctx, dl, retry.Deleted, time.Time{})
	}
	if rec.AppID == "" {
		// The shard lost the webhook's metadata (docs/retries.md): the
		// outcome's record restores it.
		rec.AppID, rec.AccountID = hook.AppID, hook.AccountID
	}
	dl.hook = hook
	d.hand(ctx, dl)
	return true
}

// releaseUntaken gives back claims the poller never handed out.
func (s *shardRun) releaseUntaken(recs []*shard.Record, leaseEnd time.Time) {
	s.releaseLeases(s.claims.untaken(recs, leaseEnd))
}

// extendLeases keeps the claims still in flight leased for another Lease,
// so a retry that waits long behind its host is not claimed a second time.
// Only the leases the queue extended take the new end: one it did not
// was lost (or its delivery made due), and an outcome written under the
// new end would overwrite the claim of whoever holds the delivery now. A
// try that failed may have moved leases all the same (its reply was
// lost), so the extension is tried again until Redis answers, each lease
// then held at its end or at the new one.
func (s *shardRun) extendLeases(ctx context.Context) {
	end := s.d.o.Now().Add(s.d.o.Lease)
	ls := s.claims.extending(end)
	if len(ls) == 0 {
		return
	}
	var held []int
	if !s.retry(ctx, "extend retry leases", func() (err error) {
		held, err = s.queue.ExtendHeld(ctx, ls, end)
		if err != nil {
			for i := range ls {
				ls[i].Pending = end
			}
		}
		return err
	}) {
		return
	}
	moved := make([]shard.Lease, 0, len(held))
	for _, k := range held {
		moved = append(moved, ls[k])
	}
	s.claims.extended(moved, end)
}

// releaseLeases gives back claims this shard will not finish, so the
// partition's next owner need not wait their leases out.
func (s *shardRun) releaseLeases(ls []shard.Lease) {
	if len(ls) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.queue.Release(ctx, ls, s.d.o.Now()); err != nil {
		s.log.Warn().Err(err).Int("claims", len(ls)).Msg("cannot release unfinished retries; they return when their lease ends")
	}
}
