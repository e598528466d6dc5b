package bench

import (
	"context"
	"runtime"
	"strconv"
	"testing"

	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
)

// BenchmarkRegistryMemory reports the heap each registered webhook costs in
// the in-memory registry every process keeps (100,000 webhooks loaded from a
// real redis-server).
func BenchmarkRegistryMemory(b *testing.B) {
	const hooks = 100_000
	srv := testenv.Redis(b)
	ctx := context.Background()
	rdb := srv.Client()
	names := cat.Names()
	seededRegistry(b, rdb, hooks, func(i int) registry.Webhook {
		return registry.Webhook{AccountID: "account-" + strconv.Itoa(i/3), Event: names[i%len(names)], Address: "https://hooks.example.com/geckohook/" + strconv.Itoa(i)}
	})
	b.ResetTimer()
	var perHook float64
	for n := 0; n < b.N; n++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := registry.New(rdb, registry.Options{ReloadEvery: -1})
		if err := r.Reload(ctx); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if _, got := r.Counts(); got != hooks {
			b.Fatalf("loaded %d webhooks", got)
		}
		perHook = float64(after.HeapAlloc-before.HeapAlloc) / hooks
		runtime.KeepAlive(r)
	}
	b.ReportMetric(perHook, "bytes/webhook")
}
