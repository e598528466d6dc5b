package shard

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/internal/testenv"
)

// Every queue operation works on a Redis Cluster: each shard's keys share
// one hash tag (no CROSSSLOT from the scripts and transactions), and the
// store's reads span shards that live on different nodes.
func TestQueueOnRedisCluster(t *testing.T) {
	addrs := testenv.RedisCluster(t, 3)
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: addrs})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	st := NewStore(rdb, "gh:")
	t0 := time.UnixMilli(1_700_000_000_000)
	const shards = 8 // spread over the three nodes' slots
	nodes := map[string]bool{}
	cc := rdb.(*redis.ClusterClient)
	for p := 0; p < shards; p++ {
		if err := st.Register(ctx, "ev", p); err != nil {
			t.Fatal(err)
		}
		q := NewQueue(rdb, "gh:", "ev", p)
		node, err := cc.MasterForKey(ctx, q.ChunksKey)
		if err != nil {
			t.Fatal(err)
		}
		nodes[node.Options().Addr] = true
		recs := []Entry{
			{Rec: &Record{ID: q.Shard + "-live", WebhookID: "wh_1", FirstAttempt: t0}, Due: t0},
			{Rec: &Record{ID: q.Shard + "-dead", WebhookID: "wh_1", FirstAttempt: t0}, Due: t0, Dead: true},
		}
		if err := q.Schedule(ctx, recs); err != nil {
			t.Fatal(err)
		}
		// Deliveries queued by the layout before the compact one and by
		// the one before chunks move.
		oldSchedule(t, rdb, q, &Record{ID: q.Shard + "-old", WebhookID: "wh_2", FirstAttempt: t0}, t0.Add(time.Hour))
		unchunkedSchedule(t, rdb, q, &Record{ID: q.Shard + "-unchunked", WebhookID: "wh_3", FirstAttempt: t0}, t0.Add(time.Hour))
		if n, err := q.Migrate(ctx, t0); err != nil || n != 2 {
			t.Fatalf("migration on shard %d: %d moved, %v", p, n, err)
		}
		if n, err := q.Len(ctx); err != nil || n != 3 {
			t.Fatalf("shard %d holds %d scheduled (%v), want 3", p, n, err)
		}
		claimed, bad, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 10)
		if err != nil || len(claimed) != 1 || len(bad) != 0 {
			t.Fatalf("claim on shard %d: %d claimed, %d bad, %v", p, len(claimed), len(bad), err)
		}
		lease := []Lease{claimed[0].Lease(t0.Add(time.Minute))}
		if err := q.Extend(ctx, lease, t0.Add(2*time.Minute)); err != nil {
			t.Fatal(err)
		}
		lease[0].End = t0.Add(2 * time.Minute)
		if err := q.Release(ctx, lease, t0); err != nil {
			t.Fatal(err)
		}
		if again, _, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 10); err != nil || len(again) != 1 {
			t.Fatalf("claim after release on shard %d: %d, %v", p, len(again), err)
		}
		claimed[0].Retries = 1
		if err := q.Apply(ctx, []Op{{Kind: OpReschedule, Rec: claimed[0], At: t0.Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
		if ok, err := q.RetryNow(ctx, claimed[0], t0); err != nil || !ok {
			t.Fatalf("retry now on shard %d: %v %v", p, ok, err)
		}
		if err := q.Quarantine(ctx, Bad{Hook: "wh_1", member: "missing"}, t0); err != nil {
			t.Fatal(err)
		}
	}
	if len(nodes) < 2 {
		t.Fatalf("the shards' keys landed on %d node(s); the test needs them spread", len(nodes))
	}
	live, err := st.List(ctx, "wh_1", Scheduled, 100)
	if err != nil || len(live) != shards {
		t.Fatalf("scheduled across the cluster: %d, %v; want %d", len(live), err, shards)
	}
	if d, _, err := st.Find(ctx, "ev-5-dead"); err != nil || d.State != Dead {
		t.Fatalf("find a dead delivery across the cluster: %+v %v", d, err)
	}
	if d, _, err := st.Find(ctx, "ev-6-live"); err != nil || d.State != Scheduled || d.ID != "ev-6-live" {
		t.Fatalf("find a scheduled delivery across the cluster: %+v %v", d, err)
	}
	n, err := st.ReviveWebhook(ctx, "wh_1", t0)
	if err != nil || n != shards {
		t.Fatalf("replayed %d across the cluster, %v; want %d", n, err, shards)
	}
	live, _ = st.List(ctx, "wh_1", Scheduled, 100)
	if len(live) != 2*shards {
		t.Fatalf("after replay %d scheduled, want %d", len(live), 2*shards)
	}
	for p := 0; p < shards; p++ {
		q := NewQueue(rdb, "gh:", "ev", p)
		var ops []Op
		for _, id := range []string{q.Shard + "-live", q.Shard + "-dead"} {
			ops = append(ops, Op{Kind: OpKill, Rec: &Record{ID: id, WebhookID: "wh_1"}, At: t0})
		}
		if err := q.Apply(ctx, ops); err != nil {
			t.Fatal(err)
		}
		if n, _ := q.DeadLen(ctx); n != 2 {
			t.Fatalf("shard %d dead set holds %d, want 2", p, n)
		}
	}
}
