package mail_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/mail"
	"github.com/geckohook/geckohook/engine/streak"
	"github.com/geckohook/geckohook/internal/testenv"
)

// A day's digest lists a webhook that failed and was then deleted that
// day once, as deleted, and leaves out entries it cannot read; the
// deletions of several days read together come newest first.
func TestReadDigestAndReadDeleted(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	keys := daylog.Keys{Prefix: "gh:"}
	var p streak.Policy
	start := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	day, before := p.Day(start), p.Day(start.Add(-time.Hour))
	put := func(key, id string, e *daylog.Entry) {
		t.Helper()
		raw := []byte{0xc1}
		if e != nil {
			raw, _ = msgpack.Marshal(e)
		}
		if err := rdb.HSet(ctx, key, id, raw).Err(); err != nil {
			t.Fatal(err)
		}
	}
	put(keys.Failing(day, "app"), "wh_gone", &daylog.Entry{WebhookID: "wh_gone", Failures: 2})
	put(keys.Failing(day, "app"), "wh_fail", &daylog.Entry{WebhookID: "wh_fail", Failures: 3})
	put(keys.Failing(day, "app"), "wh_bad", nil)
	put(keys.Deleted(day, "app"), "wh_gone", &daylog.Entry{WebhookID: "wh_gone", Deleted: start.Add(time.Hour)})
	put(keys.Deleted(before, "app"), "wh_old", &daylog.Entry{WebhookID: "wh_old", Deleted: start.Add(-time.Hour)})

	d, err := mail.ReadDigest(ctx, rdb, keys, p, day, "app", start, zerolog.Nop())
	if err != nil || len(d.Failing) != 1 || d.Failing[0].WebhookID != "wh_fail" || len(d.Deleted) != 1 || d.Deleted[0].WebhookID != "wh_gone" {
		t.Fatalf("ReadDigest = %+v, %v; want wh_fail failing and wh_gone deleted", d, err)
	}
	got, err := mail.ReadDeleted(ctx, rdb, keys, "app", []string{before, day, "2026-11-01"}, zerolog.Nop())
	if err != nil || len(got) != 2 || got[0].WebhookID != "wh_gone" || got[1].WebhookID != "wh_old" {
		t.Fatalf("ReadDeleted = %v, %v; want wh_gone then wh_old", got, err)
	}
}
