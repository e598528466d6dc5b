package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
	"github.com/geckohook/geckohook/shard"
)

// Retries queued by the version before the compact layout (the id in
// tag:due, the msgpack record in tag:d, the id in tag:w:<webhook>) are
// migrated when a dispatcher takes the partition, and delivered with
// their ids and bodies.
func TestOldLayoutQueueIsMigratedAndDelivered(t *testing.T) {
	e := startEnv(t, loadtest.Always(200))
	w := e.hook("acc-old", "order.create", "/old")
	e.stop()

	ctx := context.Background()
	cat := catalog.Default()
	want := map[string]string{} // delivery id -> body
	for p := 0; p < partitions; p++ {
		tag := "gh:{" + shard.ShardName("geckohook.events", p) + "}"
		for off := int64(0); off < 5; off++ {
			ev := contract.Event{Event: "order.create", ObjectID: int64(p*100) + off, Timestamp: e.now.Unix()}
			rec := &shard.Record{
				ID: contract.DeliveryID("geckohook.events", int32(p), off, w.ID), WebhookID: w.ID, AppID: w.AppID,
				AccountID: w.AccountID, Event: ev.Event, Body: contract.AppendBody(nil, &ev, "https://api.tradegecko.com", cat),
				Attempts: 1, Retries: 2, FirstAttempt: e.now.Add(-time.Hour), LastAttempt: e.now.Add(-time.Minute),
				LastStatus: 500, LastError: "HTTP 500", Topic: "geckohook.events", Partition: int32(p), Offset: off,
			}
			raw, err := msgpack.Marshal(rec)
			if err != nil {
				t.Fatal(err)
			}
			_, err = e.rdb.TxPipelined(ctx, func(pl redis.Pipeliner) error {
				pl.HSet(ctx, tag+":d", rec.ID, raw)
				pl.ZAdd(ctx, tag+":due", redis.Z{Score: float64(e.now.UnixMilli()), Member: rec.ID})
				pl.ZAdd(ctx, tag+":w:"+w.ID, redis.Z{Score: float64(rec.FirstAttempt.UnixMilli()), Member: rec.ID})
				pl.SAdd(ctx, "gh:shards", shard.ShardName("geckohook.events", p))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			want[rec.ID] = string(rec.Body)
		}
	}

	e.disp, e.stop = e.startDispatcher()
	got := e.waitReceived("/old", len(want))
	for _, r := range got {
		body, ok := want[r.DeliveryID]
		if !ok || string(r.Body) != body || !r.ValidSig {
			t.Fatalf("delivery %s (known %v, valid signature %v) body %s, want %s", r.DeliveryID, ok, r.ValidSig, r.Body, body)
		}
		delete(want, r.DeliveryID)
	}
	if len(want) != 0 {
		t.Fatalf("%d migrated deliveries never arrived: %v", len(want), want)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		for p := 0; p < partitions; p++ {
			q := shard.NewQueue(e.rdb, "gh:", "geckohook.events", p)
			if n, err := q.Len(ctx); err != nil || n != 0 {
				return fmt.Errorf("partition %d holds %d scheduled (%v)", p, n, err)
			}
			if n, err := e.rdb.Exists(ctx, "gh:{"+q.Shard+"}:due", "gh:{"+q.Shard+"}:d").Result(); err != nil || n != 0 {
				return fmt.Errorf("partition %d keeps %d old-layout keys (%v)", p, n, err)
			}
		}
		return nil
	})
}
