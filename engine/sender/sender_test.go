package sender

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/netguard"
)

// Every test talks to servers on 127.0.0.1, so it needs private targets
// allowed, except the guard test, which checks they are refused by default.
var devPolicy = netguard.Policy{AllowPrivate: true, AllowHTTP: true}

var (
	testBody = []byte(`{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,` +
		`"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json?a=1&b=<2>","note":"héllo ✓"}`)
	testID  = []byte("0f8fad5b-d9cb-869f-a165-70867728950e")
	testSig = []byte("n3b+Qk/9zX0aL1Xn2oQe4r5t6y7u8i9o0pAsDfGhJkL=")
)

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func urlOf(ln net.Listener, path string) string {
	return "http://" + ln.Addr().String() + path
}

// startFast serves h with a fasthttp.Server on a fresh loopback port and
// returns the base URL and the listener counting its connections.
func startFast(t testing.TB, h fasthttp.RequestHandler) (string, *countingListener) {
	t.Helper()
	ln := &countingListener{Listener: listen(t)}
	srv := &fasthttp.Server{Handler: h, Logger: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.ShutdownWithContext(ctx)
		<-done
	})
	return urlOf(ln, ""), ln
}

// serveRaw accepts connections on a fresh loopback port and runs handle on
// each in its own goroutine; handle must close the connection. Cleanup closes
// the listener, every open connection, and waits for the handlers.
func serveRaw(t testing.TB, handle func(c net.Conn)) (string, *countingListener) {
	t.Helper()
	ln := &countingListener{Listener: listen(t)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return urlOf(ln, ""), ln
}

// readRequest reads one whole HTTP request from br.
func readRequest(br *bufio.Reader) (*http.Request, []byte, error) {
	r, err := http.ReadRequest(br)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(r.Body)
	return r, body, err
}

func attemptErr(t *testing.T, res Result) *AttemptError {
	t.Helper()
	var ae *AttemptError
	if !errors.As(res.Err, &ae) {
		t.Fatalf("Err = %#v (%v), want *AttemptError", res.Err, res.Err)
	}
	return ae
}

func wantSuccess(t *testing.T, res Result, status int) {
	t.Helper()
	if res.Outcome != contract.Success || res.Status != status || res.Err != nil || res.ErrorText() != "" {
		t.Fatalf("got outcome %v status %d err %v text %q, want success %d", res.Outcome, res.Status, res.Err, res.ErrorText(), status)
	}
}

func wantTransportFailure(t *testing.T, res Result, stage string) *AttemptError {
	t.Helper()
	if res.Outcome != contract.Failure || res.Status != 0 {
		t.Fatalf("got outcome %v status %d err %v, want failure with status 0", res.Outcome, res.Status, res.Err)
	}
	ae := attemptErr(t, res)
	if ae.Stage != stage {
		t.Fatalf("stage = %q (%v), want %q", ae.Stage, ae, stage)
	}
	if res.ErrorText() != res.Err.Error() || !strings.HasPrefix(res.ErrorText(), stage+": ") {
		t.Fatalf("ErrorText = %q, want the error prefixed with %q", res.ErrorText(), stage)
	}
	return ae
}

type seenRequest struct {
	method, uri string
	header      http.Header
	body        []byte
	contentLen  int64
}

// captureServer is a net/http server (an implementation independent of
// fasthttp) recording every request it gets.
func captureServer(t *testing.T) (string, <-chan seenRequest) {
	t.Helper()
	ch := make(chan seenRequest, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("server reading body: %v", err)
		}
		ch <- seenRequest{method: r.Method, uri: r.RequestURI, header: r.Header.Clone(), body: body, contentLen: r.ContentLength}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, ch
}

func oneHeader(t *testing.T, h http.Header, name, want string) {
	t.Helper()
	if got := h.Values(name); len(got) != 1 || got[0] != want {
		t.Errorf("header %s = %q, want exactly [%q]", name, got, want)
	}
}

func TestSendHeadersAndBodyOnTheWire(t *testing.T) {
	base, seen := captureServer(t)
	s := New(Options{Policy: devPolicy})

	body := bytes.Clone(testBody)
	res := s.Send(base+"/hooks/gecko?token=a%2Fb&x=1", body, testID, testSig)
	wantSuccess(t, res, 204)
	if !bytes.Equal(body, testBody) {
		t.Errorf("Send modified the caller's body")
	}

	r := <-seen
	if r.method != http.MethodPost {
		t.Errorf("method = %q, want POST", r.method)
	}
	if r.uri != "/hooks/gecko?token=a%2Fb&x=1" {
		t.Errorf("request URI = %q, want the path and query as registered", r.uri)
	}
	oneHeader(t, r.header, "Content-Type", "application/json")
	oneHeader(t, r.header, "X-Gecko-Delivery", string(testID))
	oneHeader(t, r.header, "X-Gecko-Signature", string(testSig))
	if ua := r.header.Values("User-Agent"); len(ua) != 1 || !strings.HasPrefix(ua[0], "geckohook/") || ua[0] != "geckohook/"+Version {
		t.Errorf("User-Agent = %q, want exactly one, geckohook/%s", ua, Version)
	}
	if !bytes.Equal(r.body, testBody) {
		t.Errorf("body on the wire = %q, want %q", r.body, testBody)
	}
	if r.contentLen != int64(len(testBody)) {
		t.Errorf("Content-Length = %d, want %d", r.contentLen, len(testBody))
	}
}

func TestSendRenamedHeaders(t *testing.T) {
	base, seen := captureServer(t)
	s := New(Options{
		Policy:          devPolicy,
		DeliveryHeader:  "X-Acme-Delivery-Id",
		SignatureHeader: "X-Acme-Hmac-Sha256",
		UserAgent:       "acme-hooks/2.1",
	})
	wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 204)

	r := <-seen
	oneHeader(t, r.header, "X-Acme-Delivery-Id", string(testID))
	oneHeader(t, r.header, "X-Acme-Hmac-Sha256", string(testSig))
	oneHeader(t, r.header, "User-Agent", "acme-hooks/2.1")
	oneHeader(t, r.header, "Content-Type", "application/json")
	for _, old := range []string{"X-Gecko-Delivery", "X-Gecko-Signature"} {
		if v := r.header.Values(old); len(v) != 0 {
			t.Errorf("renamed header still sent under its default name %s: %q", old, v)
		}
	}
	if !bytes.Equal(r.body, testBody) {
		t.Errorf("body on the wire = %q, want %q", r.body, testBody)
	}
}

