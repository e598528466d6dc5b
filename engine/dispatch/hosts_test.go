package dispatch

import (
	"context"
	"testing"
	"time"
	"unsafe"

	"github.com/geckohook/geckohook/engine/registry"
)

// gateAt returns a gate whose clock the test moves.
func gateAt(maxLimit int) (*hostGate, *time.Time) {
	now := time.Unix(1000, 0)
	return newHostGate(maxLimit, time.Second, func() time.Time { return now }), &now
}

func admit(g *hostGate, host string, dl *delivery) admission {
	a, _ := g.admit(host, dl)
	return a
}

func TestHostGateAIMD(t *testing.T) {
	g, _ := gateAt(64)
	const h = "example.com:443"
	dls := make([]*delivery, 100)
	for i := range dls {
		dls[i] = &delivery{offset: int64(i)}
	}
	// A new host starts at 16 concurrent attempts; the rest queue while it
	// is healthy (back-pressure, not retries).
	for i := 0; i < 16; i++ {
		if a := admit(g, h, dls[i]); a != admitSend {
			t.Fatalf("attempt %d: %v, want send", i, a)
		}
	}
	for i := 16; i < 40; i++ {
		if a := admit(g, h, dls[i]); a != admitQueued {
			t.Fatalf("attempt %d: %v, want queued on a healthy host", i, a)
		}
	}
	// A healthy finish raises the limit and hands over the oldest queued.
	next, over := g.done(g.hosts[h], true, 0, time.Time{})
	if next != dls[16] || len(over) != 0 {
		t.Fatalf("after healthy done: next %v, overflow %d", next, len(over))
	}
	if st := g.hosts[h]; st.limit != 17 || st.inflight != 16 {
		t.Fatalf("limit %d, in flight %d; want 17 and 16", st.limit, st.inflight)
	}
	// Timeouts halve the limit and cut the queue down to it.
	next, over = g.done(g.hosts[h], false, 0, time.Time{})
	st := g.hosts[h]
	if st.limit != 8 || !st.degraded {
		t.Fatalf("after a timeout: limit %d, degraded %v", st.limit, st.degraded)
	}
	if st.queued() != 8 || len(over) != 23-8 {
		t.Fatalf("queue %d, overflow %d; want 8 and 15", st.queued(), len(over))
	}
	if over[len(over)-1] != dls[39] {
		t.Fatal("overflow must shed the newest deliveries")
	}
	if next != nil {
		t.Fatalf("handed over a delivery while over the new limit (in flight %d)", st.inflight)
	}
	// A degraded host queues at most its limit; beyond that, overflow.
	if a := admit(g, h, dls[40]); a != admitOverflow {
		t.Fatalf("degraded host with full queue: %v, want overflow", a)
	}
	// Drain everything with healthy answers: the host recovers and, idle,
	// is forgotten by the sweep.
	for st := g.hosts[h]; st.inflight > 0 || st.queued() > 0; {
		if st.inflight == 0 {
			t.Fatalf("stuck: %d queued, none in flight", st.queued())
		}
		g.done(g.hosts[h], true, 0, time.Time{})
	}
	if st := g.hosts[h]; st.degraded || st.limit < g.startLimit {
		t.Fatalf("host did not recover: limit %d, degraded %v", st.limit, st.degraded)
	}
	g.sweep()
	if len(g.hosts) != 0 {
		t.Fatalf("sweep kept %d idle hosts", len(g.hosts))
	}
	if a := admit(g, h, dls[41]); a != admitSend {
		t.Fatalf("recovered host: %v, want send", a)
	}
}

func TestHostGateDeadHostHoldsOneSlot(t *testing.T) {
	g, _ := gateAt(64)
	const h = "dead.test:443"
	for i := 0; i < 16; i++ {
		admit(g, h, &delivery{})
	}
	for i := 0; i < 16; i++ {
		g.done(g.hosts[h], false, 0, time.Time{})
	}
	if st := g.hosts[h]; st.limit != 1 || st.inflight != 0 {
		t.Fatalf("after 16 timeouts: limit %d, in flight %d", st.limit, st.inflight)
	}
	if admit(g, h, &delivery{}) != admitSend || admit(g, h, &delivery{}) != admitQueued || admit(g, h, &delivery{}) != admitOverflow {
		t.Fatal("a dead host must get one attempt, one waiting, and overflow for the rest")
	}
}

