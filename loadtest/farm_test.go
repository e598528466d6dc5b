package loadtest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
)

// raceEnabled: allocation counts through sync.Pool mean nothing under the
// race detector, which drops pooled items on purpose.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

func newTestFarm(t *testing.T, servers int) *Farm {
	t.Helper()
	f, err := NewFarm(servers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("close farm: %v", err)
		}
	})
	return f
}

func eventBody(e int) []byte {
	return fmt.Appendf(nil, `{"object_id":%d,"event":"order.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/orders/%d.json"}`, e, e)
}

// post sends body to url with the given delivery id and signature (none when
// empty) and returns the status.
func post(c *fasthttp.Client, url string, body []byte, id, sig string, timeout time.Duration) (int, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	if id != "" {
		req.Header.Set("X-Gecko-Delivery", id)
	}
	if sig != "" {
		req.Header.Set("X-Gecko-Signature", sig)
	}
	req.SetBody(body)
	if err := c.DoTimeout(req, resp, timeout); err != nil {
		return 0, err
	}
	return resp.StatusCode(), nil
}

// sendEvent posts event e to hook h of p, signed with secret.
func sendEvent(t *testing.T, c *fasthttp.Client, p *Plan, h, e int, secret string) int {
	t.Helper()
	body := eventBody(e)
	status, err := post(c, p.Hooks[h].URL, body, fmt.Sprintf("d-%d-%d", e, h), contract.NewSigner(secret).Sign(body), 5*time.Second)
	if err != nil {
		t.Fatalf("event %d to hook %d: %v", e, h, err)
	}
	return status
}

// eventually polls cond every 10 ms until it holds or 5 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFarmRecordsSignedRequests(t *testing.T) {
	f := newTestFarm(t, 2)
	p := smallPlan()
	p.Apps[0].Secret, p.Apps[1].Secret = "secret-zero", "secret-one"
	f.Add(p)
	ports := f.Ports()
	if len(ports) != 2 || ports[0] == ports[1] {
		t.Fatalf("ports %v: want two distinct", ports)
	}
	for i, h := range p.Hooks {
		if want := "http://127.0.0.1:" + strconv.Itoa(ports[h.Server]) + "/h/" + strconv.Itoa(i); h.URL != want {
			t.Fatalf("hook %d URL %q, want %q", i, h.URL, want)
		}
	}
	f.SetSecrets(p)
	l := NewLedger(p, 10)
	for e := range 6 {
		l.Produced(e, time.Now())
	}
	f.Use(l)
	c := &fasthttp.Client{}
	secret := func(h int) string { return p.Apps[p.Hooks[h].App].Secret }

	// event 1 belongs to account 1: hooks 1-2 (app 1); event 2 to account 2: hooks 3-5 (app 0)
	for _, pr := range [][2]int{{1, 1}, {2, 1}, {3, 2}, {4, 2}, {5, 2}} {
		if s := sendEvent(t, c, p, pr[0], pr[1], secret(pr[0])); s != 200 {
			t.Fatalf("event %d to hook %d: status %d", pr[0], pr[1], s)
		}
	}
	// signed with the other application's secret: answered, counted as bad
	if s := sendEvent(t, c, p, 0, 0, "secret-one"); s != 200 {
		t.Fatalf("badly signed request: status %d", s)
	}
	// no signature at all
	if s, err := post(c, p.Hooks[0].URL, eventBody(3), "d-3-0", "", 5*time.Second); err != nil || s != 200 {
		t.Fatalf("unsigned request: %d %v", s, err)
	}
	// unknown paths: 404, unexpected
	for _, path := range []string{"/nope", "/h/99", "/h/x1", "/h/"} {
		url := "http://127.0.0.1:" + strconv.Itoa(ports[1]) + path
		if s, err := post(c, url, eventBody(0), "x", "", 5*time.Second); err != nil || s != 404 {
			t.Fatalf("%s: %d %v, want 404", path, s, err)
		}
	}
	if f.Requests() != 11 || l.Requests() != 11 || l.Delivered() != 7 {
		t.Fatalf("farm took %d, ledger recorded %d requests and %d deliveries; want 11, 11, 7",
			f.Requests(), l.Requests(), l.Delivered())
	}
	a := l.Account(nil, nil)
	if a.BadSignatures != 2 || a.Unexpected != 4 || a.Delivered != 7 || a.IDMismatches != 0 || a.Expected != 12 || a.Missing != 5 {
		t.Fatalf("account %+v", a)
	}

	// no ledger: still answered and counted by the farm, recorded nowhere
	f.Use(nil)
	if s := sendEvent(t, c, p, 0, 0, secret(0)); s != 200 {
		t.Fatalf("without ledger: status %d", s)
	}
	if f.Requests() != 12 || l.Requests() != 11 {
		t.Fatalf("without ledger: farm %d, ledger %d requests", f.Requests(), l.Requests())
	}
}

