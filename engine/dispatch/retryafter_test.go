package dispatch

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

// A receiver that answers 429 with Retry-After: 2 hours gets its next
// attempt no sooner, with the reason on the record; a retry is spent.
func TestRetryAfterDelaysTheNextAttempt(t *testing.T) {
	e := startEnv(t, loadtest.Always(200))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.Set("Retry-After", "7200")
		ctx.SetStatusCode(fasthttp.StatusTooManyRequests)
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	w, err := e.reg.CreateWebhook(context.Background(), registry.Webhook{AppID: e.app.ID, AccountID: "acc-ra",
		Event: "order.create", Address: "http://" + ln.Addr().String() + "/hook"})
	if err != nil {
		t.Fatal(err)
	}
	e.produce("acc-ra", `{"account_id":"acc-ra","event":"order.create","object_id":1}`)
	var id string
	testenv.WaitFor(t, 10*time.Second, func() error {
		ds, err := e.disp.store.List(context.Background(), w.ID, "scheduled", 10)
		if err != nil || len(ds) != 1 {
			return fmt.Errorf("scheduled %d (%v)", len(ds), err)
		}
		id = ds[0].ID
		return nil
	})
	d := e.find(id)
	if want := e.now.Add(2 * time.Hour); !d.At.Equal(want) || !d.RetryAfter || d.Attempts != 1 || d.LastStatus != 429 {
		t.Fatalf("after a 429 with Retry-After 7200: due %v retry_after %v attempts %d status %d; want due %v",
			d.At, d.RetryAfter, d.Attempts, d.LastStatus, want)
	}
}
