package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/shard"
)

const adminToken = "admin-secret-token"

var fixedNow = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

type produced struct{ key, value []byte }

// producer records what the API writes at the Kafka boundary.
type producer struct {
	mu    sync.Mutex
	calls []produced
	err   error
}

func (p *producer) produce(_ context.Context, key, value []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.calls = append(p.calls, produced{append([]byte(nil), key...), append([]byte(nil), value...)})
	return nil
}

func (p *producer) snapshot() []produced {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]produced(nil), p.calls...)
}

type env struct {
	t      *testing.T
	url    string
	reg    *registry.Registry
	rdb    *redis.Client
	prod   *producer
	health atomic.Pointer[error]
	client *http.Client
	// seconds moves the registry's clock: it reads fixedNow plus this many
	// seconds.
	seconds atomic.Int64
}

// start runs a real redis-server, a started registry and the API served on
// a loopback listener; edit adjusts the options.
func start(t *testing.T, edit func(*Options)) *env {
	t.Helper()
	srv := testenv.Redis(t)
	e := &env{t: t, rdb: srv.Client(), prod: &producer{}, client: &http.Client{Timeout: 10 * time.Second}}
	ctx, cancel := context.WithCancel(context.Background())
	e.reg = registry.New(e.rdb, registry.Options{Now: func() time.Time {
		return fixedNow.Add(time.Duration(e.seconds.Load()) * time.Second)
	}})
	if err := e.reg.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	o := Options{
		Registry:   e.reg,
		Catalog:    catalog.Default(),
		AdminToken: adminToken,
		Produce:    e.prod.produce,
		Health: func(context.Context) error {
			if p := e.health.Load(); p != nil {
				return *p
			}
			return nil
		},
		Log:        zerolog.Nop(),
		Now:        func() time.Time { return fixedNow },
		Deliveries: shard.NewStore(e.rdb, "gh:"),
	}
	if edit != nil {
		edit(&o)
	}
	if len(o.Recovery.Brokers) > 0 && o.Recovery.Redis == nil {
		o.Recovery.Redis, o.Recovery.Prefix = e.rdb, "gh:"
	}
	// Every request of the tests is checked against openapi.json.
	// The registry the server was given decides tokens, as it does for
	// the server (a test may give its own).
	reg := o.Registry
	v := newValidator(t, o.AdminToken, func(token string) bool { return reg.AppByToken(token) != nil })
	e.client.Transport = &validatingTransport{t: t, v: v, base: http.DefaultTransport}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- New(o).Serve(ctx, ln) }()
	t.Cleanup(func() {
		e.client.CloseIdleConnections()
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve returned %v after its context ended, want nil", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return e
}

type reply struct {
	status int
	header http.Header
	raw    []byte
}

func (r reply) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.raw, &m); err != nil {
		t.Fatalf("response %d is not JSON: %v: %q", r.status, err, r.raw)
	}
	return m
}

// errorCode returns error.code and error.message of an error answer.
func (r reply) errorCode(t *testing.T) (string, string) {
	t.Helper()
	m := r.json(t)
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("answer %d has no error object: %s", r.status, r.raw)
	}
	code, _ := e["code"].(string)
	msg, _ := e["message"].(string)
	return code, msg
}

func (e *env) do(method, path, token, body string) reply {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return reply{resp.StatusCode, resp.Header, raw}
}

// expectError checks an error answer's status and code, and that the
// message contains want.
func (e *env) expectError(r reply, status int, code, want string) {
	e.t.Helper()
	if r.status != status {
		e.t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
	}
	gotCode, msg := r.errorCode(e.t)
	if gotCode != code || !strings.Contains(msg, want) {
		e.t.Fatalf("error %q %q, want code %q with message containing %q", gotCode, msg, code, want)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		e.t.Fatalf("error Content-Type %q", ct)
	}
}

type createdApp struct {
	ID, Name, DeveloperEmail, Secret, Token string
}

