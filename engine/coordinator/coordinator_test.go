package coordinator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/publish"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/streak"
	"github.com/geckohook/geckohook/internal/testenv"
)

var t0 = time.Date(2026, 11, 20, 1, 0, 0, 0, time.UTC)

func setup(t *testing.T) (*Coordinator, *registry.Registry, *registry.Webhook) {
	t.Helper()
	rdb := testenv.Redis(t).Client()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg := registry.New(rdb, registry.Options{})
	if err := reg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	a, _, err := reg.CreateApp(ctx, "shop", "dev@example.com")
	if err != nil {
		t.Fatal(err)
	}
	w, err := reg.CreateWebhook(ctx, registry.Webhook{AppID: a.ID, AccountID: "acc-1", Event: "order.create", Address: "https://example.com/h"})
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	c := New(Options{Redis: rdb, Registry: reg, Now: func() time.Time { return now }, Log: zerolog.New(zerolog.NewTestWriter(t))})
	return c, reg, w
}

// setWatermark records the catch-up watermark as a lag check would.
func setWatermark(t *testing.T, c *Coordinator, at time.Time) {
	t.Helper()
	if err := c.o.Redis.Set(context.Background(), c.keys.Watermark(), at.UnixMilli(), 0).Err(); err != nil {
		t.Fatal(err)
	}
}

func msg(t *testing.T, w *registry.Webhook, kind outcomes.Kind, at time.Time, partition int, offset int64) kafka.Message {
	t.Helper()
	v, err := outcomes.Encode(&outcomes.Outcome{Kind: kind, WebhookID: w.ID, AppID: w.AppID, AccountID: w.AccountID,
		Event: w.Event, Address: w.Address, Status: 503, Error: "503 Service Unavailable", Attempt: 1, At: at})
	if err != nil {
		t.Fatal(err)
	}
	return kafka.Message{Key: []byte(w.ID), Value: v, Partition: partition, Offset: offset}
}

func TestReplayedBatchIsAppliedOnce(t *testing.T) {
	c, _, w := setup(t)
	batch := []kafka.Message{
		msg(t, w, outcomes.Failure, t0, 2, 10),
		msg(t, w, outcomes.Failure, t0.Add(time.Minute), 2, 11),
		{Key: []byte("x"), Value: []byte("not msgpack"), Partition: 2, Offset: 12},
	}
	for i := 0; i < 2; i++ { // the second time is a replay after a lost commit
		if err := c.process(batch); err != nil {
			t.Fatal(err)
		}
	}
	h, err := c.o.Redis.HGetAll(context.Background(), c.keys.Health(w.ID)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if h["failures"] != "2" || h["fday"] != "2" || h["off"] != "2:11" || h["status"] != "503" {
		t.Fatalf("health after a replay = %v, want 2 failures applied once", h)
	}
	if c.Stats.Bad.Load() != 2 {
		t.Fatalf("bad records = %d, want the unreadable one counted each time", c.Stats.Bad.Load())
	}
	raw, err := c.o.Redis.HGet(context.Background(), c.keys.DayFailing("2026-11-20", w.AppID), w.ID).Result()
	if err != nil {
		t.Fatal(err)
	}
	e, err := daylog.Decode([]byte(raw))
	if err != nil || e.Failures != 2 || !e.StreakStart.Equal(t0) || !e.DeleteAt.Equal(t0.Add(72*time.Hour)) || e.Address != w.Address {
		t.Fatalf("day entry = %+v (%v)", e, err)
	}
}

// Two coordinators updating one webhook at once (a rebalance hands its
// partition over while the old owner finishes a batch): no update is lost.
func TestConcurrentCoordinatorsLoseNoUpdate(t *testing.T) {
	c1, reg, w := setup(t)
	o := c1.o
	o.Metrics = nil // a set of its own, as another process has
	c2 := New(o)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := 0; i < n; i++ {
		for j, c := range []*Coordinator{c1, c2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Distinct partitions, so none looks like a replay of another.
				errs <- c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0.Add(time.Duration(i)*time.Second), 2*i+j, 1)})
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, _ := c1.o.Redis.HGet(context.Background(), c1.keys.Health(w.ID), "failures").Result()
	if got != fmt.Sprint(2*n) {
		t.Fatalf("failures = %s, want %d (conflicts retried: %d)", got, 2*n, c1.Stats.Conflicts.Load()+c2.Stats.Conflicts.Load())
	}
	if reg.Webhook(w.ID) == nil {
		t.Fatal("deleted")
	}
}

