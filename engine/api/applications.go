package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/registry"
)

// maxOverlap bounds the overlap a rotation may ask for.
const maxOverlap = 30 * 24 * time.Hour

func appView(app *registry.App) ApplicationView {
	v := ApplicationView{
		ID: app.ID, Name: app.Name, DeveloperEmail: app.DeveloperEmail, SignatureScheme: app.SignatureScheme(),
	}
	if t := app.SecretOverlapEnd(); !t.IsZero() {
		v.PreviousSecretExpiresAt = responseTime(t)
	}
	if t := app.TokenOverlapEnd(); !t.IsZero() {
		v.PreviousTokenExpiresAt = responseTime(t)
	}
	return v
}

func errScheme(s string) *apiError {
	return invalid("invalid_field", fmt.Sprintf("application.signature_scheme %.40q is not one of gecko, standard, both", s))
}

// ownApp returns the application named in the path if the caller may manage
// it: the admin, or the application itself. Another application is reported
// as not found, never as forbidden.
func (a *API) ownApp(ctx *fasthttp.RequestCtx, c caller) (*registry.App, *apiError) {
	id, _ := pathID(string(ctx.Path()), "/v1/applications/")
	var app *registry.App
	if c.admin || (c.app != nil && c.app.ID == id) {
		app = a.o.Registry.App(id)
	}
	if app == nil {
		return nil, &apiError{fasthttp.StatusNotFound, "not_found", fmt.Sprintf("application %.100q not found", id)}
	}
	return app, nil
}

// getApp: GET /v1/applications/{id} (admin or the application).
func (a *API) getApp(ctx *fasthttp.RequestCtx, c caller) *apiError {
	app, e := a.ownApp(ctx, c)
	if e != nil {
		return e
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]ApplicationView{"application": appView(app)})
	return nil
}

// updateApp: PATCH /v1/applications/{id} (admin or the application); only
// the signature scheme can change.
func (a *API) updateApp(ctx *fasthttp.RequestCtx, c caller) *apiError {
	app, e := a.ownApp(ctx, c)
	if e != nil {
		return e
	}
	var req struct {
		Application *struct {
			SignatureScheme *string `json:"signature_scheme"`
		} `json:"application"`
	}
	if e := decodeBody(ctx, &req); e != nil {
		return e
	}
	switch {
	case req.Application == nil:
		return missing("application")
	case req.Application.SignatureScheme == nil:
		return missing("application.signature_scheme")
	case !registry.ValidScheme(*req.Application.SignatureScheme):
		return errScheme(*req.Application.SignatureScheme)
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	app, err := a.o.Registry.SetScheme(sctx, app.ID, *req.Application.SignatureScheme)
	if err != nil {
		return a.updateFailed(err, "cannot change signature scheme")
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]ApplicationView{"application": appView(app)})
	return nil
}

// overlap reads the optional {"overlap":"1h"} of a rotation; an empty body
// takes the configured overlap.
func (a *API) overlap(ctx *fasthttp.RequestCtx) (time.Duration, *apiError) {
	if len(bytes.TrimSpace(ctx.Request.Body())) == 0 {
		return max(a.o.SecretOverlap, 0), nil
	}
	var req struct {
		Overlap *string `json:"overlap"`
	}
	if e := decodeBody(ctx, &req); e != nil {
		return 0, e
	}
	if req.Overlap == nil {
		return max(a.o.SecretOverlap, 0), nil
	}
	d, err := time.ParseDuration(*req.Overlap)
	if err != nil || d < 0 || d > maxOverlap {
		return 0, invalid("invalid_field", fmt.Sprintf("overlap must be a duration from 0s to %v, such as \"1h\" or \"30m\"", maxOverlap))
	}
	return d, nil
}

// rotateSecret: POST /v1/applications/{id}/secret (admin or the
// application). The new secret is shown once, in both forms.
func (a *API) rotateSecret(ctx *fasthttp.RequestCtx, c caller) *apiError {
	return a.rotate(ctx, c, "secret", func(sctx context.Context, id string, overlap time.Duration) (ApplicationView, error) {
		app, err := a.o.Registry.RotateSecret(sctx, id, overlap)
		if err != nil {
			return ApplicationView{}, err
		}
		v := appView(app)
		v.Secret, v.SecretWhsec = app.Secret, app.StandardSecret()
		return v, nil
	})
}

// rotateToken: POST /v1/applications/{id}/token (admin or the application).
// The new token is shown once.
func (a *API) rotateToken(ctx *fasthttp.RequestCtx, c caller) *apiError {
	return a.rotate(ctx, c, "token", func(sctx context.Context, id string, overlap time.Duration) (ApplicationView, error) {
		app, token, err := a.o.Registry.RotateToken(sctx, id, overlap)
		if err != nil {
			return ApplicationView{}, err
		}
		v := appView(app)
		v.Token = token
		return v, nil
	})
}

// rotate runs one rotation of what (secret or token) of the application in
// the path, with the request's overlap, and answers the view it returns.
func (a *API) rotate(ctx *fasthttp.RequestCtx, c caller, what string,
	do func(context.Context, string, time.Duration) (ApplicationView, error)) *apiError {
	app, e := a.ownApp(ctx, c)
	if e != nil {
		return e
	}
	overlap, e := a.overlap(ctx)
	if e != nil {
		return e
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	v, err := do(sctx, app.ID, overlap)
	if err != nil {
		return a.updateFailed(err, "cannot rotate "+what)
	}
	a.o.Log.Info().Str("app_id", app.ID).Dur("overlap_ms", overlap).Msg("application " + what + " rotated")
	writeJSON(ctx, fasthttp.StatusOK, map[string]ApplicationView{"application": v})
	return nil
}

func (a *API) updateFailed(err error, msg string) *apiError {
	if errors.Is(err, registry.ErrNotFound) {
		return &apiError{fasthttp.StatusNotFound, "not_found", "application not found"}
	}
	a.o.Log.Error().Err(err).Msg(msg)
	return storeUnavailable()
}

// PortalLinkView is a one-time developer portal link.
type PortalLinkView struct {
	URL       string `json:"url"`
	ExpiresAt string `json:"expires_at"` // RFC 3339, UTC
}

// createPortalLink: POST /v1/applications/{id}/portal-links (admin or the
// application): a one-time link that opens a developer portal session
// for the application. No request body.
func (a *API) createPortalLink(ctx *fasthttp.RequestCtx, c caller) *apiError {
	app, e := a.ownApp(ctx, c)
	if e != nil {
		return e
	}
	if a.o.PortalLink == nil {
		return &apiError{fasthttp.StatusServiceUnavailable, "portal_unavailable", "the developer portal is not configured on this server"}
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	url, expires, err := a.o.PortalLink(sctx, app.ID)
	if err != nil {
		a.o.Log.Error().Err(err).Str("app_id", app.ID).Msg("cannot mint a portal link")
		return storeUnavailable()
	}
	a.o.Log.Info().Str("app_id", app.ID).Bool("by_admin", c.admin).Msg("portal link minted")
	writeJSON(ctx, fasthttp.StatusCreated, map[string]PortalLinkView{"portal_link": {URL: url, ExpiresAt: responseTime(expires)}})
	return nil
}
