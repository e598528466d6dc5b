// Package api owns geckohook's management HTTP API, served with fasthttp:
// creating applications (admin token), managing an application's own
// webhooks (application token), ingesting events into the Kafka events topic
// (application or admin token), /healthz, /readyz and /metrics, and its
// own OpenAPI description at /v1/openapi.json (openapi.json). Requests and
// responses are JSON; every error answers {"error":{"code":…,"message":…}}.
// It stores nothing itself: applications and webhooks live in the registry,
// events go to the Produce function it is given. /healthz, /readyz,
// /metrics and the server itself are package ops's, which also serves them
// alone for processes without the API.
package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// Options configure an API.
type Options struct {
	// Registry holds applications and webhooks (started; required). A
	// process without the API serves /healthz, /readyz and /metrics with
	// package ops.
	Registry *registry.Registry
	// Catalog lists the accepted event names (default catalog.Default()).
	Catalog *catalog.Catalog
	// Policy decides which webhook addresses may be registered.
	Policy netguard.Policy
	// Lookup resolves webhook hosts at registration (netguard.SystemLookup
	// in production); nil skips DNS.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// AdminToken authorizes creating applications; empty disables every
	// admin endpoint (they answer 401).
	AdminToken string
	// Produce writes one event into the events topic (key = account id,
	// value = contract.AppendValue of the event) and returns once
	// Kafka acknowledged it. Nil makes POST /v1/events answer 503.
	Produce func(ctx context.Context, key, value []byte) error
	// ProduceTimeout bounds one Produce call (default 10s).
	ProduceTimeout time.Duration
	// Health is the check of /healthz; nil means always healthy.
	Health func(ctx context.Context) error
	// Ready are the checks of /readyz; none means always ready.
	Ready []ops.Check
	Log   zerolog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// MaxBodySize limits request bodies in bytes (default 64 KiB).
	MaxBodySize int
	// ShutdownTimeout bounds the graceful shutdown in Serve (default 10s).
	ShutdownTimeout time.Duration
	// Metrics is the process's set, written at /metrics with the request
	// counts and the retry queues' depth (nil: a set of the API's own).
	Metrics *metrics.Set
	// Deliveries is the retry queues' store, for listing, retrying and
	// replaying deliveries; nil makes those endpoints answer 503.
	Deliveries *shard.Store
	// SecretOverlap is how long a rotated secret or token keeps working
	// unless the rotation asks otherwise (0: 24h; negative: none).
	SecretOverlap time.Duration

	// Sender makes test sends (POST /v1/webhooks/{id}/test) with the
	// dispatcher's policy and limits; nil makes that endpoint answer 503.
	Sender *sender.Sender
	// ResourceBase is the base of a test event's resource_url (the
	// dispatcher's --resource-base; default https://api.tradegecko.com).
	ResourceBase string
	// TestSendsPerMinute bounds the test sends of one webhook (5): a
	// bucket of that many, refilled evenly over a minute.
	TestSendsPerMinute int

	// Recovery re-delivers events from the events topic by time; its
	// zero value makes the recovery endpoints answer 503.
	Recovery RecoveryOptions

	// PortalLink mints a one-time developer portal link for an
	// application (POST /v1/applications/{id}/portal-links); nil makes
	// that endpoint answer 503.
	PortalLink func(ctx context.Context, appID string) (url string, expiresAt time.Time, err error)
	// Portal, given the API, returns the handler of every path under
	// /portal/ (the developer portal, which calls the API back through
	// Call); nil answers them 404.
	Portal func(*API) fasthttp.RequestHandler
}

// API is the management HTTP API. It is safe for concurrent use.
type API struct {
	o         Options
	adminHash [sha256.Size]byte
	requests  *ops.Requests
	tests     *buckets
	recs      *recoveries
	portal    fasthttp.RequestHandler
}

