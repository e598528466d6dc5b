package shard

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/internal/testenv"
)

// Whatever mix of schedules, claims, outcomes, quarantines and replays a
// shard sees, its chunk bookkeeping matches its chunks: every chunk holds
// 1 to 128 members and is in the chunk index, each webhook's state counts
// its chunks and names none past the one being filled, a webhook has
// metadata exactly while it has chunks, and every index entry names the
// chunk that holds its delivery.
func TestChunkBookkeepingHolds(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	hooks := memHooks(3)
	t0 := time.UnixMilli(1_700_000_000_000)
	now := t0
	e := 0
	maxChunks := map[string]int{}
	for round := 0; round < 24; round++ {
		var entries []Entry
		for range rng.IntN(300) {
			entries = append(entries, Entry{Rec: outageRecord(e, hooks[rng.IntN(3)], t0, cat), Due: now.Add(time.Duration(rng.IntN(60)) * time.Second)})
			e++
		}
		if err := q.Schedule(ctx, entries); err != nil {
			t.Fatal(err)
		}
		observeChunks(t, rdb, q, maxChunks)
		now = now.Add(30 * time.Second)
		recs, _, _, err := q.Claim(ctx, now, now.Add(time.Minute), 1+rng.IntN(256))
		if err != nil {
			t.Fatal(err)
		}
		var ops []Op
		var dead []string
		for _, r := range recs {
			switch rng.IntN(4) {
			case 0, 1:
				ops = append(ops, Op{Kind: OpRemove, Rec: r})
			case 2:
				r.Attempts++
				ops = append(ops, Op{Kind: OpReschedule, Rec: r, At: now.Add(time.Duration(rng.IntN(90)) * time.Second)})
			default:
				ops = append(ops, Op{Kind: OpKill, Rec: r, At: now})
				dead = append(dead, r.ID)
			}
		}
		if err := q.Apply(ctx, ops); err != nil {
			t.Fatal(err)
		}
		if round%7 == 3 {
			if _, err := q.Revive(ctx, dead, now); err != nil {
				t.Fatal(err)
			}
			observeChunks(t, rdb, q, maxChunks)
		}
		checkChunks(t, rdb, q, maxChunks)
	}
	// Drained, nothing is left of it.
	for {
		recs, _, next, err := q.Claim(ctx, now.Add(time.Hour), now.Add(2*time.Hour), 256)
		if err != nil {
			t.Fatal(err)
		}
		var ops []Op
		for _, r := range recs {
			ops = append(ops, Op{Kind: OpRemove, Rec: r})
		}
		if err := q.Apply(ctx, ops); err != nil {
			t.Fatal(err)
		}
		if next.IsZero() {
			break
		}
	}
	checkChunks(t, rdb, q, maxChunks)
	if n, err := rdb.Exists(ctx, q.ChunksKey, q.statesKey, q.metaKey, q.tag+":qh").Result(); err != nil || n != 0 {
		t.Fatalf("%d of the chunk index, states, metadata and webhook index left on a drained shard (%v)", n, err)
	}
}

// observeChunks returns how many chunks each webhook has, and keeps in
// maxChunks the most each has had at once.
func observeChunks(t *testing.T, rdb *redis.Client, q *Queue, maxChunks map[string]int) map[string]int {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), q.tag+":q:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]int{}
	for _, key := range keys {
		hook, _, _ := strings.Cut(strings.TrimPrefix(key, q.tag+":q:"), ":")
		live[hook]++
		maxChunks[hook] = max(maxChunks[hook], live[hook])
	}
	return live
}