// The limit grows past the start only while answers come back about as fast
// as the host's fastest; when answer times grow with the attempts in flight
// (a queue), it stops growing and falls back to the start limit.
func TestHostGateStopsGrowingWhenAnswersQueue(t *testing.T) {
	g, _ := gateAt(64)
	const h = "queue.test:443"
	// answer admits one attempt and ends it in took.
	answer := func(took time.Duration) int {
		if a := admit(g, h, &delivery{}); a != admitSend {
			t.Fatalf("not admitted: %v", a)
		}
		g.done(g.hosts[h], true, took, time.Time{})
		return g.hosts[h].limit
	}
	// Steady answers in 40ms (a distant host): the limit grows to the max.
	for i := 0; i < 100; i++ {
		answer(40 * time.Millisecond)
	}
	if l := g.hosts[h].limit; l != 64 {
		t.Fatalf("steady answers: limit %d, want 64", l)
	}
	// Answers slow to 200ms (five times the fastest): the limit falls back
	// to the start, one per answer, and no lower.
	for i := 0; i < 200; i++ {
		answer(200 * time.Millisecond)
	}
	if l := g.hosts[h].limit; l != g.startLimit {
		t.Fatalf("queued answers: limit %d, want the start limit %d", l, g.startLimit)
	}
	// Between the two thresholds (100ms: 2.5 times): neither way.
	for i := 0; i < 200; i++ {
		answer(100 * time.Millisecond)
	}
	if l := g.hosts[h].limit; l != g.startLimit {
		t.Fatalf("answers at 2.5x: limit %d, want %d", l, g.startLimit)
	}
	// Back to fast answers: the mean comes down and the limit grows again.
	for i := 0; i < 200; i++ {
		answer(40 * time.Millisecond)
	}
	if l := g.hosts[h].limit; l != 64 {
		t.Fatalf("fast again: limit %d, want 64", l)
	}
	// A degraded host recovers to the start limit even while its answers
	// are slow: the latency rule only holds back growth beyond it.
	for i := 0; i < 10; i++ {
		admit(g, h, &delivery{})
		g.done(g.hosts[h], false, 0, time.Time{})
	}
	for i := 0; i < 100; i++ {
		answer(time.Second)
	}
	if st := g.hosts[h]; st.limit != g.startLimit || st.degraded {
		t.Fatalf("after timeouts and slow answers: limit %d, degraded %v; want %d and recovered", st.limit, st.degraded, g.startLimit)
	}
}

func TestHostGateShedsAStalledHostsQueue(t *testing.T) {
	g, now := gateAt(64)
	const h = "silent.test:443"
	for i := 0; i < 16; i++ {
		admit(g, h, &delivery{})
	}
	// Not answering yet, but not for long: queue freely.
	for i := 0; i < 100; i++ {
		if a := admit(g, h, &delivery{offset: int64(i)}); a != admitQueued {
			t.Fatalf("fresh host, delivery %d: %v", i, a)
		}
	}
	*now = now.Add(1500 * time.Millisecond) // no answer for 1.5s: stalled
	a, shed := g.admit(h, &delivery{offset: 100})
	if a != admitOverflow || len(shed) != 100-16 {
		t.Fatalf("stalled host: %v with %d shed, want overflow and 84 shed", a, len(shed))
	}
	if shed[0].offset != 16 || g.hosts[h].queued() != 16 {
		t.Fatalf("kept %d queued, shed from offset %d; want the oldest 16 kept", g.hosts[h].queued(), shed[0].offset)
	}
	// An answer is progress: the host may queue freely again.
	g.done(g.hosts[h], true, 0, time.Time{})
	for i := 0; i < 50; i++ {
		if a := admit(g, h, &delivery{}); a == admitOverflow {
			t.Fatalf("after an answer, delivery %d overflowed", i)
		}
	}
	if q := g.hosts[h].queued(); q <= g.hosts[h].limit {
		t.Fatalf("queue %d not past the limit %d after progress", q, g.hosts[h].limit)
	}
}

