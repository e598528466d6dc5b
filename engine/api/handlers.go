package api

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/registry"
)

const (
	maxNameLen      = 200
	maxEmailLen     = 254
	maxAccountIDLen = 256
	storeTimeout    = 5 * time.Second
)

// ApplicationView is an application as the API shows it. Secret (in both
// forms) and Token are only set in the answers that make them: creation and
// rotation.
type ApplicationView struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	DeveloperEmail  string `json:"developer_email"`
	SignatureScheme string `json:"signature_scheme"`
	Secret          string `json:"secret,omitempty"`
	SecretWhsec     string `json:"secret_whsec,omitempty"` // "whsec_" + Base64(secret), for Standard Webhooks libraries
	Token           string `json:"token,omitempty"`
	// When the secret and token replaced by the last rotations stop
	// working (RFC 3339, UTC); absent when none is still valid.
	PreviousSecretExpiresAt string `json:"previous_secret_expires_at,omitempty"`
	PreviousTokenExpiresAt  string `json:"previous_token_expires_at,omitempty"`
}

// WebhookView is a webhook as the API shows it.
type WebhookView struct {
	ID            string `json:"id"`
	ApplicationID string `json:"application_id"`
	AccountID     string `json:"account_id"`
	Event         string `json:"event"`
	Address       string `json:"address"`
	CreatedAt     string `json:"created_at"` // RFC 3339, UTC
}

func webhookView(w *registry.Webhook) WebhookView {
	return WebhookView{
		ID: w.ID, ApplicationID: w.AppID, AccountID: w.AccountID,
		Event: w.Event, Address: w.Address, CreatedAt: responseTime(w.CreatedAt),
	}
}

