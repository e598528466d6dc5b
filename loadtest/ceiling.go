package loadtest

// This file owns the raw HTTP ceiling: the same farm endpoints sent the same
// bodies and headers straight from a fasthttp client, without Kafka or Redis,
// at geckohook's concurrency. It is the most deliveries/s this machine can
// do, and every scenario's rate is reported against it. Its loop is also
// bench's BenchmarkRawCeiling.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
)

// resourceBase is geckohook's default --resource-base, which the bodies it
// sends in the scenarios are built with.
const resourceBase = "https://api.tradegecko.com"

// Ceiling is the outcome of one ceiling run.
type Ceiling struct {
	Requests int64
	Elapsed  time.Duration
	PerSec   float64
	Workers  int // the concurrency that gave it
}

// CeilingOptions shapes a ceiling run.
type CeilingOptions struct {
	Duration        time.Duration // how long to send
	Workers         int           // concurrent requests (geckohook's --workers)
	MaxConnsPerHost int           // geckohook's --max-conns-per-host
	// Events, when above 0, is how many events one run sends (a benchmark's
	// b.N); Duration then bounds the run only when it is above 0 too.
	Events int
	// Healthy picks the hooks to send to (nil: every hook whose endpoint
	// answers at once, the zero behaviour).
	Healthy func(h *PlanHook) bool
}

// RunCeiling measures the ceiling at 64 and 256 concurrent requests and at
// o.Workers, a third of o.Duration each, and keeps the best: on a small
// machine fewer goroutines often go faster, and the ceiling is the most
// this machine can do, not what one setting gives.
func RunCeiling(ctx context.Context, farm *Farm, p *Plan, o CeilingOptions) (Ceiling, error) {
	var best Ceiling
	for _, w := range []int{64, 256, o.Workers} {
		if w > o.Workers {
			continue
		}
		one := o
		one.Workers, one.Duration = w, o.Duration/3
		c, err := RunCeilingAt(ctx, farm, p, one)
		if err != nil {
			return Ceiling{}, err
		}
		if c.PerSec > best.PerSec {
			best = c
		}
	}
	return best, nil
}

// RunCeilingAt is one ceiling run at exactly o.Workers concurrent
// requests: it sends the plan's events to its healthy endpoints, recording
// them in a ledger of its own on the farm, and measures the rate.
func RunCeilingAt(ctx context.Context, farm *Farm, p *Plan, o CeilingOptions) (Ceiling, error) {
	healthy := o.Healthy
	if healthy == nil {
		healthy = func(h *PlanHook) bool { return h.Behaviour == (EndpointBehaviour{}) }
	}
	// The ledger covers more events than this machine can send in the time
	// given; a run that reaches the end stops early and is still measured.
	maxEvents := max(int(o.Duration.Seconds()*150_000), 10_000)
	if o.Events > 0 {
		maxEvents = o.Events
	}
	cat := catalog.Default()
	l := NewLedger(p, maxEvents)
	farm.Use(l)
	defer farm.Use(nil)
	signers := make([]*contract.Signer, len(p.Apps))
	for i, a := range p.Apps {
		signers[i] = contract.NewSigner(a.Secret)
	}
	c := &fasthttp.Client{
		MaxConnsPerHost: o.MaxConnsPerHost, MaxConnWaitTimeout: 10 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, MaxResponseBodySize: 4096,
		MaxIdleConnDuration: 30 * time.Second,
	}
	defer c.CloseIdleConnections()
	if o.Events == 0 || o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	stamp := time.Now().Unix()
	var nextEvent atomic.Int64
	var sent atomic.Int64
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < max(o.Workers, 1); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var body, sig, id []byte
			for ctx.Err() == nil {
				e := int(nextEvent.Add(1) - 1)
				if e >= maxEvents {
					return
				}
				acc := p.EventAccount(e)
				body = ceilingBody(body[:0], cat, p.Event, e, stamp)
				l.Produced(e, time.Now())
				for _, hi := range p.Accounts[acc] {
					h := &p.Hooks[hi]
					if !healthy(h) {
						continue
					}
					sig = signers[h.App].AppendSignature(sig[:0], body)
					id = contract.AppendDeliveryID(id[:0], "ceiling", 0, int64(e), h.ID)
					req.Reset()
					req.Header.SetMethod(fasthttp.MethodPost)
					req.SetRequestURI(h.URL)
					req.Header.SetContentType("application/json")
					req.Header.SetBytesV(contract.DefaultDeliveryHeader, id)
					req.Header.SetBytesV(contract.DefaultSignatureHeader, sig)
					req.SetBodyRaw(body)
					if err := c.DoTimeout(req, resp, 10*time.Second); err != nil {
						// A loaded machine may drop the odd request; many
						// failing mean the farm is broken.
						errOnce.Do(func() { firstErr = fmt.Errorf("ceiling request to %s: %w", h.URL, err) })
						failed.Add(1)
						continue
					}
					sent.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n := failed.Load(); n > 0 && n*100 > sent.Load()+n {
		return Ceiling{}, fmt.Errorf("ceiling: %d of %d requests failed, the first: %w", n, sent.Load()+n, firstErr)
	}
	// Every answered request was recorded; a failed one may have been too.
	if got := l.Delivered(); got < sent.Load() || got > sent.Load()+failed.Load() {
		return Ceiling{}, fmt.Errorf("ceiling: the farm recorded %d deliveries of %d sent (%d failed)", got, sent.Load(), failed.Load())
	}
	return Ceiling{Requests: sent.Load(), Elapsed: elapsed, PerSec: float64(sent.Load()) / elapsed.Seconds(), Workers: o.Workers}, nil
}

// ceilingBody appends the body geckohook sends for event e of a plan
// (object_id e, the plan's event, the given timestamp, no resource_url of
// its own), built by the contract as geckohook builds it.
func ceilingBody(dst []byte, cat *catalog.Catalog, event string, e int, stamp int64) []byte {
	ev := contract.Event{Event: event, ObjectID: int64(e), Timestamp: stamp}
	return contract.AppendBody(dst, &ev, resourceBase, cat)
}
