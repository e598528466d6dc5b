// This file is the ledger: the accountant of one run of a Plan. It knows
// every (event, webhook) pair the produced events make, takes each request
// the farm records against its pair with atomics on preallocated slices (no
// lock, no allocation on the recording path), measures produce-to-first-2xx
// latency in lock-free histograms, overall and per second of the run, and at
// the end settles every expected pair as delivered, deleted, queued or
// missing.

package loadtest

import (
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// MaxSeconds is how many seconds of run time the ledger's per-second series
// covers; later activity still counts everywhere else.
const MaxSeconds = 3600

// timeBias turns a duration since the ledger's epoch into a stored value that
// is never zero (zero means "not yet"), even for instants before the epoch.
const timeBias = int64(1) << 62

// pair is the state of one (event, webhook) pair: 24 bytes.
type pair struct {
	first atomic.Int64  // time of the first 2xx answer: ns since epoch + timeBias; 0 = none yet
	id    atomic.Uint64 // hash of the first delivery id seen; 0 = no request yet
	ok    atomic.Uint32 // 2xx answers (200-399)
	reqs  atomic.Uint32 // all requests
}

// second is one second of run time.
type second struct {
	delivered atomic.Int64         // pairs whose first 2xx answer fell in this second
	requests  atomic.Int64         // requests recorded in this second
	lat       atomic.Pointer[hist] // latencies of those first answers; allocated on first use
}

// Ledger accounts (event, webhook) pairs for one run of a Plan. Event e
// belongs to account e % len(p.Accounts) and is expected at each of its
// webhooks; pair (e, hook) lives at slot base(e) + hook.Pos, base being the
// prefix sum of p.Fanout over earlier events. Safe for concurrent use; every
// method except Account and Series is a few atomics.
type Ledger struct {
	plan      *Plan
	maxEvents int
	accounts  int
	cycle     int64   // pairs of one round of all accounts
	prefix    []int64 // account -> pairs of the accounts before it in a round
	hookAcc   []int32 // hook -> account
	hookPos   []int32 // hook -> position in its account
	pairs     []pair
	produced  []atomic.Int64 // event -> produce time, ns since epoch + timeBias; 0 = not produced
	epoch     time.Time
	start     atomic.Int64 // series origin, ns since epoch

	producedCount atomic.Int64
	expected      atomic.Int64
	delivered     atomic.Int64
	requests      atomic.Int64
	badSignatures atomic.Int64
	unexpected    atomic.Int64
	idMismatches  atomic.Int64
	answers       [answerClasses]atomic.Int64

	lat    hist
	maxLat atomic.Int64
	// own is the latency up to the request's arrival at the farm (produce
	// to arrival; lat runs to the answer): geckohook's own share, without
	// the receiver's time.
	own    hist
	maxOwn atomic.Int64
	secs   []second
}

// answer classes of a recorded request
const (
	classOK       = iota // 200-399
	classGone            // 410
	classFailed          // any other status
	classNoAnswer        // status 0: hung or reset
	answerClasses
)

// NewLedger returns a ledger for events 0..maxEvents-1 of p, with every pair
// they can make preallocated. The series of seconds starts now (see Start).
// p must not change its accounts or hooks afterwards.
func NewLedger(p *Plan, maxEvents int) *Ledger {
	maxEvents = max(maxEvents, 0)
	l := &Ledger{
		plan:      p,
		maxEvents: maxEvents,
		accounts:  len(p.Accounts),
		prefix:    make([]int64, len(p.Accounts)),
		hookAcc:   make([]int32, len(p.Hooks)),
		hookPos:   make([]int32, len(p.Hooks)),
		produced:  make([]atomic.Int64, maxEvents),
		epoch:     time.Now(),
		secs:      make([]second, MaxSeconds),
	}
	for a, hooks := range p.Accounts {
		l.prefix[a] = l.cycle
		l.cycle += int64(len(hooks))
	}
	for i, h := range p.Hooks {
		l.hookAcc[i], l.hookPos[i] = h.Account, h.Pos
	}
	if l.accounts > 0 {
		l.pairs = make([]pair, l.base(maxEvents))
	}
	return l
}

// base is the slot of event e's first pair; e may be maxEvents.
func (l *Ledger) base(e int) int64 {
	return int64(e/l.accounts)*l.cycle + l.prefix[e%l.accounts]
}

// fanout is how many pairs event e makes.
func (l *Ledger) fanout(e int) int64 {
	if l.accounts == 0 {
		return 0
	}
	return int64(len(l.plan.Accounts[e%l.accounts]))
}

// Start moves the origin of Series to t (the default is NewLedger's time).
// Call it before recording starts.
func (l *Ledger) Start(t time.Time) { l.start.Store(int64(t.Sub(l.epoch))) }

// Produced notes that event e is about to be handed to Kafka at instant at.
// Safe from several goroutines, in any order; a second call for the same
// event changes nothing. Events outside 0..maxEvents-1 are ignored.
func (l *Ledger) Produced(e int, at time.Time) {
	if e < 0 || e >= l.maxEvents {
		return
	}
	if l.produced[e].CompareAndSwap(0, int64(at.Sub(l.epoch))+timeBias) {
		l.producedCount.Add(1)
		l.expected.Add(l.fanout(e))
	}
}

// ProducedCount is how many distinct events were produced.
func (l *Ledger) ProducedCount() int { return int(l.producedCount.Load()) }

// Expected is how many pairs the produced events make.
func (l *Ledger) Expected() int64 { return l.expected.Load() }

// Delivered is how many expected pairs were answered 2xx at least once.
func (l *Ledger) Delivered() int64 { return l.delivered.Load() }

// Requests is how many requests were recorded, whatever their answer.
func (l *Ledger) Requests() int64 { return l.requests.Load() }

// Answers counts recorded requests by answer; the fields add up to Requests.
type Answers struct {
	OK       int64 // 200-399
	Gone     int64 // 410
	Failed   int64 // any other status (500 from the farm's failure rules, 404 for unknown paths)
	NoAnswer int64 // hung or reset: no status given
}

// Answers counts the recorded requests by answer.
func (l *Ledger) Answers() Answers {
	return Answers{
		OK:       l.answers[classOK].Load(),
		Gone:     l.answers[classGone].Load(),
		Failed:   l.answers[classFailed].Load(),
		NoAnswer: l.answers[classNoAnswer].Load(),
	}
}

// Record takes one request to webhook hook (index into Plan.Hooks, or -1
// when the path named no webhook) carrying event e (its object_id, or -1 when
// the body had none), with its X-Gecko-Delivery value, whether its
// X-Gecko-Signature was valid for the hook's application, the status it was
// answered (0: none, the endpoint hung or reset the connection) and when.
//
// A request is unexpected, and touches no pair, when the hook is unknown,
// e is outside 0..maxEvents-1, the hook's account is not event e's, or e
// was never Produced. validSig is not judged for an unknown hook. Record
// neither locks nor allocates (except once per second of run time with a
// first 2xx answer, for that second's histogram).
func (l *Ledger) Record(hook, e int, deliveryID []byte, validSig bool, status int, at time.Time) {
	l.RecordArrived(hook, e, deliveryID, validSig, status, at, at)
}

// RecordArrived is Record for a request that arrived at the receiver at
// arrived and was answered at at (arrived <= at; they differ when the
// endpoint waits before answering). A first 2xx answer adds at − produce
// to Latency and arrived − produce to Own.
func (l *Ledger) RecordArrived(hook, e int, deliveryID []byte, validSig bool, status int, arrived, at time.Time) {
	l.requests.Add(1)
	l.answers[classOf(status)].Add(1)
	t := int64(at.Sub(l.epoch))
	sec := l.second(t)
	if sec != nil {
		sec.requests.Add(1)
	}
	if hook < 0 || hook >= len(l.hookAcc) {
		l.unexpected.Add(1)
		return
	}
	if !validSig {
		l.badSignatures.Add(1)
	}
	if e < 0 || e >= l.maxEvents || l.accounts == 0 || int(l.hookAcc[hook]) != e%l.accounts {
		l.unexpected.Add(1)
		return
	}
	produced := l.produced[e].Load()
	if produced == 0 {
		l.unexpected.Add(1)
		return
	}
	p := &l.pairs[l.base(e)+int64(l.hookPos[hook])]
	p.reqs.Add(1)
	if h := idHash(deliveryID); !p.id.CompareAndSwap(0, h) && p.id.Load() != h {
		l.idMismatches.Add(1)
	}
	if status < 200 || status >= 400 || p.ok.Add(1) != 1 {
		return
	}
	p.first.Store(t + timeBias)
	l.delivered.Add(1)
	lat := max(t-(produced-timeBias), 0)
	l.lat.add(lat)
	for m := l.maxLat.Load(); lat > m && !l.maxLat.CompareAndSwap(m, lat); m = l.maxLat.Load() {
	}
	own := min(max(int64(arrived.Sub(l.epoch))-(produced-timeBias), 0), lat)
	l.own.add(own)
	for m := l.maxOwn.Load(); own > m && !l.maxOwn.CompareAndSwap(m, own); m = l.maxOwn.Load() {
	}
	if sec != nil {
		sec.delivered.Add(1)
		sec.hist().add(lat)
	}
}

func classOf(status int) int {
	switch {
	case status == 0:
		return classNoAnswer
	case status >= 200 && status < 400:
		return classOK
	case status == 410:
		return classGone
	default:
		return classFailed
	}
}

// second returns the second of run time that t (ns since epoch) falls in,
// or nil outside the series.
func (l *Ledger) second(t int64) *second {
	d := t - l.start.Load()
	if d < 0 {
		return nil
	}
	s := d / int64(time.Second)
	if s >= int64(len(l.secs)) {
		return nil
	}
	return &l.secs[s]
}

func (s *second) hist() *hist {
	if h := s.lat.Load(); h != nil {
		return h
	}
	h := new(hist)
	if s.lat.CompareAndSwap(nil, h) {
		return h
	}
	return s.lat.Load()
}

// idHash is FNV-1a 64 of a delivery id, never 0.
func idHash(id []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range id {
		h ^= uint64(c)
		h *= 1099511628211
	}
	if h == 0 {
		h = 1
	}
	return h
}

// Quantiles of produce-to-first-2xx latency, each within about 1% (the
// histogram's bucket error); Max is exact.
type Quantiles struct {
	P50, P95, P99, Max time.Duration
	Count              int64
}

// Latency is the distribution of produce-to-first-2xx latency over every
// delivered pair so far.
func (l *Ledger) Latency() Quantiles {
	c := l.lat.snapshot()
	mx := time.Duration(l.maxLat.Load())
	return Quantiles{
		P50: c.quantile(0.50, mx), P95: c.quantile(0.95, mx), P99: c.quantile(0.99, mx),
		Max: mx, Count: c.total,
	}
}

// Own is the distribution of geckohook's own share of the latency over
// every delivered pair so far: produce (the Kafka record's time) to the
// request's arrival at the receiver, leaving out the receiver's own time
// before its answer.
func (l *Ledger) Own() Quantiles {
	c := l.own.snapshot()
	mx := time.Duration(l.maxOwn.Load())
	return Quantiles{
		P50: c.quantile(0.50, mx), P95: c.quantile(0.95, mx), P99: c.quantile(0.99, mx),
		Max: mx, Count: c.total,
	}
}

// Second is one second of run time: pairs first answered 2xx in it, requests
// recorded in it, and the latency quantiles of those first answers.
type Second struct {
	At                  int // seconds since start
	Delivered, Requests int64
	P50, P99            time.Duration
}

// Series is every second from the start up to the last one with any activity.
func (l *Ledger) Series() []Second {
	last := -1
	for i := range l.secs {
		if l.secs[i].requests.Load() > 0 || l.secs[i].delivered.Load() > 0 {
			last = i
		}
	}
	out := make([]Second, last+1)
	for i := range out {
		s := &l.secs[i]
		out[i] = Second{At: i, Delivered: s.delivered.Load(), Requests: s.requests.Load()}
		if h := s.lat.Load(); h != nil {
			c := h.snapshot()
			out[i].P50 = c.quantile(0.50, math.MaxInt64)
			out[i].P99 = c.quantile(0.99, math.MaxInt64)
		}
	}
	return out
}

// Accounting is the end-of-run settlement of every expected pair: each one
// is Delivered, Deleted, Queued or Missing, and those four add up to Expected.
type Accounting struct {
	Expected      int64 // pairs of the produced events
	Delivered     int64 // answered 2xx at least once
	Deleted       int64 // not delivered, its webhook deleted
	Queued        int64 // not delivered, covered by its webhook's retry queue
	Missing       int64 // none of the above
	Duplicates    int64 // 2xx answers beyond the first of a pair
	IDMismatches  int64 // requests whose delivery id differs from their pair's first
	BadSignatures int64 // requests to a known webhook with an invalid signature
	Unexpected    int64 // requests that match no expected pair
	// MissingSamples are up to 10 missing pairs, "event e → hook i (url)".
	MissingSamples []string
}

// maxMissingSamples is how many missing pairs Account names.
const maxMissingSamples = 10

// Account settles every expected pair of the produced events: answered 2xx;
// or its webhook deleted (deleted(hook) true); or waiting in the retry queue,
// where queued(hook), how many deliveries of that hook geckohook's retry
// queue holds (scheduled or dead), covers up to that many unanswered pairs of
// the hook. Everything else is missing. deleted and queued may be nil; each
// is asked once per webhook. Call it once the run is quiet: pairs still being
// answered may land in either column.
func (l *Ledger) Account(deleted func(hook int) bool, queued func(hook int) int64) Accounting {
	a := Accounting{
		Expected:      l.expected.Load(),
		IDMismatches:  l.idMismatches.Load(),
		BadSignatures: l.badSignatures.Load(),
		Unexpected:    l.unexpected.Load(),
	}
	isDeleted := make([]bool, len(l.plan.Hooks))
	queueLeft := make([]int64, len(l.plan.Hooks))
	for h := range l.plan.Hooks {
		if deleted != nil {
			isDeleted[h] = deleted(h)
		}
		if queued != nil {
			queueLeft[h] = queued(h)
		}
	}
	for e := 0; e < l.maxEvents && l.accounts > 0; e++ {
		if l.produced[e].Load() == 0 {
			continue
		}
		base := l.base(e)
		for pos, hook := range l.plan.Accounts[e%l.accounts] {
			ok := int64(l.pairs[base+int64(pos)].ok.Load())
			switch {
			case ok > 0:
				a.Delivered++
				a.Duplicates += ok - 1
			case isDeleted[hook]:
				a.Deleted++
			case queueLeft[hook] > 0:
				a.Queued++
				queueLeft[hook]--
			default:
				a.Missing++
				if len(a.MissingSamples) < maxMissingSamples {
					a.MissingSamples = append(a.MissingSamples,
						fmt.Sprintf("event %d → hook %d (%s)", e, hook, l.plan.Hooks[hook].URL))
				}
			}
		}
	}
	return a
}

// ProducedAt is when event e was produced (zero if it was not).
func (l *Ledger) ProducedAt(e int) time.Time {
	if e < 0 || e >= l.maxEvents {
		return time.Time{}
	}
	v := l.produced[e].Load()
	if v == 0 {
		return time.Time{}
	}
	return l.epoch.Add(time.Duration(v - timeBias))
}

// EachPair calls fn for every pair of the produced events, in event order,
// with how many 2xx answers and how many requests it had. Call it once the
// run is quiet.
func (l *Ledger) EachPair(fn func(e, hook int, ok, reqs int)) {
	for e := 0; e < l.maxEvents && l.accounts > 0; e++ {
		if l.produced[e].Load() == 0 {
			continue
		}
		base := l.base(e)
		for pos, hook := range l.plan.Accounts[e%l.accounts] {
			p := &l.pairs[base+int64(pos)]
			fn(e, int(hook), int(p.ok.Load()), int(p.reqs.Load()))
		}
	}
}

// The latency histogram is log-linear (HDR-like) over units of 100 ns:
// values below 2·histSub units have a bucket each, above that every power of
// two is split into histSub equal buckets, so a bucket is at most 1/64 of its
// values wide and its midpoint is within 0.8% of any value in it. The top
// bucket holds everything from about 10 minutes up.
const (
	histUnit    = 100 // ns
	histSubBits = 6
	histSub     = 1 << histSubBits
	histMaxUnit = uint64(10*time.Minute/histUnit) + 1
)

var histBuckets = bucketOf(histMaxUnit) + 1

// hist is a lock-free latency histogram.
type hist struct {
	counts [1792]atomic.Uint64
}

func init() {
	if histBuckets > len(hist{}.counts) {
		panic(fmt.Sprintf("loadtest: histogram needs %d buckets", histBuckets))
	}
}

// bucketOf is the bucket of v units.
func bucketOf(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	k := bits.Len64(v) - histSubBits - 1 // v in [2^(k+6), 2^(k+7))
	return (k+1)*histSub + int(v>>k) - histSub
}

// bucketMid is the middle of bucket i, in ns.
func bucketMid(i int) int64 {
	if i < 2*histSub {
		return int64(i)*histUnit + histUnit/2
	}
	k := i/histSub - 1
	low := uint64(i%histSub+histSub) << k
	return int64(low)*histUnit + (int64(1)<<k)*histUnit/2
}

func (h *hist) add(ns int64) {
	h.counts[min(bucketOf(uint64(ns)/histUnit), histBuckets-1)].Add(1)
}

// histCounts is a copy of a histogram's counts.
type histCounts struct {
	counts [1792]uint64
	total  int64
}

func (h *hist) snapshot() *histCounts {
	c := new(histCounts)
	for i := range histBuckets {
		c.counts[i] = h.counts[i].Load()
		c.total += int64(c.counts[i])
	}
	return c
}

// quantile is the q-quantile (0 < q <= 1): the middle of the bucket holding
// the ceil(q·total)-th smallest value, capped at mx; 0 when empty.
func (c *histCounts) quantile(q float64, mx time.Duration) time.Duration {
	if c.total == 0 {
		return 0
	}
	rank := max(int64(math.Ceil(q*float64(c.total))), 1)
	var seen int64
	for i := range histBuckets {
		seen += int64(c.counts[i])
		if seen >= rank {
			return min(time.Duration(bucketMid(i)), mx)
		}
	}
	return mx
}

// Window is what a span of run time saw of some webhooks' pairs.
type Window struct {
	// Offered: pairs of the events produced in the span. Delivered:
	// pairs first answered 2xx in the span, whenever produced.
	Offered, Delivered int64
	// Latency of the offered pairs that were delivered: produce to first
	// 2xx, whenever it came.
	Latency Quantiles
}

// Window reads, once the run is quiet, the pairs (event e, webhook hook)
// keep says yes to (nil: every pair) in the span [from, to).
func (l *Ledger) Window(keep func(e, hook int) bool, from, to time.Time) Window {
	var w Window
	var h hist
	var mx int64
	lo, hi := int64(from.Sub(l.epoch))+timeBias, int64(to.Sub(l.epoch))+timeBias
	for e := 0; e < l.maxEvents && l.accounts > 0; e++ {
		produced := l.produced[e].Load()
		if produced == 0 {
			continue
		}
		offered := produced >= lo && produced < hi
		base := l.base(e)
		for pos, hook := range l.plan.Accounts[e%l.accounts] {
			if keep != nil && !keep(e, int(hook)) {
				continue
			}
			first := l.pairs[base+int64(pos)].first.Load()
			if first >= lo && first < hi {
				w.Delivered++
			}
			if !offered {
				continue
			}
			w.Offered++
			if first != 0 {
				lat := max(first-produced, 0)
				h.add(lat)
				mx = max(mx, lat)
			}
		}
	}
	c := h.snapshot()
	m := time.Duration(mx)
	w.Latency = Quantiles{P50: c.quantile(0.50, m), P95: c.quantile(0.95, m), P99: c.quantile(0.99, m), Max: m, Count: c.total}
	return w
}