// createApp: POST /v1/applications (admin).
func (a *API) createApp(ctx *fasthttp.RequestCtx, _ caller) *apiError {
	var req struct {
		Application *struct {
			Name            string `json:"name"`
			DeveloperEmail  string `json:"developer_email"`
			SignatureScheme string `json:"signature_scheme"`
		} `json:"application"`
	}
	if e := decodeBody(ctx, &req); e != nil {
		return e
	}
	in := req.Application
	switch {
	case in == nil:
		return missing("application")
	case in.Name == "":
		return missing("application.name")
	case in.DeveloperEmail == "":
		return missing("application.developer_email")
	case utf8.RuneCountInString(in.Name) > maxNameLen || !utf8.ValidString(in.Name):
		return invalid("invalid_field", fmt.Sprintf("application.name must be 1 to %d characters of UTF-8", maxNameLen))
	case !bareEmail(in.DeveloperEmail):
		return invalid("invalid_field", "application.developer_email must be a bare email address such as dev@example.com")
	case in.SignatureScheme != "" && !registry.ValidScheme(in.SignatureScheme):
		return errScheme(in.SignatureScheme)
	}
	if in.SignatureScheme == "" {
		in.SignatureScheme = registry.SchemeGecko
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	app, token, err := a.o.Registry.CreateAppWithScheme(sctx, in.Name, in.DeveloperEmail, in.SignatureScheme)
	if err != nil {
		a.o.Log.Error().Err(err).Msg("cannot create application")
		return storeUnavailable()
	}
	v := appView(app)
	v.Secret, v.SecretWhsec, v.Token = app.Secret, app.StandardSecret(), token
	writeJSON(ctx, fasthttp.StatusCreated, map[string]ApplicationView{"application": v})
	return nil
}

func bareEmail(s string) bool {
	if len(s) > maxEmailLen {
		return false
	}
	addr, err := mail.ParseAddress(s)
	return err == nil && addr.Name == "" && addr.Address == s
}

func storeUnavailable() *apiError {
	return &apiError{fasthttp.StatusServiceUnavailable, "store_unavailable", "the registry cannot be written right now; try again"}
}

// createWebhook: POST /v1/webhooks (application).
func (a *API) createWebhook(ctx *fasthttp.RequestCtx, c caller) *apiError {
	var req struct {
		Webhook *struct {
			AccountID string `json:"account_id"`
			Event     string `json:"event"`
			Address   string `json:"address"`
		} `json:"webhook"`
	}
	if e := decodeBody(ctx, &req); e != nil {
		return e
	}
	in := req.Webhook
	switch {
	case in == nil:
		return missing("webhook")
	case in.AccountID == "":
		return missing("webhook.account_id")
	case in.Event == "":
		return missing("webhook.event")
	case in.Address == "":
		return missing("webhook.address")
	case len(in.AccountID) > maxAccountIDLen:
		return invalid("invalid_field", fmt.Sprintf("webhook.account_id must be 1 to %d characters", maxAccountIDLen))
	}
	if _, ok := a.o.Catalog.ResourcePath(in.Event); !ok {
		return invalid("unknown_event", fmt.Sprintf("event %.100q is not in the event catalog", in.Event))
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := a.o.Policy.CheckAddress(sctx, in.Address, a.o.Lookup); err != nil {
		return invalid("invalid_address", err.Error())
	}
	w, err := a.o.Registry.CreateWebhook(sctx, registry.Webhook{
		AppID: c.app.ID, AccountID: in.AccountID, Event: in.Event, Address: in.Address,
	})
	if err != nil {
		a.o.Log.Error().Err(err).Str("app_id", c.app.ID).Msg("cannot create webhook")
		return storeUnavailable()
	}
	writeJSON(ctx, fasthttp.StatusCreated, map[string]WebhookView{"webhook": webhookView(w)})
	return nil
}

// listWebhooks: GET /v1/webhooks[?account_id=][&limit=N][&cursor=C]
// (application): one page of the application's webhooks in the registry's
// order (created_at, then id), and next_cursor when more follow.
func (a *API) listWebhooks(ctx *fasthttp.RequestCtx, c caller) *apiError {
	args := ctx.QueryArgs()
	limit, e := listLimit(args.Peek("limit"))
	if e != nil {
		return e
	}
	var after *webhookCursor
	if raw := args.Peek("cursor"); len(raw) > 0 { // an empty cursor is the first page
		cur, err := decodeWebhookCursor(string(raw))
		if err != nil {
			return &apiError{fasthttp.StatusBadRequest, "invalid_query", "cursor is not one this API returned: " + err.Error()}
		}
		after = &cur
	}
	var from func(*registry.Webhook) bool
	if after != nil {
		from = after.before
	}
	page, more := a.o.Registry.WebhooksAfter(c.app.ID, string(args.Peek("account_id")), from, limit)
	out := webhookPage{Webhooks: make([]WebhookView, len(page))}
	for i, w := range page {
		out.Webhooks[i] = webhookView(w)
	}
	if more {
		out.NextCursor = encodeWebhookCursor(page[len(page)-1])
	}
	writeJSON(ctx, fasthttp.StatusOK, out)
	return nil
}

// webhookPage is the answer to GET /v1/webhooks.
type webhookPage struct {
	Webhooks []WebhookView `json:"webhooks"`
	// NextCursor, when set, asks for the next page; absent on the last.
	NextCursor string `json:"next_cursor,omitempty"`
}

// listLimit parses a list's limit parameter: defaultListLimit when absent,
// else a whole number from 1 to maxListLimit.
func listLimit(raw []byte) (int, *apiError) {
	if raw == nil {
		return defaultListLimit, nil
	}
	n, err := strconv.Atoi(string(raw))
	if err != nil || n < 1 || n > maxListLimit {
		return 0, &apiError{fasthttp.StatusBadRequest, "invalid_query", fmt.Sprintf("limit must be a whole number from 1 to %d", maxListLimit)}
	}
	return n, nil
}

// webhookCursor is the position after the last webhook of a page, in the
// registry's order: created_at, then id. A position rather than an index,
// so webhooks created or deleted between two pages neither repeat nor
// shift the ones not yet listed.
type webhookCursor struct {
	createdAt time.Time
	id        string
}

// maxCursorLen bounds a cursor parameter before it is decoded.
const maxCursorLen = 128

// encodeWebhookCursor makes the opaque cursor that resumes after w:
// base64url (unpadded) of "<created_at Unix nanoseconds>:<id>".
func encodeWebhookCursor(w *registry.Webhook) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(w.CreatedAt.UnixNano(), 10) + ":" + w.ID))
}

func decodeWebhookCursor(s string) (webhookCursor, error) {
	if len(s) > maxCursorLen {
		return webhookCursor{}, fmt.Errorf("it is longer than %d characters", maxCursorLen)
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return webhookCursor{}, errors.New("it is not base64url")
	}
	nanos, id, ok := strings.Cut(string(raw), ":")
	n, err := strconv.ParseInt(nanos, 10, 64)
	if !ok || err != nil || id == "" || !utf8.ValidString(id) {
		return webhookCursor{}, errors.New("it does not name a position")
	}
	return webhookCursor{time.Unix(0, n), id}, nil
}