func TestFailureCrossingDeleteAfterDeletesOnArrival(t *testing.T) {
	c, reg, w := setup(t)
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	// DeleteAfter plus Grace: no success dated before it can still be on
	// its way.
	now := t0.Add(72*time.Hour + c.o.Grace)
	c.o.Now = func() time.Time { return now }
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, now, 0, 2)}); err != nil {
		t.Fatal(err)
	}
	if reg.Webhook(w.ID) != nil {
		t.Fatal("not deleted by the failure at 72 h plus grace")
	}
	h, _ := c.o.Redis.HGetAll(context.Background(), c.keys.Health(w.ID)).Result()
	if h["reason"] != streak.ReasonFailing || h["deleted"] == "0" {
		t.Fatalf("health = %v, want deleted for failing", h)
	}
	raw, err := c.o.Redis.HGet(context.Background(), c.keys.DayDeleted("2026-11-23", w.AppID), w.ID).Result()
	if err != nil {
		t.Fatalf("no deletion record for the day: %v", err)
	}
	if e, _ := daylog.Decode([]byte(raw)); e == nil || e.Reason != streak.ReasonFailing || e.Address != w.Address {
		t.Fatalf("deletion record = %+v", e)
	}
	if ok, _ := c.o.Redis.SIsMember(context.Background(), c.keys.DayApps("2026-11-23"), w.AppID).Result(); !ok {
		t.Fatal("application not listed for the day's mail")
	}
	// Outcomes still in flight for the deleted webhook change nothing.
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, now.Add(time.Minute), 0, 3)}); err != nil {
		t.Fatal(err)
	}
	if f, _ := c.o.Redis.HGet(context.Background(), c.keys.Health(w.ID), "failures").Result(); f != "2" {
		t.Fatalf("failures after deletion = %s, want 2", f)
	}
}

// A failing webhook its owner deleted through the API is not reported as
// deleted by the 3-day rule.
func TestSweepOfWebhookRemovedThroughAPI(t *testing.T) {
	c, reg, w := setup(t)
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if err := reg.DeleteWebhook(context.Background(), w.ID); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(73 * time.Hour)
	c.o.Now = func() time.Time { return now }
	setWatermark(t, c, now)
	if err := c.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.o.Redis.ZCard(context.Background(), c.keys.Failing()).Result(); n != 0 {
		t.Fatal("still in the failing set")
	}
	if n, _ := c.o.Redis.Exists(context.Background(), c.keys.DayDeleted("2026-11-23", w.AppID)).Result(); n != 0 {
		t.Fatal("reported as deleted by the 3-day rule")
	}
	if c.Stats.DeletedFailing.Load() != 0 {
		t.Fatal("counted as a deletion")
	}
}

// A failing-set entry whose health expired is dropped by the sweep instead
// of being swept again forever.
func TestSweepDropsEntryWithoutHealth(t *testing.T) {
	c, _, _ := setup(t)
	ctx := context.Background()
	if err := c.o.Redis.ZAdd(ctx, c.keys.Failing(), redis.Z{Score: 1, Member: "wh_stale"}).Err(); err != nil {
		t.Fatal(err)
	}
	setWatermark(t, c, t0)
	if err := c.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.o.Redis.ZCard(ctx, c.keys.Failing()).Result(); n != 0 {
		t.Fatal("stale entry still in the failing set")
	}
	if n, _ := c.o.Redis.Exists(ctx, c.keys.Health("wh_stale")).Result(); n != 0 {
		t.Fatal("the sweep created health for an unknown webhook")
	}
}

