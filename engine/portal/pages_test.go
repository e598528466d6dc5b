package portal

import (
	"context"
	"encoding/json"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/streak"
	"github.com/geckohook/geckohook/shard"
)

var nextPage = regexp.MustCompile(`href="/portal/\?cursor=([^"]+)"`)

// The webhooks page: pages of the list, health by the coordinators'
// records and the 3-day rule, deletions of the last days, and creation
// refused with the API's own words.
func TestWebhooksPage(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.PageSize = 2 })
	app, token := e.app("shop")
	var hooks []string
	for _, name := range []string{"one", "two", "three"} {
		hooks = append(hooks, e.hook(app.ID, "acc", "order.create", "https://"+name+".example.com/h").ID)
		e.advance(time.Second)
	}
	since := t0.Add(-5 * time.Hour)
	if err := e.rdb.HSet(context.Background(), "gh:health:{"+hooks[1]+"}", "v", "1", "since", since.UnixMilli(),
		"failures", 7, "status", 503, "error", "HTTP 503").Err(); err != nil {
		t.Fatal(err)
	}
	gone, _ := msgpack.Marshal(&daylog.Entry{WebhookID: "wh_old", AppID: app.ID, AccountID: "acc", Event: "order.create",
		Address: "https://old.example.com/h", Deleted: t0.Add(-26 * time.Hour), Reason: streak.ReasonGone, LastStatus: 410})
	day := streak.Policy{}.Day(t0.Add(-26 * time.Hour))
	if err := e.rdb.HSet(context.Background(), daylog.Keys{Prefix: "gh:"}.Deleted(day, app.ID), "wh_old", gone).Err(); err != nil {
		t.Fatal(err)
	}
	b := e.login(app.ID, token)

	first := b.get("/portal/")
	m := nextPage.FindStringSubmatch(first.body)
	if first.status != 200 || m == nil || !strings.Contains(first.body, "one.example.com") || !strings.Contains(first.body, "two.example.com") ||
		strings.Contains(first.body, "three.example.com") {
		t.Fatalf("first page: %d, next %v", first.status, m)
	}
	for _, want := range []string{"failing</span> since 2026-11-20 05:00:00 UTC, 7 failed attempts in a row", "status 503", "HTTP 503",
		"Deleted at 2026-11-23 05:00:00 UTC", "healthy", "old.example.com", "the address answered 410 Gone"} {
		if !strings.Contains(first.body, want) {
			t.Errorf("first page lacks %q", want)
		}
	}
	second := b.get("/portal/?cursor=" + url.QueryEscape(m[1]))
	if second.status != 200 || !strings.Contains(second.body, "three.example.com") || strings.Contains(second.body, "one.example.com") ||
		nextPage.MatchString(second.body) {
		t.Fatalf("second page: %d", second.status)
	}

	// An address the API refuses: the same status and message as the API's.
	bad := "https://10.0.0.1/hook"
	req, _ := http.NewRequest("POST", e.url+"/v1/webhooks", strings.NewReader(`{"webhook":{"account_id":"acc","event":"order.create","address":"`+bad+`"}}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var apiErr struct{ Error struct{ Message string } }
	if err := json.Unmarshal(raw, &apiErr); err != nil || resp.StatusCode != 422 || apiErr.Error.Message == "" {
		t.Fatalf("API refusal: %d %s", resp.StatusCode, raw)
	}
	r := b.post("/portal/webhooks", url.Values{"account_id": {"acc"}, "event": {"order.create"}, "address": {bad}})
	if r.status != 422 || !strings.Contains(r.body, `<span id="api-error">`+template.HTMLEscapeString(apiErr.Error.Message)+`</span>`) ||
		!strings.Contains(r.body, `value="`+bad+`"`) {
		t.Fatalf("portal refusal: %d, want the API's %q", r.status, apiErr.Error.Message)
	}
	// Deleting through the page.
	if r := b.post("/portal/webhooks/"+hooks[0]+"/delete", nil); r.status != 303 || e.reg.Webhook(hooks[0]) != nil {
		t.Fatalf("delete: %d", r.status)
	}
}

// The deliveries page lists scheduled and dead deliveries and its buttons
// act through the API: retry one, replay the dead.
func TestDeliveriesPageActions(t *testing.T) {
	e := newEnv(t, nil)
	app, _ := e.app("shop")
	w := e.hook(app.ID, "acc", "order.create", "https://shop.example.com/h")
	schedule(t, e,
		shard.Entry{Rec: record("d-sched", w.ID, app.ID, `{"object_id":1}`, "HTTP 500: boom"), Due: t0.Add(time.Hour)},
		shard.Entry{Rec: record("d-dead", w.ID, app.ID, `{"object_id":2}`, "connection refused"), Due: t0, Dead: true})
	b := e.login(app.ID, adminToken)
	r := b.get("/portal/webhooks/" + w.ID)
	for _, want := range []string{"Scheduled for a retry (1)", "Dead (1)", "d-sched", "HTTP 500: boom", "connection refused",
		"{&#34;object_id&#34;:1}", "2026-11-20 11:00:00 UTC (backoff)"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("deliveries page lacks %q", want)
		}
	}
	st := shard.NewStore(e.rdb, "gh:")
	if r := b.post("/portal/webhooks/"+w.ID+"/retry", url.Values{"delivery": {"d-sched"}}); r.status != 200 || !strings.Contains(r.body, "is due now") {
		t.Fatalf("retry: %d", r.status)
	}
	if d, _, err := st.Find(context.Background(), "d-sched"); err != nil || !d.At.Equal(t0) {
		t.Fatalf("retried delivery due at %v (%v), want now", d, err)
	}
	if r := b.post("/portal/webhooks/"+w.ID+"/replay-dead", nil); r.status != 200 || !strings.Contains(r.body, "1 dead deliveries are due again") {
		t.Fatalf("replay: %d", r.status)
	}
	if dead, err := st.List(context.Background(), w.ID, shard.Dead, 10); err != nil || len(dead) != 0 {
		t.Fatalf("dead after replay: %v %v", dead, err)
	}
	// The API's refusal, shown on the page: no sender, no recovery here.
	if r := b.post("/portal/webhooks/"+w.ID+"/test", nil); r.status != 503 || !strings.Contains(r.body, "test sends are not configured") {
		t.Fatalf("test send without a sender: %d", r.status)
	}
	if r := b.post("/portal/webhooks/"+w.ID+"/recover", url.Values{"since": {"2026-11-20T08:00"}, "until": {"2026-11-20T09:00"}}); r.status != 503 ||
		!strings.Contains(r.body, "recovery is not configured") || !strings.Contains(r.body, `value="2026-11-20T08:00"`) {
		t.Fatalf("recover without Kafka: %d", r.status)
	}
}

// Signing: the secret on request, rotation with its overlap, the scheme.
func TestSigningPage(t *testing.T) {
	e := newEnv(t, nil)
	app, _ := e.app("shop")
	b := e.login(app.ID, adminToken)
	if r := b.get("/portal/signing"); r.status != 200 || strings.Contains(r.body, app.Secret) || !strings.Contains(r.body, `id="reveal"`) {
		t.Fatalf("signing page shows the secret before asked: %d", r.status)
	}
	if r := b.post("/portal/signing/reveal", nil); r.status != 200 || !strings.Contains(r.body, app.Secret) || !strings.Contains(r.body, app.StandardSecret()) {
		t.Fatalf("reveal: %d", r.status)
	}
	r := b.post("/portal/signing/rotate", url.Values{"overlap": {"1h"}})
	now := e.reg.App(app.ID)
	if r.status != 200 || now.Secret == app.Secret || !strings.Contains(r.body, now.Secret) ||
		!strings.Contains(r.body, "keeps signing until 2026-11-20 11:00:00 UTC") {
		t.Fatalf("rotate: %d", r.status)
	}
	if r := b.post("/portal/signing/rotate", url.Values{"overlap": {"forever"}}); r.status != 422 || !strings.Contains(r.body, "overlap must be a duration") {
		t.Fatalf("bad overlap: %d", r.status)
	}
	if r := b.post("/portal/signing/scheme", url.Values{"scheme": {"both"}}); r.status != 200 || e.reg.App(app.ID).SignatureScheme() != "both" {
		t.Fatalf("scheme: %d", r.status)
	}
}

// Digests: each day's mail as the mail job renders it, the days kept read
// in one round trip.
func TestDigestsPage(t *testing.T) {
	reads, counted := countDayReads(t)
	e := newEnv(t, counted)
	app, _ := e.app("shop")
	yesterday := streak.Policy{}.Day(t0.Add(-24 * time.Hour))
	entry, _ := msgpack.Marshal(&daylog.Entry{WebhookID: "wh_f", AppID: app.ID, AccountID: "acc", Event: "order.create",
		Address: "https://f.example.com/h", Failures: 4, LastStatus: 502, LastError: "HTTP 502", StreakStart: t0.Add(-30 * time.Hour),
		DeleteAt: t0.Add(42 * time.Hour), LastFailure: t0.Add(-25 * time.Hour)})
	if err := e.rdb.HSet(context.Background(), daylog.Keys{Prefix: "gh:"}.Failing(yesterday, app.ID), "wh_f", entry).Err(); err != nil {
		t.Fatal(err)
	}
	b := e.login(app.ID, adminToken)
	reads.n.Store(0)
	r := b.get("/portal/digests")
	if n := reads.n.Load(); n != 1 {
		t.Errorf("digests page made %d calls reading day records, want 1", n)
	}
	for _, want := range []string{"Subject: geckohook: 1 failing and 0 deleted webhooks for shop on " + yesterday,
		"FAILING WEBHOOKS (1)", "https://f.example.com/h", "failures that day: 4", "(today so far; mailed when the day ends)"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("digests page lacks %q", want)
		}
	}
	if got := strings.Count(r.body, `class="digest"`); got != daysKept {
		t.Errorf("%d days shown, want %d", got, daysKept)
	}
	if h := b.get("/portal/digests/" + yesterday); h.status != 200 || !strings.Contains(h.body, "<h2>Failing webhooks (1)</h2>") {
		t.Fatalf("HTML part: %d", h.status)
	}
	if h := b.get("/portal/digests/2020-01-01"); h.status != 404 {
		t.Fatalf("a day not kept: %d", h.status)
	}
}