// before reports whether the cursor's position comes before w.
func (c *webhookCursor) before(w *registry.Webhook) bool {
	return cmp.Or(c.createdAt.Compare(w.CreatedAt), strings.Compare(c.id, w.ID)) < 0
}

// ownWebhook returns the caller's webhook named in the path; another
// application's webhook is reported as not found, never as forbidden.
func (a *API) ownWebhook(ctx *fasthttp.RequestCtx, c caller) (*registry.Webhook, *apiError) {
	id, _ := pathID(string(ctx.Path()), "/v1/webhooks/")
	w := a.o.Registry.Webhook(id)
	if w == nil || w.AppID != c.app.ID {
		return nil, &apiError{fasthttp.StatusNotFound, "not_found", fmt.Sprintf("webhook %.100q not found", id)}
	}
	return w, nil
}

// getWebhook: GET /v1/webhooks/{id} (application).
func (a *API) getWebhook(ctx *fasthttp.RequestCtx, c caller) *apiError {
	w, e := a.ownWebhook(ctx, c)
	if e != nil {
		return e
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]WebhookView{"webhook": webhookView(w)})
	return nil
}

// deleteWebhook: DELETE /v1/webhooks/{id} (application).
func (a *API) deleteWebhook(ctx *fasthttp.RequestCtx, c caller) *apiError {
	w, e := a.ownWebhook(ctx, c)
	if e != nil {
		return e
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := a.o.Registry.DeleteWebhook(sctx, w.ID); err != nil {
		if errors.Is(err, registry.ErrNotFound) {
			return &apiError{fasthttp.StatusNotFound, "not_found", fmt.Sprintf("webhook %q not found", w.ID)}
		}
		a.o.Log.Error().Err(err).Str("webhook_id", w.ID).Msg("cannot delete webhook")
		return storeUnavailable()
	}
	ctx.SetStatusCode(fasthttp.StatusNoContent)
	return nil
}

// ingestEvent: POST /v1/events (application or admin). The inner object is
// validated with contract.DecodeEvent, exactly as the dispatcher decodes a
// Kafka value (so both accept and refuse the same events), and written to
// Kafka with contract.AppendValue.
func (a *API) ingestEvent(ctx *fasthttp.RequestCtx, c caller) *apiError {
	var req struct {
		Event json.RawMessage `json:"event"`
	}
	if e := decodeBody(ctx, &req); e != nil {
		return e
	}
	if len(req.Event) == 0 || string(req.Event) == "null" {
		return missing("event")
	}
	ev, err := contract.DecodeEvent(req.Event, nil, a.o.Now().Unix(), a.o.Catalog)
	if err != nil {
		var de *contract.DecodeError
		if !errors.As(err, &de) {
			return invalid("invalid_field", err.Error())
		}
		if de.Reason == "invalid_json" {
			return &apiError{fasthttp.StatusBadRequest, "invalid_json", "event: " + de.Detail}
		}
		switch de.Reason {
		case "missing_field":
			field, _, _ := strings.Cut(de.Detail, " ")
			return missing("event." + field)
		case "unknown_event":
			return invalid(de.Reason, de.Detail)
		}
		return invalid(de.Reason, "event."+de.Detail)
	}
	if a.o.Produce == nil {
		return &apiError{fasthttp.StatusServiceUnavailable, "kafka_unavailable", "event ingest is not configured on this server"}
	}
	pctx, cancel := context.WithTimeout(context.Background(), a.o.ProduceTimeout)
	defer cancel()
	if err := a.o.Produce(pctx, []byte(ev.AccountID), contract.AppendValue(nil, &ev)); err != nil {
		l := a.o.Log.Warn().Err(err).Str("event", ev.Event)
		if c.app != nil {
			l = l.Str("app_id", c.app.ID)
		}
		l.Msg("cannot produce event")
		return &apiError{fasthttp.StatusServiceUnavailable, "kafka_unavailable", "the event could not be written to Kafka; try again"}
	}
	writeJSON(ctx, fasthttp.StatusAccepted, map[string]contract.Event{"event": ev})
	return nil
}
