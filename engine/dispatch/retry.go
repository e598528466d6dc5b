package dispatch

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// retrier is the state of one shard's retry poller: the claimed deliveries
// in flight (bounded), and a wake-up for when something falls due sooner
// than the poller planned.
type retrier struct {
	slots chan struct{} // one token per claimed delivery in flight
	space chan struct{} // signalled when a slot frees

	mu       sync.Mutex
	inflight map[string]time.Time // claimed delivery id -> lease end, until its outcome is written

	wake     chan struct{}
	wakeAtMs atomic.Int64 // clock time (ms) the poller plans to look next
}

func newRetrier(window int) *retrier {
	return &retrier{slots: make(chan struct{}, window), space: make(chan struct{}, 1), inflight: make(map[string]time.Time), wake: make(chan struct{}, 1)}
}

// take registers a claimed delivery; false if it is already in flight here
// (its lease ran out while it waited behind its host and the poller claimed
// it again: the claim just extended the lease).
func (r *retrier) take(id string, leaseEnd time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, busy := r.inflight[id]; busy {
		// The claim re-leased it; keep the newer lease end.
		r.inflight[id] = leaseEnd
		return false
	}
	r.inflight[id] = leaseEnd
	r.slots <- struct{}{} // never blocks: the poller claims at most the free slots
	return true
}

func (r *retrier) done(id string) {
	r.mu.Lock()
	delete(r.inflight, id)
	r.mu.Unlock()
	<-r.slots
	select {
	case r.space <- struct{}{}:
	default:
	}
}

func (r *retrier) free() int     { return cap(r.slots) - len(r.slots) }
func (r *retrier) inFlight() int { return len(r.slots) }

// claimed returns the leases still in flight.
func (r *retrier) claimed() []shard.Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	ls := make([]shard.Lease, 0, len(r.inflight))
	for id, end := range r.inflight {
		ls = append(ls, shard.Lease{ID: id, End: end})
	}
	return ls
}

// untaken returns the leases of claimed records not in flight here.
func (r *retrier) untaken(recs []*shard.Record, leaseEnd time.Time) []shard.Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	ls := make([]shard.Lease, 0, len(recs))
	for _, rec := range recs {
		if _, ours := r.inflight[rec.ID]; !ours {
			ls = append(ls, shard.Lease{ID: rec.ID, End: leaseEnd})
		}
	}
	return ls
}

// extended records new lease ends for the claims still in flight.
func (r *retrier) extended(ls []shard.Lease, end time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range ls {
		if _, ok := r.inflight[l.ID]; ok {
			r.inflight[l.ID] = end
		}
	}
}

// wakeBy wakes the poller if it plans to sleep past due.
func (r *retrier) wakeBy(due time.Time) {
	if due.UnixMilli() < r.wakeAtMs.Load() {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// drain waits until every claimed delivery is written back or ctx ends
// (returning its error).
func (r *retrier) drain(ctx context.Context) error {
	for r.inFlight() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.space:
		}
	}
	return nil
}

// errMalformedRecord marks a retry record geckohook cannot send.
var errMalformedRecord = errors.New("malformed_record: the delivery id is not a geckohook delivery id")

// claimBatch is the most deliveries one claim takes.
const claimBatch = 256

