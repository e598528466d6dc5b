package dispatch

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
	"github.com/geckohook/geckohook/shard"
)

// clock is a test clock the dispatcher reads and the test moves.
type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }
func newClock(t time.Time) *clock    { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (e *env) find(id string) *shard.Delivery {
	d, _, err := shard.NewStore(e.rdb, "gh:").Find(context.Background(), id)
	if errors.Is(err, shard.ErrNotFound) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// A delivery's whole retry life with an injected clock: each step moves the
// clock past the next due time and waits for exactly one more attempt.
func TestRetryLifetime(t *testing.T) {
	clk := newClock(time.Unix(1_800_000_000, 0))
	e := startEnvWith(t, func(path string, n int) int {
		switch {
		case path == "/recovers" && n >= 3:
			return 200
		case path == "/gone-later" && n >= 2:
			return 410
		}
		return 500
	}, func(o *Options) {
		o.Now = clk.Now
		o.PollEvery = 5 * time.Millisecond
		o.Lease = 30 * time.Second
	})
	never := e.hook("acc1", "order.create", "/never")
	recovers := e.hook("acc2", "order.create", "/recovers")
	goneLater := e.hook("acc3", "order.create", "/gone-later")
	for _, acc := range []string{"acc1", "acc2", "acc3"} {
		e.produce(acc, fmt.Sprintf(`{"account_id":%q,"event":"order.create","object_id":1,"timestamp":1700000000}`, acc))
	}
	ids := map[string]string{}
	for _, p := range []string{"/never", "/recovers", "/gone-later"} {
		ids[p] = e.waitReceived(p, 1)[0].DeliveryID
	}
	// Wait until every first failure is in the queue.
	testenv.WaitFor(t, 10*time.Second, func() error {
		for p, id := range ids {
			if e.find(id) == nil {
				return fmt.Errorf("%s: first failure not scheduled", p)
			}
		}
		return nil
	})

	start := time.Now()
	for step := 1; step <= contract.DefaultMaxRetries; step++ {
		clk.Add(5 * 24 * time.Hour) // past any retry's delay (24^4 s is under 4 days)
		at := clk.Now()
		testenv.WaitFor(t, 10*time.Second, func() error {
			d := e.find(ids["/never"])
			if d == nil {
				return errors.New("/never's delivery vanished")
			}
			if d.Attempts != step+1 || !d.LastAttempt.Equal(at) {
				return fmt.Errorf("step %d: /never has %d attempts, last at %v", step, d.Attempts, d.LastAttempt)
			}
			return nil
		})
	}
	lifetime := time.Since(start)

	// /never: 1 attempt + 25 retries, then dead, with the record of the last.
	d := e.find(ids["/never"])
	if d.State != shard.Dead || d.Retries != 25 || d.Attempts != 26 || d.LastStatus != 500 || d.LastError == "" {
		t.Fatalf("after the 25th retry: %+v", d)
	}
	got := e.receivedOn("/never")
	if len(got) != 26 {
		t.Fatalf("/never received %d attempts, want 26", len(got))
	}
	for _, r := range got {
		if r.DeliveryID != ids["/never"] || !r.ValidSig || string(r.Body) != string(got[0].Body) {
			t.Fatalf("a retry differs from the first attempt: %+v vs %+v", r, got[0])
		}
	}
	// /recovers: three failures, then delivered and removed.
	if n := len(e.receivedOn("/recovers")); n != 4 {
		t.Fatalf("/recovers received %d, want 4", n)
	}
	if d := e.find(ids["/recovers"]); d != nil {
		t.Fatalf("delivered retry still stored: %+v", d)
	}
	// /gone-later: 410 on its second retry deletes the webhook and the record.
	if n := len(e.receivedOn("/gone-later")); n != 3 {
		t.Fatalf("/gone-later received %d, want 3", n)
	}
	if d := e.find(ids["/gone-later"]); d != nil || e.reg.Webhook(goneLater.ID) != nil {
		t.Fatalf("410 on a retry: record %+v, webhook kept %v", d, e.reg.Webhook(goneLater.ID) != nil)
	}
	if e.reg.Webhook(never.ID) == nil || e.reg.Webhook(recovers.ID) == nil {
		t.Fatal("a failing webhook was deleted by the retry engine")
	}
	// Every due set is empty; the dead one holds /never's delivery.
	var due, dead int64
	for p := 0; p < partitions; p++ {
		q := shard.NewQueue(e.rdb, "gh:", "geckohook.events", p)
		n, _ := q.Len(context.Background())
		m, _ := q.DeadLen(context.Background())
		due, dead = due+n, dead+m
	}
	if due != 0 || dead != 1 {
		t.Fatalf("due sets hold %d, dead sets %d; want 0 and 1", due, dead)
	}
	if st := &e.disp.Stats; st.Dead.Load() != 1 || st.Retried.Load() < 25+3+2 {
		t.Fatalf("stats: dead %d retried %d", st.Dead.Load(), st.Retried.Load())
	}
	t.Logf("25 retries over %v of injected time took %v", 25*5*24*time.Hour, lifetime)

	// Replay from the dead set: the receiver now answers; it is delivered.
	n, err := shard.NewStore(e.rdb, "gh:").ReviveWebhook(context.Background(), never.ID, clk.Now())
	if err != nil || n != 1 {
		t.Fatalf("replay dead: %d %v", n, err)
	}
	e.recv.Expect("/never", e.app.Secret)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := len(e.receivedOn("/never")); n != 27 {
			return fmt.Errorf("/never received %d after replay, want 27", n)
		}
		return nil
	})
}