// checkChunks fails unless q's chunk bookkeeping matches its chunks;
// maxChunks keeps the most chunks each webhook has had at once.
func checkChunks(t *testing.T, rdb *redis.Client, q *Queue, maxChunks map[string]int) {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, q.tag+":q:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	live := observeChunks(t, rdb, q, maxChunks)
	for _, key := range keys {
		chunk := strings.TrimPrefix(key, q.tag+":q:")
		hook, c, _ := strings.Cut(chunk, ":")
		if n, _ := rdb.ZCard(ctx, key).Result(); n < 1 || n > chunkSize {
			t.Fatalf("chunk %s holds %d", chunk, n)
		}
		// Due times in the indexes are never later than the truth, or
		// the poller sleeps past due deliveries.
		first, _ := rdb.ZRangeWithScores(ctx, key, 0, 0).Result()
		min, err := rdb.ZScore(ctx, q.ChunksKey, chunk).Result()
		if err != nil {
			t.Fatalf("chunk %s not in the chunk index: %v", chunk, err)
		}
		if hmin, err := rdb.ZScore(ctx, q.tag+":qh", hook).Result(); err != nil || hmin > min || min > first[0].Score {
			t.Fatalf("chunk %s: earliest %v, %v in the chunk index, %v in the webhook index (%v)", chunk, first[0].Score, min, hmin, err)
		}
		st, _ := rdb.HGet(ctx, q.statesKey, hook).Result()
		var tail, count, hi int
		if _, err := fmt.Sscanf(st, "%d %d %d", &tail, &count, &hi); err != nil {
			t.Fatalf("webhook %s state %q: %v", hook, st, err)
		}
		if n, err := strconv.Atoi(c); err != nil || n > hi || hi > 2*maxChunks[hook]+1 {
			t.Fatalf("chunk %s past the highest, %d, or that past twice the most chunks %d (%v)", chunk, hi, maxChunks[hook], err)
		}
	}
	if n, _ := rdb.ZCard(ctx, q.ChunksKey).Result(); int(n) != len(keys) {
		t.Fatalf("chunk index holds %d, %d chunks exist", n, len(keys))
	}
	states, _ := rdb.HGetAll(ctx, q.statesKey).Result()
	metas, _ := rdb.HGetAll(ctx, q.metaKey).Result()
	hooked, _ := rdb.ZCard(ctx, q.tag+":qh").Result()
	if len(states) != len(live) || len(metas) != len(live) || int(hooked) != len(live) {
		t.Fatalf("%d states, %d metadata and %d in the webhook index for %d webhooks with chunks", len(states), len(metas), hooked, len(live))
	}
	for hook, n := range live {
		var tail, count, hi int
		if _, err := fmt.Sscanf(states[hook], "%d %d %d", &tail, &count, &hi); err != nil || count != n {
			t.Fatalf("webhook %s: state %q counts %d chunks, %d exist", hook, states[hook], count, n)
		}
	}
	var indexed int
	for b := 0; b < 256; b++ {
		entries, _ := rdb.HGetAll(ctx, fmt.Sprintf("%s:i:%02x", q.tag, b)).Result()
		for pid, ix := range entries {
			hook, _, chunk, ok := parseIndexValue(ix)
			if !ok || chunk == "" {
				t.Fatalf("index entry %x: %q", pid, ix)
			}
			if n, _ := rdb.ZCard(ctx, q.chunkKey(hook, chunk)).Result(); n == 0 {
				t.Fatalf("index entry %x names chunk %s:%s, which is empty", pid, hook, chunk)
			}
			indexed++
		}
	}
	if n, _ := q.Len(ctx); int(n) != indexed {
		t.Fatalf("%d scheduled, %d in the id index", n, indexed)
	}
}

