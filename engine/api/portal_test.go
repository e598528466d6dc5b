package api

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// POST /v1/applications/{id}/portal-links mints through Options.PortalLink
// for the admin and for the application itself, never for another one.
func TestPortalLinks(t *testing.T) {
	var minted atomic.Value // the app id of the last link
	var fail atomic.Bool
	e := start(t, func(o *Options) {
		o.PortalLink = func(_ context.Context, appID string) (string, time.Time, error) {
			if fail.Load() {
				return "", time.Time{}, errors.New("redis down")
			}
			minted.Store(appID)
			return "http://portal.example/portal/link/tok", fixedNow.Add(15 * time.Minute), nil
		}
	})
	a, b := e.createApp("alpha"), e.createApp("beta")
	for _, token := range []string{adminToken, a.Token} {
		r := e.do("POST", "/v1/applications/"+a.ID+"/portal-links", token, "")
		if r.status != 201 {
			t.Fatalf("portal link with %.5s…: %d %s", token, r.status, r.raw)
		}
		var out struct {
			PortalLink PortalLinkView `json:"portal_link"`
		}
		if err := json.Unmarshal(r.raw, &out); err != nil {
			t.Fatal(err)
		}
		want := PortalLinkView{URL: "http://portal.example/portal/link/tok", ExpiresAt: "2026-03-04T05:21:07Z"}
		if out.PortalLink != want || minted.Load() != a.ID {
			t.Fatalf("link %+v for %v, want %+v for %s", out.PortalLink, minted.Load(), want, a.ID)
		}
	}
	e.expectError(e.do("POST", "/v1/applications/"+a.ID+"/portal-links", b.Token, ""), 404, "not_found", a.ID)
	e.expectError(e.do("POST", "/v1/applications/"+a.ID+"/portal-links", "", ""), 401, "unauthorized", "bearer")
	e.expectError(e.do("POST", "/v1/applications/"+a.ID+"/portal-links", a.Token, `{"pad":"`+string(make([]byte, 70<<10))+`"}`),
		413, "body_too_large", "larger")
	fail.Store(true)
	e.expectError(e.do("POST", "/v1/applications/"+a.ID+"/portal-links", adminToken, ""), 503, "store_unavailable", "try again")

	off := start(t, nil)
	c := off.createApp("gamma")
	off.expectError(off.do("POST", "/v1/applications/"+c.ID+"/portal-links", c.Token, ""), 503, "portal_unavailable", "not configured")
	// Without a portal, its paths are not found.
	off.expectError(off.do("GET", "/portal/", "", ""), 404, "not_found", "portal")
}

// Call runs a request as the application through the same handlers: its
// own webhooks only, and the admin endpoints stay closed to it.
func TestCallActsAsTheApplication(t *testing.T) {
	var served atomic.Int32
	e := start(t, func(o *Options) {
		o.Portal = func(a *API) fasthttp.RequestHandler {
			return func(ctx *fasthttp.RequestCtx) { served.Add(1); ctx.SetStatusCode(299) }
		}
	})
	a, b := e.createApp("alpha"), e.createApp("beta")
	hook := e.createWebhook(b.Token, "acct", "order.create", "https://hooks.example.com/b")
	api := New(Options{Registry: e.reg})
	appA := e.reg.App(a.ID)
	status, body := api.Call(appA, "GET", "/v1/webhooks/"+hook.ID, nil)
	if status != 404 {
		t.Fatalf("A reading B's webhook: %d %s", status, body)
	}
	status, body = api.Call(appA, "POST", "/v1/applications", []byte(`{"application":{"name":"x","developer_email":"x@example.com"}}`))
	if status != 403 {
		t.Fatalf("A creating an application: %d %s", status, body)
	}
	status, body = api.Call(e.reg.App(b.ID), "GET", "/v1/webhooks?limit=1", nil)
	var page webhookPage
	if err := json.Unmarshal(body, &page); status != 200 || err != nil || len(page.Webhooks) != 1 || page.Webhooks[0].ID != hook.ID {
		t.Fatalf("B listing its webhooks: %d %s %v", status, body, err)
	}
	if r := e.do("GET", "/portal/anything", "", ""); r.status != 299 || served.Load() != 1 {
		t.Fatalf("/portal/ not handed to the portal: %d, served %d", r.status, served.Load())
	}
}

// A portal link's token never reaches the log.
func TestLoggedPathHidesLinkTokens(t *testing.T) {
	for path, want := range map[string]string{
		"/portal/link/s3cr3t-token": "/portal/link/…",
		"/portal/link/":             "/portal/link/",
		"/v1/webhooks/wh_1":         "/v1/webhooks/wh_1",
	} {
		if got := string(loggedPath([]byte(path))); got != want {
			t.Errorf("loggedPath(%q) = %q, want %q", path, got, want)
		}
	}
}
