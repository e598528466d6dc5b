package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

// chromium finds Debian's chromium (make test installs it), skipping or
// failing as testenv.Tool does for redis-server.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return testenv.Tool(t, "chromium")
}

// browserTab starts a headless chromium with a fresh profile and no
// network of its own (no updates, sync or QUIC), and returns a tab.
func browserTab(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)), chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("cannot start chromium: %v", err)
	}
	return ctx
}

// tab drives one browser tab for a test.
type tab struct {
	t       *testing.T
	ctx     context.Context
	shots   string
	dialogs atomic.Int32
}

func (b *tab) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		loc, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`location.href + ": " + document.body.innerText`))
		b.t.Fatalf("browser: %v; at %s", err, loc)
	}
}

// eval runs a script in the page.
func eval[T any](b *tab, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

func (b *tab) text(sel string) string {
	return eval[string](b, `(document.querySelector(`+jsQuote(sel)+`)||{}).textContent||""`)
}

func (b *tab) count(sel string) int {
	return eval[int](b, `document.querySelectorAll(`+jsQuote(sel)+`).length`)
}

func jsQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `\'`) + "'" }

// shot saves a screenshot of the whole page as name.png.
func (b *tab) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// accessible checks that every control has a label and that nothing was
// injected: no script, no image, no dialog.
func (b *tab) accessible(page string) {
	b.t.Helper()
	unlabelled := eval[[]string](b, `Array.from(document.querySelectorAll('input:not([type=hidden]),select,textarea'))
		.filter(e => e.labels.length === 0).map(e => e.name || e.id)`)
	if len(unlabelled) > 0 {
		b.t.Errorf("%s: controls without a label: %v", page, unlabelled)
	}
	if n := b.count("script, img, iframe, object, embed"); n != 0 {
		b.t.Errorf("%s: %d script, img or frame elements", page, n)
	}
	if n := b.dialogs.Load(); n != 0 {
		b.t.Errorf("%s: %d dialogs opened", page, n)
	}
}

