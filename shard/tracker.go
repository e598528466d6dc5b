package shard

import (
	"context"
	"sync"
)

// Tracker follows the events of one partition from fetch to done and yields
// the offset that is safe to commit: every event before it has all its
// deliveries finished (succeeded, dropped, or durably scheduled). It also
// bounds the deliveries in flight. Add is called by one goroutine in offset
// order; Done from any goroutine.
type Tracker struct {
	mu       sync.Mutex
	pending  map[int64]int // offset -> deliveries still unfinished
	order    []int64       // offsets with unfinished deliveries, ascending
	head     int           // order[head:] is live
	lastSeen int64         // highest offset added, -1 before any
	start    int64         // commit point before any Add
	inflight int
	space    chan struct{}
}

// NewTracker starts tracking at offset start (the next offset to read).
func NewTracker(start int64) *Tracker {
	return &Tracker{pending: make(map[int64]int), lastSeen: -1, start: start, space: make(chan struct{}, 1)}
}

// Add registers the event at offset with n deliveries (n may be 0).
func (t *Tracker) Add(offset int64, n int) {
	t.mu.Lock()
	t.lastSeen = offset
	if n > 0 {
		t.pending[offset] = n
		t.order = append(t.order, offset)
		t.inflight += n
	}
	t.mu.Unlock()
}

// Done marks one delivery of the event at offset as finished.
func (t *Tracker) Done(offset int64) {
	t.mu.Lock()
	n, ok := t.pending[offset]
	if !ok {
		t.mu.Unlock()
		panic("shard: Done for an offset with no pending delivery") // a bug, never input
	}
	t.inflight--
	if n > 1 {
		t.pending[offset] = n - 1
	} else {
		delete(t.pending, offset)
		for t.head < len(t.order) {
			if _, live := t.pending[t.order[t.head]]; live {
				break
			}
			t.head++
		}
		if t.head == len(t.order) || t.head > 1024 && t.head*2 > len(t.order) {
			t.order = append(t.order[:0], t.order[t.head:]...)
			t.head = 0
		}
	}
	t.mu.Unlock()
	select {
	case t.space <- struct{}{}:
	default:
	}
}

// Committable returns the next offset to read after everything done: the
// lowest offset with unfinished deliveries, or one past the last event seen.
func (t *Tracker) Committable() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.head < len(t.order) {
		return t.order[t.head]
	}
	if t.lastSeen >= 0 {
		return t.lastSeen + 1
	}
	return t.start
}

// InFlight returns the number of unfinished deliveries.
func (t *Tracker) InFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.inflight
}

// WaitBelow blocks until fewer than limit deliveries are in flight or ctx
// ends (returning its error).
func (t *Tracker) WaitBelow(ctx context.Context, limit int) error {
	for {
		if t.InFlight() < limit {
			return nil
		}
		select {
		case <-t.space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
