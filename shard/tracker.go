package shard

import (
	"context"
	"sort"
	"sync"
)

// Tracker follows the events of one partition from fetch to done and yields
// the offset that is safe to commit: every event before it has all its
// deliveries finished (succeeded, dropped, or durably scheduled). It also
// bounds the deliveries in flight. Add is called by one goroutine in offset
// order; Done from any goroutine; WaitBelow from one at a time.
//
// The events with unfinished deliveries are a slice in offset order (Add
// appends, so it stays sorted); Done finds its event by binary search, and
// the commit point is the first entry still unfinished. No map, and no
// allocation once the slice has grown to the window.
type Tracker struct {
	mu       sync.Mutex
	events   []pending // events[head:] holds every unfinished event, ascending
	head     int
	lastSeen int64 // highest offset added, -1 before any
	start    int64 // commit point before any Add
	inflight int
	// wakeBelow > 0 while WaitBelow waits: Done signals space once fewer
	// than wakeBelow deliveries are in flight.
	wakeBelow int
	space     chan struct{}
}

// pending is an event and its deliveries still unfinished (0: all done,
// waiting for the events before it).
type pending struct {
	offset int64
	n      int
}

// NewTracker starts tracking at offset start (the next offset to read).
func NewTracker(start int64) *Tracker {
	return &Tracker{lastSeen: -1, start: start, space: make(chan struct{}, 1)}
}

// Add registers the event at offset with n deliveries (n may be 0).
func (t *Tracker) Add(offset int64, n int) {
	t.mu.Lock()
	t.lastSeen = offset
	if n > 0 {
		t.events = append(t.events, pending{offset: offset, n: n})
		t.inflight += n
	}
	t.mu.Unlock()
}

// Done marks one delivery of the event at offset as finished.
func (t *Tracker) Done(offset int64) {
	t.mu.Lock()
	live := t.events[t.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i].offset >= offset })
	if i == len(live) || live[i].offset != offset || live[i].n == 0 {
		t.mu.Unlock()
		panic("shard: Done for an offset with no pending delivery") // a bug, never input
	}
	t.inflight--
	live[i].n--
	if i == 0 && live[0].n == 0 {
		for t.head < len(t.events) && t.events[t.head].n == 0 {
			t.head++
		}
		if t.head == len(t.events) || t.head > 1024 && t.head*2 > len(t.events) {
			t.events = append(t.events[:0], t.events[t.head:]...)
			t.head = 0
		}
	}
	wake := t.wakeBelow > 0 && t.inflight < t.wakeBelow
	if wake {
		t.wakeBelow = 0
	}
	t.mu.Unlock()
	if wake {
		select {
		case t.space <- struct{}{}:
		default:
		}
	}
}

// Committable returns the next offset to read after everything done: the
// lowest offset with unfinished deliveries, or one past the last event seen.
func (t *Tracker) Committable() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.head < len(t.events) {
		return t.events[t.head].offset
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
// ends (returning its error); one goroutine at a time may wait. Once it has
// to wait, it waits for an eighth
// of limit to finish (for limit 8 and above), so a full window is refilled
// in batches: one wakeup per batch of finished deliveries, not one per
// delivery.
func (t *Tracker) WaitBelow(ctx context.Context, limit int) error {
	for {
		t.mu.Lock()
		if t.inflight < limit {
			t.mu.Unlock()
			return nil
		}
		t.wakeBelow = limit - limit/8
		t.mu.Unlock()
		select {
		case <-t.space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
