package shard

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
)

// BenchmarkClaimDeepBacklog claims 256 at a time from one webhook whose
// backlog of 64,000 (500 chunks) falls due at random times, as a dead
// host's deferred deliveries do; each claimed delivery is deferred again
// to a random time in the same hour, outside the timer. It reports the
// claim script's Redis time per claim (from SLOWLOG, which logs every
// command here).
func BenchmarkClaimDeepBacklog(b *testing.B) {
	rdb := testenv.Redis(b).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	rng := rand.New(rand.NewPCG(5, 6))
	due := func() time.Time { return t0.Add(time.Duration(rng.IntN(3600_000)) * time.Millisecond) }
	const backlog = 64_000
	for i := 0; i < backlog; i += 1000 {
		var entries []Entry
		for j := i; j < i+1000; j++ {
			entries = append(entries, Entry{Rec: &Record{ID: fmt.Sprintf("d-%06d", j), WebhookID: "wh_dead", FirstAttempt: t0}, Due: due()})
		}
		if err := q.Schedule(ctx, entries); err != nil {
			b.Fatal(err)
		}
	}
	now := t0.Add(2 * time.Hour)
	for _, kv := range [][2]string{{"slowlog-log-slower-than", "0"}, {"slowlog-max-len", "100000"}} {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			b.Fatal(err)
		}
	}
	if err := rdb.Do(ctx, "SLOWLOG", "RESET").Err(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		recs, _, _, err := q.Claim(ctx, now, now.Add(time.Hour), 256)
		if err != nil || len(recs) != 256 {
			b.Fatalf("claim: %d, %v", len(recs), err)
		}
		b.StopTimer()
		ops := make([]Op, len(recs))
		for k, r := range recs {
			ops[k] = Op{Kind: OpReschedule, Rec: r, At: due()}
		}
		if err := q.Apply(ctx, ops); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(scriptMicros(b, rdb, claimScript.Hash())/float64(b.N), "redis-µs/claim")
}

// scriptCommands sums the calls of an INFO commandstats reply but those
// of the scripts themselves and of the benchmark's own commands: the
// commands the scripts ran.
func scriptCommands(stats string) int {
	n := 0
	for _, line := range strings.Split(stats, "\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		switch name {
		case "evalsha", "eval", "info", "config|resetstat", "config|set", "slowlog|reset":
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		c, _ := strconv.Atoi(calls)
		n += c
	}
	return n
}

// scriptMicros sums the Redis time of the script calls in rdb's SLOWLOG.
func scriptMicros(b *testing.B, rdb *redis.Client, sha string) float64 {
	b.Helper()
	logs, err := rdb.SlowLogGet(context.Background(), -1).Result()
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for _, l := range logs {
		if len(l.Args) > 1 && l.Args[0] == "evalsha" && l.Args[1] == sha {
			total += l.Duration
		}
	}
	return float64(total.Microseconds())
}

// BenchmarkQuarantineLostID quarantines a member whose stored id cannot
// be read in a shard of 100,000 scheduled deliveries (every index bucket
// a listpack), which has Quarantine read the whole id index to find its
// entry. One op is one quarantine; putting the member back is outside the
// timer.
func BenchmarkQuarantineLostID(b *testing.B) {
	rdb := testenv.Redis(b).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	const scheduled = 100_000
	for i := 0; i < scheduled; i += 1000 {
		var entries []Entry
		for j := i; j < i+1000; j++ {
			entries = append(entries, Entry{Rec: &Record{ID: fmt.Sprintf("d-%06d", j), WebhookID: fmt.Sprintf("wh_%d", j%40), Offset: int64(j), FirstAttempt: t0}, Due: t0.Add(time.Hour)})
		}
		if err := q.Schedule(ctx, entries); err != nil {
			b.Fatal(err)
		}
	}
	rec := &Record{ID: "lost-id", WebhookID: "wh_0", Offset: 1, FirstAttempt: t0}
	member, _ := q.memberOf(rec)
	cut := member[:strings.Index(member, rec.ID)+2] // inside its stored id
	pid := packedID(rec.ID)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
			b.Fatal(err)
		}
		got, _, err := q.Get(ctx, rec.ID)
		if err != nil {
			b.Fatal(err)
		}
		key := q.chunkKey(rec.WebhookID, got.chunk)
		if err := rdb.ZRem(ctx, key, got.member).Err(); err != nil {
			b.Fatal(err)
		}
		if err := rdb.ZAdd(ctx, key, redis.Z{Score: ms(t0), Member: cut}).Err(); err != nil {
			b.Fatal(err)
		}
		bad := q.badMember(rec.WebhookID, got.chunk, cut)
		if bad.pid != "" {
			b.Fatal("the member's id was read: the case under test needs it unreadable")
		}
		b.StartTimer()
		if err := q.Quarantine(ctx, bad, t0); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if n, _ := rdb.HExists(ctx, q.indexKey(pid), pid).Result(); n {
			b.Fatal("the index entry was left")
		}
		b.StartTimer()
	}
}

