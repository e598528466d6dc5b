package loadtest

import (
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// smallPlan has 3 accounts with fanouts 1, 2, 3: account 0 holds hook 0,
// account 1 hooks 1-2, account 2 hooks 3-5. Accounts 0 and 2 belong to app
// 0, account 1 to app 1; the hooks are spread over servers 0 and 1.
func smallPlan() *Plan {
	p := &Plan{Event: "order.create", Apps: []PlanApp{{Name: "app0"}, {Name: "app1"}}}
	p.AddAccount(0, []int{0}, make([]EndpointBehaviour, 1))
	p.AddAccount(1, []int{0, 1}, make([]EndpointBehaviour, 2))
	p.AddAccount(0, []int{1, 0, 1}, make([]EndpointBehaviour, 3))
	for i := range p.Hooks {
		p.Hooks[i].URL = "http://test/h/" + string(rune('0'+i))
	}
	return p
}

func TestLedgerExpected(t *testing.T) {
	p := smallPlan()
	l := NewLedger(p, 12)
	if got := len(l.pairs); got != 24 {
		t.Fatalf("12 events of fanouts 1,2,3 make 24 pairs, ledger holds %d", got)
	}
	at := time.Now()
	for e := 8; e >= 0; e-- { // any order
		l.Produced(e, at)
	}
	l.Produced(4, at)  // again: no change
	l.Produced(12, at) // out of range: ignored
	l.Produced(-1, at) // ignored
	if l.ProducedCount() != 9 || l.Expected() != 18 {
		t.Fatalf("produced %d events, %d pairs; want 9, 18", l.ProducedCount(), l.Expected())
	}
	// every pair has its own slot: base(e) + pos covers 0..23 once
	seen := make(map[int64]bool)
	for e := range 12 {
		for pos := range p.Fanout(e) {
			slot := l.base(e) + int64(pos)
			if seen[slot] || slot >= int64(len(l.pairs)) {
				t.Fatalf("event %d pos %d: slot %d reused or out of range", e, pos, slot)
			}
			seen[slot] = true
		}
	}
}

func TestLedgerAccount(t *testing.T) {
	p := smallPlan()
	l := NewLedger(p, 9)
	t0 := time.Now()
	for e := range 6 { // accounts 0,1,2,0,1,2: 12 pairs
		l.Produced(e, t0)
	}
	at := t0.Add(10 * time.Millisecond)
	rec := func(hook, e int, id string, valid bool, status int) {
		l.Record(hook, e, []byte(id), valid, status, at)
	}
	rec(0, 0, "d-0-0", true, 200)  // delivered
	rec(0, 0, "d-0-0", true, 200)  // duplicate, same id
	rec(1, 1, "d-1-1", true, 500)  // failed, then
	rec(1, 1, "d-1-1", true, 204)  // delivered
	rec(2, 1, "d-1-2", true, 200)  // delivered
	rec(2, 1, "other", true, 302)  // duplicate with another id
	rec(3, 2, "d-2-3", false, 200) // delivered, bad signature
	rec(4, 2, "d-2-4", true, 410)  // gone: hook 4 deleted
	rec(0, 3, "d-3-0", true, 0)    // hung: no answer
	// unexpected
	rec(1, 0, "x", true, 200)   // hook 1 is not on event 0's account
	rec(0, 99, "x", true, 200)  // event out of range
	rec(0, 6, "x", true, 200)   // event 6 never produced
	rec(0, -1, "x", true, 200)  // no object_id
	rec(99, 0, "x", true, 200)  // unknown hook
	rec(-1, -1, "", false, 404) // unknown path: signature not judged

	if l.Delivered() != 4 || l.Expected() != 12 || l.Requests() != 15 {
		t.Fatalf("delivered %d expected %d requests %d; want 4, 12, 15", l.Delivered(), l.Expected(), l.Requests())
	}
	if got, want := l.Answers(), (Answers{OK: 11, Gone: 1, Failed: 2, NoAnswer: 1}); got != want {
		t.Fatalf("answers %+v, want %+v", got, want)
	}

	got := l.Account(func(h int) bool { return h == 4 }, func(h int) int64 {
		switch h {
		case 5:
			return 1 // covers one of e2→h5, e5→h5
		case 1:
			return 5 // covers e4→h1, the only unanswered pair of hook 1
		}
		return 0
	})
	want := Accounting{Expected: 12, Delivered: 4, Deleted: 2, Queued: 2, Missing: 4,
		Duplicates: 2, IDMismatches: 1, BadSignatures: 1, Unexpected: 6}
	samples := got.MissingSamples
	got.MissingSamples = nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("account\n got %+v\nwant %+v", got, want)
	}
	wantSamples := []string{"event 3 → hook 0 (http://test/h/0)", "event 4 → hook 2 (http://test/h/2)",
		"event 5 → hook 3 (http://test/h/3)", "event 5 → hook 5 (http://test/h/5)"}
	if strings.Join(samples, "|") != strings.Join(wantSamples, "|") {
		t.Fatalf("missing samples %q, want %q", samples, wantSamples)
	}

	// without deletions or queues every unanswered pair is missing
	bare := l.Account(nil, nil)
	if bare.Missing != 8 || bare.Deleted != 0 || bare.Queued != 0 || bare.Delivered != 4 || len(bare.MissingSamples) != 8 {
		t.Fatalf("bare account %+v", bare)
	}
}

