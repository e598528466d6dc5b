package dispatch

import (
	"context"
	"sync"
)

// workerPool runs admitted deliveries on at most max worker goroutines,
// started as the load needs them, and gives each delivery to the worker
// that went idle last (LIFO). A FIFO hand-out (a channel that every worker
// receives from) walks all the workers in turn, so each attempt ran on a
// goroutine whose stack and scheduler state had long left the CPU caches;
// LIFO keeps the same few workers busy while a few suffice. When every
// worker is busy, up to max deliveries wait in the backlog, which the
// workers empty before they go idle; past that, give blocks.
type workerPool struct {
	max  int
	run  func(*delivery)
	wg   sync.WaitGroup // the workers
	mu   sync.Mutex
	idle []chan *delivery // the idle workers' inboxes, the last to go idle at the end
	// started counts the workers; closed is set once nothing more is
	// given, and tells idle workers to return.
	started int
	closed  bool
	backlog chan *delivery
}

func newWorkerPool(max int, run func(*delivery)) *workerPool {
	return &workerPool{max: max, run: run, backlog: make(chan *delivery, max)}
}

// give hands dl to a worker, or to the backlog when every worker is busy;
// with the backlog full it waits for room until ctx ends, and reports
// whether dl was taken.
func (p *workerPool) give(ctx context.Context, dl *delivery) bool {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		inbox := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		inbox <- dl // buffered: never blocks
		return true
	}
	if p.started < p.max {
		p.started++
		p.wg.Add(1)
		p.mu.Unlock()
		go p.work(dl)
		return true
	}
	// Under the lock, a worker going idle cannot miss a delivery put in
	// the backlog: it looks at the backlog under the same lock first.
	select {
	case p.backlog <- dl:
		p.mu.Unlock()
		return true
	default:
	}
	p.mu.Unlock()
	// The backlog is full, so it stays non-empty until the workers take
	// from it, and a taking worker moves a waiting send into it at once.
	select {
	case p.backlog <- dl:
		return true
	case <-ctx.Done():
		return false
	}
}

// work is one worker: it runs dl, then whatever the backlog holds, then
// waits idle for the next delivery, until the pool is closed.
func (p *workerPool) work(dl *delivery) {
	defer p.wg.Done()
	inbox := make(chan *delivery, 1)
	for {
		p.run(dl)
		p.mu.Lock()
		select {
		case dl = <-p.backlog:
			p.mu.Unlock()
			continue
		default:
		}
		if p.closed {
			p.mu.Unlock()
			return
		}
		p.idle = append(p.idle, inbox)
		p.mu.Unlock()
		var ok bool
		if dl, ok = <-inbox; !ok {
			return
		}
	}
}

// close stops the workers once they have run everything given; nothing
// may be given after it. It waits for them to return.
func (p *workerPool) close() {
	p.mu.Lock()
	p.closed = true
	for _, inbox := range p.idle {
		close(inbox)
	}
	p.idle = nil
	p.mu.Unlock()
	p.wg.Wait()
}
