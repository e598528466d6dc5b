package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/publish"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

// The dispatcher publishes failures, the first success after a failure,
// 410s and dead deliveries; the successes of a healthy webhook cost nothing.
func TestDispatcherPublishesOutcomes(t *testing.T) {
	var pub *publish.Publisher
	e := startEnvWith(t, func(path string, n int) int {
		switch {
		case strings.HasPrefix(path, "/gone"):
			if n == 0 {
				// Still answering when the next event arrives: two 410s
				// of one webhook in flight, and one deletion reported.
				time.Sleep(300 * time.Millisecond)
			}
			return 410
		case strings.HasPrefix(path, "/flaky") && n == 0:
			return 503
		}
		return 200
	}, func(o *Options) {
		if err := kafkaio.EnsureTopics(context.Background(), o.Brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: 1}); err != nil {
			t.Fatal(err)
		}
		pub = publish.New(o.Brokers, outcomes.DefaultTopic, zerolog.Nop())
		o.Outcomes = pub
		o.MaxRetries = 0 // every failure is dead at once
	})
	flaky := e.hook("acc1", "order.create", "/flaky")
	gone := e.hook("acc1", "order.create", "/gone")
	ok := e.hook("acc1", "order.create", "/ok")
	for i := 1; i <= 2; i++ {
		e.produce("acc1", fmt.Sprintf(`{"account_id":"acc1","event":"order.create","object_id":%d}`, i))
		e.waitReceived("/flaky", i)
		e.waitReceived("/ok", i)
	}
	e.produce("acc1", `{"account_id":"acc1","event":"order.create","object_id":3}`)
	e.waitReceived("/flaky", 3)
	e.waitReceived("/ok", 3)
	got := e.outcomes(pub, func(o *outcomes.Outcome) {
		if o.AppID != e.app.ID || o.AccountID != "acc1" || o.Address == "" || o.At.IsZero() || o.Attempt != 1 {
			t.Fatalf("outcome lacks the webhook's details: %+v", o)
		}
	})
	want := map[string]string{
		flaky.ID: "[failure503 dead503 success200]", // then healthy: filtered
		gone.ID:  "[gone410]",
		ok.ID:    "[]",
	}
	for id, w := range want {
		if fmt.Sprint(got[id]) != w {
			t.Errorf("%s: outcomes %v, want %s", id, got[id], w)
		}
	}
	if pub.Filtered.Load() != 4 { // /ok three times, /flaky once
		t.Errorf("filtered %d successes, want 4", pub.Filtered.Load())
	}
}

// outcomes stops the dispatcher, flushes pub and returns what it published
// per webhook as kind+status[@attempt when above 1], each checked by check.
func (e *env) outcomes(pub *publish.Publisher, check func(o *outcomes.Outcome)) map[string][]string {
	t := e.t
	t.Helper()
	e.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.broker}, Topic: outcomes.DefaultTopic, MaxWait: 50 * time.Millisecond})
	defer r.Close()
	got := map[string][]string{}
	for i := int64(0); i < pub.Published.Load(); i++ {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		o, err := outcomes.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		check(o)
		s := o.Kind.String() + fmt.Sprint(o.Status)
		if o.Attempt > 1 {
			s += fmt.Sprintf("@%d", o.Attempt)
		}
		got[o.WebhookID] = append(got[o.WebhookID], s)
	}
	return got
}