// oneHookPlan makes a plan of one account per behaviour, one hook each, all
// on server 0 and of app 0.
// serveLedger makes f answer for p with a new ledger of events events, the
// first produced of them marked produced now.
func serveLedger(f *Farm, p *Plan, events, produced int) *Ledger {
	f.Add(p)
	f.SetSecrets(p)
	l := NewLedger(p, events)
	for e := range produced {
		l.Produced(e, time.Now())
	}
	f.Use(l)
	return l
}

func oneHookPlan(bs ...EndpointBehaviour) *Plan {
	p := &Plan{Event: "order.create", Apps: []PlanApp{{Name: "app", Secret: "s3cret"}}}
	for _, b := range bs {
		p.AddAccount(0, []int{0}, []EndpointBehaviour{b})
	}
	return p
}

func TestFarmBehaviours(t *testing.T) {
	past, future := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	cases := []struct {
		name string
		b    EndpointBehaviour
		want int
	}{
		{"zero value", EndpointBehaviour{}, 200},
		{"status", EndpointBehaviour{Status: 204}, 204},
		{"redirect status", EndpointBehaviour{Status: 302}, 302},
		{"gone from the past", EndpointBehaviour{GoneFrom: past}, 410},
		{"gone from the future", EndpointBehaviour{GoneFrom: future, Status: 201}, 201},
		{"fail until the future", EndpointBehaviour{FailUntil: future}, 500},
		{"fail until the past", EndpointBehaviour{FailUntil: past, Status: 202}, 202},
		{"gone before failing", EndpointBehaviour{GoneFrom: past, FailUntil: future}, 410},
		{"fail rate 1", EndpointBehaviour{FailRate: 1}, 500},
		{"fail rate 0", EndpointBehaviour{FailRate: 0, Status: 200}, 200},
	}
	bs := make([]EndpointBehaviour, len(cases))
	for i, c := range cases {
		bs[i] = c.b
	}
	p := oneHookPlan(bs...)
	f := newTestFarm(t, 1)
	f.Add(p)
	f.SetSecrets(p)
	l := NewLedger(p, len(cases))
	f.Use(l)
	c := &fasthttp.Client{}
	for i, tc := range cases {
		l.Produced(i, time.Now())
		if got := sendEvent(t, c, p, i, i, "s3cret"); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}
	if got, want := l.Answers(), (Answers{OK: 6, Gone: 2, Failed: 2}); got != want {
		t.Fatalf("answers %+v, want %+v", got, want)
	}
	if a := l.Account(nil, nil); a.Delivered != 6 || a.Missing != 4 || a.BadSignatures != 0 {
		t.Fatalf("account %+v", a)
	}
}

