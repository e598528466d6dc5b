// Package loadtest is geckohook's load-test harness, behind `make bench`
// (cmd/geckoload) and shared with the tests: the plan of who subscribes to
// what, the receiver farm and its ledger of (event, webhook) pairs, the
// flood generator, the raw HTTP ceiling, the processes a run starts, the
// scenarios, and the report. Nothing here is imported by the geckohook
// binary.
//
// This file is the simple receiver the tests use: one fasthttp server on
// loopback that plays webhook endpoints with a chosen behaviour, checks
// every request's signature against its application's secret, and records
// each delivery it answered.
package loadtest

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
)

// Received is one request a Receiver answered.
type Received struct {
	Path        string
	DeliveryID  string
	Signature   string
	ContentType string
	UserAgent   string
	Body        []byte
	Status      int
	ValidSig    bool
	At          time.Time
}

// Behaviour decides the status for the n-th request (from 0) to path.
type Behaviour func(path string, n int) int

// Always answers status to everything.
func Always(status int) Behaviour { return func(string, int) int { return status } }

// Receiver is a webhook endpoint farm on one loopback port; the path picks
// the endpoint.
type Receiver struct {
	URL string // http://127.0.0.1:port

	mu        sync.Mutex
	behaviour Behaviour
	secrets   map[string]string // path -> app secret
	counts    map[string]int
	got       []Received
	srv       *fasthttp.Server
}

// NewReceiver starts a receiver on 127.0.0.1:0 answering per b.
func NewReceiver(b Behaviour) (*Receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("cannot listen for receiver: %w", err)
	}
	r := &Receiver{URL: "http://" + ln.Addr().String(), behaviour: b, secrets: map[string]string{}, counts: map[string]int{}}
	r.srv = &fasthttp.Server{Handler: r.handle, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// Expect registers the application secret that signs requests to path.
func (r *Receiver) Expect(path, secret string) {
	r.mu.Lock()
	r.secrets[path] = secret
	r.mu.Unlock()
}

func (r *Receiver) handle(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	body := append([]byte(nil), ctx.PostBody()...)
	sig := string(ctx.Request.Header.Peek(contract.DefaultSignatureHeader))
	r.mu.Lock()
	secret, known := r.secrets[path]
	n := r.counts[path]
	r.counts[path] = n + 1
	r.mu.Unlock()
	status := r.behaviour(path, n) // may block: a slow endpoint
	rec := Received{
		Path: path, DeliveryID: string(ctx.Request.Header.Peek(contract.DefaultDeliveryHeader)), Signature: sig,
		ContentType: string(ctx.Request.Header.ContentType()), UserAgent: string(ctx.Request.Header.UserAgent()),
		Body: body, Status: status, ValidSig: known && contract.ValidSignature(secret, body, []byte(sig)), At: time.Now(),
	}
	r.mu.Lock()
	r.got = append(r.got, rec)
	r.mu.Unlock()
	ctx.SetStatusCode(status)
}

// Received returns a copy of everything answered so far.
func (r *Receiver) Received() []Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Received(nil), r.got...)
}

// Close stops the server.
func (r *Receiver) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return r.srv.ShutdownWithContext(ctx)
}
