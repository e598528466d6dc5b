package portal

import (
	"context"
	"crypto/subtle"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// cookieName is the session cookie's.
const cookieName = "gh_portal"

// setCookie sets (value non-empty) or clears the session cookie: HttpOnly,
// SameSite=Strict, scoped to /portal/, Secure over TLS or when the portal's
// URL is https.
func (p *Portal) setCookie(ctx *fasthttp.RequestCtx, value string, expires time.Time) {
	c := fasthttp.AcquireCookie()
	defer fasthttp.ReleaseCookie(c)
	c.SetKey(cookieName)
	c.SetValue(value)
	c.SetPath("/portal/")
	c.SetHTTPOnly(true)
	c.SetSameSite(fasthttp.CookieSameSiteStrictMode)
	c.SetSecure(ctx.IsTLS() || strings.HasPrefix(p.o.URL, "https://"))
	if value == "" {
		c.SetExpire(fasthttp.CookieExpireDelete)
	} else {
		c.SetExpire(expires)
		c.SetMaxAge(int(expires.Sub(p.o.Now()).Seconds()))
	}
	ctx.Response.Header.SetCookie(c)
}

// crossSite refuses (403) a POST that a browser says comes from another
// site: Sec-Fetch-Site other than same-origin, or an Origin other than
// the portal's. It reports whether it refused.
func (p *Portal) crossSite(ctx *fasthttp.RequestCtx) bool {
	h := &ctx.Request.Header
	bad := false
	if site := string(h.Peek("Sec-Fetch-Site")); site != "" && site != "same-origin" {
		bad = true
	}
	if origin := string(h.Peek("Origin")); origin != "" {
		scheme := "http://"
		if ctx.IsTLS() {
			scheme = "https://"
		}
		if origin != p.origin && origin != scheme+string(ctx.Host()) {
			bad = true
		}
	}
	if bad {
		p.message(ctx, fasthttp.StatusForbidden, "Refused", "This form was sent from another site; the portal accepts its own forms only.")
	}
	return bad
}

// csrfOK checks the form's CSRF token against the session's (403 when it
// is missing or wrong) and reports whether it matched.
func (r *request) csrfOK() bool {
	got := r.ctx.PostArgs().Peek("csrf")
	if len(got) == 0 || subtle.ConstantTimeCompare(got, []byte(r.s.csrf)) != 1 {
		r.message(fasthttp.StatusForbidden, "Refused", "This form is stale or was not made by the portal; reload the page and try again.")
		return false
	}
	return true
}

// linkPage: GET /portal/link/{token}. It spends nothing: the link is taken
// by the button's POST, so a mail scanner that fetches the URL does not use
// it up, and the session cookie is set on a same-site request (a
// SameSite=Strict cookie set in answer to a navigation from another site
// would not come back on the redirect that follows).
func (p *Portal) linkPage(ctx *fasthttp.RequestCtx, token string) {
	p.render(ctx, fasthttp.StatusOK, "link", &page{Title: "Open the developer portal", Data: token})
}

// openSession: POST /portal/link (form field token): takes the link and
// sets the session cookie, then sends the browser to the webhooks page
// (the token leaves the address bar).
func (p *Portal) openSession(ctx *fasthttp.RequestCtx) {
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	s, err := p.exchange(sctx, string(ctx.PostArgs().Peek("token")))
	if err == errLinkRefused {
		p.message(ctx, fasthttp.StatusGone, "Link not valid",
			"This portal link was used already or has expired. Each link works once, for 15 minutes: ask for a new one.")
		return
	}
	if err != nil {
		p.o.Log.Error().Err(err).Msg("cannot open portal session")
		p.message(ctx, fasthttp.StatusServiceUnavailable, "Try again", "The portal cannot open a session right now; try again in a moment.")
		return
	}
	p.o.Log.Info().Str("app_id", s.appID).Msg("portal session opened")
	p.setCookie(ctx, s.token, s.expires)
	ctx.Redirect("/portal/", fasthttp.StatusSeeOther)
}

// logout: POST /portal/logout.
func (r *request) logout() {
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := r.p.end(sctx, r.s); err != nil {
		r.p.o.Log.Error().Err(err).Msg("cannot end portal session")
	}
	r.p.setCookie(r.ctx, "", time.Time{})
	r.message(fasthttp.StatusOK, "Signed out", "The portal session has ended.")
}
