// Package loadtest is geckohook's load-test harness, behind `make bench`
// (cmd/geckoload) and shared with the tests: the plan of who subscribes to
// what, the receiver farm and its ledger of (event, webhook) pairs, the
// flood generator, the raw HTTP ceiling, the processes a run starts, the
// scenarios, and the report. Nothing here is imported by the geckohook
// binary.
//
// This file is the receiver the tests use: a farm of one server whose
// endpoints are named by path, answered with the test's Behaviour, and whose
// every request is kept whole, for tests that look at each delivery.
package loadtest

import (
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// Received is one request a Receiver answered.
type Received struct {
	Path       string
	DeliveryID string
	Signature  string
	// The Standard Webhooks headers, empty when not sent.
	WebhookID, WebhookTimestamp, WebhookSignature string
	ContentType                                   string
	UserAgent                                     string
	Body                                          []byte
	Status                                        int
	ValidSig                                      bool
	At                                            time.Time
}

// Behaviour decides the status for the n-th request (from 0) to path.
type Behaviour func(path string, n int) int

// Always answers status to everything.
func Always(status int) Behaviour { return func(string, int) int { return status } }

// receiverShutdown bounds how long a Receiver's Close waits for connections.
const receiverShutdown = 2 * time.Second

// Receiver is a webhook endpoint farm on one loopback port; the path picks
// the endpoint. It is a Farm of one server that answers every path with its
// Behaviour and keeps a copy of every request.
type Receiver struct {
	URL string // http://127.0.0.1:port

	farm *Farm
}

// NewReceiver starts a receiver on 127.0.0.1:0 answering per b.
func NewReceiver(b Behaviour) (*Receiver, error) {
	f, err := newFarm(1, &recording{behaviour: b, counts: map[string]int{}}, receiverShutdown)
	if err != nil {
		return nil, err
	}
	return &Receiver{URL: "http://127.0.0.1:" + strconv.Itoa(f.ports[0]), farm: f}, nil
}

// Expect registers the application secret that signs requests to path.
func (r *Receiver) Expect(path, secret string) { r.farm.expect(path, secret) }

// Received returns a copy of everything answered so far.
func (r *Receiver) Received() []Received { return r.farm.rec.received() }

// Close stops the server.
func (r *Receiver) Close() error { return r.farm.Close() }

// recording is the Receiver's part of a farm's handler: the Behaviour that
// answers, how many requests each path has had, and a copy of each request
// answered, in the order the answers were given.
type recording struct {
	behaviour Behaviour

	mu     sync.Mutex
	counts map[string]int
	got    []Received
}

// answer answers one request to ctx per the Behaviour (which may block: a
// slow endpoint) and keeps a copy of it; valid says whether sig signs body
// under the secret expected for its path.
func (r *recording) answer(ctx *fasthttp.RequestCtx, body, sig []byte, valid bool) {
	path := string(ctx.Path())
	r.mu.Lock()
	n := r.counts[path]
	r.counts[path] = n + 1
	r.mu.Unlock()
	status := r.behaviour(path, n)
	rec := Received{
		Path: path, DeliveryID: string(ctx.Request.Header.PeekBytes(deliveryHeader)), Signature: string(sig),
		ContentType: string(ctx.Request.Header.ContentType()), UserAgent: string(ctx.Request.Header.UserAgent()),
		Body: append([]byte(nil), body...), Status: status, ValidSig: valid, At: time.Now(),
		WebhookID:        string(ctx.Request.Header.Peek("webhook-id")),
		WebhookTimestamp: string(ctx.Request.Header.Peek("webhook-timestamp")),
		WebhookSignature: string(ctx.Request.Header.Peek("webhook-signature")),
	}
	r.mu.Lock()
	r.got = append(r.got, rec)
	r.mu.Unlock()
	ctx.SetStatusCode(status)
}

func (r *recording) received() []Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Received(nil), r.got...)
}