// After downtime the sweep waits until the backlog is read: at t0+80h the
// coordinator restarts with a success of t0+70h still in Kafka for a
// webhook failing since t0. The success must reset the streak; a sweep
// before it was read would delete the webhook.
func TestSweepWaitsForTheBacklog(t *testing.T) {
	c, reg, w := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	brokers := outcomesBroker(t, 2)
	// Before the downtime (a partition Kafka does not have, so the real
	// records are not taken for replays of it).
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 99, 1)}); err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t))
	pub := publish.New(brokers, outcomes.DefaultTopic, log)
	pub.Publish(&outcomes.Outcome{Kind: outcomes.Success, WebhookID: w.ID, AppID: w.AppID, Status: 200, Attempt: 2, At: t0.Add(70 * time.Hour)})
	if err := pub.Close(ctx); err != nil || pub.Published.Load() != 1 {
		t.Fatalf("success not published: %v", err)
	}
	now := t0.Add(80 * time.Hour)
	c2 := New(Options{Brokers: brokers, Redis: c.o.Redis, Registry: reg, SweepEvery: 5 * time.Millisecond,
		WatermarkEvery: 20 * time.Millisecond, SessionTimeout: 6 * time.Second, Now: func() time.Time { return now }, Log: log})
	// Behind: no watermark yet, no catching up.
	if caught, err := c2.CheckLag(ctx); err != nil || caught {
		t.Fatalf("caught up = %v (%v) with the success unread", caught, err)
	}
	if n, _ := c.o.Redis.Exists(ctx, c.keys.Watermark()).Result(); n != 0 {
		t.Fatal("a watermark was recorded while a partition with nothing applied is behind")
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = c2.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.WaitFor(t, 30*time.Second, func() error {
		since, _ := c.o.Redis.HGet(ctx, c.keys.Health(w.ID), "since").Result()
		if since != "0" {
			return fmt.Errorf("streak start %q, want reset by the success", since)
		}
		if c2.Stats.Sweeps.Load() == 0 {
			return fmt.Errorf("no sweep yet (%d skipped)", c2.Stats.SweepsSkipped.Load())
		}
		// Sweeps run while behind too (judged at the watermark), so wait
		// for the lag check that finds the group caught up.
		if wm, _ := c.o.Redis.Get(ctx, c.keys.Watermark()).Int64(); wm != now.UnixMilli() {
			return fmt.Errorf("watermark %d, want the clock %d once caught up", wm, now.UnixMilli())
		}
		return nil
	})
	if reg.Webhook(w.ID) == nil || c2.Stats.DeletedFailing.Load() != 0 {
		t.Fatal("deleted by a sweep that ran before the backlog was read")
	}
	if c2.Stats.SweepsSkipped.Load() == 0 {
		t.Error("no sweep was held back while the backlog was unread")
	}
}

// A 3-day sweep that found the webhook already gone from the registry (the
// dispatcher deleted it on a 410) records "removed"; the Gone outcome that
// arrives next records it as deleted for the 410.
func TestGoneAfterSweepRecordsTheDeletion(t *testing.T) {
	c, reg, w := setup(t)
	ctx := context.Background()
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if err := reg.DeleteWebhook(ctx, w.ID); err != nil { // the dispatcher, on the 410
		t.Fatal(err)
	}
	now := t0.Add(72*time.Hour + c.o.Grace + time.Second)
	c.o.Now = func() time.Time { return now }
	setWatermark(t, c, now)
	if err := c.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	gone := t0.Add(72 * time.Hour)
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Gone, gone, 0, 2)}); err != nil {
		t.Fatal(err)
	}
	raw, err := c.o.Redis.HGet(ctx, c.keys.DayDeleted("2026-11-23", w.AppID), w.ID).Result()
	if err != nil {
		t.Fatalf("no deletion record for the 410: %v", err)
	}
	if e, _ := daylog.Decode([]byte(raw)); e == nil || e.Reason != streak.ReasonGone || !e.Deleted.Equal(gone) {
		t.Fatalf("deletion record = %+v, want gone at %v", e, gone)
	}
	if ok, _ := c.o.Redis.SIsMember(ctx, c.keys.DayApps("2026-11-23"), w.AppID).Result(); !ok {
		t.Fatal("application not listed for the day's mail")
	}
	if c.Stats.DeletedGone.Load() != 1 || c.Stats.DeletedFailing.Load() != 0 {
		t.Fatalf("deleted gone %d failing %d, want 1 and 0", c.Stats.DeletedGone.Load(), c.Stats.DeletedFailing.Load())
	}
}

