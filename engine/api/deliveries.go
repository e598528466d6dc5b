package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/shard"
)

// DeliveryView is a delivery in the retry queues as the API shows it.
type DeliveryView struct {
	ID            string `json:"id"` // X-Gecko-Delivery
	WebhookID     string `json:"webhook_id"`
	State         string `json:"state"` // scheduled or dead
	Event         string `json:"event"`
	AccountID     string `json:"account_id"`
	Attempts      int    `json:"attempts"`
	Retries       int    `json:"retries"`
	FirstAttempt  string `json:"first_attempt_at"`
	LastAttempt   string `json:"last_attempt_at"`
	LastStatus    int    `json:"last_status,omitempty"`
	LastError     string `json:"last_error,omitempty"`
	NextAttemptAt string `json:"next_attempt_at,omitempty"` // scheduled
	// NextAttemptReason says what set next_attempt_at: "backoff" (the
	// retry schedule), "retry_after" (the receiver's Retry-After asked for
	// longer) or "host_saturated" (deferred without an attempt while the
	// host is at its connection limit).
	NextAttemptReason string          `json:"next_attempt_reason,omitempty"`
	DiedAt            string          `json:"died_at,omitempty"` // dead
	Payload           json.RawMessage `json:"payload"`
}

func deliveryView(d *shard.Delivery) DeliveryView {
	v := DeliveryView{
		ID: d.ID, WebhookID: d.WebhookID, State: string(d.State), Event: d.Event, AccountID: d.AccountID,
		Attempts: d.Attempts, Retries: d.Retries, FirstAttempt: responseTime(d.FirstAttempt),
		LastAttempt: responseTime(d.LastAttempt), LastStatus: d.LastStatus, LastError: d.LastError,
		Payload: json.RawMessage(d.Body),
	}
	if !json.Valid(d.Body) {
		v.Payload = nil
	}
	if d.State == shard.Dead {
		v.DiedAt = responseTime(d.At)
	} else {
		v.NextAttemptAt = responseTime(d.At)
		switch {
		case d.RetryAfter:
			v.NextAttemptReason = "retry_after"
		case d.Deferrals > 0:
			v.NextAttemptReason = "host_saturated"
		default:
			v.NextAttemptReason = "backoff"
		}
	}
	return v
}

func queuesUnavailable() *apiError {
	return &apiError{fasthttp.StatusServiceUnavailable, "queue_unavailable", "the retry queues cannot be read right now; try again"}
}

// A list answers defaultListLimit items unless its limit parameter asks for
// 1 to maxListLimit.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

// listDeliveries: GET /v1/webhooks/{id}/deliveries?state=scheduled|dead&limit=N
// (application): the webhook's deliveries waiting for a retry, or dead.
func (a *API) listDeliveries(ctx *fasthttp.RequestCtx, c caller) *apiError {
	w, e := a.ownWebhook(ctx, c)
	if e != nil {
		return e
	}
	args := ctx.QueryArgs()
	state := shard.State(args.Peek("state"))
	switch state {
	case "":
		state = shard.Scheduled
	case shard.Scheduled, shard.Dead:
	default:
		return &apiError{fasthttp.StatusBadRequest, "invalid_query", fmt.Sprintf("state must be scheduled or dead, not %.40q", state)}
	}
	limit, e := listLimit(args.Peek("limit"))
	if e != nil {
		return e
	}
	if a.o.Deliveries == nil {
		return queuesUnavailable()
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	list, err := a.o.Deliveries.List(sctx, w.ID, state, limit)
	if err != nil {
		a.o.Log.Error().Err(err).Str("webhook_id", w.ID).Msg("cannot list deliveries")
		return queuesUnavailable()
	}
	views := make([]DeliveryView, len(list))
	for i := range list {
		views[i] = deliveryView(&list[i])
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"deliveries": views})
	return nil
}

// retryDelivery: POST /v1/deliveries/{id}/retry (application): make a
// scheduled or dead delivery due now. A dead one starts a fresh retry
// schedule.
func (a *API) retryDelivery(ctx *fasthttp.RequestCtx, c caller) *apiError {
	id, _ := pathID(string(ctx.Path()), "/v1/deliveries/")
	notFound := &apiError{fasthttp.StatusNotFound, "not_found", fmt.Sprintf("delivery %.100q not found among scheduled and dead deliveries", id)}
	if len(id) > 64 {
		return notFound
	}
	if a.o.Deliveries == nil {
		return queuesUnavailable()
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	d, q, err := a.o.Deliveries.Find(sctx, id)
	if errors.Is(err, shard.ErrNotFound) {
		return notFound
	}
	if err != nil {
		a.o.Log.Error().Err(err).Str("delivery", id).Msg("cannot look a delivery up")
		return queuesUnavailable()
	}
	if d.AppID != c.app.ID {
		return notFound
	}
	if a.o.Registry.Webhook(d.WebhookID) == nil {
		return &apiError{fasthttp.StatusConflict, "webhook_deleted", fmt.Sprintf("webhook %s of delivery %s was deleted; nothing to retry", d.WebhookID, id)}
	}
	now := a.o.Now()
	if d.State == shard.Dead {
		moved, err := q.Revive(sctx, []string{id}, now)
		if err != nil {
			a.o.Log.Error().Err(err).Str("delivery", id).Msg("cannot revive a dead delivery")
			return queuesUnavailable()
		}
		if len(moved) == 0 {
			return notFound // retried or removed meanwhile
		}
		d.Retries = 0
	} else {
		ok, err := q.RetryNow(sctx, d.Record, now)
		if err != nil {
			a.o.Log.Error().Err(err).Str("delivery", id).Msg("cannot make a delivery due")
			return queuesUnavailable()
		}
		if !ok {
			return notFound // delivered or removed meanwhile
		}
	}
	d.State, d.At = shard.Scheduled, now
	writeJSON(ctx, fasthttp.StatusAccepted, map[string]DeliveryView{"delivery": deliveryView(d)})
	return nil
}

// replayDead: POST /v1/webhooks/{id}/replay-dead (application): every dead
// delivery of the webhook back to due now, each with a fresh schedule.
func (a *API) replayDead(ctx *fasthttp.RequestCtx, c caller) *apiError {
	w, e := a.ownWebhook(ctx, c)
	if e != nil {
		return e
	}
	if a.o.Deliveries == nil {
		return queuesUnavailable()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 4*storeTimeout)
	defer cancel()
	n, err := a.o.Deliveries.ReviveWebhook(sctx, w.ID, a.o.Now())
	if err != nil {
		a.o.Log.Error().Err(err).Str("webhook_id", w.ID).Int("replayed", n).Msg("cannot replay dead deliveries")
		return queuesUnavailable()
	}
	writeJSON(ctx, fasthttp.StatusAccepted, map[string]int{"replayed": n})
	return nil
}