func TestHostGateShedStalledWithoutNewArrivals(t *testing.T) {
	g, now := gateAt(64)
	for i := 0; i < 40; i++ {
		admit(g, "a.test:443", &delivery{})
		admit(g, "b.test:443", &delivery{})
	}
	g.done(g.hosts["b.test:443"], true, 0, time.Time{}) // b answers; a does not
	if shed := g.shedStalled(); len(shed) != 0 {
		t.Fatalf("shed %d before anything stalled", len(shed))
	}
	*now = now.Add(2 * time.Second)
	g.done(g.hosts["b.test:443"], true, 0, time.Time{})
	shed := g.shedStalled()
	if len(shed) != 40-16-16 || g.hosts["a.test:443"].queued() != 16 {
		t.Fatalf("shed %d, a keeps %d queued; want 8 shed and 16 kept", len(shed), g.hosts["a.test:443"].queued())
	}
}

func TestHostGateQueueDoesNotGrowOnABusyHost(t *testing.T) {
	g, _ := gateAt(1)
	const h = "busy.test:443"
	admit(g, h, &delivery{}) // in flight
	admit(g, h, &delivery{}) // and one waiting, so the queue never empties:
	// one in, one out, 100,000 times.
	for i := 0; i < 100_000; i++ {
		admit(g, h, &delivery{})
		if next, _ := g.done(g.hosts[h], true, 0, time.Time{}); next == nil {
			t.Fatal("nothing handed over")
		}
	}
	if st := g.hosts[h]; len(st.queue) > 4096 {
		t.Fatalf("queue backing slice holds %d entries for %d queued", len(st.queue), st.queued())
	}
}

// An in-flight delivery's own memory, as the README states it (run with -v
// to see it): the pooled record, without the event body it shares.
func TestDeliveryRecordSize(t *testing.T) {
	size := unsafe.Sizeof(delivery{})
	t.Logf("delivery record: %d bytes", size)
	if size > 256 {
		t.Fatalf("delivery record grew to %d bytes", size)
	}
}

// The classification after every attempt allocates nothing on success.
func TestRefusedTargetAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _ = refusedTarget(nil) }); n != 0 {
		t.Fatalf("refusedTarget(nil) allocates %v times", n)
	}
}

// A feeder whose context ends while no worker is free does not block on
// the worker pool (the workers may be waiting for its shard's writer), yet
// the delivery it admitted still reaches a worker: it holds a place in its
// host's limit that only the end of its turn gives back.
func TestHandAfterTheFeederStopped(t *testing.T) {
	release := make(chan struct{})
	ran := make(chan *delivery, 3)
	d := &Dispatcher{hosts: newHostGate(4, time.Second, time.Now)}
	d.pool = newWorkerPool(1, func(dl *delivery) {
		<-release
		ran <- dl
	})
	// The one worker is busy and the backlog (one place) is full.
	busy, waiting := &delivery{}, &delivery{}
	if !d.pool.give(context.Background(), busy) || !d.pool.give(context.Background(), waiting) {
		t.Fatal("the pool refused work it has room for")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dl := &delivery{hook: &registry.Webhook{}}
	returned := make(chan struct{})
	go func() {
		d.hand(ctx, dl)
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(30 * time.Second):
		t.Fatal("hand blocked on a busy pool after its context ended")
	}
	close(release)
	for _, want := range []*delivery{busy, waiting, dl} {
		select {
		case got := <-ran:
			if got != want {
				t.Fatalf("the worker ran %p, want %p", got, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the admitted delivery never reached a worker")
		}
	}
	d.handoffs.Wait()
	d.pool.close()
	if st := dl.gate; st == nil || st.inflight != 1 {
		t.Fatalf("gate entry %+v: want the delivery still counted in flight", st)
	}
}
