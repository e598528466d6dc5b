// This file is the farm: many fasthttp servers on loopback, one host:port
// each, that play every webhook endpoint of a Plan. Each request is answered
// per its webhook's EndpointBehaviour, its signature checked against the
// webhook's application secret, and recorded in the current Ledger, on a
// path that takes no lock and allocates nothing beyond fasthttp's own work.
// It is the only receiver in the repository: the tests' Receiver
// (receiver.go) and the Go benchmarks in bench/ are farms too.

package loadtest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
)

// Farm server settings.
const (
	farmReadTimeout  = 30 * time.Second
	farmWriteTimeout = 30 * time.Second
	farmIdleTimeout  = 90 * time.Second // above fasthttp clients' default 10 s idle limit
	farmConcurrency  = 64 * 1024        // connections per server: room for thousands of hung requests
	// HangCap is the longest a Hang endpoint holds a request before it
	// closes the connection, still without an answer.
	HangCap = 2 * time.Minute
	// farmShutdown bounds how long Close waits for connections to finish.
	farmShutdown = 5 * time.Second
)

var (
	deliveryHeader  = []byte(contract.DefaultDeliveryHeader)
	signatureHeader = []byte(contract.DefaultSignatureHeader)
	objectIDKey     = []byte(`"object_id":`)
	hookPrefix      = []byte("/h/")
)

// Farm is many fasthttp servers on 127.0.0.1 (one host:port each, so
// geckohook's per-host limits see separate hosts); each endpoint answers per
// its EndpointBehaviour, checks the signature, and records the request in
// the current Ledger. Add a plan, SetSecrets once registration has filled
// them in, then Use a ledger per run.
type Farm struct {
	servers []*fasthttp.Server
	gates   []*serverGate // each server's listener and connections (refuse.go)
	ports   []int
	served  sync.WaitGroup

	mu       sync.Mutex // serialises Add and SetSecrets
	state    atomic.Pointer[farmState]
	ledger   atomic.Pointer[Ledger]
	requests atomic.Int64

	closed    chan struct{}
	closeOnce sync.Once
	shutdown  time.Duration // how long Close waits for connections

	// rec, set only for a Receiver, answers every request with the test's
	// Behaviour and keeps a copy of each one; nil for the harness.
	rec *recording
}

// farmState is what the handlers read: replaced whole, never changed.
type farmState struct {
	hooks   []farmHook
	signers []*contract.Signer // app -> signer; nil until its secret is known
	// paths, when set, names the endpoints by path (a Receiver's, through
	// Expect) instead of /h/<hook>.
	paths map[string]int32
}

type farmHook struct {
	b      EndpointBehaviour
	app    int32
	server int32
}

// NewFarm starts servers fasthttp servers, each on its own 127.0.0.1 port.
func NewFarm(servers int) (*Farm, error) { return newFarm(servers, nil, farmShutdown) }

// newFarm starts a farm that answers through rec when it is set, and whose
// Close waits up to shutdown for connections to end.
func newFarm(servers int, rec *recording, shutdown time.Duration) (*Farm, error) {
	if servers < 1 {
		return nil, fmt.Errorf("farm needs at least one server, not %d", servers)
	}
	f := &Farm{closed: make(chan struct{}), rec: rec, shutdown: shutdown}
	lns := make([]net.Listener, 0, servers)
	for i := range servers {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return nil, fmt.Errorf("cannot listen for farm server %d of %d: %w", i, servers, err)
		}
		lns = append(lns, ln)
		f.ports = append(f.ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		g := &serverGate{conns: map[net.Conn]struct{}{}, ln: &gateListener{Listener: stamping(ln)}}
		s := &fasthttp.Server{
			Handler:               f.handle,
			Name:                  "geckohook-farm",
			ReadTimeout:           farmReadTimeout,
			WriteTimeout:          farmWriteTimeout,
			IdleTimeout:           farmIdleTimeout,
			Concurrency:           farmConcurrency,
			NoDefaultServerHeader: true,
			NoDefaultDate:         true,
			NoDefaultContentType:  true,
			Logger:                quietLogger{},
			ConnState:             g.track,
		}
		f.servers = append(f.servers, s)
		f.gates = append(f.gates, g)
		f.served.Go(func() { _ = s.Serve(g.ln) })
	}
	return f, nil
}

// quietLogger drops fasthttp's connection errors (resets are our own doing).
type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}

// Ports is the port of each server, in order.
func (f *Farm) Ports() []int { return append([]int(nil), f.ports...) }