func (e *env) createApp(name string) createdApp {
	e.t.Helper()
	r := e.do("POST", "/v1/applications", adminToken,
		`{"application":{"name":"`+name+`","developer_email":"dev@`+name+`.example.com"}}`)
	if r.status != 201 {
		e.t.Fatalf("create app: %d %s", r.status, r.raw)
	}
	var out struct {
		Application struct {
			ID             string `json:"id"`
			Name           string `json:"name"`
			DeveloperEmail string `json:"developer_email"`
			Secret         string `json:"secret"`
			Token          string `json:"token"`
		} `json:"application"`
	}
	if err := json.Unmarshal(r.raw, &out); err != nil {
		e.t.Fatal(err)
	}
	a := out.Application
	return createdApp{a.ID, a.Name, a.DeveloperEmail, a.Secret, a.Token}
}

func (e *env) createWebhook(token, account, event, address string) WebhookView {
	e.t.Helper()
	r := e.do("POST", "/v1/webhooks", token,
		`{"webhook":{"account_id":"`+account+`","event":"`+event+`","address":"`+address+`"}}`)
	if r.status != 201 {
		e.t.Fatalf("create webhook: %d %s", r.status, r.raw)
	}
	var out struct{ Webhook WebhookView }
	if err := json.Unmarshal(r.raw, &out); err != nil {
		e.t.Fatal(err)
	}
	return out.Webhook
}

func (e *env) listWebhooks(token, query string) []WebhookView {
	e.t.Helper()
	r := e.do("GET", "/v1/webhooks"+query, token, "")
	if r.status != 200 {
		e.t.Fatalf("list webhooks: %d %s", r.status, r.raw)
	}
	var out struct {
		Webhooks []WebhookView `json:"webhooks"`
	}
	if err := json.Unmarshal(r.raw, &out); err != nil {
		e.t.Fatal(err)
	}
	if out.Webhooks == nil {
		e.t.Fatalf("list answered no webhooks array: %s", r.raw)
	}
	return out.Webhooks
}

func TestCreateApplication(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	if !strings.HasPrefix(app.ID, "app_") || app.Name != "shop" || app.DeveloperEmail != "dev@shop.example.com" ||
		app.Secret == "" || app.Token == "" {
		t.Fatalf("created application = %+v", app)
	}
	stored := e.reg.AppByToken(app.Token)
	if stored == nil || stored.ID != app.ID || stored.Secret != app.Secret {
		t.Fatalf("the returned token and secret are not the stored application's: %+v", stored)
	}
	if n, err := e.rdb.HLen(context.Background(), "gh:apps").Result(); err != nil || n != 1 {
		t.Fatalf("gh:apps holds %d records (%v), want 1", n, err)
	}

	body := `{"application":{"name":"other","developer_email":"o@example.com"}}`
	e.expectError(e.do("POST", "/v1/applications", app.Token, body), 403, "forbidden", "admin")
	r := e.do("POST", "/v1/applications", "wrong-token", body)
	e.expectError(r, 401, "unauthorized", "token")
	if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("401 without WWW-Authenticate: Bearer: %v", r.header)
	}
	e.expectError(e.do("POST", "/v1/applications", "", body), 401, "unauthorized", "")
	e.expectError(e.do("GET", "/v1/applications", adminToken, ""), 405, "method_not_allowed", "")

	long := strings.Repeat("n", 201)
	for _, tc := range []struct {
		body, code, want string
		status           int
	}{
		{`{"application":{"developer_email":"a@example.com"}}`, "missing_field", "application.name", 422},
		{`{"application":{"name":"x"}}`, "missing_field", "application.developer_email", 422},
		{`{}`, "missing_field", "application", 422},
		{`{"application":{"name":"` + long + `","developer_email":"a@example.com"}}`, "invalid_field", "application.name", 422},
		{`{"application":{"name":"x","developer_email":"not-an-email"}}`, "invalid_field", "developer_email", 422},
		{`{"application":{"name":"x","developer_email":"Dev <dev@example.com>"}}`, "invalid_field", "developer_email", 422},
		{`{"application":{"name":7,"developer_email":"a@example.com"}}`, "invalid_field", "name", 422},
		{`{"application":`, "invalid_json", "", 400},
		{`{"application":{}} trailing`, "invalid_json", "after", 400},
		{`[1]`, "invalid_json", "object", 400},
	} {
		e.expectError(e.do("POST", "/v1/applications", adminToken, tc.body), tc.status, tc.code, tc.want)
	}
	if n, _ := e.reg.Counts(); n != 1 {
		t.Fatalf("refused requests created applications: %d apps", n)
	}
}

