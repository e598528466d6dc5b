package mail_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	netmail "net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/coordinator"
	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/mail"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/publish"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
)

// clock is the fake clock every part of a test shares.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

var day0 = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

type env struct {
	t       *testing.T
	ctx     context.Context
	rdb     *redis.Client
	brokers []string
	reg     *registry.Registry // the test's own copy, following announcements
	clk     *clock
	pub     *publish.Publisher
	sink    *testenv.SMTPSink
	coords  []*coordinator.Coordinator
	jobs    []*mail.Job
	sent    int // outcomes published and not filtered
	log     zerolog.Logger
	wg      sync.WaitGroup
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, clk: &clock{t: day0.Add(time.Hour)}, log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)}
	e.rdb = testenv.Redis(t).Client()
	e.brokers = []string{testenv.Kafka(t, 4).Addr()}
	e.sink = testenv.SMTP(t)
	ctx, cancel := context.WithCancel(context.Background())
	e.ctx = ctx
	t.Cleanup(func() { cancel(); e.wg.Wait() })
	if err := kafkaio.EnsureTopics(ctx, e.brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	e.reg = e.registry()
	e.pub = publish.New(e.brokers, outcomes.DefaultTopic, e.log, publish.WithClock(e.clk.Now))
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.pub.Close(cctx)
	})
	return e
}