func TestSendStatusTable(t *testing.T) {
	// The redirect target must never be asked for anything.
	var redirected atomic.Int64
	target, _ := startFast(t, func(ctx *fasthttp.RequestCtx) { redirected.Add(1) })

	base, _ := startFast(t, func(ctx *fasthttp.RequestCtx) {
		code, err := strconv.Atoi(strings.TrimPrefix(string(ctx.Path()), "/status/"))
		if err != nil {
			ctx.SetStatusCode(418)
			return
		}
		if code >= 300 && code < 400 {
			ctx.Response.Header.Set("Location", target+"/moved")
		}
		ctx.SetStatusCode(code)
		if code != 204 && code != 304 {
			ctx.SetBodyString(`{"status":` + strconv.Itoa(code) + `}`)
		}
	})

	s := New(Options{Policy: devPolicy})
	cases := []struct {
		status int
		want   contract.Outcome
	}{
		{200, contract.Success}, {201, contract.Success}, {204, contract.Success},
		{301, contract.Success}, {302, contract.Success}, {307, contract.Success},
		{308, contract.Success}, {399, contract.Success},
		{410, contract.Gone},
		{400, contract.Failure}, {404, contract.Failure}, {429, contract.Failure},
		{500, contract.Failure}, {503, contract.Failure},
	}
	for _, c := range cases {
		t.Run(strconv.Itoa(c.status), func(t *testing.T) {
			res := s.Send(fmt.Sprintf("%s/status/%d", base, c.status), testBody, testID, testSig)
			if res.Outcome != c.want || res.Status != c.status || res.Err != nil {
				t.Fatalf("got outcome %v status %d err %v, want %v %d", res.Outcome, res.Status, res.Err, c.want, c.status)
			}
			wantText := ""
			if c.want == contract.Failure {
				wantText = fmt.Sprintf("HTTP %d", c.status)
			}
			if res.ErrorText() != wantText {
				t.Fatalf("ErrorText = %q, want %q", res.ErrorText(), wantText)
			}
		})
	}
	// Send is synchronous: had any redirect been followed, the target's
	// handler would have run before Send returned.
	if n := redirected.Load(); n != 0 {
		t.Fatalf("redirect target got %d requests; redirects must never be followed", n)
	}
}