// Add sets p.Hooks[i].URL to http://127.0.0.1:<port of server
// p.Hooks[i].Server>/h/<i> for every hook and makes p the plan the farm
// answers for, with the behaviours and applications its hooks have now (Add
// again after changing them; secrets set by SetSecrets are kept). It panics
// when a hook names a server the farm does not have.
func (f *Farm) Add(p *Plan) {
	f.mu.Lock()
	defer f.mu.Unlock()
	hooks := make([]farmHook, len(p.Hooks))
	for i := range p.Hooks {
		h := &p.Hooks[i]
		if h.Server < 0 || h.Server >= len(f.ports) {
			panic(fmt.Sprintf("loadtest: hook %d is on farm server %d, the farm has %d", i, h.Server, len(f.ports)))
		}
		h.URL = "http://127.0.0.1:" + strconv.Itoa(f.ports[h.Server]) + "/h/" + strconv.Itoa(i)
		hooks[i] = farmHook{b: h.Behaviour, app: h.App, server: int32(h.Server)}
	}
	st := &farmState{hooks: hooks}
	if old := f.state.Load(); old != nil {
		st.signers = old.signers
	}
	f.state.Store(st)
	f.refuseServers(st)
}

// expect adds an endpoint named path whose requests are signed with secret
// (the Receiver's Expect); a path expected again takes the new secret.
func (f *Farm) expect(path, secret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := &farmState{paths: map[string]int32{}}
	if old := f.state.Load(); old != nil {
		st.hooks, st.signers = slices.Clip(old.hooks), slices.Clip(old.signers)
		for p, h := range old.paths {
			st.paths[p] = h
		}
	}
	app := int32(len(st.signers))
	st.signers = append(st.signers, contract.NewSigner(secret))
	st.paths[path] = int32(len(st.hooks))
	st.hooks = append(st.hooks, farmHook{app: app})
	f.state.Store(st)
}

// SetBehaviour changes how hook answers from now on (requests already
// being answered keep their behaviour).
func (f *Farm) SetBehaviour(hook int, b EndpointBehaviour) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.state.Load()
	if old == nil || hook < 0 || hook >= len(old.hooks) {
		return
	}
	st := &farmState{signers: old.signers, hooks: slices.Clone(old.hooks), paths: old.paths}
	st.hooks[hook].b = b
	f.state.Store(st)
	f.refuseServers(st)
}

// SetSecrets prepares signature checking for every application of p whose
// Secret is filled in; requests of an application without a secret count as
// badly signed.
func (f *Farm) SetSecrets(p *Plan) {
	f.mu.Lock()
	defer f.mu.Unlock()
	signers := make([]*contract.Signer, len(p.Apps))
	for i, a := range p.Apps {
		if a.Secret != "" {
			signers[i] = contract.NewSigner(a.Secret)
		}
	}
	st := &farmState{signers: signers}
	if old := f.state.Load(); old != nil {
		st.hooks, st.paths = old.hooks, old.paths
	}
	f.state.Store(st)
}

// Use makes l the ledger requests are recorded in from now on; nil records
// nothing (requests are still answered and checked).
func (f *Farm) Use(l *Ledger) { f.ledger.Store(l) }

// Requests is how many requests the farm has taken, to any path.
func (f *Farm) Requests() int64 { return f.requests.Load() }

// Close stops every server: hung requests are let go at once (their
// connections close without an answer), then it waits up to 5 s (a
// Receiver's: 2 s) for the servers' connections to end.
func (f *Farm) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	// No server listens again once Close has begun.
	f.stopRefusals()
	ctx, cancel := context.WithTimeout(context.Background(), f.shutdown)
	defer cancel()
	errs := make([]error, len(f.servers))
	var wg sync.WaitGroup
	for i, s := range f.servers {
		wg.Go(func() {
			if err := s.ShutdownWithContext(ctx); err != nil {
				errs[i] = fmt.Errorf("cannot shut down farm server %d (127.0.0.1:%d): %w", i, f.ports[i], err)
			}
		})
	}
	wg.Wait()
	// A server whose Serve had not begun when Shutdown ran would accept
	// forever: closing its listener ends it.
	f.closeGates()
	f.served.Wait()
	return errors.Join(errs...)
}