// New returns an API; Handler or Serve put it on the network.
func New(o Options) *API {
	if o.Catalog == nil {
		o.Catalog = catalog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxBodySize <= 0 {
		o.MaxBodySize = 64 << 10
	}
	if o.ProduceTimeout <= 0 {
		o.ProduceTimeout = 10 * time.Second
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	if o.SecretOverlap == 0 {
		o.SecretOverlap = 24 * time.Hour
	}
	if o.ResourceBase == "" {
		o.ResourceBase = "https://api.tradegecko.com"
	}
	if o.TestSendsPerMinute <= 0 {
		o.TestSendsPerMinute = 5
	}
	a := &API{o: o, requests: ops.NewRequests(o.Metrics), tests: newBuckets(o.TestSendsPerMinute, time.Minute)}
	a.recs = newRecoveries(a)
	if o.AdminToken != "" {
		a.adminHash = sha256.Sum256([]byte(o.AdminToken))
	}
	if o.Portal != nil {
		a.portal = o.Portal(a)
	}
	return a
}

// Serve serves the API on ln until ctx ends, then shuts down gracefully
// (in-flight requests finish, within ShutdownTimeout). It returns nil on a
// clean stop.
func (a *API) Serve(ctx context.Context, ln net.Listener) error {
	srv := ops.NewFastServer(a.Handler(), a.o.Log, a.o.MaxBodySize, a.requests)
	err := ops.Serve(ctx, srv, ln, a.o.ShutdownTimeout)
	a.recs.stop() // no request can start one now
	return err
}

// Handler returns the API's request handler.
func (a *API) Handler() fasthttp.RequestHandler { return a.serve }

// asApp is the user value key under which Call names its caller.
type asApp struct{}

// Call runs one API request in-process as the application app, through
// the same routing, handlers and rules as a request with its token, and
// returns the answer's status and JSON body. The developer portal acts
// through it. uri is a path with an optional query (/v1/webhooks?limit=5).
// It is not counted in geckohook_api_requests_total: the request that
// made it (a portal page, route "portal") is.
func (a *API) Call(app *registry.App, method, uri string, body []byte) (status int, resp []byte) {
	var ctx fasthttp.RequestCtx
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	if body != nil {
		req.Header.SetContentType("application/json")
		req.SetBody(body)
	}
	ctx.Init(req, nil, nil)
	fasthttp.ReleaseRequest(req)
	ctx.SetUserValue(asApp{}, app)
	a.handle(&ctx)
	return ctx.Response.StatusCode(), append([]byte(nil), ctx.Response.Body()...)
}

// serve answers one request from the wire and counts it.
func (a *API) serve(ctx *fasthttp.RequestCtx) {
	route := a.handle(ctx)
	a.requests.Count(route, ctx.Response.StatusCode())
}

// handle answers one request, from the wire or through Call, and logs it;
// it returns the request's route label for metrics.
func (a *API) handle(ctx *fasthttp.RequestCtx) (route string) {
	start := time.Now()
	route = "unknown"
	var appID string
	defer func() {
		if p := recover(); p != nil {
			a.o.Log.Error().Str("path", string(ctx.Path())).Interface("panic", p).Msg("api handler panicked")
			ctx.Response.Reset()
			writeError(ctx, &apiError{fasthttp.StatusInternalServerError, "internal", "internal error"})
		}
		a.o.Log.Debug().Str("method", string(ctx.Method())).Bytes("path", loggedPath(ctx.Path())).
			Int("status", ctx.Response.StatusCode()).Str("app_id", appID).Dur("took_ms", time.Since(start)).Msg("api request")
	}()
	route, appID = a.route(ctx)
	return route
}

// loggedPath is a request's path for the log: a portal link's token, a
// secret, is left out.
func loggedPath(path []byte) []byte {
	const link = "/portal/link/"
	if bytes.HasPrefix(path, []byte(link)) && len(path) > len(link) {
		return []byte(link + "…")
	}
	return path
}

// route dispatches one request and returns the route label for metrics and
// the calling application's id for the log.
func (a *API) route(ctx *fasthttp.RequestCtx) (route, appID string) {
	path := string(ctx.Path())
	method := string(ctx.Method())
	var allowed string
	var h func(*fasthttp.RequestCtx, caller) *apiError
	var need access
	switch {
	case path == "/healthz":
		route, allowed = "healthz", "GET, HEAD"
		if method == "GET" || method == "HEAD" {
			ops.Healthz(ctx, a.o.Health)
			return route, ""
		}
	case path == "/readyz":
		route, allowed = "readyz", "GET, HEAD"
		if method == "GET" || method == "HEAD" {
			ops.Readyz(ctx, a.o.Ready)
			return route, ""
		}
	case path == "/metrics":
		route, allowed = "metrics", "GET, HEAD"
		if method == "GET" || method == "HEAD" {
			a.serveMetrics(ctx)
			return route, ""
		}
	case path == "/v1/openapi.json":
		route, allowed = "openapi", "GET, HEAD"
		if method == "GET" || method == "HEAD" {
			serveOpenAPI(ctx)
			return route, ""
		}
	case path == "/v1/applications":
		route, allowed = "applications", "POST"
		if method == "POST" {
			h, need = a.createApp, needAdmin
		}
	case isPath(path, "/v1/applications/", ""):
		route, allowed = "application", "GET, PATCH"
		switch method {
		case "GET":
			h, need = a.getApp, needAny
		case "PATCH":
			h, need = a.updateApp, needAny
		}
	case isPath(path, "/v1/applications/", "secret"):
		route, allowed = "application_secret", "POST"
		if method == "POST" {
			h, need = a.rotateSecret, needAny
		}
	case isPath(path, "/v1/applications/", "token"):
		route, allowed = "application_token", "POST"
		if method == "POST" {
			h, need = a.rotateToken, needAny
		}
	case path == "/v1/webhooks":
		route, allowed = "webhooks", "GET, POST"
		switch method {
		case "GET":
			h, need = a.listWebhooks, needApp
		case "POST":
			h, need = a.createWebhook, needApp
		}
	case isPath(path, "/v1/webhooks/", ""):
		route, allowed = "webhook", "GET, DELETE"
		switch method {
		case "GET":
			h, need = a.getWebhook, needApp
		case "DELETE":
			h, need = a.deleteWebhook, needApp
		}
	case isPath(path, "/v1/webhooks/", "deliveries"):
		route, allowed = "webhook_deliveries", "GET"
		if method == "GET" {
			h, need = a.listDeliveries, needApp
		}
	case isPath(path, "/v1/webhooks/", "replay-dead"):
		route, allowed = "webhook_replay_dead", "POST"
		if method == "POST" {
			h, need = a.replayDead, needApp
		}
	case isPath(path, "/v1/webhooks/", "test"):
		route, allowed = "webhook_test", "POST"
		if method == "POST" {
			h, need = a.testWebhook, needApp
		}
	case isPath(path, "/v1/webhooks/", "recover"):
		route, allowed = "webhook_recover", "POST"
		if method == "POST" {
			h, need = a.startRecovery, needApp
		}
	case isPath(path, "/v1/recoveries/", ""):
		route, allowed = "recovery", "GET, DELETE"
		switch method {
		case "GET":
			h, need = a.getRecovery, needApp
		case "DELETE":
			h, need = a.cancelRecovery, needApp
		}
	case isPath(path, "/v1/deliveries/", "retry"):
		route, allowed = "delivery_retry", "POST"
		if method == "POST" {
			h, need = a.retryDelivery, needApp
		}
	case isPath(path, "/v1/applications/", "portal-links"):
		route, allowed = "application_portal_links", "POST"
		if method == "POST" {
			h, need = a.createPortalLink, needAny
		}
	case path == "/portal" || strings.HasPrefix(path, "/portal/"):
		if a.portal == nil {
			writeError(ctx, &apiError{fasthttp.StatusNotFound, "not_found", "the developer portal is not served here"})
		} else {
			a.portal(ctx)
		}
		return "portal", ""
	case path == "/v1/events":
		route, allowed = "events", "POST"
		if method == "POST" {
			h, need = a.ingestEvent, needAny
		}
	default:
		writeError(ctx, &apiError{fasthttp.StatusNotFound, "not_found", "no such endpoint"})
		return "unknown", ""
	}
	if h == nil {
		ctx.Response.Header.Set("Allow", allowed)
		writeError(ctx, &apiError{fasthttp.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("method %.20s is not allowed here; allowed: %s", method, allowed)})
		return route, ""
	}
	c, err := a.authorize(ctx, need)
	if err == nil {
		if len(ctx.Request.Body()) > a.o.MaxBodySize {
			err = errBodyTooLarge(a.o.MaxBodySize)
		} else {
			err = h(ctx, c)
		}
	}
	if err != nil {
		writeError(ctx, err)
	}
	if c.app != nil {
		appID = c.app.ID
	}
	return route, appID
}

// pathID splits prefix{id}[/rest] into id and rest.
func pathID(path, prefix string) (id, rest string) {
	id = strings.TrimPrefix(path, prefix)
	if i := strings.IndexByte(id, '/'); i >= 0 {
		id, rest = id[:i], id[i+1:]
	}
	return id, rest
}

// isPath reports whether path is prefix{id} (rest "") or prefix{id}/rest.
func isPath(path, prefix, rest string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	id, r := pathID(path, prefix)
	return id != "" && r == rest && (rest != "" || !strings.HasSuffix(path, "/"))
}

// apiError is an error answer.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errBodyTooLarge(limit int) *apiError {
	return &apiError{fasthttp.StatusRequestEntityTooLarge, "body_too_large",
		fmt.Sprintf("request body is larger than %d bytes", limit)}
}

func missing(field string) *apiError {
	return &apiError{fasthttp.StatusUnprocessableEntity, "missing_field", field + " is required"}
}

func invalid(code, msg string) *apiError {
	return &apiError{fasthttp.StatusUnprocessableEntity, code, msg}
}

func writeError(ctx *fasthttp.RequestCtx, e *apiError) {
	ops.WriteError(ctx, e.status, e.code, e.message)
}

// writeJSON answers with v as JSON.
func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) { ops.WriteJSON(ctx, status, v) }