func TestSendTimeout(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 8)
	base, _ := startFast(t, func(ctx *fasthttp.RequestCtx) {
		entered <- struct{}{}
		<-release
	})
	t.Cleanup(func() { close(release) }) // runs before the server's cleanup

	const timeout = 300 * time.Millisecond
	s := New(Options{Policy: devPolicy, Timeout: timeout})
	start := time.Now()
	res := s.Send(base+"/", testBody, testID, testSig)
	elapsed := time.Since(start)

	ae := wantTransportFailure(t, res, "timeout")
	if !errors.Is(ae, fasthttp.ErrTimeout) {
		t.Errorf("err = %v, want it to wrap fasthttp.ErrTimeout", ae)
	}
	if elapsed >= 3*time.Second {
		t.Fatalf("Send took %v with a %v timeout", elapsed, timeout)
	}
	if elapsed < timeout {
		t.Fatalf("Send gave up after %v, before its %v timeout", elapsed, timeout)
	}
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the server never got the request")
	}
	// The deadline covers the whole attempt: a timed-out request is not
	// tried again (that would double the load on a slow receiver).
	select {
	case <-entered:
		t.Fatal("a timed-out request was sent again")
	default:
	}
}

func TestSendConnectionRefused(t *testing.T) {
	ln := listen(t)
	dead := urlOf(ln, "/")
	ln.Close()

	s := New(Options{Policy: devPolicy, Timeout: 2 * time.Second})
	start := time.Now()
	res := s.Send(dead, testBody, testID, testSig)
	ae := wantTransportFailure(t, res, "connection")
	if !errors.Is(ae, syscall.ECONNREFUSED) {
		t.Errorf("err = %v, want it to wrap ECONNREFUSED", ae)
	}
	if d := time.Since(start); d >= 2*time.Second {
		t.Errorf("a refused connection took %v to report", d)
	}
}

func TestSendConnectionDropped(t *testing.T) {
	cases := []struct {
		name  string
		after func(c net.Conn) // runs once the request was read; the conn is closed after
	}{
		{"closed before answering", func(c net.Conn) {}},
		{"reset before answering", func(c net.Conn) { _ = c.(*net.TCPConn).SetLinger(0) }},
		{"closed mid-headers", func(c net.Conn) { _, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Le") }},
		{"closed mid-body", func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\nonly part")
		}},
		{"reset mid-body", func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc")
			_ = c.(*net.TCPConn).SetLinger(0)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var requests atomic.Int64
			base, _ := serveRaw(t, func(conn net.Conn) {
				defer conn.Close()
				if _, _, err := readRequest(bufio.NewReader(conn)); err != nil {
					return
				}
				requests.Add(1)
				c.after(conn)
			})
			s := New(Options{Policy: devPolicy, Timeout: 2 * time.Second})
			start := time.Now()
			res := s.Send(base+"/", testBody, testID, testSig)
			wantTransportFailure(t, res, "connection")
			if d := time.Since(start); d >= 2*time.Second {
				t.Errorf("a dropped connection took %v to report (the timeout, not the drop)", d)
			}
			// At most one retry on a fresh connection, never a loop.
			if n := requests.Load(); n < 1 || n > 2 {
				t.Errorf("server read %d requests, want 1 or 2", n)
			}
		})
	}
}

// TestSendOneRequestPerAttempt: a receiver that reads the whole request and
// closes the connection without answering may have acted on it, so the
// attempt fails and the request is not sent again, whether the connection
// was fresh or came from the pool.
func TestSendOneRequestPerAttempt(t *testing.T) {
	f := func(t *testing.T, answered int64) {
		t.Helper()
		var requests atomic.Int64
		base, conns := serveRaw(t, func(c net.Conn) {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				if _, _, err := readRequest(br); err != nil {
					return
				}
				if requests.Add(1) > answered {
					return // read in full, never answered
				}
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
			}
		})
		s := New(Options{Policy: devPolicy, Timeout: 5 * time.Second})
		for i := int64(0); i < answered; i++ {
			wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 200)
		}
		res := s.Send(base+"/", testBody, testID, testSig)
		ae := wantTransportFailure(t, res, "connection")
		if !errors.Is(ae, fasthttp.ErrConnectionClosed) {
			t.Errorf("err = %v, want it to be fasthttp.ErrConnectionClosed", ae)
		}
		if want := "connection: the receiver closed the connection without answering after the request was sent"; res.ErrorText() != want {
			t.Errorf("ErrorText = %q, want %q", res.ErrorText(), want)
		}
		// Send returns only after the server closed the connection it read
		// the last request on, so every request sent has been counted.
		if n := requests.Load(); n != answered+1 {
			t.Errorf("server read %d requests for the unanswered attempt, want 1", n-answered)
		}
		if n := conns.accepted.Load(); n != 1 {
			t.Errorf("server accepted %d connections, want 1", n)
		}
	}
	t.Run("fresh connection", func(t *testing.T) { f(t, 0) })
	t.Run("pooled connection", func(t *testing.T) { f(t, 1) })
}