func TestLedgerMissingSamplesCapped(t *testing.T) {
	l := NewLedger(smallPlan(), 30)
	for e := range 30 {
		l.Produced(e, time.Now())
	}
	a := l.Account(nil, nil)
	if a.Missing != 60 || len(a.MissingSamples) != maxMissingSamples {
		t.Fatalf("missing %d with %d samples, want 60 with %d", a.Missing, len(a.MissingSamples), maxMissingSamples)
	}
}

func onePairPerEvent() *Plan {
	p := &Plan{Event: "order.create", Apps: []PlanApp{{Name: "app"}}}
	p.AddAccount(0, []int{0}, make([]EndpointBehaviour, 1))
	return p
}

// within reports whether got is within frac of want.
func within(got, want time.Duration, frac float64) bool {
	return math.Abs(float64(got-want)) <= frac*float64(want)
}

func TestLedgerLatency(t *testing.T) {
	l := NewLedger(onePairPerEvent(), 200)
	t0 := time.Now()
	for e := range 100 { // latencies 1..100 ms
		l.Produced(e, t0)
		l.Record(0, e, []byte{byte(e)}, true, 200, t0.Add(time.Duration(e+1)*time.Millisecond))
	}
	l.Record(0, 5, []byte{5}, true, 200, t0.Add(time.Hour))   // duplicate: not a latency
	l.Record(0, 150, []byte{1}, true, 200, t0.Add(time.Hour)) // never produced: unexpected, not a latency
	q := l.Latency()
	if q.Count != 100 || q.Max != 100*time.Millisecond {
		t.Fatalf("count %d max %v, want 100 and exactly 100ms", q.Count, q.Max)
	}
	for _, c := range []struct {
		got, want time.Duration
	}{{q.P50, 50 * time.Millisecond}, {q.P95, 95 * time.Millisecond}, {q.P99, 99 * time.Millisecond}} {
		if !within(c.got, c.want, 0.01) {
			t.Fatalf("quantile %v, want %v within 1%% (%+v)", c.got, c.want, q)
		}
	}
	if empty := NewLedger(onePairPerEvent(), 1).Latency(); empty != (Quantiles{}) {
		t.Fatalf("empty ledger latency %+v", empty)
	}
}

func TestLedgerLatencyFromProduceTime(t *testing.T) {
	// an answer before the recorded produce time (clock skew) counts as 0,
	// a 10 µs one is measured to the bucket
	l := NewLedger(onePairPerEvent(), 2)
	t0 := time.Now()
	l.Produced(0, t0)
	l.Record(0, 0, nil, true, 200, t0.Add(-time.Second))
	l.Produced(1, t0)
	l.Record(0, 1, nil, true, 200, t0.Add(10*time.Microsecond))
	q := l.Latency()
	if q.Count != 2 || q.P50 > histUnit || !within(q.Max, 10*time.Microsecond, 0) || !within(q.P99, 10*time.Microsecond, 0.01) {
		t.Fatalf("latency %+v", q)
	}
}

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<20; v++ { // every bucket index up to 2^20 units is reached in order
		b := bucketOf(v)
		if b != prev && b != prev+1 {
			t.Fatalf("bucketOf(%d) = %d after %d: not contiguous", v, b, prev)
		}
		prev = b
	}
	if histBuckets > len(hist{}.counts) {
		t.Fatalf("%d buckets do not fit in %d", histBuckets, len(hist{}.counts))
	}
	// relative error of a bucket's middle, 10 µs .. 10 min
	for d := 10 * time.Microsecond; d <= 10*time.Minute; d = d*101/100 + 1 {
		mid := time.Duration(bucketMid(bucketOf(uint64(d) / histUnit)))
		if !within(mid, d, 0.01) {
			t.Fatalf("%v lands in a bucket whose middle is %v: more than 1%% off", d, mid)
		}
	}
	var h hist
	h.add(int64(time.Hour)) // beyond 10 minutes: top bucket
	if h.counts[histBuckets-1].Load() != 1 {
		t.Fatal("an hour did not land in the top bucket")
	}
}

