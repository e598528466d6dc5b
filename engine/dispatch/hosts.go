package dispatch

import "sync"

// hostGate bounds concurrent attempts per webhook host so that a slow or
// dead endpoint cannot hold the shared workers or fill a shard's window.
//
// Each host has a concurrency limit that starts at startLimit, grows by one
// per healthy attempt up to maxLimit, and halves on every unhealthy one
// (timeout, connection error, very slow answer): additive increase,
// multiplicative decrease. Attempts over the limit wait in the host's queue
// without holding a worker. While a host is healthy its queue is bounded
// only by the shards' windows, so a busy but healthy host slows fetching
// (back-pressure) instead of spilling into the retry queue. Once it is
// degraded its queue is cut to its limit and the overflow goes to the retry
// queue at once.
type hostGate struct {
	mu         sync.Mutex
	startLimit int
	maxLimit   int
	hosts      map[string]*hostState
}

type hostState struct {
	inflight int
	limit    int
	degraded bool
	queue    []*delivery // FIFO: queue[head:]
	head     int
}

type admission uint8

const (
	admitSend     admission = iota + 1 // send now
	admitQueued                        // parked; a finishing attempt will pick it up
	admitOverflow                      // host degraded and its queue full: retry later
)

func newHostGate(maxLimit int) *hostGate {
	return &hostGate{startLimit: min(16, maxLimit), maxLimit: maxLimit, hosts: make(map[string]*hostState)}
}

func (g *hostGate) admit(host string, dl *delivery) admission {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.hosts[host]
	if st == nil {
		st = &hostState{limit: g.startLimit}
		g.hosts[host] = st
	}
	if st.inflight < st.limit {
		st.inflight++
		return admitSend
	}
	if !st.degraded || st.queued() < st.limit {
		st.queue = append(st.queue, dl)
		return admitQueued
	}
	return admitOverflow
}

// done ends one admitted attempt and returns the next queued delivery to
// send (already admitted), plus any deliveries the host can no longer take.
func (g *hostGate) done(host string, healthy bool) (next *delivery, overflow []*delivery) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.hosts[host]
	st.inflight--
	if healthy {
		if st.limit < g.maxLimit {
			st.limit++
		}
		if st.limit >= g.startLimit {
			st.degraded = false
		}
	} else {
		st.limit = max(1, st.limit/2)
		st.degraded = true
		if n := st.queued() - st.limit; n > 0 {
			// Keep the oldest; the newest go to the retry queue.
			end := len(st.queue)
			overflow = append(overflow, st.queue[end-n:]...)
			clear(st.queue[end-n:])
			st.queue = st.queue[:end-n]
		}
	}
	if st.inflight < st.limit && st.queued() > 0 {
		next = st.queue[st.head]
		st.queue[st.head] = nil
		st.head++
		st.inflight++
	}
	if st.queued() == 0 {
		st.queue, st.head = st.queue[:0], 0
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
