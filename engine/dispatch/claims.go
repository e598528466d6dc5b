package dispatch

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/shard"
)

// claims tracks one shard's retries claimed from its queue and still in
// flight (bounded by the retry window, each with the end of its lease), and
// wakes the retry poller when something falls due sooner than it planned.
type claims struct {
	slots chan struct{} // one token per claimed delivery in flight
	space chan struct{} // signalled when a slot frees

	mu       sync.Mutex
	inflight map[string]shard.Lease // claimed delivery id -> its lease, until its outcome is written
	// finished holds the deliveries whose outcome was written since the
	// poller's claim under way began: that claim may have read them as
	// they were before (see take).
	finished map[string]struct{}
	// pending is the lease end of the claim or extension last sent to
	// Redis, until its result is recorded (zero: none): a delivery in
	// flight may hold it before its lease here says so, or for good if
	// the reply was lost. Leases handed out carry it as Pending.
	pending time.Time

	wake     chan struct{}
	wakeAtMs atomic.Int64 // clock time (ms) the poller plans to look next

	gauge ops.Gauge // the process's claimed retries in flight, every shard's
}

func newClaims(window int, gauge ops.Gauge) *claims {
	return &claims{slots: make(chan struct{}, window), space: make(chan struct{}, 1), inflight: make(map[string]shard.Lease), finished: make(map[string]struct{}), wake: make(chan struct{}, 1), gauge: gauge}
}

// claiming marks the start of a claim leasing until leaseEnd: take
// refuses what finishes from now until the claim's records are taken
// (settled), and the claim may re-lease deliveries in flight here to
// leaseEnd meanwhile.
func (r *claims) claiming(leaseEnd time.Time) {
	r.mu.Lock()
	clear(r.finished)
	r.pending = leaseEnd
	r.mu.Unlock()
}

// settled marks the end of a claim whose records were all taken: the
// deliveries in flight it re-leased hold their new end as End.
func (r *claims) settled() {
	r.mu.Lock()
	r.pending = time.Time{}
	r.mu.Unlock()
}

// take registers a claimed delivery; false if it is already in flight here
// (its lease ran out while it waited behind its host and the poller claimed
// it again: the claim just extended the lease), or if its outcome was
// written while the claim ran: the claim read it before that outcome, and
// sending it again would repeat a finished attempt (the outcome already
// removed or replaced what the claim leased).
func (r *claims) take(l shard.Lease) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, done := r.finished[l.ID]; done {
		return false
	}
	_, busy := r.inflight[l.ID]
	r.inflight[l.ID] = l // a claim of one in flight re-leased it: keep the newer end
	if !busy {
		r.slots <- struct{}{} // never blocks: the poller claims at most the free slots
		r.gauge.Add(1)
	}
	return !busy
}

func (r *claims) done(id string) {
	r.mu.Lock()
	delete(r.inflight, id)
	r.finished[id] = struct{}{}
	r.mu.Unlock()
	<-r.slots
	r.gauge.Add(-1)
	select {
	case r.space <- struct{}{}:
	default:
	}
}

func (r *claims) free() int     { return cap(r.slots) - len(r.slots) }
func (r *claims) inFlight() int { return len(r.slots) }

// claimed returns the leases still in flight.
func (r *claims) claimed() []shard.Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leasesLocked()
}

func (r *claims) leasesLocked() []shard.Lease {
	ls := make([]shard.Lease, 0, len(r.inflight))
	for _, l := range r.inflight {
		l.Pending = r.pending
		ls = append(ls, l)
	}
	return ls
}

// lease returns the lease on a delivery in flight, as its outcome must
// find it in the queue.
func (r *claims) lease(id string) (shard.Lease, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.inflight[id]
	l.Pending = r.pending
	return l, ok
}

// extending returns the leases in flight to extend to end, and notes end
// as pending until extended records it.
func (r *claims) extending(end time.Time) []shard.Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	ls := r.leasesLocked()
	r.pending = end
	return ls
}

// untaken returns the leases of claimed records not in flight here.
func (r *claims) untaken(recs []*shard.Record, leaseEnd time.Time) []shard.Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	ls := make([]shard.Lease, 0, len(recs))
	for _, rec := range recs {
		if _, ours := r.inflight[rec.ID]; !ours {
			ls = append(ls, rec.Lease(leaseEnd))
		}
	}
	return ls
}

// extended records new lease ends for the claims still in flight.
func (r *claims) extended(ls []shard.Lease, end time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = time.Time{}
	for _, l := range ls {
		if cur, ok := r.inflight[l.ID]; ok {
			cur.End, cur.Pending = end, time.Time{}
			r.inflight[l.ID] = cur
		}
	}
}

// wakeBy wakes the poller if it plans to sleep past due.
func (r *claims) wakeBy(due time.Time) {
	if due.UnixMilli() < r.wakeAtMs.Load() {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// drain waits until every claimed delivery is written back or ctx ends
// (returning its error).
func (r *claims) drain(ctx context.Context) error {
	for r.inFlight() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.space:
		}
	}
	return nil
}
