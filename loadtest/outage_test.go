package loadtest

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/shard"
)

// The outage's clock takes the failing hosts down at the end of the warm
// phase (refusing, then hanging) and brings them back.
func TestOutageClock(t *testing.T) {
	p := singles(10, 1, 2, func(i int) (int, EndpointBehaviour) {
		if i%10 >= 7 {
			return 1, EndpointBehaviour{}
		}
		return 0, EndpointBehaviour{}
	})
	p.Apps[0].Secret = "s3cret"
	f := newTestFarm(t, 2)
	serveLedger(f, p, 100, 100)

	// Phases long enough that a test goroutine held off the CPU for a few
	// hundred ms on a loaded machine still sees each one.
	o := &outage{warm: 1200 * time.Millisecond, refuse: 1500 * time.Millisecond, hang: 2 * time.Second,
		failing: func(h *PlanHook) bool { return h.Account%10 >= 7 },
		back:    make(chan struct{}), warmAt: time.Now()}
	var clock sync.WaitGroup
	clock.Go(func() { o.clock(t.Context(), f, p) })
	defer clock.Wait()

	down := addrOf(t, p.Hooks[7].URL)
	eventually(t, "the failing host to refuse", func() bool {
		c, err := net.Dial("tcp", down)
		if err == nil {
			c.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	if since := time.Since(o.warmAt); since < o.warm {
		t.Fatalf("refusing %v after the start, before the warm phase's %v ended", since, o.warm)
	}
	c := &fasthttp.Client{}
	if s := sendEvent(t, c, p, 0, 0, "s3cret"); s != 200 {
		t.Fatalf("healthy host while the others refuse: %d", s)
	}
	eventually(t, "the failing host to accept and hang", func() bool {
		body := eventBody(7)
		_, err := post(c, p.Hooks[7].URL, body, "d-7", contract.NewSigner("s3cret").Sign(body), 100*time.Millisecond)
		return errors.Is(err, fasthttp.ErrTimeout)
	})
	eventually(t, "the failing host to answer again", func() bool {
		body := eventBody(17)
		s, err := post(c, p.Hooks[7].URL, body, "d-17", contract.NewSigner("s3cret").Sign(body), 100*time.Millisecond)
		return err == nil && s == 200
	})
	select {
	case <-o.back:
	case <-time.After(5 * time.Second):
		t.Fatal("the clock did not say the hosts were back")
	}
	if got := o.backAt.Sub(o.warmAt); got < o.warm+o.refuse+o.hang || o.downAt.Sub(o.warmAt) < o.warm {
		t.Fatalf("down %v and back %v after the start, want at least %v and %v", o.downAt.Sub(o.warmAt), got, o.warm, o.warm+o.refuse+o.hang)
	}
}

// At the monitor's first sample overdueAfter the hosts' return, every
// scheduled retry of every shard is made due, earlier ones keeping their time, the
// dead set untouched; a claim then takes them all.
func TestOutageMakesRetriesOverdue(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := t.Context()
	store := shard.NewStore(rdb, contract.DefaultRedisPrefix)
	t0 := time.Now().Truncate(time.Millisecond)
	var qs []*shard.Queue
	for part := range 2 {
		if err := store.Register(ctx, "ev", part); err != nil {
			t.Fatal(err)
		}
		q := shard.NewQueue(rdb, contract.DefaultRedisPrefix, "ev", part)
		qs = append(qs, q)
		var es []shard.Entry
		for i, due := range []time.Duration{-2 * time.Hour, time.Second, 20 * time.Second, time.Hour} {
			hook := fmt.Sprintf("wh_%d", i%2)
			es = append(es, shard.Entry{Rec: &shard.Record{ID: fmt.Sprintf("p%d-%d", part, i), WebhookID: hook, Body: []byte("x")}, Due: t0.Add(due)})
		}
		es = append(es, shard.Entry{Rec: &shard.Record{ID: fmt.Sprintf("p%d-dead", part), WebhookID: "wh_0"}, Due: t0, Dead: true})
		if err := q.Schedule(ctx, es); err != nil {
			t.Fatal(err)
		}
	}
	backlog := func(want int64) {
		t.Helper()
		if got, err := store.DueBacklog(ctx, t0.Add(-backlogAge)); err != nil || got != want {
			t.Fatalf("backlog %d, %v; want %d", got, err, want)
		}
	}
	backlog(2) // the one due two hours ago, in each shard

	o := &outage{back: make(chan struct{}), due: make(chan struct{})}
	hook := o.makeOverdue(ctx, store)
	hook(t0) // the hosts are not back yet: nothing moves
	backlog(2)
	o.backAt = t0.Add(-overdueAfter + time.Millisecond)
	close(o.back)
	hook(t0) // back, but attempts sent while they hung may still run
	backlog(2)
	o.backAt = t0.Add(-overdueAfter)
	hook(t0)
	if o.overdueErr != nil || o.overdue != 6 || o.overdueAt.Before(t0) {
		t.Fatalf("moved %d at %v, %v; want 6 once the scripts were done", o.overdue, o.overdueAt, o.overdueErr)
	}
	if o.overdueTook <= 0 || !o.overdueAt.Equal(t0.Add(o.overdueTook)) {
		t.Fatalf("the scripts took %v, done at %v: want their time from the sample to overdueAt", o.overdueTook, o.overdueAt)
	}
	at := o.overdueAt
	backlog(8)
	hook(t0.Add(time.Second)) // once only
	if o.overdue != 6 || !o.overdueAt.Equal(at) {
		t.Fatalf("made overdue again: %d at %v", o.overdue, o.overdueAt)
	}
	for _, q := range qs {
		recs, _, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 100)
		if err != nil || len(recs) != 4 {
			t.Fatalf("claim of %s: %d records, %v; want all 4 scheduled", q.Shard, len(recs), err)
		}
		if n, err := q.DeadLen(ctx); err != nil || n != 1 {
			t.Fatalf("dead of %s: %d, %v; want the one left as it was", q.Shard, n, err)
		}
	}
}

// addrOf is host:port of a URL http://host:port/path.
func addrOf(t *testing.T, url string) string {
	t.Helper()
	rest := url[len("http://"):]
	for i := range rest {
		if rest[i] == '/' {
			return rest[:i]
		}
	}
	return rest
}
