// Package sender owns geckohook's outbound HTTP: one pooled fasthttp client
// with every limit set, the dial-time target check, the contract's headers,
// and the classification of each attempt into success, gone or failure.
package sender

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/netguard"
)

// Version is the version the default User-Agent names. A build with a
// version of its own sets Options.UserAgent (geckohook's main sends
// "geckohook/<its version>").
const Version = "dev"

// Options configure a Sender. Zero values mean the defaults in brackets.
type Options struct {
	Policy netguard.Policy
	// Timeout bounds a whole attempt: connection wait, dial, write, read
	// (10s, the contract's limit).
	Timeout time.Duration
	// MaxConnsPerHost bounds connections to one host:port (64). Attempts
	// that find none free within MaxConnWait fail and are retried later, so
	// one slow host cannot hold every worker.
	MaxConnsPerHost int
	// MaxConnWait is how long an attempt waits for a free connection (2s).
	MaxConnWait time.Duration
	// MaxIdleConnDuration closes idle keep-alive connections (5s), below
	// common server idle timeouts.
	MaxIdleConnDuration time.Duration
	// MaxResponseBodySize is read and discarded at most (16 KiB).
	MaxResponseBodySize int
	// UserAgent ("geckohook/" + Version): the binary passes its own version
	// here, so no package variable is written at start.
	UserAgent string
	// DeliveryHeader ("X-Gecko-Delivery") and SignatureHeader
	// ("X-Gecko-Signature") can be renamed for white-label use.
	DeliveryHeader  string
	SignatureHeader string
}

func (o *Options) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MaxConnsPerHost <= 0 {
		o.MaxConnsPerHost = 64
	}
	if o.MaxConnWait <= 0 {
		o.MaxConnWait = 2 * time.Second
	}
	if o.MaxIdleConnDuration <= 0 {
		o.MaxIdleConnDuration = 5 * time.Second
	}
	if o.MaxResponseBodySize <= 0 {
		o.MaxResponseBodySize = 16 << 10
	}
	if o.UserAgent == "" {
		o.UserAgent = "geckohook/" + Version
	}
	if o.DeliveryHeader == "" {
		o.DeliveryHeader = contract.DefaultDeliveryHeader
	}
	if o.SignatureHeader == "" {
		o.SignatureHeader = contract.DefaultSignatureHeader
	}
}

// Sender POSTs deliveries. Safe for concurrent use.
type Sender struct {
	c    *fasthttp.Client
	opts Options
}

// New builds a Sender.
func New(o Options) *Sender {
	o.defaults()
	policy := o.Policy
	c := &fasthttp.Client{
		Name: o.UserAgent,
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			c, err := policy.Dialer(timeout).Dial("tcp", addr)
			if err != nil {
				return nil, err
			}
			return track(c), nil
		},
		MaxConnsPerHost:     o.MaxConnsPerHost,
		MaxConnWaitTimeout:  o.MaxConnWait,
		MaxIdleConnDuration: o.MaxIdleConnDuration,
		MaxConnDuration:     5 * time.Minute,
		// The most recently used connection goes out first, so the ones a
		// burst opened beyond what the host needs now sit idle and close
		// after MaxIdleConnDuration (fasthttp's default, FIFO, keeps every
		// one of them in turn, hot and open). It also picks the connection
		// least likely to have been closed by the server while idle.
		ConnPoolStrategy:       fasthttp.LIFO,
		ReadTimeout:            o.Timeout,
		WriteTimeout:           o.Timeout,
		MaxResponseBodySize:    o.MaxResponseBodySize,
		ReadBufferSize:         8 << 10,
		WriteBufferSize:        8 << 10,
		DisablePathNormalizing: true,
		// One request per attempt: fasthttp never sends one again, the
		// transport alone does, and only on a pooled connection that got
		// not one byte of it (transport.go).
		Transport:  transport{},
		RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
	return &Sender{c: c, opts: o}
}

// MaxConnsPerHost is the connection limit per host:port this Sender keeps.
func (s *Sender) MaxConnsPerHost() int { return s.opts.MaxConnsPerHost }

// Result is what one attempt produced.
type Result struct {
	Outcome contract.Outcome
	Status  int   // HTTP status, 0 when no response was read
	Err     error // transport error, nil when a response was read
	// RetryAfter is the wait a 429 or 503 asked for with Retry-After
	// (0: none, or another status).
	RetryAfter time.Duration
}

// ErrorText describes a failed attempt in a few words for records and mails.
func (r Result) ErrorText() string {
	switch {
	case r.Err != nil:
		return r.Err.Error()
	case r.Outcome == contract.Failure:
		return fmt.Sprintf("HTTP %d", r.Status)
	}
	return ""
}

