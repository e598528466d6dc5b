package shard

import (
	"context"
	"testing"
	"time"

	"github.com/geckohook/geckohook/internal/testenv"
)

func TestQueueScheduleIsInsertIfAbsent(t *testing.T) {
	srv := testenv.Redis(t)
	ctx := context.Background()
	q := NewQueue(srv.Client(), "gh:", "geckohook.events", 3)
	if q.DueKey != "gh:{geckohook.events-3}:due" || q.DataKey != "gh:{geckohook.events-3}:d" {
		t.Fatalf("keys %s %s do not follow the layout", q.DueKey, q.DataKey)
	}
	t0 := time.UnixMilli(1_700_000_000_000)
	rec := &Record{ID: "d1", WebhookID: "wh_1", Body: []byte(`{"a":1}`), Attempts: 1, FirstAttempt: t0, LastStatus: 500, LastError: "HTTP 500"}
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0.Add(20 * time.Second)}}); err != nil {
		t.Fatal(err)
	}
	// A replay of the same delivery must not reset the existing record.
	replay := *rec
	replay.Attempts, replay.LastStatus = 1, 503
	if err := q.Schedule(ctx, []Entry{{Rec: &replay, Due: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	got, due, err := q.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if got.LastStatus != 500 || string(got.Body) != `{"a":1}` || !got.FirstAttempt.Equal(t0) {
		t.Fatalf("record = %+v", got)
	}
	if !due.Equal(t0.Add(20 * time.Second)) {
		t.Fatalf("due %v, want %v", due, t0.Add(20*time.Second))
	}
	if n, _ := q.Len(ctx); n != 1 {
		t.Fatalf("queue length %d, want 1", n)
	}
	if err := q.Schedule(ctx, []Entry{{Rec: &Record{ID: "d2"}, Due: t0, Dead: true}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := q.GetDead(ctx, "d2"); err != nil {
		t.Fatalf("dead entry: %v", err)
	}
	if n, _ := q.Len(ctx); n != 1 {
		t.Fatalf("dead entry landed in the due set (len %d)", n)
	}
}
