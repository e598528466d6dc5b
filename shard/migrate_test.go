package shard

import (
	"bytes"
	"context"
	"errors"
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
	type want struct {
		rec *Record
		due time.Time
	}
	var wants []want
	for e := 0; e < 300; e++ {
		rec := memRecord(e, hooks[e%3], t0, cat)
		rec.Attempts, rec.Retries, rec.LastAttempt = 1+e%5, e%5, t0.Add(time.Duration(e)*time.Second)
		wants = append(wants, want{rec, t0.Add(time.Duration(e) * time.Minute)})
	}
	// A body of another shape, an id geckohook did not derive, a retry
	// after the receiver's Retry-After, and one claimed by a process that
	// ran the old version (its score is the lease end, +30 s).
	odd := memRecord(1000, hooks[0], t0, cat)
	odd.Body, odd.ID, odd.RetryAfter, odd.LastStatus, odd.LastError = []byte("not json"), "custom-id", true, 503, "HTTP 503"
	wants = append(wants, want{odd, t0.Add(time.Hour)})
	wants = append(wants, want{memRecord(1001, hooks[1], t0, cat), t0.Add(30 * time.Second)})
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
	for _, w := range wants {
		got, due, err := q.Get(ctx, w.rec.ID)
		if err != nil {
			t.Fatalf("delivery %s after the migration: %v", w.rec.ID, err)
		}
		r := w.rec
		if got.ID != r.ID || got.WebhookID != r.WebhookID || got.AppID != r.AppID || got.AccountID != r.AccountID ||
			got.Event != r.Event || !bytes.Equal(got.Body, r.Body) || got.Attempts != r.Attempts || got.Retries != r.Retries ||
			got.RetryAfter != r.RetryAfter || !got.FirstAttempt.Equal(r.FirstAttempt) || !got.LastAttempt.Equal(r.LastAttempt) ||
			got.LastStatus != r.LastStatus || got.LastError != r.LastError || got.Offset != r.Offset || !due.Equal(w.due) {
			t.Fatalf("delivery after the migration\n got %+v due %v\nwant %+v due %v", got, due, r, w.due)
		}
	}
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
