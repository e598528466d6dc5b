package dispatch

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// idleInboxes is a copy of the pool's idle list, oldest idle first.
func idleInboxes(p *workerPool) []chan *delivery {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]chan *delivery(nil), p.idle...)
}

// waitIdle polls until n workers are idle.
func waitIdle(t *testing.T, p *workerPool, n int) []chan *delivery {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		idle := idleInboxes(p)
		if len(idle) == n {
			return idle
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d workers idle, want %d", len(idle), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// The worker that went idle last gets the next delivery, so a light load
// keeps running on the same few goroutines.
func TestWorkerPoolHandsToTheLastIdle(t *testing.T) {
	gates := []chan struct{}{make(chan struct{}), make(chan struct{}), make(chan struct{})}
	var p *workerPool
	p = newWorkerPool(4, func(dl *delivery) {
		if dl.turn >= 0 && int(dl.turn) < len(gates) {
			<-gates[dl.turn]
		}
	})
	defer p.close()
	for i := range gates {
		if !p.give(context.Background(), &delivery{turn: int32(i)}) {
			t.Fatal("the pool refused work it has room for")
		}
	}
	// Workers go idle in the order 2, 0, 1.
	var order []chan *delivery
	for n, i := range []int{2, 0, 1} {
		close(gates[i])
		idle := waitIdle(t, p, n+1)
		order = append(order, idle[n])
	}
	if !p.give(context.Background(), &delivery{turn: -1}) {
		t.Fatal("the pool refused work with idle workers")
	}
	idle := waitIdle(t, p, 3) // the worker ran it and went idle again
	if idle[2] != order[2] {
		t.Fatal("the delivery went to a worker other than the last to go idle")
	}
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if started != 3 {
		t.Fatalf("%d workers started for 3 concurrent deliveries, want 3", started)
	}
}

// Never more than max deliveries run at once; with every worker busy the
// rest wait in the backlog, and close returns only once every delivery
// given has run, once.
func TestWorkerPoolBoundsAndDrains(t *testing.T) {
	const max, n = 3, 200
	var running, peak atomic.Int32
	var mu sync.Mutex
	ran := map[*delivery]int{}
	p := newWorkerPool(max, func(dl *delivery) {
		r := running.Add(1)
		for m := peak.Load(); r > m && !peak.CompareAndSwap(m, r); m = peak.Load() {
		}
		time.Sleep(100 * time.Microsecond)
		mu.Lock()
		ran[dl]++
		mu.Unlock()
		running.Add(-1)
	})
	given := make([]*delivery, n)
	for i := range given {
		given[i] = &delivery{}
		if !p.give(context.Background(), given[i]) {
			t.Fatal("give failed without a context end")
		}
	}
	p.close()
	if got := peak.Load(); got > max {
		t.Fatalf("%d deliveries ran at once, want at most %d", got, max)
	}
	for i, dl := range given {
		if ran[dl] != 1 {
			t.Fatalf("delivery %d ran %d times", i, ran[dl])
		}
	}
}

// With every worker busy and the backlog full, give waits for room and
// gives up when its context ends.
func TestWorkerPoolGiveWaitsForRoom(t *testing.T) {
	release := make(chan struct{})
	p := newWorkerPool(1, func(*delivery) { <-release })
	for range 2 { // the worker, then the backlog's one place
		if !p.give(context.Background(), &delivery{}) {
			t.Fatal("the pool refused work it has room for")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if p.give(ctx, &delivery{}) {
		t.Fatal("a full pool took a delivery")
	}
	close(release)
	p.close()
}
