package dispatch

import (
	"sync"
	"time"
)

// hostGate bounds concurrent attempts per webhook host so that a slow or
// dead endpoint cannot hold the shared workers or fill a shard's window.
//
// Each host has a concurrency limit that starts at startLimit, grows by one
// per healthy attempt up to maxLimit, and halves on every unhealthy one
// (timeout, connection error, very slow answer): additive increase,
// multiplicative decrease. Attempts over the limit wait in the host's queue
// without holding a worker. While a host answers, its queue is bounded only
// by the shards' windows, so a busy but healthy host slows fetching
// (back-pressure) instead of spilling into the retry queue. A host that is
// degraded, or stalled (attempts in flight and no answer for stallAfter:
// a dead host is caught long before its first timeout), keeps a queue no
// longer than its limit; the rest goes to the retry queue at once, so it
// cannot fill the windows and stop the other hosts' deliveries.
//
// The additive increase above the start limit also needs answers that come
// back about as fast as the host's fastest recent ones. When a host's
// answer time grows with the attempts in flight, the extra attempts only
// wait in a queue (the host's, or the CPU both ends share): they cost a
// connection, a goroutine switch and more kernel work per request and buy
// no throughput (Little's law), so the limit stops growing, and falls back
// towards the start limit while the answers stay slow (TCP Vegas' rule).
type hostGate struct {
	mu         sync.Mutex
	startLimit int
	maxLimit   int
	stallAfter time.Duration
	now        func() time.Time
	hosts      map[string]*hostState
	inflight   int // attempts admitted and not done, over every host
}

type hostState struct {
	inflight     int
	limit        int
	degraded     bool
	lastProgress time.Time   // last answer, or when attempts started after none in flight
	queue        []*delivery // FIFO: queue[head:]
	head         int
	answers      answerTimes
}

// Queueing thresholds of answerTimes: a host queues when its smoothed answer
// time is above growWithin times its fastest plus growSlack (no more
// increase), and is over-driven above shrinkPast times plus shrinkSlack (the
// limit falls by one per answer, not below the start limit). The slack
// keeps network jitter on fast hosts from reading as a queue.
const (
	growWithin  = 2
	growSlack   = time.Millisecond
	shrinkPast  = 4
	shrinkSlack = 4 * time.Millisecond
	// fastestWindow answers make a window; the fastest answer of the last
	// one or two windows is the host's answer time without a queue.
	fastestWindow = 1024
)

// answerTimes follows one host's answer times: a smoothed mean and the
// fastest of the recent windows.
type answerTimes struct {
	mean        time.Duration // weight 1/16 per answer
	fastest     time.Duration // of this window (0: none yet)
	fastestPrev time.Duration // of the window before (0: none)
	n           int           // answers in this window
}

// add records one answer time.
func (a *answerTimes) add(took time.Duration) {
	if a.mean == 0 {
		a.mean = took
	} else {
		a.mean += (took - a.mean) / 16
	}
	if a.fastest == 0 || took < a.fastest {
		a.fastest = took
	}
	if a.n++; a.n == fastestWindow {
		a.fastestPrev, a.fastest, a.n = a.fastest, 0, 0
	}
}

// base is the host's recent answer time without a queue.
func (a *answerTimes) base() time.Duration {
	if a.fastestPrev != 0 && (a.fastest == 0 || a.fastestPrev < a.fastest) {
		return a.fastestPrev
	}
	return a.fastest
}

// queueing reports whether answers take longer than factor times the
// fastest plus slack.
func (a *answerTimes) queueing(factor time.Duration, slack time.Duration) bool {
	return a.mean > factor*a.base()+slack
}

type admission uint8

const (
	admitSend     admission = iota + 1 // send now
	admitQueued                        // parked; a finishing attempt will pick it up
	admitOverflow                      // host degraded and its queue full: retry later
)

func newHostGate(maxLimit int, stallAfter time.Duration, now func() time.Time) *hostGate {
	return &hostGate{startLimit: min(16, maxLimit), maxLimit: maxLimit, stallAfter: stallAfter, now: now, hosts: make(map[string]*hostState)}
}