func TestSendRefusesPrivateTargetsAtDialTime(t *testing.T) {
	ln := listen(t).(*net.TCPListener)
	t.Cleanup(func() { ln.Close() })

	s := New(Options{}) // default policy: no private targets
	for _, addr := range []string{
		urlOf(ln, "/"),
		"http://localhost:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port) + "/", // resolved, then refused
	} {
		res := s.Send(addr, testBody, testID, testSig)
		ae := wantTransportFailure(t, res, "refused_target")
		if !errors.Is(ae, netguard.ErrForbiddenTarget) {
			t.Errorf("%s: err = %v, want it to wrap netguard.ErrForbiddenTarget", addr, ae)
		}
	}
	// Had the dialer connected, the kernel would have completed the
	// handshake before Send returned and Accept would find the connection
	// queued; it must time out instead.
	_ = ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if c, err := ln.Accept(); err == nil {
		c.Close()
		t.Fatal("a refused target still received a connection")
	} else if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, syscall.ETIMEDOUT) {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("accept: %v", err)
		}
	}

	// The same address goes through when private targets are allowed.
	base, conns := startFast(t, func(ctx *fasthttp.RequestCtx) {})
	wantSuccess(t, New(Options{Policy: devPolicy}).Send(base+"/", testBody, testID, testSig), 200)
	if conns.accepted.Load() != 1 {
		t.Errorf("allowed target accepted %d connections, want 1", conns.accepted.Load())
	}
}

func TestSendLargeResponseBody(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 1<<20)
	var hits atomic.Int64
	base, _ := startFast(t, func(ctx *fasthttp.RequestCtx) {
		hits.Add(1)
		switch string(ctx.Path()) {
		case "/big":
			ctx.SetBody(big)
		case "/big-chunked":
			ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
				for i := 0; i < 16; i++ {
					if _, err := w.Write(big[:64<<10]); err != nil {
						return
					}
					if err := w.Flush(); err != nil {
						return
					}
				}
			})
		case "/big-500":
			ctx.SetStatusCode(500)
			ctx.SetBody(big)
		case "/big-410":
			ctx.SetStatusCode(410)
			ctx.SetBody(big)
		}
	})

	s := New(Options{Policy: devPolicy})
	wantSuccess(t, s.Send(base+"/big", testBody, testID, testSig), 200)
	wantSuccess(t, s.Send(base+"/small", testBody, testID, testSig), 200)
	wantSuccess(t, s.Send(base+"/big-chunked", testBody, testID, testSig), 200)
	wantSuccess(t, s.Send(base+"/small", testBody, testID, testSig), 200)

	res := s.Send(base+"/big-500", testBody, testID, testSig)
	if res.Outcome != contract.Failure || res.Status != 500 || res.Err != nil || res.ErrorText() != "HTTP 500" {
		t.Errorf("big 500: got %v %d %v %q, want failure 500 \"HTTP 500\"", res.Outcome, res.Status, res.Err, res.ErrorText())
	}
	res = s.Send(base+"/big-410", testBody, testID, testSig)
	if res.Outcome != contract.Gone || res.Status != 410 || res.Err != nil {
		t.Errorf("big 410: got %v %d %v, want gone 410", res.Outcome, res.Status, res.Err)
	}
	wantSuccess(t, s.Send(base+"/small", testBody, testID, testSig), 200)
	// An oversized body is no reason to send the request again.
	if n := hits.Load(); n != 7 {
		t.Errorf("server got %d requests for 7 sends", n)
	}
}

func TestSendReusesConnections(t *testing.T) {
	var hits atomic.Int64
	base, conns := startFast(t, func(ctx *fasthttp.RequestCtx) {
		hits.Add(1)
		ctx.SetBodyString("ok")
	})
	s := New(Options{Policy: devPolicy})
	for i := 0; i < 50; i++ {
		wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 200)
	}
	if n := hits.Load(); n != 50 {
		t.Errorf("server got %d requests, want 50", n)
	}
	if n := conns.accepted.Load(); n > 2 {
		t.Errorf("50 sequential sends used %d connections, want keep-alive reuse (<= 2)", n)
	}
}