func TestFarmFailUntilSwitches(t *testing.T) {
	until := time.Now().Add(time.Second)
	p := oneHookPlan(EndpointBehaviour{FailUntil: until})
	f := newTestFarm(t, 1)
	f.Add(p)
	f.SetSecrets(p)
	c := &fasthttp.Client{}
	failures := 0
	eventually(t, "the endpoint to recover", func() bool {
		sent := time.Now()
		s := sendEvent(t, c, p, 0, 0, "s3cret")
		switch {
		case s == 500 && !sent.Before(until):
			t.Fatalf("500 for a request sent at %v, after FailUntil %v", sent, until)
		case s == 500:
			failures++
		case s == 200 && time.Now().Before(until):
			t.Fatalf("200 before FailUntil")
		case s != 200:
			t.Fatalf("status %d", s)
		}
		return s == 200
	})
	if failures == 0 {
		t.Fatal("no 500 before FailUntil")
	}
}

func TestFarmFailRate(t *testing.T) {
	p := oneHookPlan(EndpointBehaviour{FailRate: 0.3})
	f := newTestFarm(t, 1)
	l := serveLedger(f, p, 1, 1)
	c := &fasthttp.Client{}
	const n, workers = 2000, 8
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	body := eventBody(0)
	sig := contract.NewSigner("s3cret").Sign(body)
	for range workers {
		wg.Go(func() {
			for range n / workers {
				s, err := post(c, p.Hooks[0].URL, body, "d-0-0", sig, 5*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				counts[s]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if counts[500] < 450 || counts[500] > 750 || counts[500]+counts[200] != n {
		t.Fatalf("fail rate 0.3 over %d requests gave %v", n, counts)
	}
	a := l.Account(nil, nil)
	if a.Delivered != 1 || a.Duplicates != int64(counts[200]-1) || a.IDMismatches != 0 || l.Requests() != n {
		t.Fatalf("account %+v, %d requests", a, l.Requests())
	}
}

func TestFarmDelay(t *testing.T) {
	const delay, jit = 150 * time.Millisecond, 50 * time.Millisecond
	p := oneHookPlan(
		EndpointBehaviour{Delay: delay, Jitter: jit},
		EndpointBehaviour{Delay: delay, FailUntil: time.Now().Add(time.Hour)}, // failures wait too
	)
	f := newTestFarm(t, 1)
	l := serveLedger(f, p, 2, 0)
	c := &fasthttp.Client{}
	for h, want := range []int{200, 500} {
		l.Produced(h, time.Now())
		start := time.Now()
		s := sendEvent(t, c, p, h, h, "s3cret")
		if took := time.Since(start); s != want || took < delay || took > delay+jit+3*time.Second {
			t.Fatalf("hook %d: status %d after %v, want %d after %v..%v", h, s, took, want, delay, delay+jit)
		}
	}
	// the recorded answer time is after the delay: latency from Produced is at least the delay
	if q := l.Latency(); q.Count != 1 || q.Max < delay {
		t.Fatalf("latency %+v, want one of at least %v", q, delay)
	}
}

func TestFarmHangReleasesOnClose(t *testing.T) {
	p := oneHookPlan(EndpointBehaviour{Hang: true})
	f, err := NewFarm(1)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = f.Close()
		}
	})
	l := serveLedger(f, p, 1, 1)

	c := &fasthttp.Client{}
	body := eventBody(0)
	sig := contract.NewSigner("s3cret").Sign(body)
	if s, err := post(c, p.Hooks[0].URL, body, "d", sig, 300*time.Millisecond); !errors.Is(err, fasthttp.ErrTimeout) {
		t.Fatalf("hung endpoint: status %d, error %v; want a timeout", s, err)
	}

	// a raw connection whose request hangs until Close
	conn, err := net.Dial("tcp", p.Hooks[0].URL[len("http://"):len(p.Hooks[0].URL)-len("/h/0")])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /h/0 HTTP/1.1\r\nHost: x\r\nX-Gecko-Signature: %s\r\nContent-Length: %d\r\n\r\n%s", sig, len(body), body)
	eventually(t, "both hung requests to be recorded", func() bool { return l.Answers().NoAnswer == 2 })
	if l.Delivered() != 0 || l.Requests() != 2 {
		t.Fatalf("delivered %d, requests %d", l.Delivered(), l.Requests())
	}

	start := time.Now()
	closed = true
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Close took %v with hung requests", took)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := bufio.NewReader(conn).ReadString('\n')
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("hung connection after Close: read %q, %v; want it closed without an answer", n, err)
	}
}

func TestFarmReset(t *testing.T) {
	p := oneHookPlan(EndpointBehaviour{Reset: true}, EndpointBehaviour{})
	f := newTestFarm(t, 1)
	l := serveLedger(f, p, 2, 1)
	c := &fasthttp.Client{}
	body := eventBody(0)
	sig := contract.NewSigner("s3cret").Sign(body)
	s, err := post(c, p.Hooks[0].URL, body, "d", sig, 5*time.Second)
	if err == nil || errors.Is(err, fasthttp.ErrTimeout) {
		t.Fatalf("reset endpoint: status %d, error %v; want a connection error", s, err)
	}
	// fasthttp reports any error on a response's first byte, a reset included,
	// as ErrConnectionClosed; the raw read below tells a reset from a close
	if !errors.Is(err, fasthttp.ErrConnectionClosed) {
		t.Fatalf("reset endpoint: %v, want %v", err, fasthttp.ErrConnectionClosed)
	}

	// a raw connection sees the reset itself
	conn, err := net.Dial("tcp", p.Hooks[0].URL[len("http://"):len(p.Hooks[0].URL)-len("/h/0")])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /h/0 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(conn); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("raw read after reset: %v, want connection reset", err)
	}
	if a := l.Answers(); a.NoAnswer != 2 || l.Delivered() != 0 {
		t.Fatalf("answers %+v, delivered %d", a, l.Delivered())
	}
	// the farm goes on serving other endpoints
	l.Produced(1, time.Now())
	if s := sendEvent(t, c, p, 1, 1, "s3cret"); s != 200 {
		t.Fatalf("after resets: status %d", s)
	}
}