// A webhook whose chunk state was lost (it counts fewer chunks than
// exist) still gets its deliveries placed, in chunks of at most 128,
// without a script that searches for a free chunk forever.
func TestLostChunkStateDoesNotHang(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	hook := memHooks(1)[0]
	t0 := time.UnixMilli(1_700_000_000_000)
	schedule := func(from, to int) {
		t.Helper()
		var entries []Entry
		for e := from; e < to; e++ {
			entries = append(entries, Entry{Rec: memRecord(e, hook, t0, cat), Due: t0})
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := q.Schedule(sctx, entries); err != nil {
			t.Fatal(err)
		}
	}
	schedule(0, 4*chunkSize)
	if err := rdb.HSet(ctx, q.statesKey, hook, "3 1 3").Err(); err != nil {
		t.Fatal(err)
	}
	schedule(4*chunkSize, 6*chunkSize)
	keys, err := rdb.Keys(ctx, q.tag+":q:*").Result()
	if err != nil || len(keys) != 6 {
		t.Fatalf("%d chunks (%v), want 6", len(keys), err)
	}
	for _, key := range keys {
		if n, _ := rdb.ZCard(ctx, key).Result(); n != chunkSize {
			t.Fatalf("chunk %s holds %d, want %d", key, n, chunkSize)
		}
	}
	for _, e := range []int{0, 4 * chunkSize, 6*chunkSize - 1} {
		if _, _, err := q.Get(ctx, memRecord(e, hook, t0, cat).ID); err != nil {
			t.Fatalf("delivery %d: %v", e, err)
		}
	}
}

// DueBy makes every scheduled delivery due by the time given, across every
// chunk of every webhook, and leaves earlier ones as they were: a claim at
// that time then finds them all.
func TestDueByMakesTheQueueOverdue(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	hooks := memHooks(2)
	t0 := time.UnixMilli(1_700_000_000_000)
	var entries []Entry
	for e := range 300 { // the first webhook fills more than one chunk
		entries = append(entries, Entry{Rec: outageRecord(e, hooks[e%3/2], t0, cat), Due: t0.Add(time.Hour + time.Duration(e)*time.Second)})
	}
	early := outageRecord(300, hooks[1], t0, cat)
	entries = append(entries, Entry{Rec: early, Due: t0.Add(time.Second)})
	if err := q.Schedule(ctx, entries); err != nil {
		t.Fatal(err)
	}
	maxChunks := map[string]int{}
	observeChunks(t, rdb, q, maxChunks)
	at := t0.Add(time.Minute)
	moved, err := q.DueBy(ctx, at)
	if err != nil || moved != 300 {
		t.Fatalf("DueBy moved %d (%v), want 300", moved, err)
	}
	checkChunks(t, rdb, q, maxChunks) // no chunk nor webhook due later than its earliest member
	if _, due, err := q.Get(ctx, early.ID); err != nil || !due.Equal(t0.Add(time.Second)) {
		t.Fatalf("the delivery due before: now due %v (%v), want it kept", due, err)
	}
	recs, _, _, err := q.Claim(ctx, at, at.Add(time.Minute), 1000)
	if err != nil || len(recs) != 301 {
		t.Fatalf("after DueBy, a claim at that time took %d (%v), want 301", len(recs), err)
	}
}

// Outcomes under leases keep the bookkeeping too, and lose nothing: with
// claims small enough to reach webhooks through the webhook index, some
// outcomes refused by a lease that moved (an extension, DueBy and a
// claim again), every delivery given no outcome that took effect stays
// scheduled and a drain claims it.
func TestChunkBookkeepingHoldsUnderLeases(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	rng := rand.New(rand.NewPCG(3, 4))
	hooks := memHooks(20)
	t0 := time.UnixMilli(1_700_000_000_000)
	now := t0
	maxChunks := map[string]int{}
	live := map[string]bool{} // scheduled, and no outcome removed it
	type claimed struct {
		rec *Record
		end time.Time
	}
	var flight []claimed
	refusals := 0
	for round, e := 0, 0; round < 40; round++ {
		var entries []Entry
		for range rng.IntN(200) {
			rec := outageRecord(e, hooks[min(rng.IntN(25), 19)], t0, cat)
			entries = append(entries, Entry{Rec: rec, Due: now.Add(time.Duration(rng.IntN(120)-30) * time.Second)})
			live[rec.ID] = true
			e++
		}
		if err := q.Schedule(ctx, entries); err != nil {
			t.Fatal(err)
		}
		observeChunks(t, rdb, q, maxChunks)
		now = now.Add(time.Duration(rng.IntN(40)) * time.Second)
		switch rng.IntN(4) {
		case 0:
			if _, err := q.DueBy(ctx, now); err != nil {
				t.Fatal(err)
			}
		case 1:
			end := now.Add(time.Minute)
			var ls []Lease
			for i := range flight {
				if rng.IntN(2) == 0 {
					ls = append(ls, flight[i].rec.Lease(flight[i].end))
					flight[i].end = end
				}
			}
			if err := q.Extend(ctx, ls, end); err != nil {
				t.Fatal(err)
			}
		}
		leaseEnd := now.Add(time.Minute)
		recs, _, _, err := q.Claim(ctx, now, leaseEnd, 1+rng.IntN(40))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			flight = append(flight, claimed{r, leaseEnd})
		}
		var ops []Op
		keep := flight[:0]
		for _, c := range flight {
			if rng.IntN(3) == 0 {
				keep = append(keep, c)
				continue
			}
			l := c.rec.Lease(c.end)
			if rng.IntN(8) == 0 {
				l.End = c.end.Add(-time.Hour) // a lease that moved since
			}
			switch rng.IntN(4) {
			case 0, 1:
				ops = append(ops, Op{Kind: OpRemove, Rec: c.rec, Lease: l})
			case 2:
				r := *c.rec
				r.Attempts++
				ops = append(ops, Op{Kind: OpReschedule, Rec: &r, At: now.Add(time.Duration(rng.IntN(90)-20) * time.Second), Lease: l})
			default:
				ops = append(ops, Op{Kind: OpKill, Rec: c.rec, At: now, Lease: l})
			}
		}
		flight = keep
		refused, err := q.ApplyHeld(ctx, ops)
		if err != nil {
			t.Fatal(err)
		}
		refusals += len(refused)
		for _, op := range ops {
			if op.Kind == OpReschedule {
				continue
			}
			if _, _, err := q.Get(ctx, op.Rec.ID); errors.Is(err, ErrNotFound) {
				delete(live, op.Rec.ID)
			}
		}
		if round%10 == 9 {
			checkChunks(t, rdb, q, maxChunks)
		}
	}
	if refusals == 0 {
		t.Fatal("no outcome was refused by its lease: the test tried nothing")
	}
	drained := map[string]bool{}
	at := now.Add(24 * time.Hour)
	for claims := 0; ; claims++ {
		if claims > len(live)+100 {
			t.Fatalf("%d claims have not drained the shard", claims)
		}
		recs, _, next, err := q.Claim(ctx, at, at.Add(time.Hour), 1+rng.IntN(50))
		if err != nil {
			t.Fatal(err)
		}
		var ops []Op
		for _, r := range recs {
			drained[r.ID] = true
			ops = append(ops, Op{Kind: OpRemove, Rec: r})
		}
		if err := q.Apply(ctx, ops); err != nil {
			t.Fatal(err)
		}
		if next.IsZero() {
			break
		}
		if len(recs) == 0 && !next.After(at) {
			t.Fatalf("a claim at %v found nothing, yet the earliest left is due %v", at, next)
		}
	}
	for id := range live {
		if !drained[id] {
			t.Fatalf("delivery %s, given no outcome that took effect, was never claimed", id)
		}
	}
	checkChunks(t, rdb, q, maxChunks)
	if n, err := rdb.Exists(ctx, q.ChunksKey, q.statesKey, q.metaKey, q.tag+":qh").Result(); err != nil || n != 0 {
		t.Fatalf("%d of the chunk index, states, metadata and webhook index left on a drained shard (%v)", n, err)
	}
}