// A webhook deleted while its delivery waits: the retry is discarded when
// it comes due, without an attempt.
func TestRetryOfDeletedWebhookIsDiscarded(t *testing.T) {
	clk := newClock(time.Unix(1_800_000_000, 0))
	e := startEnvWith(t, loadtest.Always(500), func(o *Options) {
		o.Now = clk.Now
		o.PollEvery = 5 * time.Millisecond
	})
	w := e.hook("acc1", "order.create", "/x")
	e.produce("acc1", `{"account_id":"acc1","event":"order.create","object_id":1,"timestamp":1700000000}`)
	id := e.waitReceived("/x", 1)[0].DeliveryID
	testenv.WaitFor(t, 10*time.Second, func() error {
		if e.find(id) == nil {
			return errors.New("not scheduled yet")
		}
		return nil
	})
	if err := e.reg.DeleteWebhook(context.Background(), w.ID); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if d := e.find(id); d != nil {
			return fmt.Errorf("retry of a deleted webhook still stored: %+v", d.Record)
		}
		return nil
	})
	if n := len(e.receivedOn("/x")); n != 1 {
		t.Fatalf("deleted webhook received %d requests, want 1", n)
	}
}

// Retries of a dead host are paced: at most its limit of attempts at once,
// the rest deferred without spending a retry, while another host's retries,
// due at the same moment, are all delivered.
func TestRetriesOfDeadHostArePaced(t *testing.T) {
	clk := newClock(time.Unix(1_800_000_000, 0))
	release := make(chan struct{})
	var entered atomic.Int64
	e := startEnvWith(t, loadtest.Always(200), func(o *Options) {
		o.Now, o.PollEvery = clk.Now, 5*time.Millisecond
		o.Workers, o.Sender, o.StallAfter = 16, testSender(4), 200*time.Millisecond
	})
	dead := hangingReceiver(t, release, &entered)
	deadHook, err := e.reg.CreateWebhook(context.Background(), registry.Webhook{AppID: e.app.ID, AccountID: "acc-dead", Event: "order.create", Address: dead.URL + "/dead"})
	if err != nil {
		t.Fatal(err)
	}
	live := e.hook("acc-live", "order.create", "/live")

	// 100 retries for each host, all due now, in one shard's queue.
	q := shard.NewQueue(e.rdb, "gh:", "geckohook.events", 0)
	var entries []shard.Entry
	for i := 0; i < 100; i++ {
		for _, h := range []*registry.Webhook{deadHook, live} {
			body := fmt.Sprintf(`{"object_id":%d,"event":"order.create","timestamp":1,"resource_url":"https://x/%d.json"}`, i, i)
			entries = append(entries, shard.Entry{Due: clk.Now(), Rec: &shard.Record{
				ID: contract.DeliveryID("geckohook.events", 0, int64(i), h.ID), WebhookID: h.ID, AppID: e.app.ID, Event: "order.create",
				Body: []byte(body), Attempts: 1, FirstAttempt: clk.Now(), LastAttempt: clk.Now(), LastStatus: 500,
			}})
		}
	}
	if err := q.Schedule(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	e.waitReceived("/live", 100)
	if n := entered.Load(); n > 4 {
		t.Fatalf("%d retries reached the dead host at once, want at most its limit 4", n)
	}
	// The dead host's other retries were deferred without spending one.
	testenv.WaitFor(t, 10*time.Second, func() error {
		list, err := shard.NewStore(e.rdb, "gh:").List(context.Background(), deadHook.ID, shard.Scheduled, 1000)
		if err != nil {
			return err
		}
		deferred := 0
		for _, d := range list {
			// Deferred: due 15-25 s on, no retry spent, the last real
			// attempt's result kept.
			if d.Retries == 0 && d.Deferrals == 1 && d.Attempts == 1 && d.LastStatus == 500 && !d.At.Before(clk.Now().Add(15*time.Second)) {
				deferred++
			}
		}
		if deferred < 90 {
			return fmt.Errorf("%d of the dead host's retries deferred, want at least 90", deferred)
		}
		return nil
	})
	if n, _ := shard.NewStore(e.rdb, "gh:").List(context.Background(), live.ID, shard.Scheduled, 1000); len(n) != 0 {
		t.Fatalf("%d of the live host's retries still scheduled", len(n))
	}
}

// The dead set stays within --dead-max: the oldest deaths are dropped as
// new ones arrive.
func TestDeadSetIsTrimmed(t *testing.T) {
	e := startEnvWith(t, loadtest.Always(500), func(o *Options) {
		o.MaxRetries, o.DeadMax = 0, 2 // every failure dies at once
	})
	w := e.hook("acc1", "order.create", "/x")
	for i := 0; i < 5; i++ {
		e.produce("acc1", fmt.Sprintf(`{"account_id":"acc1","event":"order.create","object_id":%d}`, i))
		e.waitReceived("/x", i+1)
		testenv.WaitFor(t, 10*time.Second, func() error {
			if n := e.disp.Stats.Dead.Load(); n != int64(i+1) {
				return fmt.Errorf("%d dead, want %d", n, i+1)
			}
			return nil
		})
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		dead, err := shard.NewStore(e.rdb, "gh:").List(context.Background(), w.ID, shard.Dead, 100)
		if err != nil {
			return err
		}
		if len(dead) != 2 {
			return fmt.Errorf("%d dead deliveries kept, want 2", len(dead))
		}
		return nil
	})
}
