package portal

import (
	"context"
	"net/url"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/api"
	"github.com/geckohook/geckohook/engine/coordinator"
	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/mail"
	"github.com/geckohook/geckohook/engine/streak"
)

// daysKept is how many mail days of records the portal shows: as many as
// the coordinators keep (daylog.TTL).
const daysKept = int(daylog.TTL / (24 * time.Hour))

// webhookRow is a webhook with its health.
type webhookRow struct {
	api.WebhookView
	Health   streak.State
	DeleteAt time.Time // when the 3-day rule deletes it, while failing
}

// webhookForm is what the create form holds.
type webhookForm struct{ AccountID, Event, Address string }

// refusal is an action the API refused: its status and message, and the
// form to show again.
type refusal struct {
	status int
	msg    string
	form   webhookForm
}

type webhooksData struct {
	Webhooks      []webhookRow
	Cursor, Next  string // this page's cursor and the next page's
	HealthUnknown bool   // health could not be read
	Events        []string
	Form          webhookForm
	Deleted       []*daylog.Entry // deleted in the last days, newest first
	DeletedMore   int             // deleted then but past mail.MaxListed, not listed
	DeleteAfter   time.Duration
}

// webhooksPage: GET /portal/[?cursor=C]: one page of the application's
// webhooks with their health, the create form, and the webhooks deleted in
// the last days; after a refused create, with its form and the API's
// message.
func (r *request) webhooksPage(refused *refusal) {
	cursor := string(r.ctx.QueryArgs().Peek("cursor"))
	q := url.Values{"limit": {strconv.Itoa(r.p.o.PageSize)}}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	var list struct {
		Webhooks   []api.WebhookView `json:"webhooks"`
		NextCursor string            `json:"next_cursor"`
	}
	if status, msg := r.call("GET", "/v1/webhooks?"+q.Encode(), nil, &list); msg != "" {
		r.message(status, "Webhooks", msg)
		return
	}
	d := &webhooksData{Cursor: cursor, Next: list.NextCursor, Events: r.p.o.Catalog.Names(), DeleteAfter: r.p.o.Policy.After()}
	if refused != nil {
		d.Form = refused.form
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	ids := make([]string, len(list.Webhooks))
	for i, w := range list.Webhooks {
		ids[i] = w.ID
	}
	health, err := coordinator.Health(ctx, r.p.o.Redis, coordinator.Keys{Prefix: r.p.o.Prefix}, ids)
	if err != nil {
		r.p.o.Log.Warn().Err(err).Msg("portal cannot read webhook health")
		d.HealthUnknown = true
	}
	for i, w := range list.Webhooks {
		row := webhookRow{WebhookView: w}
		if health != nil {
			row.Health = health[i]
			if row.Health.Failing() {
				row.DeleteAt = r.p.o.Policy.DeleteAt(row.Health.StreakStart)
			}
		}
		d.Webhooks = append(d.Webhooks, row)
	}
	deleted, err := mail.ReadDeleted(ctx, r.p.o.Redis, daylog.Keys{Prefix: r.p.o.Prefix}, r.app.ID, r.p.keptDays(), r.p.o.Log)
	if err != nil {
		r.p.o.Log.Warn().Err(err).Msg("portal cannot read day records")
	}
	d.Deleted = deleted
	if n := len(deleted) - mail.MaxListed; n > 0 {
		d.Deleted, d.DeletedMore = deleted[:mail.MaxListed], n
	}
	pg := r.page("Webhooks", d)
	status := fasthttp.StatusOK
	if refused != nil {
		status, pg.Error = refused.status, refused.msg
	}
	r.p.render(r.ctx, status, "webhooks", pg)
}

// createWebhook: POST /portal/webhooks (account_id, event, address).
func (r *request) createWebhook() {
	args := r.ctx.PostArgs()
	f := webhookForm{AccountID: string(args.Peek("account_id")), Event: string(args.Peek("event")), Address: string(args.Peek("address"))}
	var out struct{ Webhook api.WebhookView }
	body := map[string]any{"webhook": map[string]string{"account_id": f.AccountID, "event": f.Event, "address": f.Address}}
	if status, msg := r.call("POST", "/v1/webhooks", body, &out); msg != "" {
		r.webhooksPage(&refusal{status, msg, f})
		return
	}
	r.p.o.Log.Info().Str("app_id", r.app.ID).Str("webhook_id", out.Webhook.ID).Msg("webhook created in the portal")
	r.ctx.Redirect("/portal/webhooks/"+url.PathEscape(out.Webhook.ID), fasthttp.StatusSeeOther)
}

// keptDays are the mail days whose records the portal shows, today first.
func (p *Portal) keptDays() []string {
	now := p.o.Now()
	days := make([]string, daysKept)
	for i := range days {
		days[i] = p.o.Policy.Day(now.Add(-time.Duration(i) * 24 * time.Hour))
	}
	return days
}