func TestEmptyAdminTokenRefusesAdminEndpoints(t *testing.T) {
	e := start(t, func(o *Options) { o.AdminToken = "" })
	body := `{"application":{"name":"x","developer_email":"a@example.com"}}`
	e.expectError(e.do("POST", "/v1/applications", adminToken, body), 401, "unauthorized", "")
	r := e.do("POST", "/v1/applications", "", body)
	e.expectError(r, 401, "unauthorized", "")
	// A bare "Bearer " with nothing after it is no token either.
	req, _ := http.NewRequest("POST", e.url+"/v1/applications", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer ")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("empty bearer with empty admin token: %d, want 401", resp.StatusCode)
	}
	if n, _ := e.reg.Counts(); n != 0 {
		t.Fatalf("%d applications created without an admin token", n)
	}
}

func TestCreateWebhook(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	w := e.createWebhook(app.Token, "acc-1", "fulfillments.create", "https://hooks.example.com/in?x=1&y=2")
	want := WebhookView{
		ID: w.ID, ApplicationID: app.ID, AccountID: "acc-1", Event: "fulfillments.create",
		Address: "https://hooks.example.com/in?x=1&y=2", CreatedAt: "2026-03-04T05:06:07Z",
	}
	if w != want || !strings.HasPrefix(w.ID, "wh_") {
		t.Fatalf("created webhook = %+v, want %+v", w, want)
	}
	if got, _ := e.reg.MatchTargets(nil, "acc-1", "fulfillments.create"); len(got) != 1 || got[0].Hook.ID != w.ID || got[0].App == nil || got[0].App.ID != app.ID {
		t.Fatalf("registry Match = %v", got)
	}
	if ok, err := e.rdb.HExists(context.Background(), "gh:webhooks", w.ID).Result(); err != nil || !ok {
		t.Fatalf("webhook not stored in Redis: %v %v", ok, err)
	}
}

func TestCreateWebhookValidation(t *testing.T) {
	e := start(t, func(o *Options) {
		o.MaxBodySize = 1024
		o.Lookup = func(_ context.Context, host string) ([]netip.Addr, error) {
			if host == "intranet.example.com" {
				return []netip.Addr{netip.MustParseAddr("10.1.2.3")}, nil
			}
			return []netip.Addr{netip.MustParseAddr("93.184.215.14")}, nil
		}
	})
	app := e.createApp("shop")
	hook := func(account, event, address string) string {
		return `{"webhook":{"account_id":"` + account + `","event":"` + event + `","address":"` + address + `"}}`
	}
	ok := "https://hooks.example.com/in"
	for _, tc := range []struct {
		name, body     string
		status         int
		code, contains string
	}{
		{"unknown event", hook("a", "order.explode", ok), 422, "unknown_event", "order.explode"},
		{"not a url", hook("a", "order.create", "hooks.example.com/in"), 422, "invalid_address", "absolute URL"},
		{"ftp", hook("a", "order.create", "ftp://hooks.example.com/in"), 422, "invalid_address", "scheme"},
		{"plain http", hook("a", "order.create", "http://hooks.example.com/in"), 422, "invalid_address", "https"},
		{"loopback", hook("a", "order.create", "https://127.0.0.1:8443/in"), 422, "invalid_address", "loopback"},
		{"localhost", hook("a", "order.create", "https://localhost/in"), 422, "invalid_address", "local name"},
		{"metadata", hook("a", "order.create", "https://169.254.169.254/latest"), 422, "invalid_address", "link-local"},
		{"resolves private", hook("a", "order.create", "https://intranet.example.com/in"), 422, "invalid_address", "10.1.2.3"},
		{"nat64 loopback", hook("a", "order.create", "https://[64:ff9b::7f00:1]/in"), 422, "invalid_address", "embedding 127.0.0.1"},
		{"decimal ipv4 host", hook("a", "order.create", "https://2130706433/in"), 422, "invalid_address", "IPv4 address 127.0.0.1"},
		{"port out of range", hook("a", "order.create", "https://hooks.example.com:99999/in"), 422, "invalid_address", "1-65535"},
		{"missing account", `{"webhook":{"event":"order.create","address":"` + ok + `"}}`, 422, "missing_field", "webhook.account_id"},
		{"missing event", `{"webhook":{"account_id":"a","address":"` + ok + `"}}`, 422, "missing_field", "webhook.event"},
		{"missing address", `{"webhook":{"account_id":"a","event":"order.create"}}`, 422, "missing_field", "webhook.address"},
		{"missing object", `{"hook":{}}`, 422, "missing_field", "webhook"},
		{"long account", hook(strings.Repeat("a", 257), "order.create", ok), 422, "invalid_field", "account_id"},
		{"bad json", `{"webhook":{"account_id":"a",}}`, 400, "invalid_json", ""},
		{"empty body", ``, 400, "invalid_json", "empty"},
		{"too large", hook(strings.Repeat("a", 1100), "order.create", ok), 413, "body_too_large", "1024"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", "/v1/webhooks", app.Token, tc.body)
			e.expectError(r, tc.status, tc.code, tc.contains)
		})
	}
	e.expectError(e.do("POST", "/v1/webhooks", adminToken, hook("a", "order.create", ok)), 403, "forbidden", "application")
	e.expectError(e.do("POST", "/v1/webhooks", "nope", hook("a", "order.create", ok)), 401, "unauthorized", "")
	if _, n := e.reg.Counts(); n != 0 {
		t.Fatalf("refused requests created %d webhooks", n)
	}
	// The same request with a valid body goes through on this server.
	e.createWebhook(app.Token, "a", "order.create", ok)
}