func TestSendConnectionLimit(t *testing.T) {
	const maxConns = 2
	var hits atomic.Int64
	base, conns := startFast(t, func(ctx *fasthttp.RequestCtx) { hits.Add(1) })
	s := New(Options{Policy: devPolicy, MaxConnsPerHost: maxConns, MaxConnWait: 5 * time.Second})

	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				if res := s.Send(base+"/", testBody, testID, testSig); res.Outcome != contract.Success {
					t.Errorf("send: %v %d %v", res.Outcome, res.Status, res.Err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := hits.Load(); n != 200 {
		t.Errorf("server got %d requests, want 200", n)
	}
	if n := conns.accepted.Load(); n > maxConns {
		t.Errorf("%d connections opened with MaxConnsPerHost %d", n, maxConns)
	}
}

func TestSendNoFreeConnection(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	base, _ := startFast(t, func(ctx *fasthttp.RequestCtx) {
		entered <- struct{}{}
		<-release
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)

	s := New(Options{Policy: devPolicy, MaxConnsPerHost: 1, MaxConnWait: 50 * time.Millisecond, Timeout: 5 * time.Second})
	first := make(chan Result, 1)
	go func() { first <- s.Send(base+"/slow", testBody, testID, testSig) }()
	select {
	case <-entered: // the only connection is now busy
	case <-time.After(5 * time.Second):
		t.Fatal("first request never arrived")
	}

	start := time.Now()
	res := s.Send(base+"/other", testBody, testID, testSig)
	wantTransportFailure(t, res, "no_free_connection")
	if d := time.Since(start); d >= 2*time.Second {
		t.Errorf("waiting for a free connection took %v with MaxConnWait 50ms", d)
	}

	unblock()
	wantSuccess(t, <-first, 200)
}

// TestSendRetriesIdleConnectionClosedByServer: a server answers with
// "Connection: keep-alive" and then closes the socket, as servers do when an
// idle keep-alive connection times out. The next Send finds that dead
// connection in the pool; it must try once more on a fresh one and succeed.
func TestSendRetriesIdleConnectionClosedByServer(t *testing.T) {
	t.Run("closed", func(t *testing.T) { testIdleConnectionDropped(t, false) })
	t.Run("reset", func(t *testing.T) { testIdleConnectionDropped(t, true) })
}

func testIdleConnectionDropped(t *testing.T, reset bool) {
	closed := make(chan net.Conn, 64)
	var requests atomic.Int64
	base, conns := serveRaw(t, func(c net.Conn) {
		defer func() {
			c.Close()
			closed <- c
		}()
		r, body, err := readRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		requests.Add(1)
		if r.Method != http.MethodPost || !bytes.Equal(body, testBody) {
			t.Errorf("server got %s with body %q", r.Method, body)
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
		if reset {
			_ = c.(*net.TCPConn).SetLinger(0) // close with RST instead of FIN
		}
	})
	waitClosed := func() {
		t.Helper()
		select {
		case c := <-closed:
			waitClientSawClose(t, c)
		case <-time.After(5 * time.Second):
			t.Fatal("server did not close its connection")
		}
	}

	s := New(Options{Policy: devPolicy, Timeout: 5 * time.Second})
	wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 200)
	waitClosed() // the pooled connection is now dead

	const rounds = 10
	for i := 0; i < rounds; i++ {
		wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 200)
		waitClosed()
	}
	// Each round found the pooled connection dead before writing to it and
	// succeeded on exactly one fresh connection.
	if n := requests.Load(); n != rounds+1 {
		t.Errorf("server answered %d requests, want %d", n, rounds+1)
	}
	if n := conns.accepted.Load(); n != rounds+1 {
		t.Errorf("server accepted %d connections, want %d", n, rounds+1)
	}
}

func BenchmarkSend(b *testing.B) {
	base, _ := startFast(b, func(ctx *fasthttp.RequestCtx) {})
	s := New(Options{Policy: devPolicy})
	addr := base + "/hooks/bench"
	if res := s.Send(addr, testBody, testID, testSig); res.Outcome != contract.Success {
		b.Fatalf("warm-up send: %v %d %v", res.Outcome, res.Status, res.Err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(testBody)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if res := s.Send(addr, testBody, testID, testSig); res.Outcome != contract.Success {
				b.Errorf("send: %v %d %v", res.Outcome, res.Status, res.Err)
				return
			}
		}
	})
}
