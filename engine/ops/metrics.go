package ops

import (
	"bytes"
	"strconv"
	"sync"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// Counter is a counter of a metrics.Set that reads like an atomic.Int64,
// so a component's Stats serve its tests and /metrics alike. Its methods
// are metrics.Counter's (Inc, Add, AddInt64: one atomic add) and Load.
type Counter struct{ *metrics.Counter }

// NewCounter registers a counter in set; name may carry labels.
func NewCounter(set *metrics.Set, name string) Counter { return Counter{set.NewCounter(name)} }

// Load returns the count.
func (c Counter) Load() int64 { return int64(c.Get()) }

// Gauge is a gauge of a metrics.Set that its owner sets, read like an
// atomic.Int64.
type Gauge struct{ *metrics.Gauge }

// NewGauge registers a gauge in set that Add and Store change.
func NewGauge(set *metrics.Set, name string) Gauge { return Gauge{set.NewGauge(name, nil)} }

// Load returns the value, truncated to an integer.
func (g Gauge) Load() int64 { return int64(g.Get()) }

// Store sets the value.
func (g Gauge) Store(v int64) { g.Set(float64(v)) }

// DurationBuckets are the upper bounds (seconds) of the duration
// histograms: from 5 ms to the 10 s request limit and on to 5 minutes, for
// a produce-to-answer latency that includes time queued behind the window.
var DurationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

// WriteMetrics answers with set's metrics in Prometheus text, followed by
// the Go runtime's (go_*) and the process's (process_*, open and maximum
// file descriptors included).
func WriteMetrics(ctx *fasthttp.RequestCtx, set *metrics.Set) {
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/plain; version=0.0.4; charset=utf-8")
	if set != nil {
		var b bytes.Buffer
		set.WritePrometheus(&b)
		writeWithHelp(ctx, b.Bytes())
	}
	metrics.WriteProcessMetrics(ctx)
	metrics.WriteFDMetrics(ctx)
}

// Requests counts answered requests by route and status code in
// geckohook_api_requests_total{route,code}. It is safe for concurrent use.
type Requests struct {
	set *metrics.Set
	mu  sync.Mutex
	n   map[requestKey]*metrics.Counter
}

type requestKey struct {
	route string
	code  int
}

// NewRequests returns Requests counting in set (nil: a set of its own).
func NewRequests(set *metrics.Set) *Requests {
	if set == nil {
		set = metrics.NewSet()
	}
	return &Requests{set: set, n: make(map[requestKey]*metrics.Counter)}
}

// Count records one answered request.
func (r *Requests) Count(route string, code int) {
	k := requestKey{route, code}
	r.mu.Lock()
	c := r.n[k]
	if c == nil {
		// GetOrCreate: an API and an ops server may share the set.
		c = r.set.GetOrCreateCounter(`geckohook_api_requests_total{route="` + route + `",code="` + strconv.Itoa(code) + `"}`)
		r.n[k] = c
	}
	r.mu.Unlock()
	c.Inc()
}