func TestPolicyCanAllowHTTPAndPrivateTargets(t *testing.T) {
	e := start(t, func(o *Options) { o.Policy = netguard.Policy{AllowHTTP: true, AllowPrivate: true} })
	app := e.createApp("dev")
	w := e.createWebhook(app.Token, "a", "order.create", "http://127.0.0.1:9/in")
	if w.Address != "http://127.0.0.1:9/in" {
		t.Fatalf("address = %q", w.Address)
	}
}

func TestListGetDeleteOwnWebhooks(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	w1 := e.createWebhook(app.Token, "acc-1", "order.create", "https://a.example.com/1")
	w2 := e.createWebhook(app.Token, "acc-2", "order.create", "https://a.example.com/2")
	w3 := e.createWebhook(app.Token, "acc-1", "product.update", "https://a.example.com/3")

	ids := func(list []WebhookView) map[string]bool {
		m := map[string]bool{}
		for _, w := range list {
			m[w.ID] = true
		}
		return m
	}
	if got := ids(e.listWebhooks(app.Token, "")); len(got) != 3 || !got[w1.ID] || !got[w2.ID] || !got[w3.ID] {
		t.Fatalf("list = %v", got)
	}
	if got := ids(e.listWebhooks(app.Token, "?account_id=acc-1")); len(got) != 2 || !got[w1.ID] || !got[w3.ID] {
		t.Fatalf("list for acc-1 = %v", got)
	}
	if got := e.listWebhooks(app.Token, "?account_id=nobody"); len(got) != 0 {
		t.Fatalf("list for an unknown account = %v", got)
	}

	r := e.do("GET", "/v1/webhooks/"+w2.ID, app.Token, "")
	var got struct{ Webhook WebhookView }
	if r.status != 200 || json.Unmarshal(r.raw, &got) != nil || got.Webhook != w2 {
		t.Fatalf("get own webhook: %d %s", r.status, r.raw)
	}

	r = e.do("DELETE", "/v1/webhooks/"+w2.ID, app.Token, "")
	if r.status != 204 || len(r.raw) != 0 {
		t.Fatalf("delete own webhook: %d %q", r.status, r.raw)
	}
	if e.reg.Webhook(w2.ID) != nil {
		t.Fatal("deleted webhook still in the registry")
	}
	if ok, _ := e.rdb.HExists(context.Background(), "gh:webhooks", w2.ID).Result(); ok {
		t.Fatal("deleted webhook still in Redis")
	}
	e.expectError(e.do("GET", "/v1/webhooks/"+w2.ID, app.Token, ""), 404, "not_found", w2.ID)
	e.expectError(e.do("DELETE", "/v1/webhooks/"+w2.ID, app.Token, ""), 404, "not_found", "")
	if got := ids(e.listWebhooks(app.Token, "")); len(got) != 2 || got[w2.ID] {
		t.Fatalf("list after delete = %v", got)
	}
	e.expectError(e.do("PUT", "/v1/webhooks/"+w1.ID, app.Token, "{}"), 405, "method_not_allowed", "")
	e.expectError(e.do("GET", "/v1/webhooks", "", ""), 401, "unauthorized", "")
}

