package api

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/loadtest"
)

type testAnswer struct {
	Test struct {
		DeliveryID     string            `json:"delivery_id"`
		Status         int               `json:"status"`
		LatencyMS      int64             `json:"latency_ms"`
		Error          string            `json:"error"`
		Outcome        string            `json:"outcome"`
		RequestHeaders map[string]string `json:"request_headers"`
	} `json:"test"`
}

// testSendEnv is the API with a sender of policy senderPolicy (webhook
// registration allows loopback), a receiver answering by path, and a
// clock the test moves.
func testSendEnv(t *testing.T, senderPolicy netguard.Policy) (*env, *loadtest.Receiver, *atomic.Int64) {
	t.Helper()
	recv, err := loadtest.NewReceiver(func(path string, _ int) int {
		switch path {
		case "/fail":
			return 500
		case "/gone":
			return 410
		}
		return 200
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	var seconds atomic.Int64
	e := start(t, func(o *Options) {
		o.Policy = netguard.Policy{AllowPrivate: true, AllowHTTP: true}
		o.Sender = sender.New(sender.Options{Policy: senderPolicy, Timeout: 5 * time.Second})
		o.Now = func() time.Time { return fixedNow.Add(time.Duration(seconds.Load()) * time.Second) }
	})
	return e, recv, &seconds
}

func TestTestSend(t *testing.T) {
	e, recv, _ := testSendEnv(t, netguard.Policy{AllowPrivate: true, AllowHTTP: true})
	app := e.createApp("shop")
	other := e.createApp("other")
	for _, tc := range []struct {
		name, path, outcome string
		status              int
		errText             string
	}{
		{"2xx", "/ok", "success", 200, ""},
		{"500", "/fail", "failure", 500, "HTTP 500"},
		{"410 deletes nothing", "/gone", "gone", 410, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := e.createWebhook(app.Token, "acc-1", "order.create", recv.URL+tc.path)
			recv.Expect(tc.path, app.Secret)
			r := e.do("POST", "/v1/webhooks/"+w.ID+"/test", app.Token, "")
			if r.status != 200 {
				t.Fatalf("test send: %d %s", r.status, r.raw)
			}
			var out testAnswer
			if err := json.Unmarshal(r.raw, &out); err != nil {
				t.Fatal(err)
			}
			got := out.Test
			if got.Status != tc.status || got.Outcome != tc.outcome || got.Error != tc.errText || got.LatencyMS < 0 {
				t.Fatalf("answer %s, want status %d outcome %s error %q", r.raw, tc.status, tc.outcome, tc.errText)
			}
			var seen []loadtest.Received
			for _, rc := range recv.Received() {
				if rc.Path == tc.path {
					seen = append(seen, rc)
				}
			}
			if len(seen) != 1 {
				t.Fatalf("receiver got %d requests on %s, want 1", len(seen), tc.path)
			}
			rc := seen[0]
			body := `{"object_id":0,"event":"webhook.test","timestamp":` + itoa(fixedNow.Unix()) +
				`,"resource_url":"https://api.tradegecko.com/webhooks/` + w.ID + `.json"}`
			if string(rc.Body) != body || !rc.ValidSig {
				t.Fatalf("receiver got body %s (signature valid: %v), want %s", rc.Body, rc.ValidSig, body)
			}
			h := got.RequestHeaders
			if rc.DeliveryID != got.DeliveryID || len(got.DeliveryID) != contract.DeliveryIDLen ||
				h["X-Gecko-Delivery"] != rc.DeliveryID || h["X-Gecko-Signature"] != rc.Signature ||
				h["Content-Type"] != "application/json" || !strings.HasPrefix(h["User-Agent"], "geckohook/") {
				t.Fatalf("request_headers %v, receiver got delivery %q signature %q", h, rc.DeliveryID, rc.Signature)
			}
			// Nothing retried, the webhook kept (also after a 410).
			if n, err := e.rdb.Keys(context.Background(), "gh:{*").Result(); err != nil || len(n) != 0 {
				t.Fatalf("a test send wrote retry queue keys %v (%v)", n, err)
			}
			if e.reg.Webhook(w.ID) == nil {
				t.Fatal("the webhook is gone after a test send")
			}
			if r := e.do("GET", "/v1/webhooks/"+w.ID, app.Token, ""); r.status != 200 {
				t.Fatalf("GET the tested webhook: %d", r.status)
			}
		})
	}

	t.Run("another application's webhook", func(t *testing.T) {
		w := e.createWebhook(other.Token, "acc-1", "order.create", recv.URL+"/other")
		e.expectError(e.do("POST", "/v1/webhooks/"+w.ID+"/test", app.Token, ""), 404, "not_found", w.ID)
		e.expectError(e.do("POST", "/v1/webhooks/wh_none/test", app.Token, ""), 404, "not_found", "wh_none")
		for _, rc := range recv.Received() {
			if rc.Path == "/other" {
				t.Fatal("another application's webhook was sent a test")
			}
		}
	})
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestTestSendStandardSignature(t *testing.T) {
	e, recv, _ := testSendEnv(t, netguard.Policy{AllowPrivate: true, AllowHTTP: true})
	r := e.do("POST", "/v1/applications", adminToken,
		`{"application":{"name":"std","developer_email":"dev@std.example.com","signature_scheme":"standard"}}`)
	if r.status != 201 {
		t.Fatalf("create app: %d %s", r.status, r.raw)
	}
	var created struct {
		Application struct{ Token, Secret string }
	}
	if err := json.Unmarshal(r.raw, &created); err != nil {
		t.Fatal(err)
	}
	w := e.createWebhook(created.Application.Token, "acc-1", "order.create", recv.URL+"/std")
	r = e.do("POST", "/v1/webhooks/"+w.ID+"/test", created.Application.Token, "")
	var out testAnswer
	if err := json.Unmarshal(r.raw, &out); err != nil || r.status != 200 {
		t.Fatalf("test send: %d %s", r.status, r.raw)
	}
	h := out.Test.RequestHeaders
	if _, ok := h["X-Gecko-Signature"]; ok || h["Webhook-Id"] != out.Test.DeliveryID ||
		!strings.HasPrefix(h["Webhook-Signature"], "v1,") || h["Webhook-Timestamp"] == "" {
		t.Fatalf("standard scheme headers %v", h)
	}
	got := recv.Received()
	if len(got) != 1 || got[0].WebhookSignature != h["Webhook-Signature"] || got[0].WebhookID != out.Test.DeliveryID {
		t.Fatalf("receiver got %+v, headers shown %v", got, h)
	}
}

func TestTestSendRefusedTarget(t *testing.T) {
	// The sender refuses loopback (the production policy); registration
	// here does not, as if the address had been rebound since.
	e, recv, _ := testSendEnv(t, netguard.Policy{AllowHTTP: true})
	app := e.createApp("shop")
	w := e.createWebhook(app.Token, "acc-1", "order.create", recv.URL+"/ok")
	r := e.do("POST", "/v1/webhooks/"+w.ID+"/test", app.Token, "")
	var out testAnswer
	if err := json.Unmarshal(r.raw, &out); err != nil || r.status != 200 {
		t.Fatalf("test send: %d %s", r.status, r.raw)
	}
	if out.Test.Status != 0 || out.Test.Outcome != "failure" || !strings.Contains(out.Test.Error, sender.StageRefusedTarget) {
		t.Fatalf("answer %s, want a refused target failure", r.raw)
	}
	if n := len(recv.Received()); n != 0 {
		t.Fatalf("the receiver got %d requests", n)
	}
}

func TestTestSendRateLimit(t *testing.T) {
	e, _, seconds := testSendEnv(t, netguard.Policy{AllowPrivate: true, AllowHTTP: true})
	app := e.createApp("shop")
	// An address nothing listens on: the limit counts attempts, not answers.
	w := e.createWebhook(app.Token, "acc-1", "order.create", "http://127.0.0.1:1/")
	w2 := e.createWebhook(app.Token, "acc-1", "order.create", "http://127.0.0.1:1/2")
	for i := 0; i < 5; i++ {
		if r := e.do("POST", "/v1/webhooks/"+w.ID+"/test", app.Token, ""); r.status != 200 {
			t.Fatalf("test send %d: %d %s", i+1, r.status, r.raw)
		}
	}
	r := e.do("POST", "/v1/webhooks/"+w.ID+"/test", app.Token, "")
	e.expectError(r, 429, "rate_limited", "5 test sends per minute")
	if ra := r.header.Get("Retry-After"); ra != "12" {
		t.Fatalf("Retry-After %q, want 12 (a token every 12 s)", ra)
	}
	// Another webhook has its own bucket.
	if r := e.do("POST", "/v1/webhooks/"+w2.ID+"/test", app.Token, ""); r.status != 200 {
		t.Fatalf("another webhook's test send: %d %s", r.status, r.raw)
	}
	seconds.Store(11)
	e.expectError(e.do("POST", "/v1/webhooks/"+w.ID+"/test", app.Token, ""), 429, "rate_limited", "")
	seconds.Store(12)
	if r := e.do("POST", "/v1/webhooks/"+w.ID+"/test", app.Token, ""); r.status != 200 {
		t.Fatalf("after 12 s: %d %s", r.status, r.raw)
	}
}

func TestTestSendWithoutSender(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	w := e.createWebhook(app.Token, "acc-1", "order.create", "https://a.example.com/1")
	e.expectError(e.do("POST", "/v1/webhooks/"+w.ID+"/test", app.Token, ""), 503, "sender_unavailable", "")
}

func TestBuckets(t *testing.T) {
	b := newBuckets(5, time.Minute)
	at := fixedNow
	for i := 0; i < 5; i++ {
		if w := b.take("a", at); w != 0 {
			t.Fatalf("take %d waited %v", i, w)
		}
	}
	if w := b.take("a", at); w != 12*time.Second {
		t.Fatalf("6th take: wait %v, want 12s", w)
	}
	if w := b.take("a", at.Add(6*time.Second)); w != 6*time.Second {
		t.Fatalf("half a token later: wait %v, want 6s", w)
	}
	if w := b.take("a", at.Add(12*time.Second)); w != 0 {
		t.Fatalf("a token later: wait %v", w)
	}
	if w := b.take("a", at.Add(time.Hour)); w != 0 {
		t.Fatal("a full bucket refused")
	}
}
