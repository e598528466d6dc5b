package shard

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/internal/testenv"
)

// The due backlog counts, over every registered shard, the deliveries due
// by now and not claimed: not those due later, not leased ones, not dead
// ones.
func TestDueBacklog(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := t.Context()
	st := NewStore(rdb, "gh:")
	t0 := time.UnixMilli(1_700_000_000_000)
	backlog := func(at time.Time, want int64) {
		t.Helper()
		got, err := st.DueBacklog(ctx, at)
		if err != nil || got != want {
			t.Fatalf("backlog at %v: %d, %v; want %d", at.Sub(t0), got, err, want)
		}
	}
	backlog(t0, 0) // no shard registered yet

	var qs []*Queue
	for p := range 2 {
		if err := st.Register(ctx, "ev", p); err != nil {
			t.Fatal(err)
		}
		q := NewQueue(rdb, "gh:", "ev", p)
		qs = append(qs, q)
		var es []Entry
		for i, due := range []time.Duration{-2 * time.Second, 0, time.Second, time.Minute} {
			es = append(es, Entry{Rec: &Record{ID: fmt.Sprintf("p%d-%d", p, i), WebhookID: "wh_1", Body: []byte("x")}, Due: t0.Add(due)})
		}
		es = append(es, Entry{Rec: &Record{ID: fmt.Sprintf("p%d-dead", p), WebhookID: "wh_1"}, Due: t0.Add(-time.Hour), Dead: true})
		if err := q.Schedule(ctx, es); err != nil {
			t.Fatal(err)
		}
	}
	backlog(t0.Add(-3*time.Second), 0)
	backlog(t0, 4) // due two seconds ago and due now, in each shard
	backlog(t0.Add(time.Second), 6)

	// Claimed deliveries wait for their attempt's end, not for geckohook.
	recs, _, _, err := qs[0].Claim(ctx, t0, t0.Add(30*time.Second), 1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("claim: %d records, %v", len(recs), err)
	}
	backlog(t0, 3)
	backlog(t0.Add(29*time.Second), 5)
	backlog(t0.Add(30*time.Second), 6) // the lease has run out
	backlog(t0.Add(time.Minute), 8)
}

// Depth counts what every webhook's ZSET holds, and the dead set.
func TestDepthCountsScheduledAndDead(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	st := NewStore(rdb, "gh:")
	t0 := time.UnixMilli(1_700_000_000_000)
	hooks := memHooks(7)
	for p := range 2 {
		q := NewQueue(rdb, "gh:", memTopic, p)
		if err := st.Register(ctx, memTopic, p); err != nil {
			t.Fatal(err)
		}
		var entries []Entry
		for e := range 300 {
			entries = append(entries, Entry{Rec: memRecord(e, hooks[e%7], t0, catalog.Default()), Due: t0, Dead: e%10 == 0})
		}
		if err := q.Schedule(ctx, entries); err != nil {
			t.Fatal(err)
		}
		recs, _, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 50)
		if err != nil || len(recs) != 50 {
			t.Fatalf("claim: %d, %v", len(recs), err)
		}
		ops := []Op{{Kind: OpRemove, Rec: recs[0]}, {Kind: OpKill, Rec: recs[1], At: t0}, {Kind: OpReschedule, Rec: recs[2], At: t0}}
		if err := q.Apply(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	var exact int64
	for p := range 2 {
		n, err := NewQueue(rdb, "gh:", memTopic, p).Len(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exact += n
	}
	scheduled, dead, err := st.Depth(ctx)
	if err != nil || scheduled != exact || scheduled != 2*(270-2) || dead != 2*(30+1) {
		t.Fatalf("depth %d scheduled (the ZSETs hold %d), %d dead, %v; want %d and %d", scheduled, exact, dead, err, 2*268, 2*31)
	}
}