func TestApplicationsCannotSeeEachOthersWebhooks(t *testing.T) {
	e := start(t, nil)
	a := e.createApp("alpha")
	b := e.createApp("beta")
	wa := e.createWebhook(a.Token, "shared-acc", "order.create", "https://alpha.example.com/h")
	wb := e.createWebhook(b.Token, "shared-acc", "order.create", "https://beta.example.com/h")

	ra := e.do("GET", "/v1/webhooks/"+wa.ID, b.Token, "")
	rx := e.do("GET", "/v1/webhooks/wh_doesnotexist", b.Token, "")
	e.expectError(ra, 404, "not_found", "")
	e.expectError(rx, 404, "not_found", "")
	e.expectError(e.do("DELETE", "/v1/webhooks/"+wa.ID, b.Token, ""), 404, "not_found", "")
	if list := e.listWebhooks(b.Token, ""); len(list) != 1 || list[0].ID != wb.ID {
		t.Fatalf("B lists %v, want only its own %s", list, wb.ID)
	}
	if list := e.listWebhooks(b.Token, "?account_id=shared-acc"); len(list) != 1 || list[0].ID != wb.ID {
		t.Fatalf("B lists %v for the shared account, want only its own", list)
	}

	// A's webhook survived B's attempts.
	if w := e.reg.Webhook(wa.ID); w == nil || w.AppID != a.ID {
		t.Fatal("A's webhook is gone from the registry")
	}
	if ok, _ := e.rdb.HExists(context.Background(), "gh:webhooks", wa.ID).Result(); !ok {
		t.Fatal("A's webhook is gone from Redis")
	}
	if r := e.do("GET", "/v1/webhooks/"+wa.ID, a.Token, ""); r.status != 200 {
		t.Fatalf("A cannot get its own webhook any more: %d %s", r.status, r.raw)
	}
}

func TestIngestEvent(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	cat := catalog.Default()

	// Without a timestamp: the API fills in now.
	r := e.do("POST", "/v1/events", app.Token, `{"event":{"account_id":"acc-9","event":"fulfillments.create","object_id":1234567}}`)
	if r.status != 202 {
		t.Fatalf("ingest: %d %s", r.status, r.raw)
	}
	want := contract.Event{AccountID: "acc-9", Event: "fulfillments.create", ObjectID: 1234567, Timestamp: fixedNow.Unix()}
	var echo struct{ Event contract.Event }
	if err := json.Unmarshal(r.raw, &echo); err != nil || echo.Event != want {
		t.Fatalf("echo = %+v (%v), want %+v", echo.Event, err, want)
	}
	calls := e.prod.snapshot()
	if len(calls) != 1 || string(calls[0].key) != "acc-9" {
		t.Fatalf("produced %d records, first key %q", len(calls), firstKey(calls))
	}
	// Decoded as the dispatcher will: no record key, a record time that
	// must not be used because the value carries its own timestamp.
	got, err := contract.DecodeEvent(calls[0].value, nil, 1, cat)
	if err != nil || got != want {
		t.Fatalf("produced value %s decodes to %+v (%v), want %+v", calls[0].value, got, err, want)
	}

	// With timestamp and resource_url, by the admin token.
	r = e.do("POST", "/v1/events", adminToken,
		`{"event":{"account_id":"acc-9","event":"order.create","object_id":7,"timestamp":1546272000,"resource_url":"https://api.example.com/o/7.json?a=1&b=2"}}`)
	if r.status != 202 {
		t.Fatalf("ingest with admin token: %d %s", r.status, r.raw)
	}
	want2 := contract.Event{AccountID: "acc-9", Event: "order.create", ObjectID: 7, Timestamp: 1546272000, ResourceURL: "https://api.example.com/o/7.json?a=1&b=2"}
	calls = e.prod.snapshot()
	if len(calls) != 2 {
		t.Fatalf("produced %d records, want 2", len(calls))
	}
	if got, err := contract.DecodeEvent(calls[1].value, calls[1].key, 1, cat); err != nil || got != want2 {
		t.Fatalf("produced value %s decodes to %+v (%v), want %+v", calls[1].value, got, err, want2)
	}

	for _, tc := range []struct {
		name, token, body string
		status            int
		code, contains    string
	}{
		{"unknown event", app.Token, `{"event":{"account_id":"a","event":"order.explode","object_id":1}}`, 422, "unknown_event", "order.explode"},
		{"missing object_id", app.Token, `{"event":{"account_id":"a","event":"order.create"}}`, 422, "missing_field", "event.object_id"},
		{"missing account_id", app.Token, `{"event":{"event":"order.create","object_id":1}}`, 422, "missing_field", "event.account_id"},
		{"missing event object", app.Token, `{}`, 422, "missing_field", "event"},
		{"negative object_id", app.Token, `{"event":{"account_id":"a","event":"order.create","object_id":-1}}`, 422, "invalid_field", "object_id"},
		{"bad json", app.Token, `{"event":`, 400, "invalid_json", ""},
		{"no token", "", `{"event":{"account_id":"a","event":"order.create","object_id":1}}`, 401, "unauthorized", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.expectError(e.do("POST", "/v1/events", tc.token, tc.body), tc.status, tc.code, tc.contains)
		})
	}
	if n := len(e.prod.snapshot()); n != 2 {
		t.Fatalf("refused events reached Kafka: %d records, want 2", n)
	}
}