// Send makes one attempt: POST body to address with the contract's headers.
// It never follows redirects (a 3xx is a success).
func (s *Sender) Send(address string, body, deliveryID, signature []byte) Result {
	return s.SendSigned(address, body, deliveryID, Signatures{Gecko: signature})
}

// Signatures are the signature headers of one attempt; an empty one is not
// sent.
type Signatures struct {
	// Gecko is X-Gecko-Signature (or its configured name).
	Gecko []byte
	// Timestamp and Standard are webhook-timestamp (Unix seconds) and
	// webhook-signature; with them goes webhook-id, the delivery id.
	Timestamp, Standard []byte
}

// Standard Webhooks header names, fixed by that specification.
const (
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
)

// SendSigned is Send with the signature headers of the application's
// scheme.
func (s *Sender) SendSigned(address string, body, deliveryID []byte, sig Signatures) Result {
	return s.send(address, body, deliveryID, sig, nil)
}

// SendShowing is SendSigned that also returns the request's headers as
// they went on the wire (names as sent, signatures included), for a
// test send that shows its caller what a receiver gets. It allocates: it
// is not for the delivery path.
func (s *Sender) SendShowing(address string, body, deliveryID []byte, sig Signatures) (Result, map[string]string) {
	headers := map[string]string{}
	res := s.send(address, body, deliveryID, sig, func(k, v []byte) { headers[string(k)] = string(v) })
	return res, headers
}

func (s *Sender) send(address string, body, deliveryID []byte, sig Signatures, show func(k, v []byte)) Result {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	req.SetRequestURI(address)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.Header.SetUserAgent(s.opts.UserAgent)
	req.Header.SetBytesV(s.opts.DeliveryHeader, deliveryID)
	if len(sig.Gecko) > 0 {
		req.Header.SetBytesV(s.opts.SignatureHeader, sig.Gecko)
	}
	if len(sig.Standard) > 0 {
		req.Header.SetBytesV(HeaderWebhookID, deliveryID)
		req.Header.SetBytesV(HeaderWebhookTimestamp, sig.Timestamp)
		req.Header.SetBytesV(HeaderWebhookSignature, sig.Standard)
	}
	req.SetBodyRaw(body)
	if show != nil {
		req.Header.VisitAll(show)
	}

	err := s.c.DoTimeout(req, resp, s.opts.Timeout) // no clock read: the transport takes the time
	status := 0
	switch {
	case err == nil:
		status = resp.StatusCode()
	case errors.Is(err, fasthttp.ErrBodyTooLarge) && resp.StatusCode() > 0:
		// The status line was read; the oversized body is irrelevant.
		status, err = resp.StatusCode(), nil
	default:
		err = describe(err, s.opts.Timeout)
	}
	var retryAfter time.Duration
	if status == fasthttp.StatusTooManyRequests || status == fasthttp.StatusServiceUnavailable {
		retryAfter, _ = contract.ParseRetryAfter(resp.Header.Peek(fasthttp.HeaderRetryAfter), time.Now())
	}
	return Result{Outcome: contract.Classify(status, err), Status: status, Err: err, RetryAfter: retryAfter}
}

// Stages of an AttemptError.
const (
	StageRefusedTarget    = "refused_target"     // our dial-time policy refused the address
	StageTimeout          = "timeout"            // no answer within the time limit
	StageNoFreeConnection = "no_free_connection" // host's connection limit reached
	StageConnection       = "connection"         // refused, reset, TLS or other transport error
)

// AttemptError is a transport failure, sorted by stage.
type AttemptError struct {
	Stage string // one of the Stage constants
	Err   error
}

func (e *AttemptError) Error() string { return e.Stage + ": " + e.Err.Error() }
func (e *AttemptError) Unwrap() error { return e.Err }

func describe(err error, timeout time.Duration) error {
	var stage string
	var ne net.Error
	switch {
	case errors.Is(err, netguard.ErrForbiddenTarget):
		stage = StageRefusedTarget
	case errors.Is(err, fasthttp.ErrTimeout), errors.Is(err, fasthttp.ErrDialTimeout),
		// our dialer is a net.Dialer: its timeout is a *net.OpError
		errors.As(err, &ne) && ne.Timeout():
		stage = StageTimeout
		err = fmt.Errorf("no answer within %v: %w", timeout, err)
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		stage = StageNoFreeConnection
	default:
		stage = StageConnection
	}
	return &AttemptError{Stage: stage, Err: err}
}