// One batch holds the failure at 72 h and, after it, a success dated 71 h
// (published late): the success breaks the streak, so nothing is deleted
// and the streak restarts at the 72 h failure.
func TestSuccessLaterInTheBatchStillCounts(t *testing.T) {
	c, reg, w := setup(t)
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	crossing := t0.Add(72 * time.Hour)
	now := crossing.Add(time.Minute)
	c.o.Now = func() time.Time { return now }
	if err := c.process([]kafka.Message{
		msg(t, w, outcomes.Failure, crossing, 0, 2),
		msg(t, w, outcomes.Success, t0.Add(71*time.Hour), 0, 3),
	}); err != nil {
		t.Fatal(err)
	}
	if reg.Webhook(w.ID) == nil {
		t.Fatal("deleted although a success in the same batch broke the streak")
	}
	if since, _ := c.o.Redis.HGet(context.Background(), c.keys.Health(w.ID), "since").Result(); since != ms(crossing) {
		t.Fatalf("streak start %s, want restarted at the 72 h failure %s", since, ms(crossing))
	}
}

// While a partition is behind, the watermark is the newest outcome time
// applied from it; caught-up partitions count as the clock.
func TestWatermarkIsTheSlowestPartition(t *testing.T) {
	c, _, w := setup(t)
	ctx := context.Background()
	brokers := outcomesBroker(t, 2)
	now := t0.Add(5 * time.Hour)
	c2 := New(Options{Brokers: brokers, Redis: c.o.Redis, Registry: c.o.Registry, Now: func() time.Time { return now },
		Log: zerolog.New(zerolog.NewTestWriter(t))})
	if caught, err := c2.CheckLag(ctx); err != nil || !caught {
		t.Fatalf("an empty topic: caught up = %v (%v), want true", caught, err)
	}
	if wm, _ := c.o.Redis.Get(ctx, c.keys.Watermark()).Int64(); wm != now.UnixMilli() {
		t.Fatalf("watermark %d on an empty topic, want the clock %d", wm, now.UnixMilli())
	}
	// Partition 1 gets a record the group has not read.
	conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], outcomes.DefaultTopic, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteMessages(msg(t, w, outcomes.Failure, now, 0, 0)); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close()
	// What was applied so far from each partition.
	if err := c2.process([]kafka.Message{msg(t, w, outcomes.Failure, t0.Add(time.Hour), 0, 50), msg(t, w, outcomes.Failure, t0.Add(2*time.Hour), 1, 50)}); err != nil {
		t.Fatal(err)
	}
	now = t0.Add(6 * time.Hour)
	if caught, err := c2.CheckLag(ctx); err != nil || caught {
		t.Fatalf("caught up = %v (%v) with partition 1 behind", caught, err)
	}
	// Forward only: the watermark stays at the clock of the caught-up check
	// (5 h), it does not fall back to partition 1's 2 h.
	if wm, _ := c.o.Redis.Get(ctx, c.keys.Watermark()).Int64(); wm != t0.Add(5*time.Hour).UnixMilli() {
		t.Fatalf("watermark %v, want it kept at 5 h", time.UnixMilli(wm).UTC())
	}
	if err := c.o.Redis.Del(ctx, c.keys.Watermark()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.CheckLag(ctx); err != nil {
		t.Fatal(err)
	}
	if wm, _ := c.o.Redis.Get(ctx, c.keys.Watermark()).Int64(); wm != t0.Add(2*time.Hour).UnixMilli() {
		t.Fatalf("watermark %v, want partition 1's newest applied outcome (2 h)", time.UnixMilli(wm).UTC())
	}
}