// Retries publish too: each failure with its attempt number, the success
// that ends a streak, and the death after the last retry.
func TestRetriesPublishOutcomes(t *testing.T) {
	clk := newClock(time.Unix(1_800_000_000, 0))
	var pub *publish.Publisher
	e := startEnvWith(t, func(path string, n int) int {
		if path == "/recovers" && n >= 2 {
			return 200
		}
		return 500
	}, func(o *Options) {
		if err := kafkaio.EnsureTopics(context.Background(), o.Brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: 1}); err != nil {
			t.Fatal(err)
		}
		pub = publish.New(o.Brokers, outcomes.DefaultTopic, zerolog.Nop())
		o.Outcomes, o.MaxRetries = pub, 2
		o.Now, o.PollEvery = clk.Now, 5*time.Millisecond
	})
	rec := e.hook("acc1", "order.create", "/recovers")
	dies := e.hook("acc2", "order.create", "/dies")
	e.produce("acc1", `{"account_id":"acc1","event":"order.create","object_id":1}`)
	e.produce("acc2", `{"account_id":"acc2","event":"order.create","object_id":1}`)
	rid := e.waitReceived("/recovers", 1)[0].DeliveryID
	did := e.waitReceived("/dies", 1)[0].DeliveryID
	// Each step: once the last failure is in the queue (its due time read
	// from the clock before the move), move the clock past it.
	scheduled := func(id string, attempts int) func() error {
		return func() error {
			if d := e.find(id); d == nil || d.Attempts != attempts {
				return fmt.Errorf("delivery %s not yet scheduled after %d attempts", id, attempts)
			}
			return nil
		}
	}
	for _, want := range []int{2, 3} {
		testenv.WaitFor(t, 10*time.Second, scheduled(did, want-1))
		if want == 2 {
			testenv.WaitFor(t, 10*time.Second, scheduled(rid, 1))
		}
		clk.Add(24 * time.Hour)
		e.waitReceived("/recovers", want)
		e.waitReceived("/dies", want)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if e.disp.Stats.Dead.Load() != 1 {
			return fmt.Errorf("dead %d, want 1", e.disp.Stats.Dead.Load())
		}
		return nil
	})
	got := e.outcomes(pub, func(*outcomes.Outcome) {})
	want := map[string]string{
		rec.ID:  "[failure500 failure500@2 success200@3]",
		dies.ID: "[failure500 failure500@2 failure500@3 dead500@3]",
	}
	for id, w := range want {
		if fmt.Sprint(got[id]) != w {
			t.Errorf("%s: outcomes %v, want %s", id, got[id], w)
		}
	}
}

// lostReply makes the first transaction that deletes a webhook fail on the
// client after Redis carried it out, as a reply lost to a timeout would,
// and counts the tries.
type lostReply struct {
	armed atomic.Bool
	tries atomic.Int32
}

func (h *lostReply) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *lostReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *lostReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			if c.Name() == "hdel" && fmt.Sprint(c.Args()[1]) == "gh:webhooks" {
				h.tries.Add(1)
				if err == nil && h.armed.CompareAndSwap(true, false) {
					return context.DeadlineExceeded
				}
			}
		}
		return err
	}
}

// A 410 whose delete timed out on the client after Redis deleted the
// webhook is still reported, once. The injected loss is the only one:
// the client never times out and each try may take an hour, so the
// delete takes exactly two tries (the lost one, and one that finds the
// webhook gone) however loaded the machine.
func TestGoneReportedWhenTheDeleteReplyIsLost(t *testing.T) {
	var pub *publish.Publisher
	hook := &lostReply{}
	patient := func(srv *testenv.RedisServer) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: -1, WriteTimeout: -1, PoolTimeout: time.Hour})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	e := startEnvClient(t, loadtest.Always(410), func(o *Options) {
		o.GoneDeleteTimeout = time.Hour
		if err := kafkaio.EnsureTopics(context.Background(), o.Brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: 1}); err != nil {
			t.Fatal(err)
		}
		pub = publish.New(o.Brokers, outcomes.DefaultTopic, zerolog.Nop())
		o.Outcomes = pub
	}, patient)
	gone := e.hook("acc1", "order.create", "/gone")
	hook.armed.Store(true)
	e.rdb.AddHook(hook)
	e.produce("acc1", `{"account_id":"acc1","event":"order.create","object_id":1}`)
	e.waitReceived("/gone", 1)
	testenv.WaitFor(t, 20*time.Second, func() error {
		if stored, err := e.reg.Stored(context.Background(), gone.ID); err != nil || stored {
			return fmt.Errorf("webhook still stored (%v)", err)
		}
		return nil
	})
	// The hook disarms itself after Redis carried the delete out, so
	// wait for it too, not only for the webhook to be gone.
	testenv.WaitFor(t, 20*time.Second, func() error {
		if e.disp.Stats.Gone.Load() != 1 {
			return fmt.Errorf("gone %d, want 1", e.disp.Stats.Gone.Load())
		}
		if hook.armed.Load() {
			return errors.New("the delete's reply was never lost: the test tried nothing")
		}
		return nil
	})
	// The outcome is published once the second try finds the webhook
	// gone; the dispatcher stops only then.
	testenv.WaitFor(t, 20*time.Second, func() error {
		if n := pub.Published.Load(); n < 1 {
			return fmt.Errorf("%d outcomes published, want the 410's", n)
		}
		return nil
	})
	if n := hook.tries.Load(); n != 2 {
		t.Fatalf("%d tries at the delete, want 2: the lost one and one that finds the webhook gone", n)
	}
	got := e.outcomes(pub, func(*outcomes.Outcome) {})
	if fmt.Sprint(got[gone.ID]) != "[gone410]" {
		t.Fatalf("outcomes %v, want [gone410]", got[gone.ID])
	}
}
