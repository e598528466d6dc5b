package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/geckohook/geckohook/shard"
)

func TestDeliveriesListRetryReplay(t *testing.T) {
	e := start(t, nil)
	st := shard.NewStore(e.rdb, "gh:")
	ctx := context.Background()
	shop, other := e.createApp("shop"), e.createApp("other")
	w := e.createWebhook(shop.Token, "acc1", "order.create", "https://shop.example.com/hook")
	ow := e.createWebhook(other.Token, "acc1", "order.create", "https://other.example.com/hook")

	t0 := fixedNow.Add(-time.Hour)
	body := []byte(`{"object_id":1,"event":"order.create","timestamp":1,"resource_url":"https://api.tradegecko.com/orders/1.json"}`)
	rec := func(id, hook, app string) *shard.Record {
		return &shard.Record{ID: id, WebhookID: hook, AppID: app, AccountID: "acc1", Event: "order.create", Body: body,
			Attempts: 1, FirstAttempt: t0, LastAttempt: t0, LastStatus: 500, LastError: "HTTP 500"}
	}
	q := shard.NewQueue(e.rdb, "gh:", "geckohook.events", 2)
	if err := st.Register(ctx, "geckohook.events", 2); err != nil {
		t.Fatal(err)
	}
	if err := q.Schedule(ctx, []shard.Entry{
		{Rec: rec("d-sched", w.ID, shop.ID), Due: t0.Add(18 * time.Second)},
		{Rec: rec("d-dead", w.ID, shop.ID), Due: t0, Dead: true},
		{Rec: rec("d-other", ow.ID, other.ID), Due: t0.Add(18 * time.Second)},
	}); err != nil {
		t.Fatal(err)
	}

	list := func(state string) []DeliveryView {
		t.Helper()
		r := e.do("GET", "/v1/webhooks/"+w.ID+"/deliveries?state="+state, shop.Token, "")
		if r.status != 200 {
			t.Fatalf("list %s: %d %s", state, r.status, r.raw)
		}
		var out struct{ Deliveries []DeliveryView }
		if err := json.Unmarshal(r.raw, &out); err != nil {
			t.Fatal(err)
		}
		return out.Deliveries
	}
	s := list("scheduled")
	if len(s) != 1 || s[0].ID != "d-sched" || s[0].State != "scheduled" || s[0].LastStatus != 500 ||
		s[0].NextAttemptAt != responseTime(t0.Add(18*time.Second)) || string(s[0].Payload) != string(body) {
		t.Fatalf("scheduled list: %+v", s)
	}
	if d := list("dead"); len(d) != 1 || d[0].ID != "d-dead" || d[0].DiedAt != responseTime(t0) {
		t.Fatalf("dead list: %+v", d)
	}

	// Bad queries, other applications, unknown ids.
	e.expectError(e.do("GET", "/v1/webhooks/"+w.ID+"/deliveries?state=done", shop.Token, ""), 400, "invalid_query", "state")
	e.expectError(e.do("GET", "/v1/webhooks/"+w.ID+"/deliveries?limit=0", shop.Token, ""), 400, "invalid_query", "limit")
	e.expectError(e.do("GET", "/v1/webhooks/"+w.ID+"/deliveries", other.Token, ""), 404, "not_found", w.ID)
	e.expectError(e.do("POST", "/v1/deliveries/d-other/retry", shop.Token, ""), 404, "not_found", "d-other")
	e.expectError(e.do("POST", "/v1/deliveries/nope/retry", shop.Token, ""), 404, "not_found", "nope")
	e.expectError(e.do("POST", "/v1/webhooks/"+ow.ID+"/replay-dead", shop.Token, ""), 404, "not_found", ow.ID)
	e.expectError(e.do("DELETE", "/v1/deliveries/d-sched/retry", shop.Token, ""), 405, "method_not_allowed", "POST")
	e.expectError(e.do("POST", "/v1/deliveries/d-sched/retry", "", ""), 401, "unauthorized", "")

	// The queues' depth is on /metrics.
	if m := string(e.do("GET", "/metrics", "", "").raw); !strings.Contains(m, `geckohook_retry_queue_deliveries{state="scheduled"} 2`) ||
		!strings.Contains(m, `geckohook_retry_queue_deliveries{state="dead"} 1`) {
		t.Fatalf("metrics:\n%s", m)
	}

	// Retry now: the scheduled delivery is due at the API's clock.
	r := e.do("POST", "/v1/deliveries/d-sched/retry", shop.Token, "")
	if r.status != 202 {
		t.Fatalf("retry: %d %s", r.status, r.raw)
	}
	if _, due, err := q.Get(ctx, "d-sched"); err != nil || !due.Equal(fixedNow) {
		t.Fatalf("after retry now: due %v err %v, want %v", due, err, fixedNow)
	}
	// Replay dead: back to due now, with a fresh schedule.
	r = e.do("POST", "/v1/webhooks/"+w.ID+"/replay-dead", shop.Token, "")
	if r.status != 202 || r.json(t)["replayed"] != float64(1) {
		t.Fatalf("replay-dead: %d %s", r.status, r.raw)
	}
	if got, due, err := q.Get(ctx, "d-dead"); err != nil || !due.Equal(fixedNow) || got.Retries != 0 {
		t.Fatalf("after replay: %+v due %v err %v", got, due, err)
	}
	if d := list("dead"); len(d) != 0 {
		t.Fatalf("dead list after replay: %+v", d)
	}
	// Retry of a dead delivery by id: kill it again, then retry it.
	d, _, _ := q.Get(ctx, "d-dead")
	if err := q.Apply(ctx, []shard.Op{{Kind: shard.OpKill, Rec: d, At: fixedNow}}); err != nil {
		t.Fatal(err)
	}
	if r = e.do("POST", "/v1/deliveries/d-dead/retry", shop.Token, ""); r.status != 202 {
		t.Fatalf("retry of a dead delivery: %d %s", r.status, r.raw)
	}
	if _, due, err := q.Get(ctx, "d-dead"); err != nil || !due.Equal(fixedNow) {
		t.Fatalf("dead delivery retried: due %v err %v", due, err)
	}
	// A deleted webhook's delivery cannot be retried.
	if r := e.do("DELETE", "/v1/webhooks/"+w.ID, shop.Token, ""); r.status != 204 {
		t.Fatalf("delete: %d", r.status)
	}
	e.expectError(e.do("POST", "/v1/deliveries/d-sched/retry", shop.Token, ""), 409, "webhook_deleted", w.ID)
}
