// Package ops serves a process's operations endpoints: /healthz (the
// process lives and reaches Redis), /readyz (every service it needs
// answers) and /metrics (Prometheus text from a metrics.Set of
// github.com/VictoriaMetrics/metrics, with the Go runtime's and the
// process's) for a process that runs no management API (a dispatcher, a
// coordinator), and Go's profiles under /debug/pprof/ on a listener of
// their own. The management API (package api) answers /healthz, /readyz
// and /metrics through the same pieces: Healthz, Readyz, WriteMetrics,
// Requests and Serve.
package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
)

// Options configure a Server.
type Options struct {
	// Health is the check of /healthz; nil means always healthy.
	Health func(ctx context.Context) error
	// Ready are the checks of /readyz; none means always ready.
	Ready []Check
	// Metrics is the process's set, written at /metrics (nil: a set of
	// the server's own, with the request counts only).
	Metrics *metrics.Set
	Log     zerolog.Logger
	// ShutdownTimeout bounds the graceful shutdown in Serve (default 10s).
	ShutdownTimeout time.Duration
}

// maxBodySize limits request bodies; no endpoint here reads one.
const maxBodySize = 64 << 10

// Server answers /healthz, /readyz and /metrics; every other path is 404.
// It is safe for concurrent use.
type Server struct {
	o        Options
	requests *Requests
}

// New returns a Server; Handler or Serve put it on the network.
func New(o Options) *Server {
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	return &Server{o: o, requests: NewRequests(o.Metrics)}
}

// Serve serves the endpoints on ln until ctx ends, then shuts down
// gracefully (within ShutdownTimeout). It returns nil on a clean stop.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return Serve(ctx, NewFastServer(s.Handler(), s.o.Log, maxBodySize, s.requests), ln, s.o.ShutdownTimeout)
}

// NewFastServer returns the fasthttp server geckohook's HTTP endpoints run
// on, with every limit set, answering with h: requests it cannot read (too large a body, a timeout, bad HTTP) are answered with a
// JSON error and counted in reqs under the route "transport".
func NewFastServer(h fasthttp.RequestHandler, log zerolog.Logger, maxBody int, reqs *Requests) *fasthttp.Server {
	return &fasthttp.Server{
		Handler: h,
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			var ne net.Error
			switch {
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				WriteError(ctx, fasthttp.StatusRequestEntityTooLarge, "body_too_large",
					fmt.Sprintf("request body is larger than %d bytes", maxBody))
			case errors.As(err, &ne) && ne.Timeout():
				WriteError(ctx, fasthttp.StatusRequestTimeout, "timeout", "request was not received in time")
			default:
				WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "cannot parse HTTP request")
			}
			reqs.Count("transport", ctx.Response.StatusCode())
		},
		Name:               "geckohook",
		ReadTimeout:        10 * time.Second,
		WriteTimeout:       10 * time.Second,
		IdleTimeout:        60 * time.Second,
		MaxRequestBodySize: maxBody,
		ReadBufferSize:     8 << 10, // bounds request line and headers
		Logger:             fasthttpLogger{log},
	}
}

type fasthttpLogger struct{ l zerolog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Warn().Str("component", "api").Msgf(format, args...)
}

// Serve serves srv on ln until ctx ends, then shuts it down gracefully
// (in-flight requests finish, within timeout). It returns nil on a clean
// stop.
func Serve(ctx context.Context, srv *fasthttp.Server, ln net.Listener, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	shutErr := srv.ShutdownWithContext(sctx)
	// If Serve had not registered ln yet, shutdown did not close it.
	_ = ln.Close()
	serveErr := <-errc
	if shutErr != nil && !errors.Is(shutErr, net.ErrClosed) {
		return fmt.Errorf("api shutdown: %w", shutErr)
	}
	if serveErr != nil && !errors.Is(serveErr, net.ErrClosed) {
		return serveErr
	}
	return nil
}

// Handler returns the Server's request handler.
func (s *Server) Handler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		route := "unknown"
		defer func() {
			if p := recover(); p != nil {
				s.o.Log.Error().Str("path", string(ctx.Path())).Interface("panic", p).Msg("api handler panicked")
				ctx.Response.Reset()
				WriteError(ctx, fasthttp.StatusInternalServerError, "internal", "internal error")
			}
			status := ctx.Response.StatusCode()
			s.requests.Count(route, status)
			s.o.Log.Debug().Str("method", string(ctx.Method())).Bytes("path", ctx.Path()).
				Int("status", status).Dur("took_ms", time.Since(start)).Msg("api request")
		}()
		switch string(ctx.Path()) {
		case "/healthz":
			route = "healthz"
			if Only(ctx, "GET", "HEAD") {
				Healthz(ctx, s.o.Health)
			}
		case "/readyz":
			route = "readyz"
			if Only(ctx, "GET", "HEAD") {
				Readyz(ctx, s.o.Ready)
			}
		case "/metrics":
			route = "metrics"
			if Only(ctx, "GET", "HEAD") {
				WriteMetrics(ctx, s.o.Metrics)
			}
		default:
			WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such endpoint")
		}
	}
}

// Only reports whether the request's method is one of methods; if not, it
// answers 405 with an Allow header.
func Only(ctx *fasthttp.RequestCtx, methods ...string) bool {
	m := string(ctx.Method())
	allowed := ""
	for i, want := range methods {
		if m == want {
			return true
		}
		if i > 0 {
			allowed += ", "
		}
		allowed += want
	}
	ctx.Response.Header.Set("Allow", allowed)
	WriteError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed",
		fmt.Sprintf("method %.20s is not allowed here; allowed: %s", m, allowed))
	return false
}

// Healthz answers a health check: 200 {"status":"ok"} when health (nil:
// always healthy) passes within 5 s, else 503 with the reason.
func Healthz(ctx *fasthttp.RequestCtx, health func(ctx context.Context) error) {
	if health != nil {
		hctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := health(hctx)
		cancel()
		if err != nil {
			var b struct {
				Status string `json:"status"`
				errorBody
			}
			b.Status = "unavailable"
			b.Error.Code, b.Error.Message = "unhealthy", err.Error()
			WriteJSON(ctx, fasthttp.StatusServiceUnavailable, b)
			return
		}
	}
	WriteJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "ok"})
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// WriteError answers {"error":{"code":…,"message":…}} with status; a 401
// also gets the Bearer challenge.
func WriteError(ctx *fasthttp.RequestCtx, status int, code, message string) {
	if status == fasthttp.StatusUnauthorized {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="geckohook"`)
	}
	var b errorBody
	b.Error.Code, b.Error.Message = code, message
	WriteJSON(ctx, status, b)
}

// WriteJSON answers with v as JSON (HTML characters unescaped).
func WriteJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only geckohook's own response types are encoded; they always encode.
		status = fasthttp.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":{"code":"internal","message":"cannot encode response"}}` + "\n")
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBody(buf.Bytes())
}

// ServeProfiles serves Go's profiles under /debug/pprof/ on ln until ctx
// ends. It returns nil on a clean stop.
func ServeProfiles(ctx context.Context, ln net.Listener) error {
	m := http.NewServeMux()
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	defer func() { cancel(); <-stopped }()
	go func() {
		defer close(stopped)
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("cannot serve profiles: %w", err)
	}
	return nil
}