// Busy traffic: a partition that always has outcomes left to read no longer
// holds the sweep back. The sweep judges at the watermark (partition 1's
// newest applied outcome, 79 h) less the grace: a webhook failing since t0
// is deleted although the clock (80 h) is ahead of what is applied, one
// whose streak is due by the clock but not by 79 h - grace is kept.
func TestSweepRunsWhileAPartitionIsBehind(t *testing.T) {
	c, reg, w := setup(t)
	ctx := context.Background()
	a := reg.App(w.AppID)
	w2, err := reg.CreateWebhook(ctx, registry.Webhook{AppID: a.ID, AccountID: "acc-1", Event: "order.create", Address: "https://example.com/h2"})
	if err != nil {
		t.Fatal(err)
	}
	brokers := outcomesBroker(t, 2)
	now := t0.Add(80 * time.Hour)
	c2 := New(Options{Brokers: brokers, Redis: c.o.Redis, Registry: reg, Now: func() time.Time { return now },
		Log: zerolog.New(zerolog.NewTestWriter(t))})
	// Failing since t0 and since t0+8h (a partition Kafka does not have);
	// partition 1 applied up to 79 h and has one more outcome unread.
	if err := c2.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 99, 1), msg(t, w2, outcomes.Failure, t0.Add(8*time.Hour), 99, 2),
		msg(t, w, outcomes.Failure, t0.Add(79*time.Hour), 1, 50)}); err != nil {
		t.Fatal(err)
	}
	conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], outcomes.DefaultTopic, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteMessages(msg(t, w, outcomes.Failure, now, 0, 0)); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close()
	swept, err := c2.sweepTick(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !swept || c2.lag.Load().caughtUp() {
		t.Fatalf("swept = %v, caught up = %v; want a sweep while partition 1 is behind", swept, c2.lag.Load().caughtUp())
	}
	if wm, _ := c.o.Redis.Get(ctx, c.keys.Watermark()).Int64(); wm != t0.Add(79*time.Hour).UnixMilli() {
		t.Fatalf("watermark %v, want partition 1's 79 h", time.UnixMilli(wm).UTC())
	}
	if reg.Webhook(w.ID) != nil || c2.Stats.DeletedFailing.Load() != 1 {
		t.Fatalf("webhook failing for 79 h not deleted while a partition is behind (deleted %d)", c2.Stats.DeletedFailing.Load())
	}
	if reg.Webhook(w2.ID) == nil {
		t.Fatal("webhook due by the clock but not by the watermark was deleted")
	}
}

// A success dated before now may still be on its way into Kafka: the
// clock check is judged the grace behind the watermark. At 72 h + 1 min,
// caught up, a webhook failing since t0 is kept; at 72 h + grace it goes.
func TestSweepJudgesGraceBehindTheWatermark(t *testing.T) {
	c, reg, w := setup(t)
	ctx := context.Background()
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(72*time.Hour + time.Minute)
	c.o.Now = func() time.Time { return now }
	setWatermark(t, c, now)
	if err := c.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	// A batch that reaches its partition's end judges at the same time.
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0.Add(71*time.Hour), 0, 2)}); err != nil {
		t.Fatal(err)
	}
	if reg.Webhook(w.ID) == nil {
		t.Fatal("deleted within the grace, while a success could still be on its way into Kafka")
	}
	now = t0.Add(72*time.Hour + c.o.Grace)
	setWatermark(t, c, now)
	if err := c.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if reg.Webhook(w.ID) != nil {
		t.Fatal("not deleted once the grace had passed")
	}
}

// Without a watermark nothing is judged against the clock.
func TestSweepWithoutWatermarkDoesNothing(t *testing.T) {
	c, reg, w := setup(t)
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(100 * time.Hour)
	c.o.Now = func() time.Time { return now }
	if swept, err := c.sweepSafe(context.Background()); err != nil || swept {
		t.Fatalf("swept = %v (%v) without a watermark", swept, err)
	}
	if reg.Webhook(w.ID) == nil {
		t.Fatal("deleted without a watermark")
	}
}