func firstKey(calls []produced) string {
	if len(calls) == 0 {
		return ""
	}
	return string(calls[0].key)
}

func TestIngestEventKafkaUnavailable(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	e.prod.mu.Lock()
	e.prod.err = errors.New("broker down")
	e.prod.mu.Unlock()
	r := e.do("POST", "/v1/events", app.Token, `{"event":{"account_id":"a","event":"order.create","object_id":1}}`)
	e.expectError(r, 503, "kafka_unavailable", "")
	if bytes.Contains(r.raw, []byte("broker down")) {
		t.Fatalf("internal error leaked to the client: %s", r.raw)
	}
}

func TestHealthzRoutingAndMetrics(t *testing.T) {
	e := start(t, nil)
	r := e.do("GET", "/healthz", "", "")
	if r.status != 200 || r.json(t)["status"] != "ok" {
		t.Fatalf("healthz: %d %s", r.status, r.raw)
	}
	down := errors.New("redis unreachable")
	e.health.Store(&down)
	r = e.do("GET", "/healthz", "", "")
	if r.status != 503 || !bytes.Contains(r.raw, []byte("redis unreachable")) {
		t.Fatalf("unhealthy healthz: %d %s", r.status, r.raw)
	}
	e.health.Store(nil)

	e.expectError(e.do("GET", "/v2/nothing", adminToken, ""), 404, "not_found", "")
	e.expectError(e.do("GET", "/v1/webhooks/a/b", adminToken, ""), 404, "not_found", "")
	r = e.do("DELETE", "/v1/events", adminToken, "")
	e.expectError(r, 405, "method_not_allowed", "")
	if r.header.Get("Allow") != "POST" {
		t.Fatalf("405 Allow header = %q", r.header.Get("Allow"))
	}
	if s := r.header.Get("Server"); s != "geckohook" {
		t.Fatalf("Server header = %q", s)
	}

	r = e.do("GET", "/metrics", "", "")
	if r.status != 200 {
		t.Fatalf("metrics: %d", r.status)
	}
	for _, line := range []string{
		`geckohook_api_requests_total{route="healthz",code="200"} 1`,
		`geckohook_api_requests_total{route="healthz",code="503"} 1`,
		`geckohook_api_requests_total{route="unknown",code="404"} 2`,
		`geckohook_api_requests_total{route="events",code="405"} 1`,
	} {
		if !strings.Contains(string(r.raw), line+"\n") {
			t.Fatalf("metrics lack %q:\n%s", line, r.raw)
		}
	}
}

func TestServeReturnsNilWhenContextAlreadyEnded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- New(Options{Log: zerolog.Nop()}).Serve(ctx, ln) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return")
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("listener still accepts connections after Serve returned")
	}
}