// decodeBody reads the request body as one JSON object into dst.
func decodeBody(ctx *fasthttp.RequestCtx, dst any) *apiError {
	body := ctx.Request.Body()
	if len(bytes.TrimSpace(body)) == 0 {
		return &apiError{fasthttp.StatusBadRequest, "invalid_json", "request body is empty"}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return invalid("invalid_field", fmt.Sprintf("%s must be a JSON %s, not %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value))
		}
		if errors.As(err, &te) {
			return &apiError{fasthttp.StatusBadRequest, "invalid_json", "request body must be a JSON object"}
		}
		return &apiError{fasthttp.StatusBadRequest, "invalid_json", "request body is not valid JSON: " + err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &apiError{fasthttp.StatusBadRequest, "invalid_json", "request body has data after the JSON object"}
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "struct", "map":
		return "object"
	case "slice", "array":
		return "array"
	case "bool":
		return "boolean"
	default:
		return "number"
	}
}

// responseTime formats a time as RFC 3339 in UTC.
func responseTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// queueStates are the states of geckohook_retry_queue_deliveries.
var queueStates = [...]string{"scheduled", "dead"}

// serveMetrics answers /metrics; the retry queues' depth is read from Redis
// now (within 2 s), and left out when Redis does not answer.
func (a *API) serveMetrics(ctx *fasthttp.RequestCtx) {
	if a.o.Deliveries != nil {
		qctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		scheduled, dead, err := a.o.Deliveries.Depth(qctx)
		cancel()
		for i, n := range [...]int64{scheduled, dead} {
			name := `geckohook_retry_queue_deliveries{state="` + queueStates[i] + `"}`
			if err != nil {
				a.o.Metrics.UnregisterMetric(name)
				continue
			}
			a.o.Metrics.GetOrCreateGauge(name, nil).Set(float64(n))
		}
	}
	ops.WriteMetrics(ctx, a.o.Metrics)
}

// access is what token an endpoint needs.
type access int

const (
	needAdmin access = iota // the admin token
	needApp                 // an application token
	needAny                 // either
)

// caller is who made a request.
type caller struct {
	admin bool
	app   *registry.App
}

func (a *API) authorize(ctx *fasthttp.RequestCtx, need access) (caller, *apiError) {
	var c caller
	token := bearer(ctx.Request.Header.Peek("Authorization"))
	if app, ok := ctx.UserValue(asApp{}).(*registry.App); ok && app != nil {
		c.app = app // Call: in-process, on behalf of the application
	} else if token != "" {
		if a.o.AdminToken != "" {
			h := sha256.Sum256([]byte(token))
			c.admin = subtle.ConstantTimeCompare(h[:], a.adminHash[:]) == 1
		}
		if !c.admin {
			c.app = a.o.Registry.AppByToken(token)
		}
	}
	unauthorized := &apiError{fasthttp.StatusUnauthorized, "unauthorized", "a valid bearer token is required"}
	switch need {
	case needAdmin:
		if c.admin {
			return c, nil
		}
		if c.app != nil {
			return c, &apiError{fasthttp.StatusForbidden, "forbidden", "this endpoint needs the admin token"}
		}
		return c, unauthorized
	case needApp:
		if c.app != nil {
			return c, nil
		}
		if c.admin {
			return c, &apiError{fasthttp.StatusForbidden, "forbidden", "webhooks belong to an application: use its token"}
		}
		return c, unauthorized
	default:
		if c.app != nil || c.admin {
			return c, nil
		}
		return c, unauthorized
	}
}

// bearer extracts the token of an "Authorization: Bearer <token>" header.
func bearer(h []byte) string {
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(string(h[:len(prefix)]), prefix) {
		return ""
	}
	return strings.TrimSpace(string(h[len(prefix):]))
}
