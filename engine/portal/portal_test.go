package portal

import (
	"context"
	"html/template"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/streak"
	"github.com/geckohook/geckohook/shard"
)

// A link opens one session, once, within 15 minutes; its page spends
// nothing; the session ends with its lifetime.
func TestLinksAreOneTimeAndExpire(t *testing.T) {
	e := newEnv(t, nil)
	app, token := e.app("shop")

	link := e.link(app.ID, adminToken)
	if !strings.HasPrefix(link, e.url+"/portal/link/") {
		t.Fatalf("link %q is not under %s/portal/link/", link, e.url)
	}
	path := strings.TrimPrefix(link, e.url)
	for range 2 { // the page (a mail scanner's fetch, say) does not use it up
		if r := e.do("GET", path, "", nil, nil); r.status != 200 || !strings.Contains(r.body, `action="/portal/link"`) {
			t.Fatalf("link page: %d %s", r.status, r.body)
		}
	}
	r := e.exchange(link)
	if r.status != 303 || !strings.HasSuffix(r.header.Get("Location"), "/portal/") {
		t.Fatalf("exchange: %d %v", r.status, r.header)
	}
	c := sessionCookie(t, r.header)
	raw := r.header.Get("Set-Cookie")
	if !c.HttpOnly || c.Path != "/portal/" || c.Secure || !strings.Contains(raw, "SameSite=Strict") ||
		c.MaxAge != int((12*time.Hour).Seconds()) && c.MaxAge != int((12*time.Hour).Seconds())-1 {
		t.Fatalf("session cookie %q", raw)
	}
	if r := e.do("GET", "/portal/", c.Value, nil, nil); r.status != 200 || !strings.Contains(r.body, "shop") {
		t.Fatalf("webhooks page with the session: %d", r.status)
	}
	// Only hashes of tokens are stored.
	keys, _ := e.rdb.Keys(context.Background(), "*").Result()
	tok := strings.TrimPrefix(link, e.url+"/portal/link/")
	for _, k := range keys {
		if strings.Contains(k, tok) || strings.Contains(k, c.Value) {
			t.Fatalf("key %q holds a token in clear", k)
		}
	}

	// Reused: refused.
	if r := e.exchange(link); r.status != 410 || len(r.header.Values("Set-Cookie")) != 0 {
		t.Fatalf("reused link: %d %v", r.status, r.header)
	}
	// Expired by the clock, before Redis forgets it.
	late := e.link(app.ID, token)
	e.advance(LinkTTL)
	if r := e.exchange(late); r.status != 410 {
		t.Fatalf("expired link: %d", r.status)
	}
	// A made-up token.
	if r := e.exchange(e.url + "/portal/link/madeup"); r.status != 410 {
		t.Fatalf("unknown link: %d", r.status)
	}
	// The session ends after its lifetime (12h by default).
	e.advance(12*time.Hour - LinkTTL - time.Second)
	if r := e.do("GET", "/portal/", c.Value, nil, nil); r.status != 200 {
		t.Fatalf("session before its end: %d", r.status)
	}
	e.advance(time.Second)
	if r := e.do("GET", "/portal/", c.Value, nil, nil); r.status != 401 {
		t.Fatalf("session after its end: %d", r.status)
	}
	// No cookie, a forged cookie: no session.
	for _, cookie := range []string{"", "forged"} {
		if r := e.do("GET", "/portal/", cookie, nil, nil); r.status != 401 || strings.Contains(r.body, "csrf") {
			t.Fatalf("GET /portal/ with cookie %q: %d", cookie, r.status)
		}
	}
}

// Sign out ends the session in Redis, not only in the browser.
func TestSignOut(t *testing.T) {
	e := newEnv(t, nil)
	app, _ := e.app("shop")
	b := e.login(app.ID, adminToken)
	if r := b.post("/portal/logout", nil); r.status != 200 || !strings.Contains(r.header.Get("Set-Cookie"), cookieName+"=;") {
		t.Fatalf("logout: %d %v", r.status, r.header)
	}
	if r := b.get("/portal/"); r.status != 401 {
		t.Fatalf("after logout: %d", r.status)
	}
}

// An https portal URL makes the cookie Secure.
func TestSecureCookieBehindHTTPS(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.URL = "https://hooks.example.com" })
	app, _ := e.app("shop")
	link := e.link(app.ID, adminToken)
	if !strings.HasPrefix(link, "https://hooks.example.com/portal/link/") {
		t.Fatalf("link %q", link)
	}
	token := strings.TrimPrefix(link, "https://hooks.example.com/portal/link/")
	r := e.do("POST", "/portal/link", "", url.Values{"token": {token}},
		map[string]string{"Origin": "https://hooks.example.com", "Sec-Fetch-Site": "same-origin"})
	if r.status != 303 || !sessionCookie(t, r.header).Secure {
		t.Fatalf("exchange: %d %q", r.status, r.header.Get("Set-Cookie"))
	}
}