// admit decides what happens to dl now. When the host has just been found
// stalled, shed holds queued deliveries it can no longer take.
func (g *hostGate) admit(host string, dl *delivery) (a admission, shed []*delivery) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.hosts[host]
	if st == nil {
		st = &hostState{limit: g.startLimit}
		g.hosts[host] = st
	}
	// An admitted or queued delivery keeps its host's entry (sweep drops
	// only hosts with nothing in flight or queued), so done finds it
	// without a lookup.
	dl.gate = st
	if st.inflight < st.limit {
		if st.inflight == 0 {
			st.lastProgress = g.now()
		}
		st.inflight++
		g.inflight++
		return admitSend, nil
	}
	if !g.bounded(st, g.now()) {
		st.queue = append(st.queue, dl)
		return admitQueued, nil
	}
	shed = st.shed(st.limit)
	if st.queued() < st.limit {
		st.queue = append(st.queue, dl)
		return admitQueued, shed
	}
	return admitOverflow, shed
}

// shedStalled cuts the queue of every stalled host to its limit. It runs on
// a ticker, because a stalled host whose deliveries fill a shard's window
// sees no new admissions to trigger the cut.
func (g *hostGate) shedStalled() []*delivery {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*delivery
	now := g.now()
	for _, st := range g.hosts {
		if st.queued() > st.limit && st.inflight > 0 && g.bounded(st, now) {
			out = append(out, st.shed(st.limit)...)
		}
	}
	return out
}

// throttled counts the hosts the gate holds back: degraded (their limit
// was cut by unhealthy attempts and has not grown back to the start) or
// stalled (attempts in flight and no answer for stallAfter). A host still
// ramping from the start limit towards the maximum is not counted: every
// new host does that, so it says nothing about the host's health. It runs
// at scrape time, under the gate's lock, over the hosts seen in the last
// minute or so (sweep forgets idle ones).
func (g *hostGate) throttled() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	n := 0
	for _, st := range g.hosts {
		if st.degraded || st.limit < g.startLimit || (st.inflight > 0 && now.Sub(st.lastProgress) >= g.stallAfter) {
			n++
		}
	}
	return n
}

// inFlight counts the attempts admitted and not yet done, over every host.
func (g *hostGate) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inflight
}

// bounded reports whether a host may queue no more than its limit: it is
// degraded, or stalled (in flight, and no answer for stallAfter).
func (g *hostGate) bounded(st *hostState, now time.Time) bool {
	return st.degraded || now.Sub(st.lastProgress) >= g.stallAfter
}

// shed cuts the queue to keep entries, returning the newest ones it drops.
func (st *hostState) shed(keep int) []*delivery {
	n := st.queued() - keep
	if n <= 0 {
		return nil
	}
	end := len(st.queue)
	out := append([]*delivery(nil), st.queue[end-n:]...)
	clear(st.queue[end-n:])
	st.queue = st.queue[:end-n]
	return out
}

// done ends one admitted attempt to the host st (the delivery's gate) that
// took took (0: no answer time to learn from) and ended at (zero: now), and
// returns the next queued delivery to send (already admitted), plus any
// deliveries the host can no longer take.
func (g *hostGate) done(st *hostState, healthy bool, took time.Duration, at time.Time) (next *delivery, overflow []*delivery) {
	if at.IsZero() {
		at = g.now()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	st.inflight--
	g.inflight--
	st.lastProgress = at
	if healthy {
		grow := st.limit < g.startLimit || took <= 0
		if took > 0 {
			st.answers.add(took)
			grow = grow || !st.answers.queueing(growWithin, growSlack)
		}
		switch {
		case grow && st.limit < g.maxLimit:
			st.limit++
		case !grow && st.limit > g.startLimit && st.answers.queueing(shrinkPast, shrinkSlack):
			st.limit--
		}
		if st.limit >= g.startLimit {
			st.degraded = false
		}
	} else {
		st.limit = max(1, st.limit/2)
		st.degraded = true
		overflow = st.shed(st.limit) // keep the oldest; the newest are retried
	}
	if st.inflight < st.limit && st.queued() > 0 {
		next = st.queue[st.head]
		st.queue[st.head] = nil
		st.head++
		st.inflight++
		g.inflight++
	}
	switch {
	case st.queued() == 0:
		st.queue, st.head = st.queue[:0], 0
	case st.head > 1024 && st.head*2 > len(st.queue):
		// A host that is never idle never empties its queue: drop the
		// consumed head so the slice does not grow without end.
		st.queue = append(st.queue[:0], st.queue[st.head:]...)
		st.head = 0
	}
	return next, overflow
}

// sweep forgets idle hosts that are not degraded (entries are kept between
// attempts so a steady trickle to a host allocates nothing).
func (g *hostGate) sweep() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for host, st := range g.hosts {
		if st.inflight == 0 && st.queued() == 0 && !st.degraded {
			delete(g.hosts, host)
		}
	}
}

func (st *hostState) queued() int { return len(st.queue) - st.head }
