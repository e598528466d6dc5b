package shard

import (
	"context"
	"fmt"
	"sort"
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

// memCase is a shape of queue to measure: events×fanout deliveries, each
// event to fanout of hooks failing webhooks, the way the dispatcher's
// writer batches them, made by rec.
type memCase struct {
	name                  string
	events, fanout, hooks int
	rec                   func(e int, hook string, t0 time.Time, cat *catalog.Catalog) *Record
}

// withError is memRecord with the last error text.
func withError(text string) func(int, string, time.Time, *catalog.Catalog) *Record {
	return func(e int, hook string, t0 time.Time, cat *catalog.Catalog) *Record {
		rec := memRecord(e, hook, t0, cat)
		rec.LastStatus, rec.LastError = 0, text
		return rec
	}
}

// outageRecord is memRecord as the outage scenario leaves it: half the
// deliveries deferred by the dispatcher without an attempt, a quarter
// refused, a quarter timed out, after a few attempts.
func outageRecord(e int, hook string, t0 time.Time, cat *catalog.Catalog) *Record {
	rec := memRecord(e, hook, t0, cat)
	rec.LastStatus = 0
	switch e % 4 {
	case 0:
		rec.LastError = fmt.Sprintf("connection: dial tcp 127.0.0.1:%d: connect: connection refused", 30000+e%40)
	case 1, 2:
		rec.LastError = hostSaturated
	default:
		rec.LastError = "timeout: no answer within 10s: fasthttp: timeout"
	}
	rec.Attempts, rec.Retries, rec.Deferrals = 1+e%3, e%3, e%2
	rec.LastAttempt = t0.Add(time.Duration(e%120) * time.Second)
	return rec
}

// bytesPerQueued queues c's deliveries in one shard of a fresh
// redis-server and returns the growth of INFO memory used_memory per
// queued delivery, and each kind of key's MEMORY USAGE and encodings.
func bytesPerQueued(t testing.TB, c memCase) (float64, string) {
	t.Helper()
	srv := testenv.Redis(t)
	rdb := srv.Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	hooks := memHooks(c.hooks)
	t0 := time.UnixMilli(1_700_000_000_000)
	if body := memRecord(0, hooks[0], t0, cat).Body; len(body) != 129 {
		t.Fatalf("body of %d bytes, want the bench's 129: %s", len(body), body)
	}
	// The baseline has the shard's keys (and the scripts) in place already.
	if err := q.Schedule(ctx, []Entry{{Rec: c.rec(-1, hooks[0], t0, cat), Due: t0}}); err != nil {
		t.Fatal(err)
	}
	before := usedMemory(t, rdb)
	batch := make([]Entry, 0, 512)
	for e := 0; e < c.events; e++ {
		for k := 0; k < c.fanout; k++ {
			hook := hooks[(e+k)%len(hooks)]
			due := t0.Add(time.Duration(15+e%600) * time.Second)
			batch = append(batch, Entry{Rec: c.rec(e, hook, t0, cat), Due: due})
		}
		if len(batch) >= 500 || e == c.events-1 {
			if err := q.Schedule(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	queued := c.events * c.fanout
	n, err := q.Len(ctx)
	if err != nil || n != int64(queued+1) {
		t.Fatalf("%d deliveries queued (%v), want %d", n, err, queued+1)
	}
	return float64(usedMemory(t, rdb)-before) / float64(queued), keyBreakdown(t, rdb, q)
}

// keyBreakdown sums MEMORY USAGE and counts OBJECT ENCODING of every key
// of q's shard, by kind (the part of the key after the tag up to ':').
func keyBreakdown(t testing.TB, rdb *redis.Client, q *Queue) string {
	t.Helper()
	ctx := context.Background()
	type group struct {
		keys, bytes int64
		enc         map[string]int
	}
	groups := map[string]*group{}
	iter := rdb.Scan(ctx, 0, q.tag+":*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		kind, _, _ := strings.Cut(strings.TrimPrefix(key, q.tag+":"), ":")
		n, err := rdb.MemoryUsage(ctx, key, 0).Result()
		if err != nil {
			t.Fatal(err)
		}
		enc, err := rdb.ObjectEncoding(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		g := groups[kind]
		if g == nil {
			g = &group{enc: map[string]int{}}
			groups[kind] = g
		}
		g.keys++
		g.bytes += n
		g.enc[enc]++
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	kinds := make([]string, 0, len(groups))
	for k := range groups {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var b strings.Builder
	for _, k := range kinds {
		g := groups[k]
		fmt.Fprintf(&b, "  %-6s %4d keys %9d bytes %v\n", k, g.keys, g.bytes, g.enc)
	}
	return b.String()
}

// The retry queue holds at most 250 bytes of Redis memory per queued
// delivery of a 129-byte body, whether each event failed for one webhook
// or for ten, with the sender's own error texts, and at the outage
// scenario's depth: 40,000 queued in one partition over 40 webhooks
// (~1,000 each), which every structure holds in its compact encoding.
func TestQueueMemoryPerDelivery(t *testing.T) {
	const limit = 250
	for _, c := range []memCase{
		{"one webhook per event", 20_000, 1, 20, memRecord},
		{"ten webhooks per event", 2_000, 10, 20, memRecord},
		{"refused by the sender's dialer", 20_000, 1, 20, withError("connection: dial tcp 127.0.0.1:39123: connect: connection refused")},
		{"timed out", 20_000, 1, 20, withError("timeout: no answer within 10s: fasthttp: timeout")},
		{"outage depth", 40_000, 1, 40, outageRecord},
	} {
		got, keys := bytesPerQueued(t, c)
		t.Logf("%s: %.0f bytes per queued delivery\n%s", c.name, got, keys)
		if got > limit {
			t.Errorf("%s: %.0f bytes of Redis memory per queued delivery, want at most %d", c.name, got, limit)
		}
		for _, kind := range []string{"q", "i"} {
			if line := kindLine(keys, kind); !strings.Contains(line, "map[listpack:") || strings.Contains(line, "skiplist") || strings.Contains(line, "hashtable") {
				t.Errorf("%s: %s keys not all listpacks: %s", c.name, kind, line)
			}
		}
	}
}

// kindLine is keyBreakdown's line of a kind of key.
func kindLine(breakdown, kind string) string {
	for _, l := range strings.Split(breakdown, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == kind {
			return l
		}
	}
	return ""
}

// BenchmarkQueueMemory reports the Redis memory per queued delivery
// (bytes/queued) of 20,000 queued deliveries: go test -run '^$' -bench
// QueueMemory -benchtime 1x ./shard/
func BenchmarkQueueMemory(b *testing.B) {
	for _, fanout := range []int{1, 10} {
		b.Run(fmt.Sprintf("fanout=%d", fanout), func(b *testing.B) {
			var got float64
			for range b.N {
				got, _ = bytesPerQueued(b, memCase{"", 20_000 / fanout, fanout, 20, memRecord})
			}
			b.ReportMetric(got, "bytes/queued")
		})
	}
}