func TestScanObjectID(t *testing.T) {
	for _, c := range []struct {
		body string
		want int
	}{
		{`{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000}`, 1234567},
		{`{"object_id":0}`, 0},
		{`{"event":"x", "object_id": 42 }`, 42},
		{`{"event":"x"}`, -1},
		{`{"object_id":-1}`, -1},
		{`{"object_id":1.5}`, -1},
		{`{"object_id":1e3}`, -1},
		{`{"object_id":"7"}`, -1},
		{`{"object_id":}`, -1},
		{`{"object_id":99999999999999999999999}`, -1},
		{``, -1},
	} {
		if got := scanObjectID([]byte(c.body)); got != c.want {
			t.Errorf("scanObjectID(%s) = %d, want %d", c.body, got, c.want)
		}
	}
	for path, want := range map[string]int{"/h/0": 0, "/h/12": 12, "/h/": -1, "/h/1x": -1, "/x/1": -1, "/h/-1": -1, "/": -1} {
		if got := hookIndex([]byte(path)); got != want {
			t.Errorf("hookIndex(%s) = %d, want %d", path, got, want)
		}
	}
}

func TestScanObjectIDAllocs(t *testing.T) {
	body := eventBody(1234567)
	if n := testing.AllocsPerRun(1000, func() {
		if scanObjectID(body) != 1234567 || hookIndex([]byte("/h/12")) != 12 {
			panic("bad scan")
		}
	}); n != 0 {
		t.Fatalf("scanning allocates %.1f times", n)
	}
}

