package portal

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/mail"
	"github.com/geckohook/geckohook/engine/registry"
)

//go:embed templates/*.html static/portal.css
var assets embed.FS

// page is what every template sees.
type page struct {
	Title  string
	App    *registry.App // nil before a session
	CSRF   string
	Notice string // what the last action did
	Error  string // why it failed, as the API said it
	Data   any    // the page's own
}

var funcs = template.FuncMap{
	// dict makes a map of key, value pairs, for a nested template.
	"dict": func(kv ...any) map[string]any {
		m := make(map[string]any, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			k, _ := kv[i].(string)
			m[k] = kv[i+1]
		}
		return m
	},
	// dur shows a duration as the daily mail does (72h: "3 days").
	"dur": mail.Dur,
	// when shows an RFC 3339 time (or a time.Time) as "2006-01-02 15:04:05 UTC".
	"when": func(v any) string {
		var t time.Time
		switch x := v.(type) {
		case time.Time:
			t = x
		case string:
			if x == "" {
				return ""
			}
			var err error
			if t, err = time.Parse(time.RFC3339, x); err != nil {
				return x
			}
		}
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
}

// parsePages parses every page template with the layout.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("cannot parse portal template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// render answers one page.
func (p *Portal) render(ctx *fasthttp.RequestCtx, status int, name string, pg *page) {
	var b bytes.Buffer
	if err := p.pages[name].Execute(&b, pg); err != nil {
		p.o.Log.Error().Err(err).Str("page", name).Msg("cannot render portal page")
		ctx.Response.Reset()
		secure(&ctx.Response.Header)
		ctx.SetStatusCode(fasthttp.StatusInternalServerError)
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("internal error")
		return
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(b.Bytes())
}

// message answers a page that only says something.
func (p *Portal) message(ctx *fasthttp.RequestCtx, status int, title, text string) {
	p.render(ctx, status, "message", &page{Title: title, Data: text})
}

// message answers a page of a session that only says something.
func (r *request) message(status int, title, text string) {
	r.p.render(r.ctx, status, "message", r.page(title, text))
}

// page starts a session page's data.
func (r *request) page(title string, data any) *page {
	return &page{Title: title, App: r.app, CSRF: r.s.csrf, Data: data}
}

func serveCSS(ctx *fasthttp.RequestCtx) {
	b, _ := assets.ReadFile("static/portal.css")
	ctx.Response.Header.Set("Cache-Control", "max-age=3600")
	ctx.SetContentType("text/css; charset=utf-8")
	ctx.SetBody(b)
}

// call runs an API request as the session's application and decodes a
// successful answer into out (when not nil). A refusal comes back as the
// API's own message, with its status.
func (r *request) call(method, uri string, body any, out any) (status int, apiErr string) {
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return fasthttp.StatusInternalServerError, "cannot encode the request"
		}
	}
	status, resp := r.p.api.Call(r.app, method, uri, raw)
	if status >= 400 {
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		if json.Unmarshal(resp, &e) != nil || e.Error.Message == "" {
			return status, fmt.Sprintf("the API answered %d", status)
		}
		return status, e.Error.Message
	}
	if out != nil && len(resp) > 0 {
		if err := json.Unmarshal(resp, out); err != nil {
			r.p.o.Log.Error().Err(err).Str("uri", uri).Msg("cannot read an API answer")
			return fasthttp.StatusInternalServerError, "cannot read the API's answer"
		}
	}
	return status, ""
}