func TestLedgerSeries(t *testing.T) {
	l := NewLedger(onePairPerEvent(), 10)
	t0 := time.Now().Add(-time.Minute)
	l.Start(t0)
	for e := range 3 {
		l.Produced(e, t0)
	}
	l.Record(0, 0, []byte("a"), true, 200, t0.Add(500*time.Millisecond))
	l.Record(0, 1, []byte("b"), true, 500, t0.Add(2100*time.Millisecond))
	l.Record(0, 1, []byte("b"), true, 200, t0.Add(2200*time.Millisecond))
	l.Record(0, 1, []byte("b"), true, 200, t0.Add(2300*time.Millisecond)) // duplicate: a request, not a delivery
	l.Record(0, 2, []byte("c"), true, 200, t0.Add(-time.Second))          // before the start: outside the series
	s := l.Series()
	if len(s) != 3 {
		t.Fatalf("series %+v, want 3 seconds", s)
	}
	if s[0].At != 0 || s[0].Delivered != 1 || s[0].Requests != 1 || !within(s[0].P50, 500*time.Millisecond, 0.01) {
		t.Fatalf("second 0: %+v", s[0])
	}
	if s[1] != (Second{At: 1}) {
		t.Fatalf("second 1: %+v, want empty", s[1])
	}
	if s[2].At != 2 || s[2].Delivered != 1 || s[2].Requests != 3 ||
		!within(s[2].P50, 2200*time.Millisecond, 0.01) || !within(s[2].P99, 2200*time.Millisecond, 0.01) {
		t.Fatalf("second 2: %+v", s[2])
	}
	if l.Delivered() != 3 {
		t.Fatalf("delivered %d, want 3 (the series leaves nothing out of the totals)", l.Delivered())
	}
	if got := NewLedger(onePairPerEvent(), 1).Series(); len(got) != 0 {
		t.Fatalf("idle ledger series %+v", got)
	}
}

func TestLedgerConcurrentRecords(t *testing.T) {
	p := smallPlan()
	const events, workers = 300, 8
	l := NewLedger(p, events)
	t0 := time.Now()
	for e := range events {
		l.Produced(e, t0)
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for e := range events {
				for _, h := range p.Accounts[p.EventAccount(e)] {
					l.Record(int(h), e, []byte("same"), true, 200, time.Now())
				}
			}
		})
	}
	wg.Wait()
	pairs := l.Expected()
	a := l.Account(nil, nil)
	if pairs != 600 || l.Delivered() != pairs || a.Delivered != pairs || a.Duplicates != (workers-1)*pairs ||
		l.Requests() != workers*pairs || a.IDMismatches != 0 || a.Missing != 0 || l.Latency().Count != pairs {
		t.Fatalf("expected %d delivered %d requests %d latencies %d account %+v",
			pairs, l.Delivered(), l.Requests(), l.Latency().Count, a)
	}
}

func TestLedgerEmptyPlan(t *testing.T) {
	l := NewLedger(&Plan{}, 5)
	l.Produced(0, time.Now())
	l.Record(0, 0, nil, true, 200, time.Now())
	if a := l.Account(nil, nil); l.Expected() != 0 || a.Unexpected != 1 || a.Missing != 0 {
		t.Fatalf("empty plan: expected %d, account %+v", l.Expected(), a)
	}
}

func TestLedgerRecordAllocs(t *testing.T) {
	l := NewLedger(smallPlan(), 100)
	at := time.Now()
	for e := range 100 {
		l.Produced(e, at)
	}
	id := []byte("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
	e := 0
	allocs := testing.AllocsPerRun(1000, func() {
		l.Record(0, e%100/3*3, id, true, 200, at) // account 0's events: first answers and duplicates
		l.Record(1, e%100, id, true, 500, at)     // some unexpected
		e++
	})
	if allocs != 0 {
		t.Fatalf("Record allocates %.1f times per call", allocs)
	}
}

func BenchmarkLedgerRecord(b *testing.B) {
	l := NewLedger(smallPlan(), 1<<16)
	at := time.Now()
	for e := range 1 << 16 {
		l.Produced(e, at)
	}
	id := []byte("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		e := 0
		for pb.Next() {
			e = (e + 3) & (1<<16 - 1)
			l.Record(0, e-e%3, id, true, 200, at)
		}
	})
}