// Every state-changing form needs the session's CSRF token and must come
// from the portal's own pages.
func TestFormsNeedCSRFAndSameOrigin(t *testing.T) {
	e := newEnv(t, nil)
	app, _ := e.app("shop")
	b := e.login(app.ID, adminToken)
	other := e.login(app.ID, adminToken) // another session of the same app: its token is not b's
	form := func(csrf string) url.Values {
		v := url.Values{"account_id": {"acc"}, "event": {"order.create"}, "address": {"https://hooks.example.com/a"}}
		if csrf != "" {
			v.Set("csrf", csrf)
		}
		return v
	}
	cases := []struct {
		name   string
		form   url.Values
		header map[string]string
	}{
		{"no token", form(""), e.sameSite()},
		{"wrong token", form(otherFirst(b.csrf)), e.sameSite()},
		{"another session's token", form(other.csrf), e.sameSite()},
		{"cross-site origin", form(b.csrf), map[string]string{"Origin": "https://evil.example"}},
		{"cross-site fetch", form(b.csrf), map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"same-site, other origin", form(b.csrf), map[string]string{"Sec-Fetch-Site": "same-site"}},
		{"null origin", form(b.csrf), map[string]string{"Origin": "null"}},
	}
	for _, c := range cases {
		if r := e.do("POST", "/portal/webhooks", b.cookie, c.form, c.header); r.status != 403 {
			t.Errorf("%s: %d, want 403", c.name, r.status)
		}
	}
	// A cross-site post of a link is refused too (login CSRF).
	link := e.link(app.ID, adminToken)
	token := strings.TrimPrefix(link, e.url+"/portal/link/")
	if r := e.do("POST", "/portal/link", "", url.Values{"token": {token}}, map[string]string{"Origin": "https://evil.example"}); r.status != 403 {
		t.Errorf("cross-site link post: %d", r.status)
	}
	if n := len(e.reg.Webhooks(app.ID, "")); n != 0 {
		t.Fatalf("%d webhooks created by refused posts", n)
	}
	if r := b.post("/portal/webhooks", form("")); r.status != 303 {
		t.Fatalf("the real form: %d %s", r.status, r.body)
	}
	if n := len(e.reg.Webhooks(app.ID, "")); n != 1 {
		t.Fatalf("%d webhooks after the real form", n)
	}
}

// otherFirst returns token with its first character changed, so it is
// never the token itself (a fixed replacement letter would be the token's
// own first letter once in 64 sessions).
func otherFirst(token string) string {
	if token[0] == 'a' {
		return "b" + token[1:]
	}
	return "a" + token[1:]
}

// Every answer carries the CSP and the other security headers.
func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t, nil)
	app, _ := e.app("shop")
	b := e.login(app.ID, adminToken)
	w := e.hook(app.ID, "acc", "order.create", "https://hooks.example.com/a")
	for _, path := range []string{"/portal/", "/portal/webhooks/" + w.ID, "/portal/signing", "/portal/digests",
		"/portal/static/portal.css", "/portal/nope", "/portal/link/x"} {
		r := b.get(path)
		h := r.header
		if h.Get("Content-Security-Policy") != csp || h.Get("X-Content-Type-Options") != "nosniff" ||
			h.Get("Referrer-Policy") != "same-origin" || h.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s (%d): headers %v", path, r.status, h)
		}
		if path != "/portal/static/portal.css" && h.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: Cache-Control %q", path, h.Get("Cache-Control"))
		}
		if strings.Contains(r.body, "<script") || strings.Contains(r.body, "style=") {
			t.Errorf("GET %s has inline script or style", path)
		}
	}
	if r := e.do("GET", "/portal/", "", nil, nil); r.header.Get("Content-Security-Policy") != csp || r.status != 401 {
		t.Errorf("no session: %d %v", r.status, r.header)
	}
}

// Application A's session sees none of B's webhooks or deliveries.
func TestApplicationsAreIsolated(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := e.app("alpha")
	bApp, _ := e.app("beta")
	wa := e.hook(a.ID, "acc", "order.create", "https://alpha.example.com/a")
	wb := e.hook(bApp.ID, "acc", "order.create", "https://beta.example.com/b")
	schedule(t, e, shard.Entry{Rec: record("d-beta", wb.ID, bApp.ID, `{"x":1}`, "HTTP 500"), Due: t0.Add(time.Hour), Dead: true})
	sa := e.login(a.ID, adminToken)

	if r := sa.get("/portal/"); r.status != 200 || !strings.Contains(r.body, wa.Address) || strings.Contains(r.body, wb.ID) {
		t.Fatalf("A's list: %d, shows B's webhook: %v", r.status, strings.Contains(r.body, wb.ID))
	}
	if r := sa.get("/portal/webhooks/" + wb.ID); r.status != 404 || strings.Contains(r.body, "d-beta") {
		t.Fatalf("A reading B's deliveries: %d", r.status)
	}
	for _, action := range []string{"delete", "test", "replay-dead", "recover"} {
		if r := sa.post("/portal/webhooks/"+wb.ID+"/"+action, nil); r.status != 404 {
			t.Errorf("A's %s of B's webhook: %d", action, r.status)
		}
	}
	// Retrying B's delivery from A's own webhook page.
	if r := sa.post("/portal/webhooks/"+wa.ID+"/retry", url.Values{"delivery": {"d-beta"}}); r.status != 404 {
		t.Errorf("A retrying B's delivery: %d", r.status)
	}
	if e.reg.Webhook(wb.ID) == nil {
		t.Fatal("B's webhook was deleted by A")
	}
	dead, err := shard.NewStore(e.rdb, "gh:").List(context.Background(), wb.ID, shard.Dead, 10)
	if err != nil || len(dead) != 1 {
		t.Fatalf("B's dead delivery moved: %v %v", dead, err)
	}
}

