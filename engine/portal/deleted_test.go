package portal

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/mail"
	"github.com/geckohook/geckohook/engine/streak"
)

// dayReads counts the calls to Redis, single commands or pipelines, that
// touch a day record.
type dayReads struct{ n atomic.Int32 }

func (*dayReads) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *dayReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count(cmd)
		return next(ctx, cmd)
	}
}

func (h *dayReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.count(cmds...)
		return next(ctx, cmds)
	}
}

func (h *dayReads) count(cmds ...redis.Cmder) {
	for _, c := range cmds {
		if args := c.Args(); len(args) > 1 && strings.HasPrefix(fmt.Sprint(args[1]), "gh:day:") {
			h.n.Add(1)
			return
		}
	}
}

// countDayReads gives the portal a Redis client of its own whose calls
// touching day records are counted.
func countDayReads(t *testing.T) (*dayReads, func(*Options)) {
	reads := &dayReads{}
	return reads, func(o *Options) {
		c := redis.NewClient(&redis.Options{Addr: o.Redis.(*redis.Client).Options().Addr})
		t.Cleanup(func() { _ = c.Close() })
		c.AddHook(reads)
		o.Redis = c
	}
}

// The webhooks page lists the deletions of every kept day, newest first,
// read in one round trip; older days and unreadable entries are left out,
// and past mail.MaxListed the rest is counted.
func TestWebhooksPageReadsDeletionsInOneRoundTrip(t *testing.T) {
	reads, counted := countDayReads(t)
	e := newEnv(t, counted)
	ctx := context.Background()
	keys := daylog.Keys{Prefix: "gh:"}
	deleted := func(appID, id string, at time.Time) {
		t.Helper()
		raw, _ := msgpack.Marshal(&daylog.Entry{WebhookID: id, AppID: appID, AccountID: "acc", Event: "order.create",
			Address: "https://" + id + ".example.com/h", Deleted: at, Reason: streak.ReasonGone, LastStatus: 410})
		if err := e.rdb.HSet(ctx, keys.Deleted(streak.Policy{}.Day(at), appID), id, raw).Err(); err != nil {
			t.Fatal(err)
		}
	}
	app, token := e.app("shop")
	ago := func(days int) time.Time { return t0.Add(-time.Duration(days) * 24 * time.Hour) }
	deleted(app.ID, "today", t0.Add(-time.Hour))
	deleted(app.ID, "yesterday", ago(1))
	deleted(app.ID, "lastkept", ago(daysKept-1))
	deleted(app.ID, "expired", ago(daysKept))
	if err := e.rdb.HSet(ctx, keys.Deleted(streak.Policy{}.Day(ago(3)), app.ID), "wh_bad", "\xc1").Err(); err != nil {
		t.Fatal(err)
	}
	b := e.login(app.ID, token)
	reads.n.Store(0)
	r := b.get("/portal/")
	if n := reads.n.Load(); r.status != 200 || n != 1 {
		t.Fatalf("webhooks page: %d after %d calls reading day records, want 1", r.status, n)
	}
	last := -1
	for _, id := range []string{"today", "yesterday", "lastkept"} {
		i := strings.Index(r.body, id+".example.com")
		if i < 0 || i < last {
			t.Fatalf("deletion %s missing or out of order (newest first)", id)
		}
		last = i
	}
	if strings.Contains(r.body, "expired.example.com") || strings.Contains(r.body, "more not listed") {
		t.Fatal("page lists a day no longer kept or counts unlisted deletions")
	}

	many, manyToken := e.app("many")
	for i := range mail.MaxListed + 2 {
		deleted(many.ID, fmt.Sprintf("wh%04d", i), ago(i%2).Add(-time.Duration(i)*time.Second))
	}
	r = e.login(many.ID, manyToken).get("/portal/")
	if n := strings.Count(r.body, "the address answered 410 Gone"); r.status != 200 || n != mail.MaxListed ||
		!strings.Contains(r.body, "And 2 more not listed.") {
		t.Fatalf("page of %d deletions: %d, %d listed", mail.MaxListed+2, r.status, n)
	}
}
