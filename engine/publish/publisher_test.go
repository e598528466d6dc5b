package publish

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/internal/testenv"
)

var t0 = time.Date(2026, 11, 20, 1, 0, 0, 0, time.UTC)

func o(kind outcomes.Kind, webhook string, attempt int) *outcomes.Outcome {
	return &outcomes.Outcome{Kind: kind, WebhookID: webhook, AppID: "app_1", Status: 500, Error: "boom", Attempt: attempt, At: t0}
}

func TestPublisherForwardsOnlyWhatMatters(t *testing.T) {
	brokers := []string{testenv.Kafka(t, 1).Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := kafkaio.EnsureTopics(ctx, brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	p := New(brokers, outcomes.DefaultTopic, zerolog.New(zerolog.NewTestWriter(t)))
	p.Publish(o(outcomes.Success, "wh_healthy", 1)) // healthy: filtered
	p.Publish(o(outcomes.Failure, "wh_1", 1))
	p.Publish(o(outcomes.Dead, "wh_1", 1))
	p.Publish(o(outcomes.Success, "wh_1", 1)) // first success after a failure
	p.Publish(o(outcomes.Success, "wh_1", 1)) // healthy again: filtered
	p.Publish(o(outcomes.Success, "wh_2", 3)) // a retry's success: always
	p.Publish(o(outcomes.Gone, "wh_3", 1))
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if p.Filtered.Load() != 2 || p.Published.Load() != 5 || p.Dropped.Load() != 0 {
		t.Fatalf("filtered %d published %d dropped %d, want 2, 5, 0", p.Filtered.Load(), p.Published.Load(), p.Dropped.Load())
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: outcomes.DefaultTopic, Partition: 0, MaxWait: 50 * time.Millisecond})
	defer r.Close()
	var got []string
	for len(got) < 5 {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read %v so far: %v", got, err)
		}
		out, err := outcomes.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != out.WebhookID || out.AppID != "app_1" || !out.At.Equal(t0) {
			t.Fatalf("record %+v under key %s", out, m.Key)
		}
		got = append(got, out.WebhookID+":"+out.Kind.String())
	}
	want := []string{"wh_1:failure", "wh_1:dead", "wh_1:success", "wh_2:success", "wh_3:gone"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("records %v, want %v", got, want)
		}
	}
}

func TestPublishNeverBlocks(t *testing.T) {
	port, err := testenv.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	p := New([]string{"127.0.0.1:" + strconv.Itoa(port)}, outcomes.DefaultTopic, zerolog.Nop(), WithBuffer(4))
	for i := 0; i < 1000; i++ {
		p.Publish(o(outcomes.Failure, "wh_1", 1))
	}
	if d := p.Dropped.Load(); d < 1000-4-maxBatch {
		t.Fatalf("dropped %d of 1000 with a buffer of 4 and no broker", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Close(ctx); err == nil {
		t.Fatal("Close with no broker reported no loss")
	}
	if p.Published.Load() != 0 {
		t.Fatalf("published %d with no broker", p.Published.Load())
	}
	p.Publish(o(outcomes.Failure, "wh_1", 1)) // after Close: dropped, no panic
}

// A success of a webhook the coordinator lists as failing is forwarded,
// and clears the mark here. The set is read once, at start: a later read
// would mark the webhook again, as the coordinator has not seen the
// success yet.
func TestFailingSetMakesSuccessWorthForwarding(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	if err := rdb.ZAdd(context.Background(), "gh:failing", redis.Z{Score: 1, Member: "wh_elsewhere"}).Err(); err != nil {
		t.Fatal(err)
	}
	p := New([]string{"127.0.0.1:1"}, outcomes.DefaultTopic, zerolog.Nop(), WithFailingSet(rdb, "gh:failing", time.Hour))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
	}()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if !p.Failing("wh_elsewhere") {
			return errors.New("failing set not read yet")
		}
		return nil
	})
	p.Publish(o(outcomes.Success, "wh_elsewhere", 1))
	if p.Filtered.Load() != 0 || p.Failing("wh_elsewhere") {
		t.Fatal("the success of a webhook failing elsewhere was filtered")
	}
}

// The success path of a healthy webhook must stay cheap.
func TestHealthySuccessAllocatesNothing(t *testing.T) {
	p := New([]string{"127.0.0.1:1"}, outcomes.DefaultTopic, zerolog.Nop())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
	}()
	x := o(outcomes.Success, "wh_healthy", 1)
	if n := testing.AllocsPerRun(1000, func() { p.Publish(x) }); n != 0 {
		t.Fatalf("%v allocations per healthy success", n)
	}
}

func BenchmarkPublishHealthySuccess(b *testing.B) {
	p := New([]string{"127.0.0.1:1"}, outcomes.DefaultTopic, zerolog.Nop())
	x := o(outcomes.Success, "wh_healthy", 1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p.Publish(x)
		}
	})
}