// Own runs from produce to the request's arrival, Latency to its answer:
// an endpoint that waits before answering adds to the one, not the other.
func TestLedgerOwnLatency(t *testing.T) {
	l := NewLedger(onePairPerEvent(), 200)
	t0 := time.Now()
	for e := range 100 { // arrivals 1..100 ms after produce, each answered 50 ms later
		l.Produced(e, t0)
		arrived := t0.Add(time.Duration(e+1) * time.Millisecond)
		l.RecordArrived(0, e, []byte{byte(e)}, true, 200, arrived, arrived.Add(50*time.Millisecond))
	}
	l.RecordArrived(0, 5, []byte{5}, true, 200, t0, t0.Add(time.Hour)) // duplicate: not counted
	own, q := l.Own(), l.Latency()
	if own.Count != 100 || own.Max != 100*time.Millisecond || q.Max != 150*time.Millisecond {
		t.Fatalf("own %+v, latency %+v", own, q)
	}
	if !within(own.P99, 99*time.Millisecond, 0.01) || !within(q.P99, 149*time.Millisecond, 0.01) {
		t.Fatalf("own p99 %v, latency p99 %v; want 99 ms and 149 ms", own.P99, q.P99)
	}
	// Record is an answer at arrival: both the same.
	l2 := NewLedger(onePairPerEvent(), 1)
	l2.Produced(0, t0)
	l2.Record(0, 0, nil, true, 204, t0.Add(7*time.Millisecond))
	if l2.Own() != l2.Latency() || l2.Own().Max != 7*time.Millisecond {
		t.Fatalf("own %+v, latency %+v", l2.Own(), l2.Latency())
	}
}

// A window counts the kept webhooks' pairs produced in it (and their
// latency) and those first answered in it, whenever produced.
func TestLedgerWindow(t *testing.T) {
	p := singles(4, 1, 1, nil)
	l := NewLedger(p, 100)
	t0 := l.epoch
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Events 0-7 produced at 0-700 ms; each answered 5 ms after, but
	// those of hook 3 30 ms after, and event 7 never.
	for e := range 8 {
		l.Produced(e, at(100*e))
		if e == 7 {
			continue
		}
		lag := 5
		if e%4 == 3 {
			lag = 30
		}
		l.Record(e%4, e, []byte{byte(e)}, true, 200, at(100*e+lag))
	}
	all := l.Window(nil, at(0), at(400))
	if all.Offered != 4 || all.Delivered != 4 || all.Latency.Count != 4 || all.Latency.Max != 30*time.Millisecond {
		t.Fatalf("window 0-400 ms: %+v; want 4 offered, 4 delivered, the slowest 30 ms", all)
	}
	// Hooks 0-2 only, 250-750 ms: events 4-6 offered and delivered (7 is
	// hook 3's), and none answered past 30 ms.
	w := l.Window(func(_, h int) bool { return h != 3 }, at(250), at(750))
	if w.Offered != 3 || w.Delivered != 3 || w.Latency.P99 > 6*time.Millisecond || w.Latency.P99 < 4*time.Millisecond {
		t.Fatalf("window 250-750 ms of hooks 0-2: %+v; want 3 offered and delivered, p99 ~5 ms", w)
	}
	// Events from 5 on only: 5 and 6.
	if w := l.Window(func(e, _ int) bool { return e >= 5 }, at(0), at(800)); w.Offered != 3 || w.Delivered != 2 {
		t.Fatalf("window of events 5-7: %+v; want 3 offered, 2 delivered", w)
	}
	// An answer counts in the window it fell in: event 3, produced at
	// 300 ms, was answered at 330 ms.
	if w := l.Window(nil, at(320), at(340)); w.Offered != 0 || w.Delivered != 1 {
		t.Fatalf("window 320-340 ms: %+v; want one answer of a pair produced before", w)
	}
	// Event 7 offered, never delivered: no latency.
	if w := l.Window(nil, at(700), at(800)); w.Offered != 1 || w.Delivered != 0 || w.Latency.Count != 0 {
		t.Fatalf("window 700-800 ms: %+v", w)
	}
}