// A partition added to the outcomes topic while the coordinator runs is
// read: its outcome is applied and the group catches up (the watermark
// does not stall on it).
func TestAddedPartitionIsRead(t *testing.T) {
	c, reg, w := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	brokers := outcomesBroker(t, 1)
	now := t0
	c2 := New(Options{Brokers: brokers, Redis: c.o.Redis, Registry: reg, SweepEvery: 50 * time.Millisecond,
		WatermarkEvery: 100 * time.Millisecond, SessionTimeout: 6 * time.Second, Now: func() time.Time { return now },
		Log: zerolog.New(zerolog.NewTestWriter(t))})
	done := make(chan struct{})
	go func() { defer close(done); _ = c2.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// The group is running (an outcome on partition 0 applied) before the
	// partition is added: kafka-go's watcher compares with the partitions
	// it read when the generation started.
	first, err := kafka.DialLeader(ctx, "tcp", brokers[0], outcomes.DefaultTopic, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.WriteMessages(msg(t, w, outcomes.Failure, t0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	_ = first.Close()
	testenv.WaitFor(t, 20*time.Second, func() error {
		if off, _ := c.o.Redis.HGet(ctx, c.keys.Health(w.ID), "off").Result(); off != "0:0" {
			return fmt.Errorf("outcome on partition 0 not applied yet (off %q)", off)
		}
		return nil
	})
	res, err := c2.client.CreatePartitions(ctx, &kafka.CreatePartitionsRequest{Topics: []kafka.TopicPartitionsConfig{{Name: outcomes.DefaultTopic, Count: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Errors[outcomes.DefaultTopic]; err != nil {
		t.Fatal(err)
	}
	conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], outcomes.DefaultTopic, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteMessages(msg(t, w, outcomes.Failure, t0.Add(time.Minute), 0, 0)); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close()
	testenv.WaitFor(t, 20*time.Second, func() error {
		off, _ := c.o.Redis.HGet(ctx, c.keys.Health(w.ID), "off").Result()
		if off != "0:0,1:0" {
			return fmt.Errorf("outcome on the added partition not applied (off %q)", off)
		}
		if st := c2.lag.Load(); !st.caughtUp() {
			return fmt.Errorf("still behind: %v", st)
		}
		return nil
	})
}

// fakeReader hands out queued messages and fails the first failCommits
// commits.
type fakeReader struct {
	msgs        chan kafka.Message
	mu          sync.Mutex
	failCommits int
	calls       int
	committed   map[int]int64
}

func (f *fakeReader) FetchMessage(ctx context.Context) (kafka.Message, error) {
	select {
	case m := <-f.msgs:
		return m, nil
	case <-ctx.Done():
		return kafka.Message{}, ctx.Err()
	}
}

func (f *fakeReader) CommitMessages(_ context.Context, msgs ...kafka.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.failCommits {
		return fmt.Errorf("coordinator not available")
	}
	for _, m := range msgs {
		f.committed[m.Partition] = max(f.committed[m.Partition], m.Offset)
	}
	return nil
}

func (f *fakeReader) state() (int, map[int]int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[int]int64{}
	for p, o := range f.committed {
		out[p] = o
	}
	return f.calls, out
}

// A failed offset commit is retried while the topic is idle, until it
// works; the newest offset of each partition is committed.
func TestFailedCommitIsRetriedOnAnIdleTopic(t *testing.T) {
	c, _, w := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeReader{msgs: make(chan kafka.Message, 10), failCommits: 3, committed: map[int]int64{}}
	f.msgs <- msg(t, w, outcomes.Failure, t0, 4, 7)
	f.msgs <- msg(t, w, outcomes.Failure, t0.Add(time.Second), 4, 8)
	f.msgs <- msg(t, w, outcomes.Failure, t0.Add(time.Second), 5, 2)
	done := make(chan struct{})
	go func() { defer close(done); c.consume(ctx, f) }()
	defer func() { cancel(); <-done }()
	testenv.WaitFor(t, 10*time.Second, func() error {
		calls, got := f.state()
		if got[4] != 8 || got[5] != 2 {
			return fmt.Errorf("committed %v after %d tries, want partition 4 at 8 and 5 at 2", got, calls)
		}
		return nil
	})
	if calls, _ := f.state(); calls != 4 || c.Stats.CommitFailures.Load() != 3 {
		t.Fatalf("%d commit calls, %d failures counted; want 4 and 3", calls, c.Stats.CommitFailures.Load())
	}
	if n := c.Stats.Outcomes.Load(); n != 3 {
		t.Fatalf("%d outcomes applied, want 3 (no replay)", n)
	}
}

// A sweep in progress holds the watermark at the time it dates its
// deletions, so a digest cannot go out for a day the sweep still records
// into; a hold left by a crashed coordinator lapses at its deadline; a
// finished sweep releases its hold.
func TestSweepInProgressHoldsTheWatermark(t *testing.T) {
	c, reg, w := setup(t)
	ctx := context.Background()
	brokers := outcomesBroker(t, 1)
	// Another coordinator sweeps, dating deletions at 23:59:59.
	sweepAt := time.Date(2026, 11, 23, 23, 59, 59, 0, time.UTC)
	setWatermark(t, c, sweepAt.Add(-time.Minute))
	hold := fmt.Sprintf("other|%d", time.Now().Add(time.Minute).UnixMilli())
	if err := c.o.Redis.ZAdd(ctx, c.keys.Sweeps(), redis.Z{Score: float64(sweepAt.UnixMilli()), Member: hold}).Err(); err != nil {
		t.Fatal(err)
	}
	now := sweepAt.Add(5 * time.Minute) // past the day's end + grace
	c2 := New(Options{Brokers: brokers, Redis: c.o.Redis, Registry: reg, Now: func() time.Time { return now },
		Log: zerolog.New(zerolog.NewTestWriter(t))})
	if caught, err := c2.CheckLag(ctx); err != nil || !caught {
		t.Fatalf("caught up = %v (%v)", caught, err)
	}
	if wm, _ := c.o.Redis.Get(ctx, c.keys.Watermark()).Int64(); wm != sweepAt.UnixMilli() {
		t.Fatalf("watermark %v during a sweep dated %v, want held there", time.UnixMilli(wm).UTC(), sweepAt)
	}
	// The sweeping coordinator died: its hold lapses at its deadline.
	stale := fmt.Sprintf("other|%d", time.Now().Add(-time.Second).UnixMilli())
	if err := c.o.Redis.ZAdd(ctx, c.keys.Sweeps(), redis.Z{Score: float64(sweepAt.UnixMilli()), Member: stale}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.o.Redis.ZRem(ctx, c.keys.Sweeps(), hold).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.CheckLag(ctx); err != nil {
		t.Fatal(err)
	}
	if wm, _ := c.o.Redis.Get(ctx, c.keys.Watermark()).Int64(); wm != now.UnixMilli() {
		t.Fatalf("watermark %v with only a lapsed hold, want the clock %v", time.UnixMilli(wm).UTC(), now)
	}
	// A sweep whose clock is behind the watermark dates its deletions at
	// the watermark (a day not mailed yet) and releases its hold.
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	behind := now.Add(-3 * time.Minute)
	c2.o.Now = func() time.Time { return behind }
	if err := c2.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if reg.Webhook(w.ID) != nil {
		t.Fatal("not deleted")
	}
	if deleted, _ := c.o.Redis.HGet(ctx, c.keys.Health(w.ID), "deleted").Result(); deleted != ms(now) {
		t.Fatalf("deletion dated %s, want the watermark %s", deleted, ms(now))
	}
	if n, _ := c.o.Redis.ZCard(ctx, c.keys.Sweeps()).Result(); n != 0 {
		t.Fatalf("%d holds left after the sweep", n)
	}
}

// outcomesBroker starts the embedded Kafka with the outcomes topic of the
// given partitions and returns its address.
func outcomesBroker(t *testing.T, partitions int) []string {
	t.Helper()
	brokers := []string{testenv.Kafka(t, partitions).Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := kafkaio.EnsureTopics(ctx, brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	return brokers
}

// A success published late (another dispatcher's buffer, a retry's write
// retries) may reach Kafka after a failure dated later, within Grace: the
// failure that crosses DeleteAfter must not delete before the success
// dated just before it had time to arrive.
func TestLateSuccessBeforeCrossingFailureKeepsWebhook(t *testing.T) {
	c, reg, w := setup(t)
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	crossing := t0.Add(72 * time.Hour)
	now := crossing.Add(time.Second)
	c.o.Now = func() time.Time { return now }
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Failure, crossing, 0, 2)}); err != nil {
		t.Fatal(err)
	}
	// The success, dated a second before the crossing failure, arrives next.
	if err := c.process([]kafka.Message{msg(t, w, outcomes.Success, crossing.Add(-time.Second), 0, 3)}); err != nil {
		t.Fatal(err)
	}
	if reg.Webhook(w.ID) == nil {
		t.Fatal("deleted by a failure at 72 h although a success 1 s before it was still on its way (within Grace)")
	}
	if since, _ := c.o.Redis.HGet(context.Background(), c.keys.Health(w.ID), "since").Result(); since != ms(crossing) {
		t.Fatalf("streak start %s, want restarted at the 72 h failure %s", since, ms(crossing))
	}
}

// Two coordinators on one webhook (around a rebalance the old owner
// replays a batch the new owner already applied, or a sweep reads it):
// the one whose read is stale must not carry out its effects last. Here
// the replaying coordinator read "recovered", the other then applied a
// new failure, and the stale effects dropped the webhook from the failing
// set although its health is failing: the sweep never judges it again and
// publishers filter its next success.
func TestStaleEffectsDoNotUndoNewerState(t *testing.T) {
	c1, _, w := setup(t)
	o := c1.o
	o.Metrics = nil
	c2 := New(o)
	ctx := context.Background()
	applied := []kafka.Message{msg(t, w, outcomes.Failure, t0, 0, 1), msg(t, w, outcomes.Success, t0.Add(time.Hour), 0, 2)}
	if err := c1.process(applied); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	c2.afterStore = func() {
		once.Do(func() {
			if err := c1.process([]kafka.Message{msg(t, w, outcomes.Failure, t0.Add(2*time.Hour), 0, 3)}); err != nil {
				t.Error(err)
			}
		})
	}
	if err := c2.process(applied); err != nil { // the replay
		t.Fatal(err)
	}
	h, err := c1.o.Redis.HGet(ctx, c1.keys.Health(w.ID), "since").Result()
	if err != nil {
		t.Fatal(err)
	}
	if h != ms(t0.Add(2*time.Hour)) {
		t.Fatalf("streak start %s, want the new failure's %s", h, ms(t0.Add(2*time.Hour)))
	}
	if _, err := c1.o.Redis.ZScore(ctx, c1.keys.Failing(), w.ID).Result(); err != nil {
		t.Fatalf("failing webhook missing from the failing set: %v", err)
	}
}

// After partitions are added to the outcomes topic a webhook's outcomes
// move to another partition while the old one still has its backlog; the
// rebalance that follows replays what was not committed, from both. A
// replay of the old partition must not be counted again once an outcome
// of the new one was applied.
func TestReplayAfterPartitionMoveIsAppliedOnce(t *testing.T) {
	c, _, w := setup(t)
	old := msg(t, w, outcomes.Failure, t0, 1, 100)
	moved := msg(t, w, outcomes.Failure, t0.Add(time.Minute), 5, 3)
	for _, b := range [][]kafka.Message{{old}, {moved}, {old}, {moved}} { // the last two: replays
		if err := c.process(b); err != nil {
			t.Fatal(err)
		}
	}
	h, err := c.o.Redis.HGetAll(context.Background(), c.keys.Health(w.ID)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if h["failures"] != "2" || h["fday"] != "2" {
		t.Fatalf("failures = %s, failures today = %s, want 2 and 2", h["failures"], h["fday"])
	}
}