func (e *env) registry() *registry.Registry {
	e.t.Helper()
	r := registry.New(e.rdb, registry.Options{Now: e.clk.Now, Log: e.log})
	if err := r.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// coordinator starts a coordinator with its own registry copy.
func (e *env) coordinator() *coordinator.Coordinator {
	c, _ := e.coordinatorIn(e.ctx)
	return c
}

// coordinatorIn starts a coordinator that runs until ctx ends; done closes
// when it has stopped.
func (e *env) coordinatorIn(ctx context.Context) (c *coordinator.Coordinator, done chan struct{}) {
	c = coordinator.New(coordinator.Options{
		Brokers: e.brokers, Redis: e.rdb, Registry: e.registry(),
		SweepEvery: 20 * time.Millisecond, WatermarkEvery: 20 * time.Millisecond, SessionTimeout: 6 * time.Second,
		Now: e.clk.Now, Log: e.log.With().Int("coordinator", len(e.coords)).Logger(),
	})
	e.coords = append(e.coords, c)
	e.wg.Add(1)
	done = make(chan struct{})
	go func() { defer e.wg.Done(); defer close(done); _ = c.Run(ctx) }()
	return c, done
}

// job starts a mail job; change adjusts its options.
func (e *env) job(ctx context.Context, change func(*mail.Options)) *mail.Job {
	e.t.Helper()
	j := e.newJob(change)
	e.wg.Add(1)
	go func() { defer e.wg.Done(); _ = j.Run(ctx) }()
	return j
}

// newJob returns a mail job that is not running; the test calls RunDue.
func (e *env) newJob(change func(*mail.Options)) *mail.Job {
	e.t.Helper()
	o := mail.Options{
		Redis: e.rdb, Registry: e.registry(), From: "geckohook@example.com", SMTPAddr: e.sink.Addr,
		Poll: 20 * time.Millisecond, LockTTL: time.Second, Now: e.clk.Now, Log: e.log.With().Int("job", len(e.jobs)).Logger(),
	}
	if change != nil {
		change(&o)
	}
	j, err := mail.New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.jobs = append(e.jobs, j)
	return j
}

func (e *env) app(name string) *registry.App {
	e.t.Helper()
	a, _, err := e.reg.CreateApp(e.ctx, name, name+"-dev@example.com")
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

func (e *env) hook(a *registry.App, path string) *registry.Webhook {
	e.t.Helper()
	w, err := e.reg.CreateWebhook(e.ctx, registry.Webhook{AppID: a.ID, AccountID: "acc-" + path, Event: "order.create", Address: "https://" + a.Name + ".example.com/" + path})
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

func (e *env) publish(w *registry.Webhook, kind outcomes.Kind, status, attempt int, at time.Time) {
	o := &outcomes.Outcome{
		Kind: kind, WebhookID: w.ID, AppID: w.AppID, AccountID: w.AccountID, Event: w.Event, Address: w.Address,
		DeliveryID: fmt.Sprintf("d-%d", at.UnixNano()), Status: status, Attempt: attempt, At: at,
	}
	if kind == outcomes.Failure {
		o.Error = fmt.Sprintf("%d Internal Server Error", status)
	}
	if kind == outcomes.Gone {
		// As a dispatcher does: it deletes the webhook, then reports it.
		if err := e.reg.DeleteWebhook(e.ctx, w.ID); err != nil {
			e.t.Fatal(err)
		}
	}
	before := e.pub.Filtered.Load()
	e.pub.Publish(o)
	if e.pub.Filtered.Load() == before {
		e.sent++
	}
}

func (e *env) fail(w *registry.Webhook, at time.Time) { e.publish(w, outcomes.Failure, 500, 1, at) }

// applied waits until the coordinators applied every outcome published.
func (e *env) applied() {
	e.t.Helper()
	testenv.WaitFor(e.t, 20*time.Second, func() error {
		var n int64
		for _, c := range e.coords {
			n += c.Stats.Outcomes.Load()
		}
		if n < int64(e.sent) {
			return fmt.Errorf("coordinators applied %d of %d outcomes", n, e.sent)
		}
		return nil
	})
}

// published waits until every outcome published is in Kafka (not
// necessarily applied): moving the fake clock on before that would let a
// caught-up coordinator vouch for outcomes still in the publisher's buffer,
// which the mail's grace covers in real time.
func (e *env) published() {
	e.t.Helper()
	testenv.WaitFor(e.t, 20*time.Second, func() error {
		if n := e.pub.Published.Load(); n < int64(e.sent) {
			return fmt.Errorf("published %d of %d outcomes", n, e.sent)
		}
		return nil
	})
}

// caughtUp waits until the coordinators' watermark reached the clock.
func (e *env) caughtUp() {
	e.t.Helper()
	testenv.WaitFor(e.t, 20*time.Second, func() error {
		wm, _ := e.rdb.Get(e.ctx, "gh:coord:watermark").Int64()
		if want := e.clk.Now().UnixMilli(); wm < want {
			return fmt.Errorf("watermark %d, want %d", wm, want)
		}
		return nil
	})
}

// mailedThrough waits until the mail job completed day.
func (e *env) mailedThrough(day string) {
	e.t.Helper()
	testenv.WaitFor(e.t, 20*time.Second, func() error {
		done, _ := e.rdb.Get(e.ctx, "gh:mail:done").Result()
		if done < day {
			return fmt.Errorf("last mailed day is %q, want %s", done, day)
		}
		return nil
	})
}

func (e *env) mailsTo(a *registry.App) []testenv.Mail { return e.sink.To(a.DeveloperEmail) }

// text returns the decoded plain-text part of a message and checks its
// shape: multipart/alternative with a text and an HTML part.
func text(t *testing.T, m testenv.Mail) (subject, body, messageID string) {
	t.Helper()
	msg, err := netmail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatalf("unreadable message: %v", err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/alternative" {
		t.Fatalf("content type %q (%v), want multipart/alternative", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var types []string
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(quotedprintable.NewReader(p))
		if err != nil {
			t.Fatal(err)
		}
		ct := p.Header.Get("Content-Type")
		types = append(types, ct)
		if strings.HasPrefix(ct, "text/plain") {
			body = strings.ReplaceAll(string(raw), "\r\n", "\n")
		}
	}
	if len(types) != 2 || !strings.HasPrefix(types[1], "text/html") {
		t.Fatalf("parts %v, want text/plain and text/html", types)
	}
	dec := new(mime.WordDecoder)
	subject, _ = dec.DecodeHeader(msg.Header.Get("Subject"))
	return subject, body, msg.Header.Get("Message-ID")
}

func mustContain(t *testing.T, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("mail lacks %q:\n%s", w, body)
		}
	}
}

// section returns the part of a digest's text about one address.
func section(body, address string) string {
	i := strings.Index(body, "- "+address+"\n")
	if i < 0 {
		return ""
	}
	rest := body[i+2:]
	if j := strings.Index(rest, "\n- "); j >= 0 {
		rest = rest[:j]
	}
	if j := strings.Index(rest, "\n\n"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

func TestThreeDaysOfFailuresDeleteAndDailyDigests(t *testing.T) {
	e := newEnv(t)
	e.coordinator()
	e.job(e.ctx, nil)
	a, b, c := e.app("alpha"), e.app("beta"), e.app("gamma")
	a1, a2, a3 := e.hook(a, "always-failing"), e.hook(a, "recovers"), e.hook(a, "gone")
	b1, c1 := e.hook(b, "once"), e.hook(c, "healthy")
	e.mailedThrough("2026-11-19") // nothing before the first day

	at := func(d, h int) time.Time { return day0.AddDate(0, 0, d).Add(time.Duration(h) * time.Hour) }
	// Day 0: a1 fails every 6 h from 01:00; a2 fails once then recovers;
	// a3 answers 410; b1 fails once; c1 only succeeds.
	for _, h := range []int{1, 7, 13, 19} {
		e.clk.Set(at(0, h))
		e.fail(a1, at(0, h))
		switch h {
		case 1:
			e.fail(a2, at(0, h))
			e.fail(b1, at(0, h))
			e.publish(c1, outcomes.Success, 200, 1, at(0, h))
		case 7:
			e.publish(a2, outcomes.Success, 200, 1, at(0, h))
		case 13:
			e.publish(a3, outcomes.Gone, 410, 1, at(0, h))
		}
	}
	if e.sent != 8 || e.pub.Filtered.Load() != 1 {
		t.Fatalf("publisher forwarded %d and filtered %d, want 8 and the healthy success", e.sent, e.pub.Filtered.Load())
	}
	e.applied()
	if since, _ := e.rdb.HGet(e.ctx, "gh:health:{"+a2.ID+"}", "since").Result(); since != "0" {
		t.Fatalf("a2's streak after its success = %q, want reset", since)
	}
	if score, err := e.rdb.ZScore(e.ctx, "gh:failing", a1.ID).Result(); err != nil || int64(score) != at(0, 1).UnixMilli() {
		t.Fatalf("a1 in the failing set at %v (%v), want its first failure", score, err)
	}

	// Midnight: the day's digests.
	e.clk.Set(at(1, 0).Add(3 * time.Minute)) // past the 2-minute grace
	e.mailedThrough("2026-11-20")
	if n := len(e.mailsTo(a)); n != 1 {
		t.Fatalf("alpha got %d digests for the first day, want 1", n)
	}
	if n := len(e.mailsTo(b)); n != 1 {
		t.Fatalf("beta got %d digests for the first day, want 1", n)
	}
	subject, body, id := text(t, e.mailsTo(a)[0])
	if !strings.Contains(subject, "2026-11-20") || !strings.Contains(id, "2026-11-20") {
		t.Errorf("subject %q / Message-ID %q do not name the day", subject, id)
	}
	mustContain(t, section(body, a1.Address), "failures that day: 4", "last status: 500", "500 Internal Server Error",
		"failing since: 2026-11-20 01:00 UTC", "will be deleted at: 2026-11-23 01:00 UTC", "account: "+a1.AccountID, "event: order.create")
	mustContain(t, section(body, a2.Address), "failures that day: 1", "recovered")
	mustContain(t, section(body, a3.Address), "410 Gone")
	mustContain(t, body, "DELETED WEBHOOKS (1)", "FAILING WEBHOOKS (2)")
	_, bbody, _ := text(t, e.mailsTo(b)[0])
	mustContain(t, section(bbody, b1.Address), "failures that day: 1")
	if strings.Contains(bbody, a1.Address) {
		t.Error("beta's digest names alpha's webhook")
	}
	if e.reg.Webhook(a3.ID) != nil {
		t.Error("the 410 webhook still exists")
	}

	// Days 1 and 2: a1 keeps failing; it must survive until 72 h. A retry
	// of b1 succeeds on day 1, which ends its streak.
	for d := 1; d <= 2; d++ {
		for _, h := range []int{1, 7, 13, 19} {
			e.clk.Set(at(d, h))
			e.fail(a1, at(d, h))
			if d == 1 && h == 1 {
				e.publish(b1, outcomes.Success, 200, 2, at(d, h))
			}
		}
		// Only in Kafka, not necessarily applied: the digest must wait.
		e.published()
		e.clk.Set(at(d+1, 0).Add(3 * time.Minute)) // past the 2-minute grace
		e.mailedThrough(day0.AddDate(0, 0, d).Format(time.DateOnly))
		if n := len(e.mailsTo(a)); n != d+1 {
			t.Fatalf("alpha has %d digests after day %d, want %d", n, d, d+1)
		}
		_, body, _ := text(t, e.mailsTo(a)[d])
		mustContain(t, section(body, a1.Address), "failures that day: 4", "failing since: 2026-11-20 01:00 UTC")
	}
	if n := len(e.mailsTo(b)); n != 1 {
		t.Fatalf("beta got %d digests, want 1 (nothing to report after the first day)", n)
	}
	// 71 h in: still there after a sweep at this time.
	sweeps := e.coords[0].Stats.Swept.Load()
	if err := e.coords[0].Sweep(e.ctx); err != nil {
		t.Fatal(err)
	}
	if e.reg.Webhook(a1.ID) == nil || e.coords[0].Stats.Swept.Load() != sweeps {
		t.Fatal("a1 deleted before 72 h of failures")
	}
	// 72 h after its first failure plus the 2-minute grace (a success
	// could still be on its way into Kafka), the sweep deletes it, in
	// every process.
	e.clk.Set(at(3, 1).Add(2 * time.Minute))
	testenv.WaitFor(t, 10*time.Second, func() error {
		if e.reg.Webhook(a1.ID) != nil {
			return errors.New("a1 still registered")
		}
		if ok, _ := e.rdb.HExists(e.ctx, "gh:webhooks", a1.ID).Result(); ok {
			return errors.New("a1 still in gh:webhooks")
		}
		// The coordinator deletes the webhook first, then writes the
		// failing set.
		if n, _ := e.rdb.ZCard(e.ctx, "gh:failing").Result(); n != 0 {
			return fmt.Errorf("failing set holds %d webhooks after the deletion", n)
		}
		return nil
	})
	if e.coords[0].Stats.DeletedFailing.Load() != 1 {
		t.Fatalf("deleted for failing = %d, want 1", e.coords[0].Stats.DeletedFailing.Load())
	}
	e.clk.Set(at(4, 0).Add(3 * time.Minute)) // past the 2-minute grace
	e.mailedThrough("2026-11-23")
	if n := len(e.mailsTo(a)); n != 4 {
		t.Fatalf("alpha has %d digests, want 4", n)
	}
	_, body, _ = text(t, e.mailsTo(a)[3])
	mustContain(t, body, "DELETED WEBHOOKS (1)")
	mustContain(t, section(body, a1.Address), "deleted: 2026-11-23 01:02 UTC", "failed without a success for 3 days")
	if strings.Contains(body, "FAILING WEBHOOKS") {
		t.Error("the deleted webhook is also listed as failing")
	}
	if n := len(e.mailsTo(c)); n != 0 {
		t.Fatalf("gamma, with nothing to report, got %d mails", n)
	}
	if n := len(e.sink.Mail()); n != 5 {
		t.Fatalf("%d mails in all, want 5", n)
	}
}

// failingDay makes one failing webhook per app on day 0 and waits until it
// is applied.
func failingDay(e *env, apps ...*registry.App) {
	for _, a := range apps {
		w := e.hook(a, "fails")
		e.fail(w, day0.Add(2*time.Hour))
	}
	e.clk.Set(day0.Add(3 * time.Hour))
	e.applied()
}

func TestTwoCoordinatorsSendOnce(t *testing.T) {
	e := newEnv(t)
	e.coordinator()
	e.coordinator()
	apps := []*registry.App{e.app("one"), e.app("two"), e.app("three"), e.app("four")}
	failingDay(e, apps...)
	e.job(e.ctx, nil)
	e.job(e.ctx, nil)
	e.clk.Set(day0.AddDate(0, 0, 1).Add(3 * time.Minute))
	e.mailedThrough("2026-11-20")
	for _, a := range apps {
		if n := len(e.mailsTo(a)); n != 1 {
			t.Errorf("%s got %d digests, want exactly 1", a.Name, n)
		}
		if v, _ := e.rdb.Get(e.ctx, "gh:mail:{2026-11-20}:"+a.ID).Result(); v != "sent" {
			t.Errorf("%s's digest marked %q, want sent", a.Name, v)
		}
	}
	// Both kept polling after the day was done: still one each.
	e.clk.Set(day0.AddDate(0, 0, 1).Add(4 * time.Minute))
	e.mailedThrough("2026-11-20")
	if n := len(e.sink.Mail()); n != len(apps) {
		t.Fatalf("%d mails, want %d", n, len(apps))
	}
}

func TestCrashAfterAcceptSendsAtMostOneExtraCopy(t *testing.T) {
	e := newEnv(t)
	e.coordinator()
	apps := []*registry.App{e.app("one"), e.app("two"), e.app("three")}
	failingDay(e, apps...)

	// The first process "dies" right after the server accepted its first
	// digest: no mark, the lock left to expire.
	crashCtx, crash := context.WithCancel(e.ctx)
	var crashedApp string
	var once sync.Once
	e.job(crashCtx, func(o *mail.Options) {
		o.AfterAccept = func(day, appID string) error {
			err := errors.New("killed")
			once.Do(func() { crashedApp = appID; crash() })
			return err
		}
	})
	e.clk.Set(day0.AddDate(0, 0, 1).Add(3 * time.Minute))
	testenv.WaitFor(t, 10*time.Second, func() error {
		if crashCtx.Err() == nil {
			return errors.New("no digest sent yet")
		}
		return nil
	})
	if n := len(e.sink.Mail()); n != 1 {
		t.Fatalf("%d mails before the crash, want 1", n)
	}
	// A fresh process takes over once the dead one's lock expires.
	e.job(e.ctx, nil)
	e.mailedThrough("2026-11-20")
	var ids []string
	for _, a := range apps {
		want := 1
		if a.ID == crashedApp {
			want = 2
		}
		got := e.mailsTo(a)
		if len(got) != want {
			t.Errorf("%s got %d digests, want %d", a.Name, len(got), want)
		}
		if a.ID == crashedApp && len(got) == 2 {
			for _, m := range got {
				_, _, id := text(t, m)
				ids = append(ids, id)
			}
		}
	}
	if len(ids) != 2 || ids[0] != ids[1] {
		t.Fatalf("the two copies have Message-IDs %v, want the same", ids)
	}
}

func TestSMTPDownRetriedLaterThatDay(t *testing.T) {
	e := newEnv(t)
	e.coordinator()
	a := e.app("one")
	failingDay(e, a)
	e.sink.Down()
	j := e.job(e.ctx, nil)
	e.clk.Set(day0.AddDate(0, 0, 1).Add(3 * time.Minute))
	testenv.WaitFor(t, 10*time.Second, func() error {
		if j.Stats.Failed.Load() == 0 {
			return errors.New("no failed send yet")
		}
		return nil
	})
	if n, _ := e.rdb.Exists(e.ctx, "gh:mail:{2026-11-20}:"+a.ID).Result(); n != 0 {
		t.Fatal("digest marked although the server was down")
	}
	if done, _ := e.rdb.Get(e.ctx, "gh:mail:done").Result(); done >= "2026-11-20" {
		t.Fatalf("day marked done (%s) although its digest failed", done)
	}
	e.sink.Up()
	// The retry waits for its backoff (1 min of the clock), later that day.
	e.clk.Set(day0.AddDate(0, 0, 1).Add(2 * time.Hour))
	e.mailedThrough("2026-11-20")
	if n := len(e.mailsTo(a)); n != 1 {
		t.Fatalf("%d digests after the server came back, want 1", n)
	}
	if v, _ := e.rdb.Get(e.ctx, "gh:mail:{2026-11-20}:"+a.ID).Result(); v != "sent" {
		t.Fatalf("mark = %q, want sent", v)
	}
}

func TestOutboxWithoutSMTP(t *testing.T) {
	e := newEnv(t)
	e.coordinator()
	a := e.app("one")
	failingDay(e, a)
	dir := t.TempDir()
	e.job(e.ctx, func(o *mail.Options) { o.SMTPAddr, o.Outbox = "", dir })
	e.clk.Set(day0.AddDate(0, 0, 1).Add(3 * time.Minute))
	e.mailedThrough("2026-11-20")
	raw, err := os.ReadFile(filepath.Join(dir, "2026-11-20_"+a.ID+".eml"))
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := text(t, testenv.Mail{Data: raw})
	mustContain(t, body, "https://one.example.com/fails", "failures that day: 1")
	if len(e.sink.Mail()) != 0 {
		t.Fatal("mail sent over SMTP in outbox mode")
	}
}

func TestTemplatesOverride(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, mail.SubjectFile), []byte("Custom {{.Day}} for {{.App.Name}}"), 0o600); err != nil {
		t.Fatal(err)
	}
	tm, err := mail.LoadTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := &mail.Digest{Day: "2026-11-20", App: mail.App{ID: "app_1", Name: "Shop <b>", Email: "dev@example.com"},
		Failing: []*daylog.Entry{{WebhookID: "wh_1", Address: "https://x.example.com/?a=1&b=<2>", Failures: 3}}, FailingMore: 7}
	raw, err := tm.Render(d, "geckohook@example.com", day0)
	if err != nil {
		t.Fatal(err)
	}
	subject, body, _ := text(t, testenv.Mail{Data: raw})
	if subject != "Custom 2026-11-20 for Shop <b>" {
		t.Fatalf("subject %q", subject)
	}
	mustContain(t, body, "https://x.example.com/?a=1&b=<2>", "failures that day: 3", "FAILING WEBHOOKS (1 and 7 more not listed)")
	if !bytes.Contains(raw, []byte("&lt;2&gt;")) {
		t.Fatal("HTML part does not escape the address")
	}
	if err := os.WriteFile(filepath.Join(dir, mail.HTMLFile), []byte("{{.Nope"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := mail.LoadTemplates(dir); err == nil {
		t.Fatal("a broken template was accepted")
	}
}

func TestSMTPStartTLSAndAuth(t *testing.T) {
	e := newEnv(t)
	e.coordinator()
	serverTLS, clientTLS := testenv.SelfSignedTLS(t)
	secure := testenv.SMTPWith(t, testenv.SMTPOptions{TLS: serverTLS, User: "mailer", Password: "s3cret"})
	a := e.app("one")
	failingDay(e, a)
	bad := e.newJob(func(o *mail.Options) {
		o.SMTPAddr, o.SMTPTLS, o.SMTPUser, o.SMTPPassword = secure.Addr, clientTLS, "mailer", "wrong"
	})
	e.clk.Set(day0.AddDate(0, 0, 1).Add(3 * time.Minute))
	e.caughtUp()
	if err := bad.RunDue(e.ctx); err != nil {
		t.Fatal(err)
	}
	if bad.Stats.Failed.Load() != 1 {
		t.Fatalf("the wrong password failed %d times, want once", bad.Stats.Failed.Load())
	}
	if len(secure.Mail()) != 0 {
		t.Fatal("accepted with a wrong password")
	}
	// The retry, by any process, waits for the day's backoff (1 min).
	e.clk.Set(day0.AddDate(0, 0, 1).Add(5 * time.Minute))
	e.job(e.ctx, func(o *mail.Options) {
		o.SMTPAddr, o.SMTPTLS, o.SMTPUser, o.SMTPPassword = secure.Addr, clientTLS, "mailer", "s3cret"
	})
	e.mailedThrough("2026-11-20")
	got := secure.Mail()
	if len(got) != 1 || !got[0].TLS || got[0].User != "mailer" || got[0].To[0] != a.DeveloperEmail || got[0].From != "geckohook@example.com" {
		t.Fatalf("mails %+v, want one over TLS, authenticated, to %s", got, a.DeveloperEmail)
	}
}

// The coordinator is down for the second half of day 0: the failures of
// that half are in Kafka, unread, when the digest falls due. The digest
// waits for a coordinator to apply them and then names all of them.
func TestDigestWaitsForUnreadOutcomes(t *testing.T) {
	e := newEnv(t)
	cctx, stop := context.WithCancel(e.ctx)
	_, stopped := e.coordinatorIn(cctx)
	a := e.app("late")
	w := e.hook(a, "fails")
	e.fail(w, day0.Add(2*time.Hour))
	e.clk.Set(day0.Add(3 * time.Hour))
	e.applied() // the morning is in Redis
	stop()
	<-stopped
	for _, h := range []int{13, 23} {
		e.clk.Set(day0.Add(time.Duration(h) * time.Hour))
		e.fail(w, e.clk.Now())
	}
	e.published()
	e.clk.Set(day0.AddDate(0, 0, 1).Add(10 * time.Minute))
	j := e.newJob(nil)
	if err := j.RunDue(e.ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.sink.Mail()); n != 0 {
		t.Fatalf("%d digests sent with the day's outcomes unread, want none yet", n)
	}
	if done, _ := e.rdb.Get(e.ctx, "gh:mail:done").Result(); done >= "2026-11-20" {
		t.Fatalf("day marked done (%s) with its outcomes unread", done)
	}
	// A coordinator comes back and reads the backlog; the digest follows.
	e.coordinator()
	e.job(e.ctx, nil)
	e.mailedThrough("2026-11-20")
	got := e.mailsTo(a)
	if len(got) != 1 {
		t.Fatalf("%d digests, want 1", len(got))
	}
	_, body, _ := text(t, got[0])
	mustContain(t, section(body, w.Address), "failures that day: 3")
}

// The backoff after a failed send is the day's, not the process's: a second
// coordinator does not retry before it either.
func TestRetryBackoffSharedAcrossProcesses(t *testing.T) {
	e := newEnv(t)
	e.coordinator()
	a := e.app("one")
	failingDay(e, a)
	e.sink.Down()
	j1, j2 := e.newJob(nil), e.newJob(nil)
	e.clk.Set(day0.AddDate(0, 0, 1).Add(3 * time.Minute))
	e.caughtUp()
	run := func(j *mail.Job) {
		t.Helper()
		if err := j.RunDue(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	run(j1)
	if j1.Stats.Failed.Load() != 1 {
		t.Fatalf("first try failed %d times, want 1", j1.Stats.Failed.Load())
	}
	run(j2)
	if j2.Stats.Failed.Load() != 0 {
		t.Fatal("the second process tried again before the day's backoff (1 min) ran out")
	}
	// Past the backoff either may try; its failure doubles the wait (2 min).
	e.clk.Set(day0.AddDate(0, 0, 1).Add(4*time.Minute + time.Second))
	e.caughtUp()
	run(j2)
	if j2.Stats.Failed.Load() != 1 {
		t.Fatalf("second process failed %d times after the backoff, want 1", j2.Stats.Failed.Load())
	}
	e.sink.Up()
	e.clk.Set(day0.AddDate(0, 0, 1).Add(5 * time.Minute))
	e.caughtUp()
	run(j1)
	if n := len(e.sink.Mail()); n != 0 {
		t.Fatal("sent before the doubled backoff ran out")
	}
	e.clk.Set(day0.AddDate(0, 0, 1).Add(7 * time.Minute))
	e.caughtUp()
	run(j1)
	if n := len(e.mailsTo(a)); n != 1 {
		t.Fatalf("%d digests after the backoff, want 1", n)
	}
	if n, _ := e.rdb.Exists(e.ctx, "gh:mail:{2026-11-20}:retry").Result(); n != 0 {
		t.Fatal("retry state kept after the day was done")
	}
}

// A normal shutdown that arrives while a digest is being sent (after the
// server accepted it) still marks it: the next process does not send it
// again.
func TestShutdownDuringSendStillMarks(t *testing.T) {
	e := newEnv(t)
	e.coordinator()
	a := e.app("one")
	failingDay(e, a)
	jctx, stop := context.WithCancel(e.ctx)
	defer stop()
	j := e.newJob(func(o *mail.Options) {
		o.AfterAccept = func(day, appID string) error { stop(); return nil }
	})
	e.clk.Set(day0.AddDate(0, 0, 1).Add(3 * time.Minute))
	testenv.WaitFor(t, 10*time.Second, func() error {
		if jctx.Err() != nil {
			return nil
		}
		if err := j.RunDue(jctx); err != nil && jctx.Err() == nil {
			return err
		}
		return errors.New("no digest sent yet")
	})
	if v, err := e.rdb.Get(e.ctx, "gh:mail:{2026-11-20}:"+a.ID).Result(); v != "sent" {
		t.Fatalf("digest marked %q (%v) after a shutdown during its send, want sent", v, err)
	}
	e.job(e.ctx, nil)
	e.mailedThrough("2026-11-20")
	if n := len(e.mailsTo(a)); n != 1 {
		t.Fatalf("%d digests, want 1", n)
	}
}

// dayRecord writes a failing webhook into a day's records, as a
// coordinator would.
func (e *env) dayRecord(day string, a *registry.App, w *registry.Webhook) {
	e.t.Helper()
	keys := coordinator.Keys{Prefix: "gh:"}
	raw, err := msgpack.Marshal(&daylog.Entry{WebhookID: w.ID, AppID: a.ID, Address: w.Address, Event: w.Event, Failures: 1, LastStatus: 500})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.rdb.HSet(e.ctx, keys.DayFailing(day, a.ID), w.ID, raw).Err(); err != nil {
		e.t.Fatal(err)
	}
	if err := e.rdb.SAdd(e.ctx, keys.DayApps(day), a.ID).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// After a stall longer than the catch-up window, the mail resumes the day
// after the last one completed, not CatchUp days before the watermark.
func TestCatchUpResumesAfterTheLastDoneDay(t *testing.T) {
	e := newEnv(t)
	a := e.app("one")
	w := e.hook(a, "fails")
	e.dayRecord("2026-11-21", a, w)
	e.dayRecord("2026-11-22", a, w)
	now := time.Date(2026, 11, 25, 0, 3, 0, 0, time.UTC)
	e.clk.Set(now)
	if err := e.rdb.Set(e.ctx, "gh:mail:done", "2026-11-20", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Set(e.ctx, "gh:coord:watermark", now.Add(-90*time.Second).UnixMilli(), 0).Err(); err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	j := e.newJob(func(o *mail.Options) { o.CatchUp = 2; o.Metrics = set })
	if err := j.RunDue(e.ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.mailsTo(a)); n != 2 {
		t.Fatalf("%d digests, want the two days after the last one done", n)
	}
	if done, _ := e.rdb.Get(e.ctx, "gh:mail:done").Result(); done != "2026-11-23" {
		t.Fatalf("done = %s, want 2026-11-23 (the watermark is 90 s past midnight, inside the grace)", done)
	}
	if j.Stats.DaysSkipped.Load() != 0 {
		t.Fatalf("%d days counted as skipped", j.Stats.DaysSkipped.Load())
	}
	var b bytes.Buffer
	set.WritePrometheus(&b)
	mustContain(t, b.String(), "geckohook_coordinator_watermark_age_seconds 90\n", "geckohook_digest_days_skipped_total 0\n")
}

// Days whose records expired before the watermark reached them are logged
// and counted once, and the mail goes on from the oldest day still kept.
func TestExpiredDaysAreCountedAsSkipped(t *testing.T) {
	e := newEnv(t)
	a := e.app("one")
	w := e.hook(a, "fails")
	// At 11-26 00:03 the oldest day fully kept is 11-19: a write at
	// 11-18 00:01 expired at 11-26 00:01.
	e.dayRecord("2026-11-19", a, w)
	now := time.Date(2026, 11, 26, 0, 3, 0, 0, time.UTC)
	e.clk.Set(now)
	if err := e.rdb.Set(e.ctx, "gh:mail:done", "2026-11-10", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Set(e.ctx, "gh:coord:watermark", now.UnixMilli(), 0).Err(); err != nil {
		t.Fatal(err)
	}
	j1, j2 := e.newJob(nil), e.newJob(nil)
	for _, j := range []*mail.Job{j1, j2, j1} {
		if err := j.RunDue(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := j1.Stats.DaysSkipped.Load() + j2.Stats.DaysSkipped.Load(); got != 8 {
		t.Fatalf("%d days counted as skipped, want 8 (11-11 to 11-18), once", got)
	}
	if n := len(e.mailsTo(a)); n != 1 {
		t.Fatalf("%d digests, want the one of 11-19", n)
	}
	if done, _ := e.rdb.Get(e.ctx, "gh:mail:done").Result(); done != "2026-11-25" {
		t.Fatalf("done = %s, want 2026-11-25", done)
	}
}
