package portal

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geckohook/geckohook/engine/api"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/shard"
)

const adminToken = "portal-admin-token"

var t0 = time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)

// env is the API with its portal over a real redis-server, served on a
// loopback listener, with a clock the test moves.
type env struct {
	t      *testing.T
	url    string
	rdb    *redis.Client
	reg    *registry.Registry
	portal *Portal
	offset atomic.Int64 // seconds past t0
	client *http.Client
}

func (e *env) now() time.Time { return t0.Add(time.Duration(e.offset.Load()) * time.Second) }

// advance moves the clock.
func (e *env) advance(d time.Duration) { e.offset.Add(int64(d / time.Second)) }

// newEnv starts the stack; edit adjusts the portal's options.
func newEnv(t *testing.T, edit func(*Options)) *env {
	t.Helper()
	e := &env{t: t, rdb: testenv.Redis(t).Client()}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e.reg = registry.New(e.rdb, registry.Options{Now: e.now})
	if err := e.reg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	o := Options{Redis: e.rdb, Registry: e.reg, URL: e.url, Now: e.now, Log: zerolog.Nop()}
	if edit != nil {
		edit(&o)
	}
	if e.portal, err = New(o); err != nil {
		t.Fatal(err)
	}
	a := api.New(api.Options{
		Registry: e.reg, AdminToken: adminToken, Log: zerolog.Nop(), Now: e.now,
		Policy: netguard.Policy{}, Lookup: fakeLookup,
		Deliveries: shard.NewStore(e.rdb, "gh:"),
		PortalLink: e.portal.Mint, Portal: e.portal.Handler,
	})
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	e.client = &http.Client{Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return e
}

// fakeLookup says *.example.com is public and nothing else resolves.
func fakeLookup(_ context.Context, host string) ([]netip.Addr, error) {
	if strings.HasSuffix(host, ".example.com") {
		return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
	}
	return nil, errors.New("no such host")
}

// app creates an application and returns it with its token.
func (e *env) app(name string) (*registry.App, string) {
	e.t.Helper()
	a, token, err := e.reg.CreateApp(context.Background(), name, "dev@"+name+".example.com")
	if err != nil {
		e.t.Fatal(err)
	}
	return a, token
}

// hook stores a webhook straight into the registry (no address check: the
// portal must show whatever is stored safely).
func (e *env) hook(appID, account, event, address string) *registry.Webhook {
	e.t.Helper()
	w, err := e.reg.CreateWebhook(context.Background(), registry.Webhook{AppID: appID, AccountID: account, Event: event, Address: address})
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

type answer struct {
	status int
	header http.Header
	body   string
}

// do sends one request; cookie is the session cookie's value, if any.
func (e *env) do(method, path, cookie string, form url.Values, header map[string]string) answer {
	e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: cookieName, Value: cookie})
	}
	for k, v := range header {
		req.Header.Set(k, v)
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
	return answer{resp.StatusCode, resp.Header, string(raw)}
}

// link mints a portal link through the API with token.
func (e *env) link(appID, token string) string {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.url+"/v1/applications/"+appID+"/portal-links", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		PortalLink api.PortalLinkView `json:"portal_link"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 201 {
		e.t.Fatalf("portal link: %d %v", resp.StatusCode, err)
	}
	return out.PortalLink.URL
}

// sameSite are the headers a browser sends with a form of the portal.
func (e *env) sameSite() map[string]string {
	return map[string]string{"Origin": e.url, "Sec-Fetch-Site": "same-origin"}
}

// exchange posts a link's token as its page's button does.
func (e *env) exchange(link string) answer {
	e.t.Helper()
	token := strings.TrimPrefix(link, e.url+"/portal/link/")
	return e.do("POST", "/portal/link", "", url.Values{"token": {token}}, e.sameSite())
}

// browser is a portal session.
type browser struct {
	e      *env
	cookie string
	csrf   string
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// login opens a session for the application through a fresh link.
func (e *env) login(appID, token string) *browser {
	e.t.Helper()
	r := e.exchange(e.link(appID, token))
	if r.status != 303 || r.header.Get("Location") != "/portal/" && !strings.HasSuffix(r.header.Get("Location"), "/portal/") {
		e.t.Fatalf("exchange: %d %v %s", r.status, r.header, r.body)
	}
	b := &browser{e: e, cookie: sessionCookie(e.t, r.header).Value}
	page := b.get("/portal/")
	m := csrfField.FindStringSubmatch(page.body)
	if page.status != 200 || m == nil {
		e.t.Fatalf("webhooks page after login: %d %s", page.status, page.body)
	}
	b.csrf = m[1]
	return b
}

func sessionCookie(t *testing.T, h http.Header) *http.Cookie {
	t.Helper()
	for _, c := range (&http.Response{Header: h}).Cookies() {
		if c.Name == cookieName {
			return c
		}
	}
	t.Fatalf("no %s cookie in %v", cookieName, h)
	return nil
}

func (b *browser) get(path string) answer {
	b.e.t.Helper()
	return b.e.do("GET", path, b.cookie, nil, nil)
}

// post sends a portal form with the session's CSRF token, from the portal.
func (b *browser) post(path string, form url.Values) answer {
	b.e.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	form.Set("csrf", b.csrf)
	return b.e.do("POST", path, b.cookie, form, b.e.sameSite())
}
