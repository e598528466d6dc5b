package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/internal/testenv"
)

// oldSchedule is the writer of the layout before the compact one: the id
// in tag:due, the msgpack record in tag:d, the id in tag:w:<webhook>.
func oldSchedule(t *testing.T, rdb redis.UniversalClient, q *Queue, rec *Record, due time.Time) {
	t.Helper()
	raw, err := msgpack.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSetNX(ctx, q.tag+":d", rec.ID, raw)
		p.ZAddNX(ctx, q.tag+":due", redis.Z{Score: ms(due), Member: rec.ID})
		p.ZAddNX(ctx, q.tag+":w:"+rec.WebhookID, redis.Z{Score: ms(rec.FirstAttempt), Member: rec.ID})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A queue written in the old layout is moved to the compact one with every
// delivery's id, record and due time (a lease end included); an unreadable
// record goes to the dead set as it is, and the dead set is left alone.
func TestMigrateMovesTheOldLayout(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000).UTC()
	hooks := memHooks(3)
	var wants []migrated
	for e := 0; e < 300; e++ {
		rec := memRecord(e, hooks[e%3], t0, cat)
		rec.Attempts, rec.Retries, rec.LastAttempt = 1+e%5, e%5, t0.Add(time.Duration(e)*time.Second)
		wants = append(wants, migrated{rec, t0.Add(time.Duration(e) * time.Minute)})
	}
	// A body of another shape, an id geckohook did not derive, a retry
	// after the receiver's Retry-After, and one claimed by a process that
	// ran the old version (its score is the lease end, +30 s).
	odd := memRecord(1000, hooks[0], t0, cat)
	odd.Body, odd.ID, odd.RetryAfter, odd.LastStatus, odd.LastError = []byte("not json"), "custom-id", true, 503, "HTTP 503"
	wants = append(wants, migrated{odd, t0.Add(time.Hour)})
	wants = append(wants, migrated{memRecord(1001, hooks[1], t0, cat), t0.Add(30 * time.Second)})
	for _, w := range wants {
		oldSchedule(t, rdb, q, w.rec, w.due)
	}
	if err := rdb.HSet(ctx, q.tag+":d", "garbage", "\xc1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ZAdd(ctx, q.tag+":due", redis.Z{Score: 1, Member: "orphan"}).Err(); err != nil {
		t.Fatal(err)
	}
	dead := memRecord(2000, hooks[2], t0, cat)
	if err := q.Schedule(ctx, []Entry{{Rec: dead, Due: t0, Dead: true}}); err != nil {
		t.Fatal(err)
	}

	n, err := q.Migrate(ctx, t0)
	if err != nil || n != len(wants) {
		t.Fatalf("migrated %d (%v), want %d", n, err, len(wants))
	}
	expectMigrated(t, q, wants)
	if l, _ := q.Len(ctx); l != int64(len(wants)) {
		t.Fatalf("%d scheduled after the migration, want %d", l, len(wants))
	}
	if _, _, err := q.GetDead(ctx, dead.ID); err != nil {
		t.Fatalf("dead delivery after the migration: %v", err)
	}
	if raw, err := rdb.HGet(ctx, q.DeadData, "garbage").Result(); err != nil || raw != "\xc1" {
		t.Fatalf("unreadable old record not in the dead set as it was: %q %v", raw, err)
	}
	old, err := rdb.Exists(ctx, q.tag+":due", q.tag+":d", q.tag+":w:"+hooks[0], q.tag+":w:"+hooks[1], q.tag+":w:"+hooks[2]).Result()
	if err != nil || old != 0 {
		t.Fatalf("%d old-layout keys left (%v)", old, err)
	}
	if n, err := q.Migrate(ctx, t0); err != nil || n != 0 {
		t.Fatalf("a second migration moved %d (%v)", n, err)
	}
	// Due in the new layout at the same times: by +20 s only the first;
	// by +2 min the first three and the claimed one, its lease over.
	recs, bad, _, err := q.Claim(ctx, t0.Add(20*time.Second), t0.Add(time.Hour), 100)
	if err != nil || len(bad) != 0 || len(recs) != 1 || recs[0].ID != wants[0].rec.ID {
		t.Fatalf("claim at +20 s after the migration: %d records, %d bad, %v; want %s", len(recs), len(bad), err, wants[0].rec.ID)
	}
	recs, bad, _, err = q.Claim(ctx, t0.Add(2*time.Minute), t0.Add(time.Hour), 100)
	if err != nil || len(bad) != 0 || len(recs) != 3 {
		t.Fatalf("claim at +2 min after the migration: %d records, %d bad, %v; want 3", len(recs), len(bad), err)
	}
	if _, _, err := q.Get(ctx, "orphan"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an old due id without a record came back: %v", err)
	}
}