// handle answers one request: it finds the endpoint by path, checks the
// signature against the endpoint's application, and answers and records per
// the plan (or, for a Receiver, per its Behaviour and in its copies).
func (f *Farm) handle(ctx *fasthttp.RequestCtx) {
	f.requests.Add(1)
	l := f.ledger.Load()
	st := f.state.Load()
	hook := st.endpoint(ctx.Path())
	body := ctx.PostBody()
	sig := ctx.Request.Header.PeekBytes(signatureHeader)
	valid := hook >= 0 && st.validSignature(st.hooks[hook].app, body, sig)
	if f.rec != nil {
		f.rec.answer(ctx, body, sig, valid)
		return
	}
	if hook < 0 {
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		if l != nil {
			l.Record(-1, -1, nil, false, fasthttp.StatusNotFound, time.Now())
		}
		return
	}
	h := &st.hooks[hook]
	e := scanObjectID(body)
	id := ctx.Request.Header.PeekBytes(deliveryHeader)
	b := &h.b

	now := time.Now()
	refused := now.Before(b.RefuseUntil) // a connection taken just before its server closed
	if b.Reset || b.Hang || refused || now.Before(b.HangUntil) {
		if l != nil {
			l.Record(hook, e, id, valid, 0, now)
		}
		if b.Reset || refused {
			if tc, ok := ctx.Conn().(interface{ SetLinger(int) error }); ok {
				_ = tc.SetLinger(0) // close sends RST
			}
		} else {
			f.wait(HangCap)
		}
		// No answer: the server hands the connection to dropConn, which
		// returns at once, and closes it.
		ctx.HijackSetNoResponse(true)
		ctx.Hijack(dropConn)
		return
	}

	status := b.Status
	switch {
	case !b.GoneFrom.IsZero() && !now.Before(b.GoneFrom):
		status = fasthttp.StatusGone
	case now.Before(b.FailUntil):
		status = fasthttp.StatusInternalServerError
	case b.FailRate > 0 && rand.Float64() < b.FailRate:
		status = fasthttp.StatusInternalServerError
	case status == 0:
		status = fasthttp.StatusOK
	}
	// The request's arrival is the kernel's receive time of its last
	// bytes (rxstamp_linux.go): the farm's wait for a core is not
	// geckohook's latency.
	arrived := arrivedAt(ctx.Conn(), now)
	if d := b.Delay + jitter(b.Jitter); d > 0 {
		f.wait(d)
		now = time.Now()
	}
	ctx.SetStatusCode(status)
	if l != nil {
		l.RecordArrived(hook, e, id, valid, status, arrived, now)
	}
}

// dropConn is the hijack handler of requests that get no answer.
func dropConn(net.Conn) {}

func jitter(j time.Duration) time.Duration {
	if j <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(j)))
}

// wait sleeps d, or less if the farm closes first. Short waits use
// time.Sleep, which allocates nothing; Close waits for them.
func (f *Farm) wait(d time.Duration) {
	if d <= time.Second {
		time.Sleep(d)
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-f.closed:
	}
}

// endpoint is the hook path names: /h/<hook>, or with named endpoints the
// hook named path; -1 for none (st may be nil).
func (st *farmState) endpoint(path []byte) int {
	if st == nil {
		return -1
	}
	if st.paths != nil {
		if h, ok := st.paths[string(path)]; ok {
			return int(h)
		}
		return -1
	}
	if h := hookIndex(path); h < len(st.hooks) {
		return h
	}
	return -1
}

// validSignature checks sig against the signature of body under app's secret.
func (st *farmState) validSignature(app int32, body, sig []byte) bool {
	if app < 0 || int(app) >= len(st.signers) || st.signers[app] == nil {
		return false
	}
	var buf [64]byte
	return hmac.Equal(st.signers[app].AppendSignature(buf[:0], body), sig)
}

// hookIndex parses /h/<i>; -1 for any other path.
func hookIndex(path []byte) int {
	if !bytes.HasPrefix(path, hookPrefix) {
		return -1
	}
	return parseIndex(path[len(hookPrefix):])
}

// parseIndex parses a whole non-negative decimal; -1 if s is anything else
// or too large.
func parseIndex(s []byte) int {
	if len(s) == 0 || len(s) > 18 {
		return -1
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// scanObjectID finds `"object_id":` in a JSON body and parses the
// non-negative integer after it (spaces allowed before it); -1 when there
// is none.
func scanObjectID(body []byte) int {
	i := bytes.Index(body, objectIDKey)
	if i < 0 {
		return -1
	}
	s := body[i+len(objectIDKey):]
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t' || s[0] == '\n' || s[0] == '\r') {
		s = s[1:]
	}
	end := 0
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	if end < len(s) && (s[end] == '.' || s[end] == 'e' || s[end] == 'E') {
		return -1 // not an integer
	}
	return parseIndex(s[:end])
}