// A success lost to a full buffer must not leave the webhook looking
// healthy: the next success is forwarded instead.
func TestDroppedSuccessKeepsWebhookMarked(t *testing.T) {
	p := New([]string{"127.0.0.1:1"}, outcomes.DefaultTopic, zerolog.Nop(), WithBuffer(1))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
	}()
	for i := 0; i < 100 && p.Dropped.Load() == 0; i++ { // fill the buffer
		p.Publish(o(outcomes.Failure, "wh_other", 1))
	}
	if p.Dropped.Load() == 0 {
		t.Fatal("buffer never full")
	}
	p.Publish(o(outcomes.Failure, "wh_1", 1))
	dropped := p.Dropped.Load()
	p.Publish(o(outcomes.Success, "wh_1", 1))
	if p.Dropped.Load() == dropped {
		t.Skip("the writer drained the buffer in between; nothing to check")
	}
	if !p.Failing("wh_1") {
		t.Fatal("a dropped success cleared the webhook's failure mark")
	}
}

// A success whose batch could not be written to Kafka must not leave the
// webhook looking healthy: Publish unmarked it when it queued the success,
// so the write re-marks it and the next success is forwarded.
func TestSuccessLostInFailedWriteKeepsWebhookMarked(t *testing.T) {
	port, err := testenv.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	p := New([]string{"127.0.0.1:" + strconv.Itoa(port)}, outcomes.DefaultTopic, zerolog.Nop())
	p.w.MaxAttempts, p.w.WriteBackoffMax = 1, time.Millisecond // fail fast; set before the writer's first use
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
	}()
	p.Publish(o(outcomes.Failure, "wh_1", 1))
	p.Publish(o(outcomes.Success, "wh_1", 1))
	if p.Failing("wh_1") {
		t.Fatal("the success queued did not unmark the webhook")
	}
	testenv.WaitFor(t, 20*time.Second, func() error {
		if p.Dropped.Load() < 2 {
			return errors.New("the batch has not failed yet")
		}
		return nil
	})
	if !p.Failing("wh_1") {
		t.Fatal("a success lost with its batch left the webhook unmarked: its streak would never be reset")
	}
}

// blackholeRedis accepts connections and never answers.
func blackholeRedis(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// A stuck Redis (the failing-set read waits up to 10 s) must not hold up
// the Kafka writes, and Close must not wait for it.
func TestStuckFailingSetDoesNotStallWrites(t *testing.T) {
	brokers := []string{testenv.Kafka(t, 1).Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := kafkaio.EnsureTopics(ctx, brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: blackholeRedis(t), MaxRetries: -1, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
	defer rdb.Close()
	p := New(brokers, outcomes.DefaultTopic, zerolog.Nop(), WithFailingSet(rdb, "gh:failing", time.Hour))
	p.Publish(o(outcomes.Failure, "wh_1", 1))
	testenv.WaitFor(t, 5*time.Second, func() error {
		if p.Published.Load() != 1 {
			return errors.New("the failure is not in Kafka yet")
		}
		return nil
	})
	cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer ccancel()
	if err := p.Close(cctx); err != nil {
		t.Fatalf("Close with Redis stuck: %v", err)
	}
}

// An unstarted Publisher runs nothing: it queues, and Close (which starts
// it) writes what was queued.
func TestUnstartedPublisherQueuesUntilClose(t *testing.T) {
	brokers := []string{testenv.Kafka(t, 1).Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := kafkaio.EnsureTopics(ctx, brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	p := NewUnstarted(brokers, outcomes.DefaultTopic, zerolog.Nop())
	p.Publish(o(outcomes.Failure, "wh_1", 1))
	if len(p.ch) != 1 {
		t.Fatalf("%d outcomes queued before Start, want 1 (no writer takes them)", len(p.ch))
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if p.Published.Load() != 1 {
		t.Fatalf("published %d after Close, want 1", p.Published.Load())
	}
}

// Pruning keeps each shard's count of marked webhooks right, so the
// lock-free look of a healthy success never misses a marked webhook nor
// keeps taking the lock once none is left.
func TestPruneKeepsMarkedCounts(t *testing.T) {
	now := t0
	p := NewUnstarted([]string{"127.0.0.1:1"}, outcomes.DefaultTopic, zerolog.Nop(),
		WithClock(func() time.Time { return now }), WithRemember(time.Hour))
	p.Publish(o(outcomes.Failure, "wh_old", 1))
	now = now.Add(50 * time.Minute)
	p.Publish(o(outcomes.Failure, "wh_new", 1))
	now = now.Add(20 * time.Minute)
	p.prune()
	if p.Failing("wh_old") || !p.Failing("wh_new") {
		t.Fatalf("after pruning: wh_old failing %v, wh_new failing %v; want false, true", p.Failing("wh_old"), p.Failing("wh_new"))
	}
	now = now.Add(time.Hour)
	p.prune()
	for i := range p.shards {
		if n := p.shards[i].n.Load(); n != 0 || len(p.shards[i].m) != 0 {
			t.Fatalf("shard %d counts %d marked, holds %d, after everything was pruned", i, n, len(p.shards[i].m))
		}
	}
	p.Publish(o(outcomes.Success, "wh_new", 1))
	if p.Filtered.Load() != 1 {
		t.Fatalf("filtered %d, want the pruned webhook's success filtered", p.Filtered.Load())
	}
}