// waitFor reloads url until cond holds.
func (b *tab) waitFor(url, what string, cond func() bool) {
	b.t.Helper()
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	for {
		b.do(chromedp.Navigate(url))
		if cond() {
			b.t.Logf("%s: seen after %v", what, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s: not seen within 20s; page: %s", what, b.text("main"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The developer portal in a real browser against geckohook all with a real
// receiver: a link opens it, a webhook is created, fails, is fixed and
// retried, the secret rotates, the dead set is replayed; hostile values
// render as text; reused links and cross-site posts are refused; every
// control has a label and the link page works by keyboard.
func TestPortalInBrowser(t *testing.T) {
	ctx := browserTab(t)
	b := &tab{t: t, ctx: ctx, shots: t.ArtifactDir()}
	t.Logf("screenshots in %s", b.shots)
	go func() {
		for _, err := range chromedp.Events(ctx, page.JavascriptDialogOpening) {
			if err != nil {
				return
			}
			b.dialogs.Add(1)
			go chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false}) //nolint:errcheck
		}
	}()

	var status atomic.Int32 // what the receiver answers
	status.Store(200)
	recv, err := loadtest.NewReceiver(func(string, int) int { return int(status.Load()) })
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	const admin = "browser-admin-token"
	apiAddr := freeAddr(t)
	redisSrv := testenv.Redis(t)
	_, logs, _ := startProcess(t, "all", "--embedded-kafka-listen", freeAddr(t), "--api-listen", apiAddr, "--partitions", "1",
		"--redis-addr", redisSrv.Addr, "--admin-token", admin, "--max-retries", "1", "--log-format", "json", "--log-level", "debug")
	base := "http://" + apiAddr
	testenv.WaitFor(t, 30*time.Second, func() error {
		code, _, err := get(base + "/readyz")
		if err == nil && code != 200 {
			err = fmt.Errorf("readyz %d", code)
		}
		return err
	})
	code, body := apiCall(t, "POST", base+"/v1/applications", admin, `{"application":{"name":"Shop","developer_email":"dev@example.com"}}`)
	if code != 201 {
		t.Fatalf("create application: %d %v", code, body)
	}
	app := body["application"].(map[string]any)
	appID, appToken, secret := app["id"].(string), app["token"].(string), app["secret"].(string)
	link := func() string {
		code, body := apiCall(t, "POST", base+"/v1/applications/"+appID+"/portal-links", appToken, "")
		if code != 201 {
			t.Fatalf("portal link: %d %v", code, body)
		}
		return body["portal_link"].(map[string]any)["url"].(string)
	}

	// The link page, by keyboard: Tab to the button, Enter.
	first := link()
	b.do(chromedp.Navigate(first))
	b.accessible("link page")
	b.shot("1-link")
	b.do(chromedp.KeyEvent(kb.Tab))
	if id := eval[string](b, `document.activeElement.id`); id != "open" {
		t.Fatalf("Tab focused %q, not the open button", id)
	}
	b.do(chromedp.KeyEvent(kb.Enter), chromedp.WaitVisible(chromedp.CSS("#create")))
	if loc := eval[string](b, `location.href`); loc != base+"/portal/" {
		t.Fatalf("after the link: %s", loc)
	}
	b.accessible("webhooks page")

	// Create a webhook with the form.
	b.do(chromedp.SetValue(chromedp.CSS("#account_id"), "acc-1"), chromedp.SetValue(chromedp.CSS("#event"), "order.create"),
		chromedp.SetValue(chromedp.CSS("#address"), recv.URL+"/hooks"), chromedp.Click(chromedp.CSS("#create")),
		chromedp.WaitVisible(chromedp.CSS("#test")))
	hookURL := eval[string](b, `location.href`)
	if !strings.HasPrefix(hookURL, base+"/portal/webhooks/wh_") || b.text("#address") != recv.URL+"/hooks" {
		t.Fatalf("after create: %s, address %q", hookURL, b.text("#address"))
	}
	recv.Expect("/hooks", secret)
	b.accessible("webhook page")

	event := func(id int) {
		t.Helper()
		if code, body := apiCall(t, "POST", base+"/v1/events", appToken,
			fmt.Sprintf(`{"event":{"account_id":"acc-1","event":"order.create","object_id":%d}}`, id)); code != 202 {
			t.Fatalf("event: %d %v", code, body)
		}
	}
	rows := func(section string) int { return b.count(`section[aria-labelledby=` + section + `] tr.delivery`) }
	delivered := func(n int) func() error {
		return func() error {
			ok := 0
			for _, r := range recv.Received() {
				if r.Status == 200 && r.ValidSig {
					ok++
				}
			}
			if ok < n {
				return fmt.Errorf("%d good deliveries, want %d", ok, n)
			}
			return nil
		}
	}

	// The receiver fails: the failure shows with its status.
	status.Store(500)
	event(1)
	b.waitFor(hookURL, "the failed delivery", func() bool { return rows("sched-h") == 1 })
	if cell := b.text(`section[aria-labelledby=sched-h] tr.delivery td:nth-child(4)`); cell != "500" {
		t.Errorf("last status shown %q, want 500", cell)
	}
	b.shot("2-failing")
	// Fixed; Retry now delivers it.
	status.Store(200)
	b.do(chromedp.Click(chromedp.CSS("button.retry")), chromedp.WaitVisible(chromedp.CSS(".notice")))
	testenv.WaitFor(t, 20*time.Second, delivered(1))
	b.waitFor(hookURL, "the retried delivery gone", func() bool { return rows("sched-h") == 0 })

	// A test send shows its result.
	b.do(chromedp.Click(chromedp.CSS("#test")), chromedp.WaitVisible(chromedp.CSS("#test-outcome")))
	if got := b.text("#test-outcome"); got != "success" {
		t.Errorf("test send outcome %q", got)
	}
	b.shot("3-test-send")

	// A dead delivery (its one retry fails too), replayed once fixed.
	status.Store(500)
	event(2)
	b.waitFor(hookURL, "the second failure", func() bool { return rows("sched-h") == 1 })
	b.do(chromedp.Click(chromedp.CSS("button.retry")), chromedp.WaitVisible(chromedp.CSS(".notice")))
	b.waitFor(hookURL, "the dead delivery", func() bool { return rows("dead-h") == 1 })
	b.shot("4-dead")
	status.Store(200)
	b.do(chromedp.Click(chromedp.CSS("#replay-dead")), chromedp.WaitVisible(chromedp.CSS(".notice")))
	if n := b.text(".notice"); !strings.HasPrefix(n, "1 dead deliveries") {
		t.Errorf("replay notice %q", n)
	}
	testenv.WaitFor(t, 20*time.Second, delivered(2))
	b.waitFor(hookURL, "the replayed delivery gone", func() bool { return rows("dead-h") == 0 && rows("sched-h") == 0 })

	// Recover the last minutes from Kafka: both events again.
	// (Minutes only: the browser drops ":00" seconds from a value, and
	// until is left empty, which is now.)
	since := time.Now().UTC().Add(-10 * time.Minute).Format("2006-01-02T15:04")
	received := len(recv.Received())
	b.do(chromedp.SetValue(chromedp.CSS("#since"), since),
		chromedp.Click(chromedp.CSS("#recover")), chromedp.WaitVisible(chromedp.CSS(".notice")))
	if got := b.text("main"); !strings.Contains(got, "Recovery started") || !strings.Contains(got, "Recovery rec") {
		t.Errorf("recovery page: %q", got)
	}
	b.shot("5-recovery")
	testenv.WaitFor(t, 20*time.Second, func() error {
		if n := len(recv.Received()) - received; n < 2 {
			return fmt.Errorf("%d deliveries recovered, want 2", n)
		}
		return nil
	})

	// Rotate the secret.
	b.do(chromedp.Navigate(base+"/portal/signing"), chromedp.SetValue(chromedp.CSS("#overlap-select"), "1h"),
		chromedp.Click(chromedp.CSS("#rotate")), chromedp.WaitVisible(chromedp.CSS("#secret")))
	if s := b.text("#secret"); s == "" || s == secret || !strings.Contains(b.text("#overlap"), "keeps signing until") {
		t.Errorf("after rotation: secret %q, overlap %q", s, b.text("#overlap"))
	}
	b.accessible("signing page")
	b.shot("6-signing")

	// Hostile values: a webhook whose account and address carry markup,
	// an event whose resource_url does, a receiver error echoing them.
	hostile := `<script>alert(1)</script>"><img src=x onerror=alert(1)>javascript:alert(1)`
	b.do(chromedp.Navigate(base+"/portal/"), chromedp.SetValue(chromedp.CSS("#account_id"), "acc-2"+hostile),
		chromedp.SetValue(chromedp.CSS("#event"), "order.create"),
		chromedp.SetValue(chromedp.CSS("#address"), recv.URL+"/x?q="+hostile), chromedp.Click(chromedp.CSS("#create")),
		chromedp.WaitVisible(chromedp.CSS("#test")))
	hostileURL := eval[string](b, `location.href`)
	status.Store(500)
	if code, body := apiCall(t, "POST", base+"/v1/events", appToken,
		`{"event":{"account_id":"acc-2`+strings.ReplaceAll(hostile, `"`, `\"`)+`","event":"order.create","object_id":3,"resource_url":"`+strings.ReplaceAll(hostile, `"`, `\"`)+`"}}`); code != 202 {
		t.Fatalf("hostile event: %d %v", code, body)
	}
	b.waitFor(hostileURL, "the hostile delivery", func() bool { return rows("sched-h")+rows("dead-h") == 1 })
	for _, part := range []string{`<script>alert(1)</script>`, `"><img src=x onerror=alert(1)>`, `javascript:alert(1)`} {
		// The payload is JSON: its quotes are escaped.
		if !strings.Contains(b.text("pre.payload"), strings.ReplaceAll(part, `"`, `\"`)) || !strings.Contains(b.text("#address"), part) {
			t.Errorf("%q not shown as text: payload %q, address %q", part, b.text("pre.payload"), b.text("#address"))
		}
	}
	b.accessible("hostile webhook page")
	b.shot("7-hostile")
	b.do(chromedp.Navigate(base + "/portal/"))
	b.accessible("webhooks page with hostile values")
	b.shot("8-webhooks")
	b.do(chromedp.Navigate(base + "/portal/digests"))
	b.accessible("digests page")
	b.shot("9-digests")

	// Another application's webhook is not found.
	code, body = apiCall(t, "POST", base+"/v1/applications", admin, `{"application":{"name":"Other","developer_email":"o@example.com"}}`)
	if code != 201 {
		t.Fatalf("second application: %d", code)
	}
	otherToken := body["application"].(map[string]any)["token"].(string)
	code, body = apiCall(t, "POST", base+"/v1/webhooks", otherToken, `{"webhook":{"account_id":"acc-1","event":"order.create","address":"`+recv.URL+`/other"}}`)
	if code != 201 {
		t.Fatalf("other webhook: %d", code)
	}
	b.do(chromedp.Navigate(base + "/portal/webhooks/" + body["webhook"].(map[string]any)["id"].(string)))
	if !strings.Contains(b.text("main"), "not found") {
		t.Errorf("another application's webhook: %q", b.text("main"))
	}

	// A form posted from another origin, even with the session's CSRF
	// token, is refused.
	b.do(chromedp.Navigate(base + "/portal/"))
	csrf := eval[string](b, `document.querySelector('input[name=csrf]').value`)
	evil := evilSite(t, base+"/portal/webhooks", csrf, recv.URL+"/evil")
	before := len(hooksOf(t, base, appToken))
	b.do(chromedp.Navigate(evil), chromedp.Click(chromedp.CSS("#go")), chromedp.WaitVisible(chromedp.CSS("#message")))
	if msg := b.text("#message"); !strings.Contains(msg, "sent from another site") {
		t.Errorf("cross-site post answered %q", msg)
	}
	if after := len(hooksOf(t, base, appToken)); after != before {
		t.Errorf("a cross-site post created a webhook: %d → %d", before, after)
	}

	// A used link is refused.
	b.do(chromedp.Navigate(first), chromedp.Click(chromedp.CSS("#open")), chromedp.WaitVisible(chromedp.CSS("#message")))
	if msg := b.text("#message"); !strings.Contains(msg, "used already or has expired") {
		t.Errorf("reused link answered %q", msg)
	}
	b.shot("10-link-refused")
	// An expired link is refused: the process judges expiry by its clock,
	// so the test dates the stored link 15 minutes back.
	late := link()
	rdb := redisSrv.Client()
	keys, err := rdb.Keys(context.Background(), "gh:portal:link:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("stored links: %v %v", keys, err)
	}
	expired := fmt.Sprintf("%s\n%d", appID, time.Now().Add(-time.Second).UnixMilli())
	if err := rdb.Set(context.Background(), keys[0], expired, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	b.do(chromedp.Navigate(late), chromedp.Click(chromedp.CSS("#open")), chromedp.WaitVisible(chromedp.CSS("#message")))
	if msg := b.text("#message"); !strings.Contains(msg, "used already or has expired") {
		t.Errorf("expired link answered %q", msg)
	}
	if n := b.dialogs.Load(); n != 0 {
		t.Errorf("%d dialogs opened", n)
	}
	// Not even the debug log holds a link's token or a secret.
	token := first[strings.LastIndex(first, "/")+1:]
	if out := logs.String(); !strings.Contains(out, "/portal/link/…") || strings.Contains(out, token) || strings.Contains(out, secret) {
		t.Errorf("the log shows a portal link's token or the secret (or logs no portal request)")
	}
}

// evilSite serves, on another origin, a page whose button posts a new
// webhook to the portal.
func evilSite(t *testing.T, action, csrf, address string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!DOCTYPE html><form method="post" action="%s"><input type="hidden" name="csrf" value="%s">
<input type="hidden" name="account_id" value="evil"><input type="hidden" name="event" value="order.create">
<input type="hidden" name="address" value="%s"><button id="go">Win a prize</button></form>`, action, csrf, address)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}

func hooksOf(t *testing.T, base, token string) []any {
	t.Helper()
	code, body := apiCall(t, "GET", base+"/v1/webhooks", token, "")
	if code != 200 {
		t.Fatalf("list webhooks: %d", code)
	}
	hooks, _ := body["webhooks"].([]any)
	return hooks
}