// schedule puts deliveries into a retry queue of the events topic.
func schedule(t *testing.T, e *env, entries ...shard.Entry) {
	t.Helper()
	ctx := context.Background()
	if err := shard.NewStore(e.rdb, "gh:").Register(ctx, "geckohook.events", 0); err != nil {
		t.Fatal(err)
	}
	if err := shard.NewQueue(e.rdb, "gh:", "geckohook.events", 0).Schedule(ctx, entries); err != nil {
		t.Fatal(err)
	}
}

func record(id, hook, app, body, lastErr string) *shard.Record {
	at := t0.Add(-time.Hour)
	return &shard.Record{ID: id, WebhookID: hook, AppID: app, AccountID: "acc", Event: "order.create", Body: []byte(body),
		Attempts: 3, FirstAttempt: at, LastAttempt: at, LastStatus: 500, LastError: lastErr}
}

// hostile are values an outsider controls: addresses, payloads, error
// texts, account ids.
var hostile = []string{
	`<script>alert(1)</script>`,
	`"><img src=x onerror=alert(1)>`,
	`javascript:alert(1)`,
}

// Whatever came from outside renders as text on every page.
func TestHostileValuesRenderAsText(t *testing.T) {
	e := newEnv(t, nil)
	app, _ := e.app("shop")
	ctx := context.Background()
	var ids []string
	for i, h := range hostile {
		w := e.hook(app.ID, "acc"+h, "order.create", "https://x.example.com/"+h)
		ids = append(ids, w.ID)
		// Health with a hostile error text, as a coordinator stores it.
		if err := e.rdb.HSet(ctx, "gh:health:{"+w.ID+"}", "v", "1", "since", t0.Add(-time.Hour).UnixMilli(),
			"failures", 3, "status", 500, "error", h).Err(); err != nil {
			t.Fatal(err)
		}
		payload := `{"event":` + jsonString(h) + `,"n":` + string(rune('0'+i)) + `}`
		d := record("d-"+w.ID, w.ID, app.ID, payload, h)
		d.Event = h
		schedule(t, e, shard.Entry{Rec: d, Due: t0.Add(time.Hour)}, shard.Entry{Rec: record("x-"+w.ID, w.ID, app.ID, payload, h), Due: t0, Dead: true})
	}
	// A deleted webhook and a failing one in today's day records.
	day := streak.Policy{}.Day(t0)
	keys := daylog.Keys{Prefix: "gh:"}
	for i, h := range hostile {
		entry, _ := msgpack.Marshal(&daylog.Entry{WebhookID: "wh_gone" + string(rune('a'+i)), AppID: app.ID, AccountID: h, Event: h,
			Address: "https://x.example.com/" + h, Failures: 2, LastStatus: 500, LastError: h, Deleted: t0.Add(-time.Minute), Reason: "gone"})
		if err := e.rdb.HSet(ctx, keys.Deleted(day, app.ID), "wh_gone"+string(rune('a'+i)), entry).Err(); err != nil {
			t.Fatal(err)
		}
	}
	b := e.login(app.ID, adminToken)
	all := strings.Join(hostile, "")
	pages := map[string]string{"/portal/": all, "/portal/digests": all, "/portal/digests/" + day: all}
	for i, id := range ids {
		pages["/portal/webhooks/"+id] = hostile[i]
	}
	for p, shown := range pages {
		r := b.get(p)
		if r.status != 200 {
			t.Fatalf("GET %s: %d", p, r.status)
		}
		for _, bad := range []string{"<script", "<img", `href="javascript`, `src="javascript`, "onerror=alert(1)>"} {
			if strings.Contains(r.body, bad) {
				t.Errorf("GET %s renders %q raw", p, bad)
			}
		}
		for _, h := range hostile {
			if strings.Contains(shown, h) && !strings.Contains(r.body, template.HTMLEscapeString(h)) {
				t.Errorf("GET %s does not show %q as text", p, h)
			}
		}
	}
	// Posted back through a form, hostile values are still text.
	r := b.post("/portal/webhooks", url.Values{"account_id": {hostile[1]}, "event": {hostile[0]}, "address": {hostile[2]}})
	if r.status != 422 || strings.Contains(r.body, "<img") || strings.Contains(r.body, "<script") {
		t.Fatalf("hostile create: %d", r.status)
	}
}

func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	b.WriteByte('"')
	return b.String()
}
