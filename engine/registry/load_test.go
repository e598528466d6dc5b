package registry

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/geckohook/geckohook/internal/testenv"
)

// loadEvents are the events the synthetic webhooks subscribe to.
var loadEvents = []string{"order.create", "order.finalized", "order.fulfilled", "invoice.create",
	"product.create", "variant.stock_level_update", "fulfillment.create", "payment.create"}

// synthetic returns n webhooks of 10 applications the way a big
// deployment looks: account i has 1 + i%10 webhooks, each for another
// event, addressed to one of 50 hosts with a path of its own.
func synthetic(n int) []Webhook {
	hooks := make([]Webhook, 0, n)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for acc := 0; len(hooks) < n; acc++ {
		for k := 0; k < 1+acc%10 && len(hooks) < n; k++ {
			i := len(hooks)
			hooks = append(hooks, Webhook{
				ID:        fmt.Sprintf("wh_%024x", i),
				AppID:     fmt.Sprintf("app_%024x", acc%10),
				AccountID: "acc-" + strconv.Itoa(acc),
				Event:     loadEvents[k%len(loadEvents)],
				Address:   fmt.Sprintf("https://hooks-%d.example.com/geckohook/%d", i%50, i),
				CreatedAt: created.Add(time.Duration(i) * time.Second),
			})
		}
	}
	return hooks
}

// heapAlloc is the live heap after a full collection.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// loadFigures loads n synthetic webhooks from a real redis-server into a
// fresh Registry and returns how long Reload took and the live heap it
// grew by per webhook.
func loadFigures(tb testing.TB, n int) (took time.Duration, perHook float64) {
	tb.Helper()
	srv := testenv.Redis(tb)
	ctx := context.Background()
	w := New(srv.Client(), Options{})
	if err := w.Import(ctx, synthetic(n)); err != nil {
		tb.Fatal(err)
	}
	rdb := srv.Client()
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		tb.Fatal(err)
	}
	base := heapAlloc()
	r := New(rdb, Options{})
	start := time.Now()
	if err := r.Reload(ctx); err != nil {
		tb.Fatal(err)
	}
	took = time.Since(start)
	after := heapAlloc()
	if _, got := r.Counts(); got != n {
		tb.Fatalf("loaded %d webhooks, want %d", got, n)
	}
	// REGISTRY_HEAP_PROFILE=file saves a heap profile of the loaded
	// registry (go tool pprof -sample_index=inuse_space -top file).
	if f := os.Getenv("REGISTRY_HEAP_PROFILE"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			tb.Fatal(err)
		}
		_ = pprof.WriteHeapProfile(out)
		_ = out.Close()
	}
	runtime.KeepAlive(r)
	return took, float64(int64(after)-int64(base)) / float64(n)
}

func TestRegistryHeapPerWebhook(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 50,000 webhooks")
	}
	took, per := loadFigures(t, 50_000)
	t.Logf("50,000 webhooks: loaded in %s, %.0f heap bytes per webhook", took, per)
	if per > 300 {
		t.Errorf("%.0f heap bytes per webhook, want at most 300", per)
	}
}

// BenchmarkRegistryLoad reports the load time and heap per webhook of a
// registry of 200,000 and 1,000,000 webhooks (go test -run '^$'
// -bench RegistryLoad -benchtime 1x ./engine/registry).
func BenchmarkRegistryLoad(b *testing.B) {
	for _, n := range []int{200_000, 1_000_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			var took time.Duration
			var per float64
			for range b.N {
				var t time.Duration
				t, per = loadFigures(b, n)
				took += t
			}
			b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "load-ms")
			b.ReportMetric(per, "heap-B/webhook")
		})
	}
}
