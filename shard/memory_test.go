package shard

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
)

// memTopic and memBase are the names the memory measurements use: the
// dispatcher's default topic and --resource-base.
const (
	memTopic = "geckohook.events"
	memBase  = "https://api.tradegecko.com"
)

// memRecord is a realistic queued delivery after its first failure: event
// e of partition 0 to webhook hook (of the account named after it), with
// the 129-byte body of an order.create (the bench's body size).
func memRecord(e int, hook string, t0 time.Time, cat *catalog.Catalog) *Record {
	ev := contract.Event{AccountID: "acc-" + hook[len(hook)-6:], Event: "order.create",
		ObjectID: int64(100_000 + e), Timestamp: t0.Unix()}
	return &Record{
		ID: contract.DeliveryID(memTopic, 0, int64(e), hook), WebhookID: hook,
		AppID: "app_" + strings.Repeat("5e", 12), AccountID: ev.AccountID, Event: ev.Event,
		Body: contract.AppendBody(nil, &ev, memBase, cat), Attempts: 1, FirstAttempt: t0, LastAttempt: t0,
		LastStatus: 500, LastError: "connection refused", Topic: memTopic, Offset: int64(e),
	}
}

// memHooks returns n webhook ids in the registry's format.
func memHooks(n int) []string {
	hooks := make([]string, n)
	for i := range hooks {
		hooks[i] = fmt.Sprintf("wh_%024x", 0xa11ce000+i)
	}
	return hooks
}

func usedMemory(t testing.TB, rdb *redis.Client) int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no used_memory in INFO memory: %q", info)
	return 0
}

// bytesPerQueued queues events×fanout deliveries in one shard of a fresh
// redis-server (each event to fanout of 20 failing webhooks, the way the
// dispatcher's writer batches them; lastError "" keeps memRecord's) and
// returns the growth of INFO memory used_memory per queued delivery.
func bytesPerQueued(t testing.TB, events, fanout int, lastError string) float64 {
	t.Helper()
	srv := testenv.Redis(t)
	rdb := srv.Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	hooks := memHooks(20)
	t0 := time.UnixMilli(1_700_000_000_000)
	if body := memRecord(0, hooks[0], t0, cat).Body; len(body) != 129 {
		t.Fatalf("body of %d bytes, want the bench's 129: %s", len(body), body)
	}
	// The baseline has the shard's keys (and the scripts) in place already.
	if err := q.Schedule(ctx, []Entry{{Rec: memRecord(-1, hooks[0], t0, cat), Due: t0}}); err != nil {
		t.Fatal(err)
	}
	before := usedMemory(t, rdb)
	batch := make([]Entry, 0, 512)
	for e := 0; e < events; e++ {
		for k := 0; k < fanout; k++ {
			hook := hooks[(e+k)%len(hooks)]
			due := t0.Add(time.Duration(15+e%10) * time.Second)
			rec := memRecord(e, hook, t0, cat)
			if lastError != "" {
				rec.LastStatus, rec.LastError = 0, lastError
			}
			batch = append(batch, Entry{Rec: rec, Due: due})
		}
		if len(batch) >= 500 || e == events-1 {
			if err := q.Schedule(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	n, err := q.Len(ctx)
	if err != nil || n != int64(events*fanout+1) {
		t.Fatalf("%d deliveries queued (%v), want %d", n, err, events*fanout+1)
	}
	return float64(usedMemory(t, rdb)-before) / float64(events*fanout)
}

// The retry queue holds at most 250 bytes of Redis memory per queued
// delivery of a 129-byte body, whether each event failed for one webhook
// or for ten, and with the sender's own error texts.
func TestQueueMemoryPerDelivery(t *testing.T) {
	const limit = 250
	for _, c := range []struct {
		name           string
		events, fanout int
		lastError      string
	}{
		{"one webhook per event", 20_000, 1, ""},
		{"ten webhooks per event", 2_000, 10, ""},
		{"refused by the sender's dialer", 20_000, 1, "connection: dial tcp 127.0.0.1:39123: connect: connection refused"},
		{"timed out", 20_000, 1, "timeout: no answer within 10s: fasthttp: timeout"},
	} {
		got := bytesPerQueued(t, c.events, c.fanout, c.lastError)
		t.Logf("%s: %.0f bytes per queued delivery", c.name, got)
		if got > limit {
			t.Errorf("%s: %.0f bytes of Redis memory per queued delivery, want at most %d", c.name, got, limit)
		}
	}
}

// BenchmarkQueueMemory reports the Redis memory per queued delivery
// (bytes/queued) of 20,000 queued deliveries: go test -run '^$' -bench
// QueueMemory -benchtime 1x ./shard/
func BenchmarkQueueMemory(b *testing.B) {
	for _, fanout := range []int{1, 10} {
		b.Run(fmt.Sprintf("fanout=%d", fanout), func(b *testing.B) {
			var got float64
			for range b.N {
				got = bytesPerQueued(b, 20_000/fanout, fanout, "")
			}
			b.ReportMetric(got, "bytes/queued")
		})
	}
}
