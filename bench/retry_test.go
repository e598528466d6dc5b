package bench

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/shard"
)

// BenchmarkRetryQueue measures the retry path against one real
// redis-server: failed deliveries scheduled in pipelined batches of 512
// (as a shard's writer does), claimed under a lease in batches of 256 (as
// its poller does) and their outcomes written back (failed again:
// rescheduled), on 8 shards at once. One op is one delivery through all
// three steps.
func BenchmarkRetryQueue(b *testing.B) {
	rdb := testenv.Redis(b).Client()
	base, err := testenv.RedisCPU(context.Background(), rdb)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const shards = 8
	body := []byte(`{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"}`)
	t0 := time.UnixMilli(1_800_000_000_000)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	per := (b.N + shards - 1) / shards
	errs := make(chan error, shards)
	for p := 0; p < shards; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			q := shard.NewQueue(rdb, "gh:", "bench", p)
			for done := 0; done < per; {
				n := min(512, per-done)
				entries := make([]shard.Entry, n)
				for i := range entries {
					id := contract.DeliveryID("bench", int32(p), int64(done+i), "wh_1")
					entries[i] = shard.Entry{Due: t0, Rec: &shard.Record{ID: id, WebhookID: "wh_1", AppID: "app_1", Body: body, Attempts: 1, FirstAttempt: t0, LastStatus: 500, LastError: "HTTP 500"}}
				}
				if err := q.Schedule(ctx, entries); err != nil {
					errs <- err
					return
				}
				for claimed := 0; claimed < n; {
					recs, _, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 256)
					if err != nil {
						errs <- err
						return
					}
					if len(recs) == 0 {
						errs <- fmt.Errorf("shard %d: claimed %d of %d", p, claimed, n)
						return
					}
					ops := make([]shard.Op, len(recs))
					for i, r := range recs {
						r.Attempts++
						r.Retries++
						ops[i] = shard.Op{Kind: shard.OpReschedule, Rec: r, At: t0.Add(time.Hour)}
					}
					if err := q.Apply(ctx, ops); err != nil {
						errs <- err
						return
					}
					claimed += len(recs)
				}
				done += n
			}
		}(p)
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(per*shards)/b.Elapsed().Seconds(), "deliveries/s")
	if os.Getenv("BENCH_COMMANDSTATS") != "" && b.N > 1 {
		b.Log(rdb.Info(context.Background(), "commandstats").Val())
	}
	// Redis's own CPU per delivery: steadier than the rate on a shared
	// machine, and what decides how far one redis-server goes.
	if cpu, err := testenv.RedisCPU(context.Background(), rdb); err == nil {
		b.ReportMetric((cpu-base).Seconds()*1e6/float64(per*shards), "redis-cpu-µs/delivery")
	}
}
