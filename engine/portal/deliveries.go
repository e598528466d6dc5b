package portal

import (
	"net/url"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/api"
)

type webhookData struct {
	Webhook   api.WebhookView
	Scheduled []api.DeliveryView
	Dead      []api.DeliveryView
	Test      *api.TestSendView // the test send just made
	Recovery  *api.RecoveryView // the recovery just started
	Since     string            // the recover form's values
	Until     string
}

// deliveriesShown bounds each list of the deliveries page.
const deliveriesShown = 100

// webhookPage: GET /portal/webhooks/{id}: the webhook's scheduled and dead
// deliveries and its actions. After an action, notice or refused says how
// it went and status is the page's.
func (r *request) webhookPage(id string, done *outcome) {
	base := "/v1/webhooks/" + url.PathEscape(id)
	d := &webhookData{}
	var got struct{ Webhook api.WebhookView }
	if status, msg := r.call("GET", base, nil, &got); msg != "" {
		r.message(status, "Webhook", msg)
		return
	}
	d.Webhook = got.Webhook
	pg := r.page("Webhook "+d.Webhook.Address, d)
	for _, state := range []string{"scheduled", "dead"} {
		var list struct{ Deliveries []api.DeliveryView }
		if _, msg := r.call("GET", base+"/deliveries?state="+state+"&limit="+strconv.Itoa(deliveriesShown), nil, &list); msg != "" {
			pg.Error = msg
		}
		if state == "scheduled" {
			d.Scheduled = list.Deliveries
		} else {
			d.Dead = list.Deliveries
		}
	}
	status := fasthttp.StatusOK
	if done != nil {
		d.Test, d.Recovery, d.Since, d.Until = done.test, done.recovery, done.since, done.until
		pg.Notice = done.notice
		if done.err != "" {
			pg.Error, status = done.err, done.status
		}
	}
	r.p.render(r.ctx, status, "webhook", pg)
}

// outcome is how an action on a webhook went.
type outcome struct {
	notice       string
	err          string // the API's refusal
	status       int    // the API's status of a refusal
	test         *api.TestSendView
	recovery     *api.RecoveryView
	since, until string
}

// webhookAction: POST /portal/webhooks/{id}/{delete|test|retry|replay-dead|recover}.
func (r *request) webhookAction(id, action string) {
	base := "/v1/webhooks/" + url.PathEscape(id)
	args := r.ctx.PostArgs()
	o := &outcome{}
	switch action {
	case "delete":
		if status, msg := r.call("DELETE", base, nil, nil); msg != "" {
			r.message(status, "Webhook not deleted", msg)
			return
		}
		r.ctx.Redirect("/portal/", fasthttp.StatusSeeOther)
		return
	case "test":
		var out struct{ Test api.TestSendView }
		o.status, o.err = r.call("POST", base+"/test", nil, &out)
		if o.err == "" {
			o.test = &out.Test
			o.notice = "Test delivery sent."
		}
	case "retry":
		delivery := string(args.Peek("delivery"))
		o.status, o.err = r.call("POST", "/v1/deliveries/"+url.PathEscape(delivery)+"/retry", nil, nil)
		o.notice = "Delivery " + delivery + " is due now; it is attempted within seconds."
	case "replay-dead":
		var out struct{ Replayed int }
		o.status, o.err = r.call("POST", base+"/replay-dead", nil, &out)
		o.notice = strconv.Itoa(out.Replayed) + " dead deliveries are due again, each with a fresh retry schedule."
	case "recover":
		o.since, o.until = string(args.Peek("since")), string(args.Peek("until"))
		var out struct{ Recovery api.RecoveryView }
		window := map[string]string{"since": formTime(o.since)}
		if o.until != "" {
			window["until"] = formTime(o.until) // else now
		}
		o.status, o.err = r.call("POST", base+"/recover", window, &out)
		if o.err == "" {
			o.recovery = &out.Recovery
			o.notice = "Recovery started: the events of that window are delivered again."
		}
	default:
		r.message(fasthttp.StatusNotFound, "Not found", "There is no such action.")
		return
	}
	if o.err != "" {
		o.notice = ""
	}
	r.webhookPage(id, o)
}

// formTime reads a datetime-local field (UTC) as RFC 3339; anything else
// goes to the API as typed, which says what it expects.
func formTime(s string) string {
	for _, layout := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC().Format(time.RFC3339)
		}
	}
	return s
}
