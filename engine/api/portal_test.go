package api

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/registry"
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

// A portal page is one request in geckohook_api_requests_total, under
// route "portal": the API calls it makes in-process are not counted again.
func TestCallsAreNotCountedAsRequests(t *testing.T) {
	var app atomic.Pointer[registry.App]
	var inner atomic.Int32 // statuses of the inner calls, summed
	e := start(t, func(o *Options) {
		o.Portal = func(a *API) fasthttp.RequestHandler {
			return func(ctx *fasthttp.RequestCtx) {
				list, _ := a.Call(app.Load(), "GET", "/v1/webhooks", nil)
				missing, _ := a.Call(app.Load(), "GET", "/v1/webhooks/wh_none", nil)
				inner.Add(int32(list + missing))
				ctx.SetStatusCode(fasthttp.StatusOK)
			}
		}
	})
	app.Store(e.reg.App(e.createApp("alpha").ID))
	for range 2 {
		if r := e.do("GET", "/portal/", "", ""); r.status != 200 {
			t.Fatalf("portal page: %d", r.status)
		}
	}
	if got := inner.Load(); got != 2*(200+404) {
		t.Fatalf("inner calls answered %d in sum, want 2×(200+404)", got)
	}
	r := e.do("GET", "/metrics", "", "")
	if !strings.Contains(string(r.raw), `geckohook_api_requests_total{route="portal",code="200"} 2`+"\n") {
		t.Fatalf("metrics lack the 2 portal pages:\n%s", r.raw)
	}
	for _, line := range strings.Split(string(r.raw), "\n") {
		if strings.HasPrefix(line, "geckohook_api_requests_total{") && (strings.Contains(line, `route="webhooks"`) ||
			strings.Contains(line, `route="webhook"`)) {
			t.Fatalf("an in-process call was counted as a request: %s", line)
		}
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