// handlerCtx is a request to hook 0 of p carrying event e, for calling the
// farm's handler directly.
func handlerCtx(p *Plan, e int) *fasthttp.RequestCtx {
	body := eventBody(e)
	ctx := &fasthttp.RequestCtx{}
	ctx.Request.SetRequestURI("/h/0")
	ctx.Request.Header.SetMethod(fasthttp.MethodPost)
	ctx.Request.Header.Set("X-Gecko-Delivery", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
	ctx.Request.Header.Set("X-Gecko-Signature", contract.NewSigner(p.Apps[0].Secret).Sign(body))
	ctx.Request.SetBody(body)
	return ctx
}

func TestFarmHandlerAllocs(t *testing.T) {
	if raceEnabled() {
		t.Skip("allocation counts through sync.Pool are not meaningful under -race")
	}
	p := oneHookPlan(EndpointBehaviour{})
	f := newTestFarm(t, 1)
	l := serveLedger(f, p, 1, 1)
	ctx := handlerCtx(p, 0)
	allocs := testing.AllocsPerRun(1000, func() { f.handle(ctx) })
	if allocs != 0 || ctx.Response.StatusCode() != 200 {
		t.Fatalf("handler: status %d, %.1f allocations per request", ctx.Response.StatusCode(), allocs)
	}
	if a := l.Account(nil, nil); a.Delivered != 1 || a.BadSignatures != 0 || a.Duplicates < 1000 {
		t.Fatalf("account %+v", a)
	}
}

func BenchmarkFarmRequest(b *testing.B) {
	p := oneHookPlan(EndpointBehaviour{})
	f, err := NewFarm(1)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	serveLedger(f, p, 1, 1)
	ctx := handlerCtx(p, 0)
	b.ReportAllocs()
	for b.Loop() {
		f.handle(ctx)
	}
}

// SetBehaviour changes one endpoint's answers while the farm serves, and
// leaves the others and the secrets alone.
func TestFarmSetBehaviour(t *testing.T) {
	p := oneHookPlan(EndpointBehaviour{}, EndpointBehaviour{})
	f := newTestFarm(t, 1)
	l := serveLedger(f, p, 4, 0)
	c := &fasthttp.Client{}
	for e := 0; e < 4; e++ {
		l.Produced(e, time.Now())
	}
	if s := sendEvent(t, c, p, 0, 0, "s3cret"); s != 200 {
		t.Fatalf("before: status %d", s)
	}
	f.SetBehaviour(0, EndpointBehaviour{GoneFrom: time.Now().Add(-time.Second)})
	if s := sendEvent(t, c, p, 0, 2, "s3cret"); s != 410 { // events alternate accounts
		t.Fatalf("after: status %d, want 410", s)
	}
	if s := sendEvent(t, c, p, 1, 1, "s3cret"); s != 200 {
		t.Fatalf("the other hook: status %d, want 200", s)
	}
	if a := l.Account(nil, nil); a.BadSignatures != 0 || a.Unexpected != 0 || a.Delivered != 2 {
		t.Fatalf("account %+v, want 2 delivered, nothing unexpected, no bad signature", a)
	}
}

// The Receiver, a farm of named endpoints: every path is answered by its
// Behaviour with the path's own request count, and each request is kept
// whole, its signature checked against the secret expected for its path.
func TestReceiverKeepsEveryRequest(t *testing.T) {
	r, err := NewReceiver(func(path string, n int) int {
		if path == "/flaky" && n == 0 {
			return 500
		}
		return 200
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	r.Expect("/flaky", "s3cret")
	r.Expect("/h/0", "other")
	c := &fasthttp.Client{}
	body := eventBody(7)
	sig := contract.NewSigner("s3cret").Sign(body)
	for _, want := range []struct {
		path   string
		status int
	}{{"/flaky", 500}, {"/flaky", 200}, {"/h/0", 200}, {"/unknown", 200}} {
		if s, err := post(c, r.URL+want.path, body, "d-"+want.path, sig, 5*time.Second); err != nil || s != want.status {
			t.Fatalf("%s: %d %v, want %d", want.path, s, err, want.status)
		}
	}
	got := r.Received()
	if len(got) != 4 {
		t.Fatalf("received %d requests, want 4", len(got))
	}
	for i, valid := range []bool{true, true, false, false} {
		g := got[i]
		if g.ValidSig != valid || string(g.Body) != string(body) || g.DeliveryID != "d-"+g.Path || g.Signature != sig ||
			g.ContentType != "application/json" || g.At.IsZero() {
			t.Errorf("request %d: %+v, want a valid signature %v", i, g, valid)
		}
	}
	if got[0].Status != 500 || got[1].Status != 200 {
		t.Errorf("statuses %d, %d; want 500, 200", got[0].Status, got[1].Status)
	}
}

// A server whose hook is given RefuseUntil refuses connections and drops
// the ones it held, while other servers answer; at RefuseUntil it listens
// on the same port again.
func TestFarmRefuseUntil(t *testing.T) {
	p := &Plan{Event: "order.create", Apps: []PlanApp{{Name: "app", Secret: "s3cret"}}}
	p.AddAccount(0, []int{0}, make([]EndpointBehaviour, 1))
	p.AddAccount(0, []int{1}, make([]EndpointBehaviour, 1))
	f := newTestFarm(t, 2)
	l := serveLedger(f, p, 100, 100)
	c := &fasthttp.Client{}
	if s := sendEvent(t, c, p, 0, 0, "s3cret"); s != 200 { // leaves a pooled connection
		t.Fatalf("before the refusal: status %d", s)
	}
	until := time.Now().Add(time.Second)
	f.SetBehaviour(0, EndpointBehaviour{RefuseUntil: until})

	addr := "127.0.0.1:" + strconv.Itoa(f.Ports()[0])
	if conn, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("connect while refusing: %v, want connection refused", err)
	}
	body := eventBody(2)
	if s, err := post(c, p.Hooks[0].URL, body, "d", contract.NewSigner("s3cret").Sign(body), time.Second); err == nil && time.Now().Before(until) {
		t.Fatalf("request while refusing answered %d; the pooled connection should be gone", s)
	}
	if s := sendEvent(t, c, p, 1, 1, "s3cret"); s != 200 {
		t.Fatalf("the other server while refusing: status %d", s)
	}
	eventually(t, "the server to listen again", func() bool {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})
	if time.Now().Before(until) {
		t.Fatalf("listening again before RefuseUntil")
	}
	if s := sendEvent(t, c, p, 0, 10, "s3cret"); s != 200 {
		t.Fatalf("after the refusal: status %d", s)
	}
	if got := l.Delivered(); got != 3 {
		t.Fatalf("delivered %d, want 3", got)
	}
}

// A hook with HangUntil holds requests without an answer until then, and
// answers afterwards; Close lets the held ones go.
func TestFarmHangUntil(t *testing.T) {
	until := time.Now().Add(time.Second)
	p := oneHookPlan(EndpointBehaviour{HangUntil: until})
	f := newTestFarm(t, 1)
	l := serveLedger(f, p, 100, 100)
	c := &fasthttp.Client{}
	body := eventBody(0)
	sig := contract.NewSigner("s3cret").Sign(body)
	if s, err := post(c, p.Hooks[0].URL, body, "d-0-0", sig, 200*time.Millisecond); !errors.Is(err, fasthttp.ErrTimeout) {
		t.Fatalf("hanging endpoint: status %d, error %v; want a timeout", s, err)
	}
	e := 1
	eventually(t, "the endpoint to answer", func() bool {
		sent := time.Now()
		body := eventBody(e)
		s, err := post(c, p.Hooks[0].URL, body, fmt.Sprintf("d-%d-0", e), contract.NewSigner("s3cret").Sign(body), 200*time.Millisecond)
		e++
		if err == nil && sent.Before(until) {
			t.Fatalf("answered %d to a request sent before HangUntil", s)
		}
		return err == nil && s == 200
	})
	if a := l.Answers(); a.NoAnswer < 1 || a.OK != 1 {
		t.Fatalf("answers %+v", a)
	}
}
