package portal

import (
	"net/url"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/api"
	"github.com/geckohook/geckohook/engine/registry"
)

type signingData struct {
	Application api.ApplicationView
	// Secret and SecretWhsec are set when revealed or just rotated.
	Secret, SecretWhsec string
	Rotated             bool
	Schemes             []string
	Overlaps            []string
}

// overlaps are the rotation overlaps the form offers.
var overlaps = []string{"24h", "1h", "72h", "0s"}

// signingPage: GET /portal/signing: the scheme, the secret on request,
// rotation. shown is the secret revealed or rotated, if any.
func (r *request) signingPage(done *signingData) {
	var got struct{ Application api.ApplicationView }
	if status, msg := r.call("GET", "/v1/applications/"+url.PathEscape(r.app.ID), nil, &got); msg != "" {
		r.message(status, "Signing", msg)
		return
	}
	d := &signingData{Application: got.Application,
		Schemes: []string{registry.SchemeGecko, registry.SchemeStandard, registry.SchemeBoth}, Overlaps: overlaps}
	if done != nil {
		d.Secret, d.SecretWhsec, d.Rotated = done.Secret, done.SecretWhsec, done.Rotated
	}
	r.p.render(r.ctx, fasthttp.StatusOK, "signing", r.page("Signing", d))
}

// signingAction: POST /portal/signing/{reveal|rotate|scheme}.
func (r *request) signingAction(action string) {
	path := "/v1/applications/" + url.PathEscape(r.app.ID)
	args := r.ctx.PostArgs()
	switch action {
	case "reveal":
		// The API shows a secret only when it makes one; the portal's
		// session is the developer's, who may read the current one.
		r.p.o.Log.Info().Str("app_id", r.app.ID).Msg("secret revealed in the portal")
		r.signingPage(&signingData{Secret: r.app.Secret, SecretWhsec: r.app.StandardSecret()})
	case "rotate":
		var out struct{ Application api.ApplicationView }
		status, msg := r.call("POST", path+"/secret", map[string]string{"overlap": string(args.Peek("overlap"))}, &out)
		if msg != "" {
			r.message(status, "Secret not rotated", msg)
			return
		}
		r.app = r.p.o.Registry.App(r.app.ID)
		r.signingPage(&signingData{Secret: out.Application.Secret, SecretWhsec: out.Application.SecretWhsec, Rotated: true})
	case "scheme":
		body := map[string]any{"application": map[string]string{"signature_scheme": string(args.Peek("scheme"))}}
		if status, msg := r.call("PATCH", path, body, nil); msg != "" {
			r.message(status, "Scheme not changed", msg)
			return
		}
		r.signingPage(nil)
	default:
		r.message(fasthttp.StatusNotFound, "Not found", "There is no such action.")
	}
}
