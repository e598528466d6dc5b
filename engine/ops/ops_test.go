package ops

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// The operations endpoints alone, as a dispatcher process serves them on
// --metrics-listen (they moved here from the API's registry-less mode).
func TestOperationsOnlyMode(t *testing.T) {
	set := metrics.NewSet()
	set.NewGauge("geckohook_shards", func() float64 { return 3 })
	s := New(Options{Metrics: set})
	call := func(method, path string) (int, string) {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod(method)
		ctx.Request.SetRequestURI(path)
		s.Handler()(&ctx)
		return ctx.Response.StatusCode(), string(ctx.Response.Body())
	}
	if code, body := call("GET", "/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("healthz: %d %s", code, body)
	}
	if code, body := call("GET", "/metrics"); code != 200 || !strings.Contains(body, "geckohook_shards 3") {
		t.Errorf("metrics: %d %s", code, body)
	}
	for _, p := range []string{"/v1/webhooks", "/v1/applications", "/v1/events"} {
		if code, _ := call("POST", p); code != 404 {
			t.Errorf("POST %s without a registry: %d, want 404", p, code)
		}
	}
	if code, _ := call("POST", "/metrics"); code != 405 {
		t.Errorf("POST /metrics: %d, want 405", code)
	}
	_, body := call("GET", "/metrics")
	for _, line := range []string{
		`geckohook_api_requests_total{route="healthz",code="200"} 1`,
		`geckohook_api_requests_total{route="metrics",code="405"} 1`,
		`geckohook_api_requests_total{route="unknown",code="404"} 3`,
	} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, body)
		}
	}
}

func TestUnhealthyIs503WithTheReason(t *testing.T) {
	s := New(Options{Health: func(context.Context) error { return errors.New("redis <down>") }})
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("/healthz")
	s.Handler()(&ctx)
	want := `{"status":"unavailable","error":{"code":"unhealthy","message":"redis <down>"}}` + "\n"
	if ctx.Response.StatusCode() != 503 || string(ctx.Response.Body()) != want {
		t.Fatalf("healthz: %d %s, want 503 %s", ctx.Response.StatusCode(), ctx.Response.Body(), want)
	}
}

func TestServeAndProfilesStopWithTheirContext(t *testing.T) {
	for name, serve := range map[string]func(context.Context, net.Listener) error{
		"ops":      New(Options{}).Serve,
		"profiles": ServeProfiles,
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- serve(ctx, ln) }()
		path := map[string]string{"ops": "/healthz", "profiles": "/debug/pprof/"}[name]
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d", name, path, resp.StatusCode)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: Serve = %v, want nil", name, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("%s: Serve did not return", name)
		}
	}
}

func TestHelpTextsFillBareHelpLines(t *testing.T) {
	var b bytes.Buffer
	writeWithHelp(&b, []byte("# HELP geckohook_shards\n# TYPE geckohook_shards gauge\ngeckohook_shards 3\n# HELP other_thing\n# HELP geckohook_redis_up kept as is\n"))
	want := "# HELP geckohook_shards Partitions this process holds.\n# TYPE geckohook_shards gauge\ngeckohook_shards 3\n# HELP other_thing\n# HELP geckohook_redis_up kept as is\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestReadyzNamesWhatIsNotReady(t *testing.T) {
	ok := Check{Name: "redis", Ready: func(context.Context) error { return nil }}
	down := Check{Name: "kafka", Ready: func(context.Context) error { return errors.New("dial tcp: refused") }}
	f := func(checks []Check, code int, body string) {
		t.Helper()
		var ctx fasthttp.RequestCtx
		ctx.Request.SetRequestURI("/readyz")
		New(Options{Ready: checks}).Handler()(&ctx)
		if ctx.Response.StatusCode() != code || string(ctx.Response.Body()) != body+"\n" {
			t.Fatalf("readyz: %d %s, want %d %s", ctx.Response.StatusCode(), ctx.Response.Body(), code, body)
		}
	}
	f(nil, 200, `{"status":"ok"}`)
	f([]Check{ok}, 200, `{"status":"ok"}`)
	f([]Check{ok, down}, 503, `{"status":"unavailable","not_ready":{"kafka":"dial tcp: refused"}}`)
}