// pollLoop claims due deliveries from the shard's queue under a lease and
// hands them to the workers, until ctx ends. It sleeps until the earliest
// due delivery or PollEvery, whichever is sooner, and wakes early when the
// shard schedules something sooner.
func (s *shardRun) pollLoop(ctx context.Context) {
	d := s.d
	r := s.retries
	renew := time.NewTicker(d.o.Lease / 3)
	defer renew.Stop()
	for ctx.Err() == nil {
		select {
		case <-renew.C:
			s.extendLeases(ctx)
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
		now := d.o.Now()
		leaseEnd := now.Add(d.o.Lease)
		var recs []*shard.Record
		var bad []string
		var next time.Time
		ok := s.retry(ctx, "claim due retries", func() error {
			var err error
			recs, bad, next, err = s.queue.Claim(ctx, now, leaseEnd, min(r.free(), claimBatch))
			return err
		})
		if !ok {
			return
		}
		for _, id := range bad {
			s.log.Error().Str("delivery", id).Msg("unreadable retry record moved to the dead set as it is")
			if !s.retry(ctx, "move an unreadable retry record", func() error { return s.queue.Quarantine(ctx, id, now) }) {
				return
			}
		}
		for i, rec := range recs {
			if !r.take(rec.ID, leaseEnd) {
				continue
			}
			d.Stats.Retried.Add(1)
			if !s.handRetry(ctx, rec) {
				s.releaseUntaken(recs[i:], leaseEnd)
				return
			}
		}
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
// webhook deleted since the failure has nothing left to deliver: its record
// is removed. It reports false if ctx ended first (the claim's lease brings
// the delivery back).
func (s *shardRun) handRetry(ctx context.Context, rec *shard.Record) bool {
	d := s.d
	dl := deliveryPool.Get().(*delivery)
	dl.sh, dl.rec, dl.body, dl.offset = s, rec, rec.Body, rec.Offset
	if len(rec.ID) != len(dl.id) {
		// Not written by geckohook: keep it for inspection, never send it.
		s.log.Error().Str("delivery", rec.ID).Str("webhook_id", rec.WebhookID).Msg("retry record with a malformed delivery id moved to the dead set")
		dl.at = d.o.Now()
		dl.res = sender.Result{Outcome: contract.Failure, Err: errMalformedRecord}
		return s.record(ctx, dl)
	}
	copy(dl.id[:], rec.ID)
	hook, _ := d.o.Registry.Target(rec.WebhookID)
	if hook == nil {
		d.Stats.Dropped.Add(1)
		dl.settled = true
		return s.record(ctx, dl)
	}
	dl.hook = hook
	select {
	case d.work <- dl:
		return true
	case <-ctx.Done():
		s.drop(dl)
		return false
	}
}

// record hands a retry's outcome to the queue writer from the poller, which
// must not wait past ctx (the writer may be stuck on Redis): false if ctx
// ended first (the lease brings the delivery back).
func (s *shardRun) record(ctx context.Context, dl *delivery) bool {
	select {
	case s.results <- dl:
		return true
	case <-ctx.Done():
		s.drop(dl)
		return false
	}
}

// releaseUntaken gives back claims the poller never handed out.
func (s *shardRun) releaseUntaken(recs []*shard.Record, leaseEnd time.Time) {
	s.releaseLeases(s.retries.untaken(recs, leaseEnd))
}

// maxDeferralStep caps the deferral wait at Sidekiq's retry 5 (11-12
// minutes): a host that comes back gets its backlog within minutes, and a
// dead one's is claimed at most every 11 minutes or so.
const maxDeferralStep = 5

// deferral is how long the n-th deferral in a row (from 1) waits: as long as
// Sidekiq's retry n-1 (15-25 s, 16-35 s, 31-60 s, ...), at most retry 5's.
func deferral(n int, randn func(int) int) time.Duration {
	return contract.RetryDelay(min(max(n-1, 0), maxDeferralStep), randn)
}

// op is what a retry's outcome does to its record.
func (s *shardRun) op(dl *delivery) shard.Op {
	o := &s.d.o
	rec := dl.rec
	if dl.settled {
		return shard.Op{Kind: shard.OpRemove, Rec: rec}
	}
	if errors.Is(dl.res.Err, errMalformedRecord) {
		rec.LastError = errMalformedRecord.Error()
		return shard.Op{Kind: shard.OpKill, Rec: rec, At: dl.at}
	}
	if errors.Is(dl.res.Err, errHostSaturated) {
		// Not attempted: its host is at its limit. Keep the retry count
		// and wait longer with each deferral in a row.
		rec.Deferrals++
		return shard.Op{Kind: shard.OpReschedule, Rec: rec, At: dl.at.Add(deferral(rec.Deferrals, o.Rand))}
	}
	due, err := contract.NextAttempt(dl.at, rec.Retries+1, max(o.MaxRetries, 0), o.Rand)
	if err != nil {
		s.d.publish(outcomes.Dead, dl, dl.at)
	}
	rec.Attempts++
	rec.Retries++
	rec.Deferrals = 0
	if rec.FirstAttempt.IsZero() {
		rec.FirstAttempt = dl.at
	}
	rec.LastAttempt, rec.LastStatus, rec.LastError = dl.at, dl.res.Status, dl.res.ErrorText()
	if err != nil {
		return shard.Op{Kind: shard.OpKill, Rec: rec, At: dl.at}
	}
	return shard.Op{Kind: shard.OpReschedule, Rec: rec, At: due}
}

// extendLeases keeps the claims still in flight leased for another Lease,
// so a retry that waits long behind its host is not claimed a second time.
func (s *shardRun) extendLeases(ctx context.Context) {
	ls := s.retries.claimed()
	if len(ls) == 0 {
		return
	}
	end := s.d.o.Now().Add(s.d.o.Lease)
	if err := s.queue.Extend(ctx, ls, end); err != nil {
		if ctx.Err() == nil {
			s.log.Warn().Err(err).Int("claims", len(ls)).Msg("cannot extend retry leases")
		}
		return
	}
	s.retries.extended(ls, end)
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

// releaseClaims gives back the leases of retries this shard claimed and
// never finished, so the partition's next owner need not wait them out.
func (s *shardRun) releaseClaims() { s.releaseLeases(s.retries.claimed()) }

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
