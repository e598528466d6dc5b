package dispatch

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
	"github.com/geckohook/geckohook/shard"
)

// heldApply, once armed, holds every script that writes outcomes to a
// retry queue (its second key the queue's dead set) until released or its
// context ends: a Redis that takes the shards' writes no more.
type heldApply struct {
	armed   atomic.Bool
	held    atomic.Int32
	release chan struct{}
}

func (h *heldApply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *heldApply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if !h.armed.Load() || (cmd.Name() != "evalsha" && cmd.Name() != "eval") || len(args) <= 4 || !strings.HasSuffix(fmt.Sprint(args[4]), ":dead") {
			return next(ctx, cmd)
		}
		h.held.Add(1)
		select {
		case <-h.release:
			return next(ctx, cmd)
		case <-ctx.Done():
			cmd.SetErr(ctx.Err())
			return ctx.Err()
		}
	}
}
func (h *heldApply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// heldWriter runs a dispatcher whose shard 0 has 21 retries of a stalled
// host (one connection, taken by a hung attempt) claimed, 20 of them
// deferred to a writer that Redis holds up, the writer's queue full. It
// returns the env, shard 0's queue and what lets Redis go on.
func heldWriter(t *testing.T) (*env, *shard.Queue, func()) {
	t.Helper()
	hold := &heldApply{release: make(chan struct{})}
	var released atomic.Bool
	releaseHold := func() {
		if released.CompareAndSwap(false, true) {
			close(hold.release)
		}
	}
	clk := newClock(time.Unix(1_800_000_000, 0))
	e := startEnvClient(t, loadtest.Always(200), func(o *Options) {
		o.Now, o.PollEvery = clk.Now, 5*time.Millisecond
		o.Sender, o.StallAfter = testSender(1), 50*time.Millisecond
		o.Window, o.DrainTimeout = 2, time.Second
	}, func(s *testenv.RedisServer) *redis.Client {
		c := s.Client()
		c.AddHook(hold)
		return c
	})
	t.Cleanup(releaseHold) // runs before the env's stop
	var entered atomic.Int64
	stuck := hangingReceiver(t, make(chan struct{}), &entered)
	hook, err := e.reg.CreateWebhook(context.Background(), registry.Webhook{AppID: e.app.ID, AccountID: "acc-h", Event: "order.create", Address: stuck.URL + "/stuck"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		if n := e.disp.Stats.Shards.Load(); n != partitions {
			return fmt.Errorf("%d shards running", n)
		}
		return nil
	})
	q := shard.NewQueue(e.rdb, "gh:", "geckohook.events", 0)
	schedule := func(from, n int) {
		t.Helper()
		var entries []shard.Entry
		for i := from; i < from+n; i++ {
			body := fmt.Sprintf(`{"object_id":%d,"event":"order.create","timestamp":1,"resource_url":"https://x/%d.json"}`, i, i)
			entries = append(entries, shard.Entry{Due: clk.Now(), Rec: &shard.Record{
				ID: contract.DeliveryID("geckohook.events", 0, int64(i), hook.ID), WebhookID: hook.ID, AppID: e.app.ID, Event: "order.create",
				Body: []byte(body), Attempts: 1, FirstAttempt: clk.Now(), LastAttempt: clk.Now(), LastStatus: 500,
			}})
		}
		if err := q.Schedule(context.Background(), entries); err != nil {
			t.Fatal(err)
		}
	}
	// One retry holds the host's only connection; the host is found
	// stalled.
	schedule(0, 1)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if entered.Load() != 1 || e.disp.hosts.throttled() != 1 {
			return fmt.Errorf("%d attempts at the stuck host, %d hosts throttled", entered.Load(), e.disp.hosts.throttled())
		}
		return nil
	})
	// Redis stops taking the writer's outcomes; 20 more retries fall due,
	// and all but one are deferred to a writer that cannot write.
	hold.armed.Store(true)
	schedule(1, 20)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := e.disp.Stats.Failed.Load(); hold.held.Load() == 0 || n < 5 {
			return fmt.Errorf("%d retries deferred, %d writes held", n, hold.held.Load())
		}
		return nil
	})
	return e, q, releaseHold
}

// A shard whose writer is held up by Redis still gives its partition up
// within its drain timeout: the retry poller, deferring the retries of a
// stalled host while the writer's queue is full, does not wait for the
// writer past the generation's end (the shard's life, which the wait
// watched, ends only once the poller has returned). Nothing is lost: the
// retries stay in the queue.
func TestRevocationIsBoundedWhileTheWriterIsHeldUp(t *testing.T) {
	e, q, releaseHold := heldWriter(t)
	stopped := make(chan struct{})
	start := time.Now()
	go func() { e.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		releaseHold()
		<-stopped
		t.Fatalf("the dispatcher took %v to stop, with a 1s drain timeout: it waited for Redis to take the writer's outcomes", time.Since(start))
	}
	t.Logf("stopped in %v", time.Since(start))
	releaseHold()
	if n, err := q.Len(context.Background()); err != nil || n != 21 {
		t.Fatalf("%d retries scheduled after the stop (%v), want all 21 kept", n, err)
	}
}

// A shard that lets its partition go with outcomes still unwritten (its
// writer held up by Redis) gives back every claim it counted: the
// process's gauge of retries in flight returns to zero.
func TestStoppedShardLeavesNoRetryInFlight(t *testing.T) {
	e, _, releaseHold := heldWriter(t)
	e.stop()
	releaseHold()
	if n := e.disp.Stats.RetriesInFlight.Load(); n != 0 {
		t.Fatalf("retries in flight after every shard stopped: %d, want 0", n)
	}
}
