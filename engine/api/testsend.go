package api

import (
	"crypto/rand"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/sender"
)

// TestEvent is the event name of a test send. It is not in the catalog:
// no webhook subscribes to it, and only POST /v1/webhooks/{id}/test sends
// it.
const TestEvent = "webhook.test"

// TestSendView is the answer to a test send: what the receiver answered
// and the headers it was sent.
type TestSendView struct {
	DeliveryID string `json:"delivery_id"`
	// Status is the HTTP status read, 0 when none was (Error says why).
	Status    int    `json:"status"`
	LatencyMS int64  `json:"latency_ms"`
	Error     string `json:"error,omitempty"`
	// Outcome is how a real delivery would be judged: success, failure
	// or gone. A test's gone deletes nothing.
	Outcome        string            `json:"outcome"`
	RequestHeaders map[string]string `json:"request_headers"`
}

// testWebhook: POST /v1/webhooks/{id}/test (application). One delivery of
// a webhook.test event, now, through the dispatcher's sender (its target
// policy and time limit), signed by the application's scheme. It is not
// retried, not published as an outcome and not counted in the webhook's
// health: a 410 answer deletes nothing. No request body.
func (a *API) testWebhook(ctx *fasthttp.RequestCtx, c caller) *apiError {
	w, e := a.ownWebhook(ctx, c)
	if e != nil {
		return e
	}
	if a.o.Sender == nil {
		return &apiError{fasthttp.StatusServiceUnavailable, "sender_unavailable", "test sends are not configured on this server"}
	}
	if wait := a.tests.take(w.ID, a.o.Now()); wait > 0 {
		secs := int(math.Ceil(wait.Seconds()))
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, strconv.Itoa(secs))
		return &apiError{fasthttp.StatusTooManyRequests, "rate_limited",
			"at most " + strconv.Itoa(a.o.TestSendsPerMinute) + " test sends per minute per webhook; try again in " + strconv.Itoa(secs) + " s"}
	}
	hook, app := a.o.Registry.Target(w.ID)
	if hook == nil || app == nil {
		return &apiError{fasthttp.StatusNotFound, "not_found", "webhook " + strconv.Quote(w.ID) + " not found"}
	}
	now := a.o.Now()
	ev := contract.Event{
		AccountID: hook.AccountID, Event: TestEvent, ObjectID: 0, Timestamp: now.Unix(),
		// Set here, so the catalog (which has no webhook.test) is not asked.
		ResourceURL: a.o.ResourceBase + "/webhooks/" + hook.ID + ".json",
	}
	body := contract.AppendBody(nil, &ev, a.o.ResourceBase, a.o.Catalog)
	id := randomDeliveryID()
	var sig sender.Signatures
	if app.SignsGecko() {
		sig.Gecko = app.Signer().AppendSignature(nil, body)
	}
	start := time.Now()
	if app.SignsStandard() {
		ts := start.Unix()
		sig.Timestamp = strconv.AppendInt(nil, ts, 10)
		sig.Standard = app.AppendStandardSignature(nil, id, ts, body)
	}
	res, headers := a.o.Sender.SendShowing(hook.Address, body, id, sig)
	took := time.Since(start)
	a.o.Log.Info().Str("app_id", app.ID).Str("webhook_id", hook.ID).Int("status", res.Status).
		Str("outcome", res.Outcome.String()).Str("delivery", string(id)).Msg("test send")
	writeJSON(ctx, fasthttp.StatusOK, map[string]TestSendView{"test": {
		DeliveryID: string(id), Status: res.Status, LatencyMS: took.Milliseconds(), Error: res.ErrorText(),
		Outcome: res.Outcome.String(), RequestHeaders: headers,
	}})
	return nil
}

// randomDeliveryID returns a fresh version-4 UUID in text form: a test
// send belongs to no Kafka record, so it has no derived id.
func randomDeliveryID() []byte {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = (u[6] & 0x0f) | 0x40
	u[8] = (u[8] & 0x3f) | 0x80
	const hex = "0123456789abcdef"
	out := make([]byte, 0, contract.DeliveryIDLen)
	for i, b := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hex[b>>4], hex[b&0xf])
	}
	return out
}

// maxBuckets bounds the buckets kept; past it, full ones are dropped (a
// full bucket is the same as none).
const maxBuckets = 10000

// buckets is a token bucket per key: size tokens, refilled evenly over
// per. Safe for concurrent use; the clock is the caller's.
type buckets struct {
	mu   sync.Mutex
	size float64
	rate float64 // tokens per second
	m    map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newBuckets(size int, per time.Duration) *buckets {
	return &buckets{size: float64(size), rate: float64(size) / per.Seconds(), m: map[string]*bucket{}}
}

// take spends a token of key at now; when there is none it returns how
// long until there is one, and spends nothing.
func (b *buckets) take(key string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.m[key]
	if k == nil {
		if len(b.m) >= maxBuckets {
			b.prune(now)
		}
		k = &bucket{tokens: b.size, at: now}
		b.m[key] = k
	}
	if elapsed := now.Sub(k.at).Seconds(); elapsed > 0 {
		k.tokens = min(b.size, k.tokens+elapsed*b.rate)
		k.at = now
	}
	if k.tokens >= 1 {
		k.tokens--
		return 0
	}
	return time.Duration((1 - k.tokens) / b.rate * float64(time.Second))
}

func (b *buckets) prune(now time.Time) {
	for key, k := range b.m {
		if k.tokens+now.Sub(k.at).Seconds()*b.rate >= b.size {
			delete(b.m, key)
		}
	}
}
