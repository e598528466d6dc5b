package sender

import (
	"fmt"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// Retry-After is read from a 429 or a 503, and from no other answer.
func TestSendReadsRetryAfter(t *testing.T) {
	base, _ := startFast(t, func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.Set("Retry-After", string(ctx.QueryArgs().Peek("after")))
		ctx.SetStatusCode(ctx.QueryArgs().GetUintOrZero("status"))
	})
	s := New(Options{Policy: devPolicy})
	for _, c := range []struct {
		status int
		after  string
		want   time.Duration
	}{
		{429, "120", 2 * time.Minute},
		{503, "3600", time.Hour},
		{429, "", 0},
		{429, "later", 0},
		{500, "120", 0},
		{200, "120", 0},
	} {
		res := s.Send(fmt.Sprintf("%s/?status=%d&after=%s", base, c.status, c.after), testBody, testID, testSig)
		if res.Status != c.status || res.RetryAfter != c.want {
			t.Errorf("%d with Retry-After %q: status %d, retry after %v; want %v", c.status, c.after, res.Status, res.RetryAfter, c.want)
		}
	}
}