// BenchmarkDrain takes an overdue backlog out of one shard as a dispatcher
// does once failing hosts are back (the capacity suite's outage
// scenario): 40 webhooks' failed deliveries (contract bodies, derived
// ids, a connection error), made due at once by DueBy, claimed 256 at a
// time under a lease, up to 1,024 in flight (a shard's retry window),
// and removed as delivered, under that lease, 192 at a time (what the
// writer found waiting in the outage scenario's drain: 52,819 outcomes
// in 272 batches) in random order (answers come back in no order).
// One op is one delivery claimed and removed; scheduling the backlog is
// outside the timer. It reports Redis's CPU and this process's CPU per
// delivery, and the claim and outcome scripts' Redis time per delivery
// (from SLOWLOG, which logs every command here). claim=32 claims 32 at a
// time instead, as a poller that claims whenever a few slots are free
// does; BENCH_COMMANDSTATS=1 logs Redis's command counts.
func BenchmarkDrain(b *testing.B) {
	for _, claim := range []int{256, 32} {
		b.Run(fmt.Sprintf("claim=%d", claim), func(b *testing.B) { benchDrain(b, claim) })
	}
}

// outcomeBatch is how many outcomes BenchmarkDrain writes at a time.
const outcomeBatch = 192

func benchDrain(b *testing.B, claim int) {
	rdb := testenv.Redis(b).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	rng := rand.New(rand.NewPCG(7, 8))
	const hooks = 40
	for i := 0; i < b.N; i += 1000 {
		var entries []Entry
		for off := i; off < min(i+1000, b.N); off++ {
			hook := fmt.Sprintf("wh_%024x", off%hooks)
			ev := contract.Event{Event: "order.create", ObjectID: int64(1_000_000 + off), Timestamp: t0.Unix(),
				ResourceURL: "https://api.tradegecko.com/orders/" + strconv.Itoa(1_000_000+off) + ".json"}
			due := t0.Add(3*time.Hour + time.Duration(rng.IntN(3600_000))*time.Millisecond)
			entries = append(entries, Entry{Due: due, Rec: &Record{
				ID: contract.DeliveryID("ev", 0, int64(off), hook), WebhookID: hook, AppID: "app_1", AccountID: "acct_1",
				Event: ev.Event, Body: contract.AppendBody(nil, &ev, "", nil), Attempts: 2, Retries: 1,
				FirstAttempt: t0, LastAttempt: t0.Add(20 * time.Second), Topic: "ev", Offset: int64(off),
				LastError: "connection: dial tcp 10.0.0.1:443: connect: connection refused"}})
		}
		if err := q.Schedule(ctx, entries); err != nil {
			b.Fatal(err)
		}
	}
	now := t0.Add(2 * time.Hour)
	if moved, err := q.DueBy(ctx, now.Add(-time.Minute)); err != nil || moved != int64(b.N) {
		b.Fatalf("%d of %d made due (%v)", moved, b.N, err)
	}
	for _, kv := range [][2]string{{"slowlog-log-slower-than", "0"}, {"slowlog-max-len", "1000000"}} {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			b.Fatal(err)
		}
	}
	if err := rdb.Do(ctx, "SLOWLOG", "RESET").Err(); err != nil {
		b.Fatal(err)
	}
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	redisBase, err := testenv.RedisCPU(ctx, rdb)
	if err != nil {
		b.Fatal(err)
	}
	ownBase := testenv.OwnCPU()
	b.ReportAllocs()
	b.ResetTimer()
	leaseEnd := now.Add(time.Minute)
	ops := make([]Op, 0, outcomeBatch)
	var flight []*Record
	for claimed := 0; claimed < b.N || len(flight) > 0; {
		if claimed < b.N && len(flight) <= 1024-claim {
			recs, bad, _, err := q.Claim(ctx, now, leaseEnd, claim)
			if err != nil || len(bad) != 0 || len(recs) == 0 {
				b.Fatalf("claim after %d of %d: %d records, %d unreadable, %v", claimed, b.N, len(recs), len(bad), err)
			}
			flight, claimed = append(flight, recs...), claimed+len(recs)
			continue
		}
		ops = ops[:0]
		for range min(outcomeBatch, len(flight)) {
			k := rng.IntN(len(flight))
			r := flight[k]
			flight[k] = flight[len(flight)-1]
			flight = flight[:len(flight)-1]
			ops = append(ops, Op{Kind: OpRemove, Rec: r, Lease: r.Lease(leaseEnd)})
		}
		if err := q.Apply(ctx, ops); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	own := testenv.OwnCPU() - ownBase
	redisCPU, err := testenv.RedisCPU(ctx, rdb)
	if err != nil {
		b.Fatal(err)
	}
	if left, err := q.Len(ctx); err != nil || left != 0 {
		b.Fatalf("%d deliveries left after the drain (%v)", left, err)
	}
	stats := rdb.Info(ctx, "commandstats").Val()
	if os.Getenv("BENCH_COMMANDSTATS") != "" && b.N > 1 {
		b.Log(stats)
	}
	n := float64(b.N)
	b.ReportMetric(float64(scriptCommands(stats))/n, "redis-cmds/delivery")
	b.ReportMetric((redisCPU-redisBase).Seconds()*1e6/n, "redis-cpu-µs/delivery")
	b.ReportMetric(own.Seconds()*1e6/n, "client-cpu-µs/delivery")
	b.ReportMetric(scriptMicros(b, rdb, claimScript.Hash())/n, "claim-µs/delivery")
	b.ReportMetric(scriptMicros(b, rdb, applyScript.Hash())/n, "apply-µs/delivery")
}
