// Package portal owns the developer portal's pages, sessions and links:
// server-rendered HTML under /portal/ of the API process, where an
// application's developer sees and fixes its own webhooks. It holds no
// rule of its own: every action is a request to the management API run
// in-process as the session's application (api.API.Call), so the API's
// checks, ownership and error messages apply unchanged; health, deleted
// webhooks and digests are read from the coordinators' and the daily
// mail's own stores. Sessions start from one-time links minted through
// POST /v1/applications/{id}/portal-links and live in Redis, so any API
// process serves them.
package portal

import (
	"context"
	"fmt"
	"html/template"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/api"
	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/mail"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/streak"
)

// Options configure a Portal. Zero values mean the defaults in brackets.
type Options struct {
	// Redis holds links and sessions, and is where the coordinators keep
	// webhook health and day records (required).
	Redis  redis.UniversalClient
	Prefix string // of every key ("gh:")
	// Registry is the API's registry (required).
	Registry *registry.Registry
	Catalog  *catalog.Catalog // events offered for new webhooks (catalog.Default())
	// Policy is the coordinators' 3-day rule and mail day (their
	// --delete-after and --mail-at).
	Policy streak.Policy
	// MailTemplates render the digests as the daily mail does (the
	// built-in ones).
	MailTemplates *mail.Templates
	// URL is the portal's public base URL, without /portal/
	// ("http://127.0.0.1:8080"). Links start with it; an https URL makes
	// the session cookie Secure.
	URL string
	// SessionTTL is a session's lifetime (12h).
	SessionTTL time.Duration
	// PageSize is how many webhooks one page lists (50).
	PageSize int
	Now      func() time.Time // clock (time.Now)
	Log      zerolog.Logger
}

// Portal serves the developer portal.
type Portal struct {
	o      Options
	api    *api.API
	origin string // scheme://host of URL
	pages  map[string]*template.Template
}

// New returns a Portal; Handler puts it behind an API
// (api.Options.Portal), Mint makes its links (api.Options.PortalLink).
func New(o Options) (*Portal, error) {
	if o.Prefix == "" {
		o.Prefix = contract.DefaultRedisPrefix
	}
	if o.Catalog == nil {
		o.Catalog = catalog.Default()
	}
	if o.URL == "" {
		o.URL = "http://127.0.0.1:8080"
	}
	o.URL = strings.TrimRight(o.URL, "/")
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("portal URL %q is not an http or https URL", o.URL)
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 12 * time.Hour
	}
	if o.PageSize <= 0 {
		o.PageSize = 50
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MailTemplates == nil {
		if o.MailTemplates, err = mail.LoadTemplates(""); err != nil {
			return nil, err
		}
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	return &Portal{o: o, origin: u.Scheme + "://" + u.Host, pages: pages}, nil
}

// Handler returns the handler of /portal/ paths, acting through a
// (api.Options.Portal).
func (p *Portal) Handler(a *api.API) fasthttp.RequestHandler {
	p.api = a
	return p.serve
}

// The security headers of every portal answer. The pages use no script
// and no inline style; nothing but the portal's own stylesheet loads.
// Referrer-Policy is same-origin, not no-referrer: no other site learns a
// portal address (a link's token is in one), and browsers still send the
// Origin of the portal's own form posts, which no-referrer turns into
// "null" (the Fetch standard's rule for non-GET requests).
const csp = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func secure(h *fasthttp.ResponseHeader) {
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// storeTimeout bounds the portal's own Redis reads and writes.
const storeTimeout = 5 * time.Second

func (p *Portal) serve(ctx *fasthttp.RequestCtx) {
	secure(&ctx.Response.Header)
	path, method := string(ctx.Path()), string(ctx.Method())
	switch {
	case path == "/portal":
		ctx.Redirect("/portal/", fasthttp.StatusMovedPermanently)
		return
	case path == "/portal/static/portal.css":
		serveCSS(ctx)
		return
	case strings.HasPrefix(path, "/portal/link/") && (method == "GET" || method == "HEAD"):
		p.linkPage(ctx, strings.TrimPrefix(path, "/portal/link/"))
		return
	case path == "/portal/link" && method == "POST":
		if p.crossSite(ctx) {
			return
		}
		p.openSession(ctx)
		return
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	s, err := p.lookup(sctx, string(ctx.Request.Header.Cookie(cookieName)))
	cancel()
	if err != nil {
		if err != errNoSession {
			p.o.Log.Error().Err(err).Msg("cannot read portal session")
			p.message(ctx, fasthttp.StatusServiceUnavailable, "Try again", "The portal cannot read its sessions right now; try again in a moment.")
			return
		}
		p.message(ctx, fasthttp.StatusUnauthorized, "Open a portal link",
			"This page needs a portal session. Ask the service you receive webhooks from for a new portal link; each link works once, for 15 minutes.")
		return
	}
	app := p.o.Registry.App(s.appID)
	if app == nil {
		p.message(ctx, fasthttp.StatusUnauthorized, "Application gone", "The application of this session no longer exists.")
		return
	}
	r := &request{p: p, ctx: ctx, s: s, app: app}
	if method == "POST" {
		if p.crossSite(ctx) || !r.csrfOK() {
			return
		}
	} else if method != "GET" && method != "HEAD" {
		ctx.Response.Header.Set("Allow", "GET, HEAD, POST")
		p.message(ctx, fasthttp.StatusMethodNotAllowed, "Not allowed", "The portal answers GET and POST only.")
		return
	}
	r.route(path, method)
}

// request is one request of a live session.
type request struct {
	p   *Portal
	ctx *fasthttp.RequestCtx
	s   *session
	app *registry.App
}

// route dispatches a request of a session.
func (r *request) route(path, method string) {
	rest := strings.TrimPrefix(path, "/portal/")
	seg := strings.Split(rest, "/")
	post := method == "POST"
	switch {
	case rest == "" && !post:
		r.webhooksPage(nil)
	case rest == "webhooks" && post:
		r.createWebhook()
	case len(seg) == 2 && seg[0] == "webhooks" && seg[1] != "" && !post:
		r.webhookPage(seg[1], nil)
	case len(seg) == 3 && seg[0] == "webhooks" && seg[1] != "" && post:
		r.webhookAction(seg[1], seg[2])
	case rest == "signing" && !post:
		r.signingPage(nil)
	case len(seg) == 2 && seg[0] == "signing" && post:
		r.signingAction(seg[1])
	case rest == "digests" && !post:
		r.digestsPage()
	case len(seg) == 2 && seg[0] == "digests" && !post:
		r.digestHTML(seg[1])
	case rest == "logout" && post:
		r.logout()
	default:
		r.message(fasthttp.StatusNotFound, "Not found", "There is no such page in the portal.")
	}
}