// unchunkedSchedule is the writer of the layout before chunks: the
// compact member in tag:q:<webhook>, the webhook in tag:hooks, an index
// value without a chunk in the 256 buckets, metadata and body form.
func unchunkedSchedule(t *testing.T, rdb redis.UniversalClient, q *Queue, rec *Record, due time.Time) {
	t.Helper()
	ctx := context.Background()
	member, form := q.memberOf(rec)
	pid := packedID(rec.ID)
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if form != nil {
			p.HSetNX(ctx, q.formsKey, form.ref(), form.value())
		}
		p.HSetNX(ctx, q.indexKey(pid), pid, oldIndexValue(rec))
		p.ZAdd(ctx, q.oldHookKey(rec.WebhookID), redis.Z{Score: ms(due), Member: member})
		p.ZAddLT(ctx, q.oldHooksKey(), redis.Z{Score: ms(due), Member: rec.WebhookID})
		p.HSet(ctx, q.metaKey, rec.WebhookID, hookMeta{rec.AppID, rec.AccountID}.value())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A queue written before chunks (one sorted set per webhook, index values
// without a chunk) is moved to chunks of at most 128 with every
// delivery's id, record and due time (a lease end included), found by id
// before and after; an unreadable member goes to the dead set as it is;
// a delivery already in a chunk keeps it when a process of the old
// version wrote it again; and the queue is claimed in due order after.
func TestMigrateSplitsUnchunkedQueues(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000).UTC()
	hooks := memHooks(2)
	var wants []migrated
	for e := 0; e < 700; e++ {
		rec := outageRecord(e, hooks[e%2], t0, cat)
		wants = append(wants, migrated{rec, t0.Add(time.Duration(e) * time.Second)})
	}
	// One already migrated, then written again by an old-version process
	// with an older attempt count: the chunked copy wins.
	kept := outageRecord(900, hooks[0], t0, cat)
	if err := q.Schedule(ctx, []Entry{{Rec: kept, Due: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	stale := *kept
	stale.Attempts, stale.packed = 1, nil
	for _, w := range wants {
		unchunkedSchedule(t, rdb, q, w.rec, w.due)
	}
	unchunkedSchedule(t, rdb, q, &stale, t0)
	if err := rdb.ZAdd(ctx, q.oldHookKey(hooks[1]), redis.Z{Score: 5, Member: "\xc1garbage"}).Err(); err != nil {
		t.Fatal(err)
	}
	// Found by id before the migration, too.
	if got, due, err := q.Get(ctx, wants[3].rec.ID); err != nil || got.Offset != wants[3].rec.Offset || !due.Equal(wants[3].due) {
		t.Fatalf("unchunked delivery by id: %+v due %v %v", got, due, err)
	}

	n, err := q.Migrate(ctx, t0)
	if err != nil || n < len(wants) {
		t.Fatalf("migrated %d (%v), want at least %d", n, err, len(wants))
	}
	expectMigrated(t, q, append(wants, migrated{kept, t0.Add(time.Hour)}))
	if l, _ := q.Len(ctx); l != int64(len(wants)+1) {
		t.Fatalf("%d scheduled after the migration, want %d", l, len(wants)+1)
	}
	if raw, err := rdb.HGet(ctx, q.DeadData, Bad{member: "\xc1garbage"}.ID()).Result(); err != nil || raw != "\xc1garbage" {
		t.Fatalf("unreadable unchunked member not in the dead set as it was: %q %v", raw, err)
	}
	if old, err := rdb.Exists(ctx, q.oldHookKey(hooks[0]), q.oldHookKey(hooks[1])).Result(); err != nil || old != 0 {
		t.Fatalf("%d unchunked queues left (%v)", old, err)
	}
	if left, err := rdb.ZRange(ctx, q.oldHooksKey(), 0, -1).Result(); err != nil || len(left) != 1 || left[0] != "" {
		t.Fatalf("the unchunked webhook index holds %q (%v), want only the mark", left, err)
	}
	for _, hook := range hooks {
		for c := 0; c < 3; c++ {
			key := q.chunkKey(hook, fmt.Sprint(c))
			if n, _ := rdb.ZCard(ctx, key).Result(); n == 0 || n > chunkSize {
				t.Fatalf("chunk %s holds %d", key, n)
			}
			if enc, _ := rdb.ObjectEncoding(ctx, key).Result(); enc != "listpack" {
				t.Fatalf("chunk %s is a %s", key, enc)
			}
		}
	}
	if n, err := q.Migrate(ctx, t0); err != nil || n != 0 {
		t.Fatalf("a second migration moved %d (%v)", n, err)
	}
	// Claimed in due order, each webhook earliest first.
	var last [2]time.Time
	total := 0
	for round := 0; round < 20; round++ {
		recs, bad, _, err := q.Claim(ctx, t0.Add(20*time.Minute), t0.Add(2*time.Hour), 64)
		if err != nil || len(bad) != 0 {
			t.Fatalf("claim after the migration: %v, %d bad", err, len(bad))
		}
		for _, r := range recs {
			due := t0.Add(time.Duration(r.Offset) * time.Second)
			h := 0
			if r.WebhookID == hooks[1] {
				h = 1
			}
			if due.Before(last[h]) {
				t.Fatalf("webhook %s: due %v claimed after %v", r.WebhookID, due, last[h])
			}
			last[h] = due
		}
		total += len(recs)
	}
	if total != len(wants) {
		t.Fatalf("claimed %d after the migration, want %d (all but the one due in an hour)", total, len(wants))
	}
}

// unchunkedClaimScript is the claim of the layout before chunks, as a
// process of that version runs it during a rolling upgrade: it knows
// tag:hooks, tag:hm and tag:bf, and drops the body forms when tag:hooks
// is empty.
var unchunkedClaimScript = redis.NewScript(`
local n = tonumber(ARGV[3])
local hooks = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, n)
local out, left = {}, n
local share = math.max(1, math.ceil(n / math.max(1, #hooks)))
for _, hook in ipairs(hooks) do
  if left <= 0 then break end
  local key = ARGV[4] .. ':q:' .. hook
  local ms = redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[1], 'LIMIT', 0, math.min(share, left))
  if #ms > 0 then
    local lease = {'XX'}
    for _, m in ipairs(ms) do
      lease[#lease+1] = ARGV[2]
      lease[#lease+1] = m
    end
    redis.call('ZADD', key, unpack(lease))
    out[#out+1] = hook
    out[#out+1] = redis.call('HGET', KEYS[2], hook) or ''
    out[#out+1] = ms
    left = left - #ms
  end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', KEYS[1], first[2], hook)
  else
    redis.call('ZREM', KEYS[1], hook)
    redis.call('HDEL', KEYS[2], hook)
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[2] then redis.call('DEL', KEYS[3]) end
return {out, first[2] or ''}
`)

// A process of the version before chunks that claims on a shard whose
// deliveries are all in chunks (a new-version API replayed or recovered
// them into a partition the old process owns, or the partition moved
// back to it) claims nothing and leaves the body forms the chunks refer
// to; a new-version claim then delivers them instead of quarantining
// them. Without the mark in tag:hooks, the old claim saw the layout it
// knows empty and dropped every body form.
func TestUnchunkedClaimKeepsChunkedForms(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	hook := memHooks(1)[0]
	recs := []*Record{memRecord(1, hook, t0, cat), memRecord(2, hook, t0, cat)}
	if err := q.Schedule(ctx, []Entry{{Rec: recs[0], Due: t0}}); err != nil {
		t.Fatal(err)
	}
	// Revived from the dead set: the other script that places members.
	if err := q.Schedule(ctx, []Entry{{Rec: recs[1], Due: t0, Dead: true}}); err != nil {
		t.Fatal(err)
	}
	if moved, err := q.Revive(ctx, []string{recs[1].ID}, t0); err != nil || len(moved) != 1 {
		t.Fatalf("revive: %d moved, %v", len(moved), err)
	}
	res, err := unchunkedClaimScript.Run(ctx, rdb, []string{q.oldHooksKey(), q.metaKey, q.formsKey},
		t0.Add(time.Hour).UnixMilli(), t0.Add(2*time.Hour).UnixMilli(), 10, q.tag).Slice()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := res[0].([]any); len(got) != 0 {
		t.Fatalf("the old claim took %v", got)
	}
	forms.Clear() // a process that never saw the forms
	got, bad, _, err := q.Claim(ctx, t0.Add(time.Hour), t0.Add(2*time.Hour), 10)
	if err != nil || len(got) != 2 || len(bad) != 0 {
		t.Fatalf("claim after an old-version claim: %d records, %d unreadable, %v; want 2, 0", len(got), len(bad), err)
	}
}

// Two processes that migrate the layout before the compact one at once
// (a partition handed over while the old owner's migration runs) never
// deliver a record twice: the slower one, holding a record the other
// moved, and that was delivered since, does not queue it again.
func TestSlowMigrationDoesNotQueueADeliveredRecord(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	rec := memRecord(1, memHooks(1)[0], t0, catalog.Default())
	oldSchedule(t, rdb, q, rec, t0)
	raw, err := rdb.HGet(ctx, q.oldDataKey(), rec.ID).Result()
	if err != nil {
		t.Fatal(err)
	}
	// The slow process read the record; the other migrates it, and it is
	// delivered.
	if n, err := q.Migrate(ctx, t0); err != nil || n != 1 {
		t.Fatalf("migrated %d, %v", n, err)
	}
	recs, _, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("claim: %d, %v", len(recs), err)
	}
	if err := q.Apply(ctx, []Op{{Kind: OpRemove, Rec: recs[0]}}); err != nil {
		t.Fatal(err)
	}
	stale := new(Record)
	if err := msgpack.Unmarshal([]byte(raw), stale); err != nil {
		t.Fatal(err)
	}
	if n, err := q.moveOld(ctx, []*Record{stale}, []string{raw}, t0); err != nil || n != 0 {
		t.Fatalf("the slow migration moved %d (%v), want 0", n, err)
	}
	if got, _, err := q.Get(ctx, rec.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a delivered record queued again: %+v %v", got, err)
	}
}

// A claim of the version before chunks that finds a webhook's sorted set
// of that layout empty (a process of that version queued, claimed and
// delivered one of its deliveries during a rolling upgrade) drops the
// webhook's application and account, which its chunks share. The claim
// then gives its records none; an outcome of one whose caller filled them
// in from the registry (the dispatcher does) restores them.
func TestOutcomeRestoresMetadataAnOldClaimDropped(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	hook := memHooks(1)[0]
	chunked := []*Record{memRecord(1, hook, t0, cat), memRecord(2, hook, t0, cat)}
	if err := q.Schedule(ctx, []Entry{{Rec: chunked[0], Due: t0.Add(time.Hour)}, {Rec: chunked[1], Due: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	old := memRecord(3, hook, t0, cat)
	unchunkedSchedule(t, rdb, q, old, t0)
	oldClaim := func(at time.Time) {
		t.Helper()
		err := unchunkedClaimScript.Run(ctx, rdb, []string{q.oldHooksKey(), q.metaKey, q.formsKey},
			at.UnixMilli(), at.Add(time.Minute).UnixMilli(), 10, q.tag).Err()
		if err != nil {
			t.Fatal(err)
		}
	}
	oldClaim(t0)
	member, _ := q.memberOf(old)
	if err := rdb.ZRem(ctx, q.oldHookKey(hook), member).Err(); err != nil { // delivered
		t.Fatal(err)
	}
	oldClaim(t0.Add(2 * time.Minute))
	if n, _ := rdb.HExists(ctx, q.metaKey, hook).Result(); n {
		t.Fatal("the old claim kept the metadata: nothing to restore")
	}
	recs, _, _, err := q.Claim(ctx, t0.Add(2*time.Hour), t0.Add(3*time.Hour), 1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("claim: %d, %v", len(recs), err)
	}
	r := recs[0]
	r.AppID, r.AccountID = chunked[0].AppID, chunked[0].AccountID // from the registry
	if err := q.Apply(ctx, []Op{{Kind: OpReschedule, Rec: r, At: t0.Add(4 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range chunked {
		got, _, err := q.Get(ctx, want.ID)
		if err != nil || got.AppID != want.AppID || got.AccountID != want.AccountID {
			t.Fatalf("delivery %s after the outcome: %+v %v; want application %q, account %q", want.ID, got, err, want.AppID, want.AccountID)
		}
	}
}

// Retry-now finds a delivery still in a layout before chunks (before the
// shard's next migration) and makes it due at once: each is migrated then,
// with its webhook's other deliveries of that layout, and the migration
// that follows queues nothing twice.
func TestRetryNowReachesTheLayoutsBeforeChunks(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	cat := catalog.Default()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	st := NewStore(rdb, "gh:")
	if err := st.Register(ctx, memTopic, 0); err != nil {
		t.Fatal(err)
	}
	t0 := time.UnixMilli(1_700_000_000_000).UTC()
	hooks := memHooks(2)
	unchunked, sibling := memRecord(1, hooks[0], t0, cat), memRecord(2, hooks[0], t0, cat)
	unchunkedSchedule(t, rdb, q, unchunked, t0.Add(time.Hour))
	unchunkedSchedule(t, rdb, q, sibling, t0.Add(2*time.Hour))
	msgpacked := memRecord(3, hooks[1], t0, cat)
	oldSchedule(t, rdb, q, msgpacked, t0.Add(time.Hour))
	now := t0.Add(time.Minute)
	for _, rec := range []*Record{unchunked, msgpacked} {
		d, dq, err := st.Find(ctx, rec.ID)
		if err != nil || d.State != Scheduled || !d.At.Equal(t0.Add(time.Hour)) || string(d.Body) != string(rec.Body) {
			t.Fatalf("find %s before the migration: %+v %v", rec.ID, d, err)
		}
		ok, err := dq.RetryNow(ctx, d.Record, now)
		if err != nil || !ok {
			t.Fatalf("retry-now of %s in a layout before chunks: %v %v, want done", rec.ID, ok, err)
		}
		if got, due, err := q.Get(ctx, rec.ID); err != nil || !due.Equal(now) || got.chunk == "" || got.Attempts != rec.Attempts {
			t.Fatalf("%s after retry-now: %+v due %v %v; want it in a chunk, due now", rec.ID, got, due, err)
		}
	}
	if _, due, err := q.Get(ctx, sibling.ID); err != nil || !due.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("the other delivery of the webhook: due %v %v, want its own time", due, err)
	}
	if n, err := q.Migrate(ctx, now); err != nil || n != 0 {
		t.Fatalf("the next migration moved %d (%v), want nothing left", n, err)
	}
	recs, _, _, err := q.Claim(ctx, now, now.Add(time.Minute), 10)
	if err != nil || len(recs) != 2 {
		t.Fatalf("claim at now: %d records (%v), want the two made due", len(recs), err)
	}
	if n, _ := q.Len(ctx); n != 3 {
		t.Fatalf("%d scheduled, want 3", n)
	}
}

// migrated is a delivery a migration must keep, with its due time.
type migrated struct {
	rec *Record
	due time.Time
}

// expectMigrated checks that every delivery of wants is in a chunk after
// the migration, found by id with every field and its due time.
func expectMigrated(t *testing.T, q *Queue, wants []migrated) {
	t.Helper()
	for _, w := range wants {
		got, due, err := q.Get(context.Background(), w.rec.ID)
		if err != nil {
			t.Fatalf("delivery %s after the migration: %v", w.rec.ID, err)
		}
		r := w.rec
		if got.ID != r.ID || got.WebhookID != r.WebhookID || got.AppID != r.AppID || got.AccountID != r.AccountID ||
			got.Event != r.Event || !bytes.Equal(got.Body, r.Body) || got.Attempts != r.Attempts || got.Retries != r.Retries ||
			got.Deferrals != r.Deferrals || got.RetryAfter != r.RetryAfter || !got.FirstAttempt.Equal(r.FirstAttempt) ||
			!got.LastAttempt.Equal(r.LastAttempt) || got.LastStatus != r.LastStatus || got.LastError != r.LastError ||
			got.Offset != r.Offset || !due.Equal(w.due) || got.chunk == "" {
			t.Fatalf("delivery after the migration\n got %+v due %v\nwant %+v due %v", got, due, r, w.due)
		}
	}
}
