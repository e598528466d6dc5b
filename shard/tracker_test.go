package shard

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func TestTrackerCommitsLowestUnfinished(t *testing.T) {
	tr := NewTracker(100)
	if got := tr.Committable(); got != 100 {
		t.Fatalf("before any event: %d, want 100", got)
	}
	tr.Add(100, 2)
	tr.Add(101, 0) // no webhooks
	tr.Add(103, 1) // offsets may have gaps
	tr.Add(104, 1)
	if got := tr.Committable(); got != 100 {
		t.Fatalf("with 100 unfinished: %d", got)
	}
	tr.Done(104) // a later event finishing first must not move the commit point
	if got := tr.Committable(); got != 100 {
		t.Fatalf("after later event done: %d, want 100", got)
	}
	tr.Done(100)
	if got := tr.Committable(); got != 100 {
		t.Fatalf("after one of two deliveries: %d, want 100", got)
	}
	tr.Done(100)
	if got := tr.Committable(); got != 103 {
		t.Fatalf("after 100 done: %d, want 103", got)
	}
	tr.Done(103)
	if got := tr.Committable(); got != 105 {
		t.Fatalf("all done: %d, want 105", got)
	}
	tr.Add(105, 0)
	if got := tr.Committable(); got != 106 {
		t.Fatalf("empty event: %d, want 106", got)
	}
	if tr.InFlight() != 0 {
		t.Fatalf("in flight %d, want 0", tr.InFlight())
	}
}

func TestTrackerRandomCompletionOrder(t *testing.T) {
	tr := NewTracker(0)
	const events = 5000
	var all []int64
	for off := int64(0); off < events; off++ {
		n := int(off % 4)
		tr.Add(off, n)
		for i := 0; i < n; i++ {
			all = append(all, off)
		}
	}
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	done := make(map[int64]int)
	for i, off := range all {
		tr.Done(off)
		done[off]++
		if i%97 != 0 {
			continue
		}
		// The commit point never passes an event with unfinished deliveries.
		c := tr.Committable()
		for o := int64(0); o < c; o++ {
			if done[o] != int(o%4) {
				t.Fatalf("commit point %d passes unfinished event %d", c, o)
			}
		}
	}
	if got := tr.Committable(); got != events {
		t.Fatalf("final commit point %d, want %d", got, events)
	}
}

func TestTrackerWindowBlocksUntilSpace(t *testing.T) {
	tr := NewTracker(0)
	tr.Add(0, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := tr.WaitBelow(ctx, 3); err == nil {
		t.Fatal("WaitBelow returned with a full window")
	}
	var wg sync.WaitGroup
	wg.Add(1)
	var err error
	go func() {
		defer wg.Done()
		err = tr.WaitBelow(context.Background(), 3)
	}()
	tr.Done(0)
	wg.Wait()
	if err != nil || tr.InFlight() != 2 {
		t.Fatalf("WaitBelow = %v with %d in flight", err, tr.InFlight())
	}
}

// A full window is refilled in batches: the waiter is woken once more than
// an eighth of the window has finished, not at every finished delivery.
func TestTrackerWindowRefillsInBatches(t *testing.T) {
	tr := NewTracker(0)
	for off := int64(0); off < 64; off++ {
		tr.Add(off, 1)
	}
	woke := make(chan error, 1)
	go func() { woke <- tr.WaitBelow(context.Background(), 64) }()
	// Wait until the waiter is waiting (it has set its wake point).
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.mu.Lock()
		waiting := tr.wakeBelow != 0
		tr.mu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("WaitBelow never waited")
		}
		time.Sleep(time.Millisecond)
	}
	for off := int64(0); off < 8; off++ {
		tr.Done(off)
	}
	if len(tr.space) != 0 {
		t.Fatal("the waiter was signalled with 56 of 64 in flight, before an eighth finished")
	}
	tr.Done(8)
	select {
	case err := <-woke:
		if err != nil || tr.InFlight() != 55 {
			t.Fatalf("WaitBelow = %v with %d in flight", err, tr.InFlight())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitBelow did not return once 55 of 64 were in flight")
	}
}

// BenchmarkTracker is one delivery's bookkeeping with a window of 4,096
// deliveries in flight: an Add, and a Done of an older one, out of order
// within blocks of 1,024.
func BenchmarkTracker(b *testing.B) {
	const window, block = 4096, 1024
	tr := NewTracker(0)
	perm := rand.New(rand.NewPCG(1, 2)).Perm(block)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		tr.Add(int64(i), 1)
		if done := i - window; done >= 0 {
			base := done - done%block
			tr.Done(int64(base + perm[done%block]))
		}
	}
}
