// Package publish sends outcome records (package outcomes) to the outcomes
// topic off the delivery path: Publish only queues into a bounded buffer
// (dropping and counting when it is full) and a background writer sends
// batches; successes of webhooks that have not failed are filtered out in
// memory, so healthy webhooks cost one read-locked lookup. The Publisher
// owns its goroutines: Start runs them, Close stops them and waits.
package publish

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/engine/outcomes"
)

const shardCount = 64

// failingShard remembers the webhooks this process saw fail since their
// last forwarded success: webhook id → unix ms of the last failure (or of
// the last time the coordinator's failing set named it).
type failingShard struct {
	mu sync.RWMutex
	m  map[string]int64
	// n is len(m), kept by mark and forget, so the healthy path (a
	// first-attempt success of a shard with nothing marked) takes no lock.
	n atomic.Int64
}

// mark remembers webhookID as failing at ms.
func (sh *failingShard) mark(webhookID string, ms int64) {
	sh.mu.Lock()
	sh.m[webhookID] = ms
	sh.n.Store(int64(len(sh.m)))
	sh.mu.Unlock()
}

// forget drops webhookID.
func (sh *failingShard) forget(webhookID string) {
	sh.mu.Lock()
	delete(sh.m, webhookID)
	sh.n.Store(int64(len(sh.m)))
	sh.mu.Unlock()
}

// marked reports whether webhookID is remembered as failing.
func (sh *failingShard) marked(webhookID string) bool {
	if sh.n.Load() == 0 {
		return false
	}
	sh.mu.RLock()
	_, ok := sh.m[webhookID]
	sh.mu.RUnlock()
	return ok
}

// Option changes a Publisher.
type Option func(*Publisher)

// WithBuffer sets how many outcomes may wait for the writer (default 8192).
func WithBuffer(n int) Option { return func(p *Publisher) { p.bufSize = max(n, 1) } }

// WithClock sets the clock used to age remembered failures (default time.Now).
func WithClock(now func() time.Time) Option { return func(p *Publisher) { p.now = now } }

// WithFailingSet makes the Publisher read the coordinator's failing set
// (ZSET key, e.g. "gh:failing") every `every` (default 30s) and treat the
// webhooks in it as failing. Then a success is forwarded even when the
// failure was seen by another process (a moved partition, another
// producer's partitioner), so the streak is reset.
func WithFailingSet(rdb redis.UniversalClient, key string, every time.Duration) Option {
	return func(p *Publisher) {
		p.rdb, p.failingKey, p.syncEvery = rdb, key, every
		if p.syncEvery <= 0 {
			p.syncEvery = 30 * time.Second
		}
	}
}

// WithMetrics puts the Publisher's metrics in the process's set (default:
// a set of its own).
func WithMetrics(set *metrics.Set) Option { return func(p *Publisher) { p.set = set } }

// WithRemember sets how long a failure seen here keeps making the next
// success of its webhook worth forwarding (default 7 days; the coordinator
// deletes a webhook after 3 days of failures).
func WithRemember(d time.Duration) Option { return func(p *Publisher) { p.remember = d } }

// Publisher sends outcomes to the outcomes topic in the background. Its
// methods are safe for concurrent use.
type Publisher struct {
	w          *kafka.Writer
	log        zerolog.Logger
	dropLog    zerolog.Logger
	now        func() time.Time
	bufSize    int
	remember   time.Duration
	rdb        redis.UniversalClient
	failingKey string
	syncEvery  time.Duration

	seed   maphash.Seed
	shards [shardCount]failingShard

	ch       chan outcomes.Outcome
	closed   atomic.Bool
	flushErr atomic.Pointer[error] // a batch lost while closing

	// Start runs the writer and, with a failing set, its reader beside it,
	// so a slow Redis never holds up the Kafka writes. Close cancels
	// stopping: the writer drains the buffer and closes done, the reader
	// stops at its next step and closes syncDone.
	startOnce sync.Once
	stopping  context.Context
	stop      context.CancelFunc
	done      chan struct{}
	syncDone  chan struct{}

	// Published counts outcomes written to Kafka; Dropped those lost to a
	// full buffer or a failed write; Filtered successes not worth sending.
	// They are geckohook_outcomes_total{fate} of the Publisher's metrics
	// set.
	Published, Dropped, Filtered ops.Counter
	set                          *metrics.Set
}

// New returns a started Publisher writing to topic on brokers: NewUnstarted
// followed by Start, for a caller that needs no step in between.
func New(brokers []string, topic string, log zerolog.Logger, opts ...Option) *Publisher {
	p := NewUnstarted(brokers, topic, log, opts...)
	p.Start()
	return p
}

// NewUnstarted returns a Publisher writing to topic on brokers that runs
// nothing yet: Publish queues into its buffer, Start begins sending, and
// Close stops it.
func NewUnstarted(brokers []string, topic string, log zerolog.Logger, opts ...Option) *Publisher {
	if topic == "" {
		topic = outcomes.DefaultTopic
	}
	p := &Publisher{
		log: log, now: time.Now, bufSize: 8192, remember: 7 * 24 * time.Hour,
		seed: maphash.MakeSeed(), done: make(chan struct{}), syncDone: make(chan struct{}),
	}
	p.stopping, p.stop = context.WithCancel(context.Background())
	for _, o := range opts {
		o(p)
	}
	if p.set == nil {
		p.set = metrics.NewSet()
	}
	p.Published = ops.NewCounter(p.set, `geckohook_outcomes_total{fate="published"}`)
	p.Dropped = ops.NewCounter(p.set, `geckohook_outcomes_total{fate="dropped"}`)
	p.Filtered = ops.NewCounter(p.set, `geckohook_outcomes_total{fate="filtered"}`)
	p.dropLog = log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second})
	for i := range p.shards {
		p.shards[i].m = make(map[string]int64)
	}
	p.ch = make(chan outcomes.Outcome, p.bufSize)
	p.w = kafkaio.NewWriter(brokers, topic)
	p.w.BatchTimeout = 20 * time.Millisecond
	return p
}

// Start runs the writer (and the failing-set reader) until Close. Calls
// after the first, or after Close, do nothing.
func (p *Publisher) Start() {
	p.startOnce.Do(func() {
		go p.run()
		if p.rdb != nil {
			go p.syncLoop()
		} else {
			close(p.syncDone)
		}
	})
}

func (p *Publisher) shard(webhookID string) *failingShard {
	return &p.shards[maphash.String(p.seed, webhookID)%shardCount]
}

// Publish queues o for the outcomes topic (a zero At is set to the
// Publisher's clock, read only when the outcome is queued). It never blocks: when the buffer
// is full the outcome is dropped and counted. A first-attempt Success is
// queued only if this Publisher queued a Failure (or Dead) for the webhook
// since its last forwarded Success, or the coordinator lists it as failing;
// a retry's Success (Attempt > 1) always is.
func (p *Publisher) Publish(o *outcomes.Outcome) {
	if p == nil || o == nil {
		return
	}
	sh := p.shard(o.WebhookID)
	switch o.Kind {
	case outcomes.Success:
		failing := sh.marked(o.WebhookID)
		if !failing && o.Attempt <= 1 {
			p.Filtered.Inc()
			return
		}
		if failing {
			sh.forget(o.WebhookID)
		}
	case outcomes.Gone:
		sh.forget(o.WebhookID)
	default:
		sh.mark(o.WebhookID, p.now().UnixMilli())
	}
	if p.closed.Load() {
		p.drop(o, "publisher closed")
		return
	}
	// Past this point a dropped success re-marks its webhook (below).
	v := *o
	if v.At.IsZero() {
		v.At = p.now()
	}
	if len(v.Error) > outcomes.MaxError {
		v.Error = v.Error[:outcomes.MaxError]
	}
	select {
	case p.ch <- v:
	default:
		p.drop(o, "outcome buffer full")
		if o.Kind == outcomes.Success {
			// Keep the webhook marked so its next success is sent instead.
			sh.mark(o.WebhookID, p.now().UnixMilli())
		}
	}
}

func (p *Publisher) drop(o *outcomes.Outcome, why string) {
	p.Dropped.Inc()
	n := p.Dropped.Load()
	p.dropLog.Warn().Str("reason", why).Str("kind", o.Kind.String()).Str("webhook_id", o.WebhookID).
		Int64("dropped_total", n).Msg("outcome dropped; failure counters may miss it")
}

// Close stops accepting outcomes and writes what is buffered, until ctx
// ends; then it waits for the Publisher's goroutines. A Publisher never
// started is started first, so what it queued is written too.
func (p *Publisher) Close(ctx context.Context) error {
	if p == nil {
		return nil
	}
	p.Start()
	if p.closed.CompareAndSwap(false, true) {
		p.stop()
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = p.w.Close()
		return fmt.Errorf("cannot flush outcomes: %w", ctx.Err())
	}
	// The reader stops at its next step; a Redis read in progress may not
	// heed the cancel (go-redis without ContextTimeoutEnabled waits for its
	// read timeout), so wait no longer than ctx.
	select {
	case <-p.syncDone:
	case <-ctx.Done():
		p.log.Warn().Msg("failing-set reader still waiting on Redis at close; it stops after its read timeout")
	}
	if err := p.w.Close(); err != nil {
		return fmt.Errorf("cannot close outcomes writer: %w", err)
	}
	if e := p.flushErr.Load(); e != nil {
		return fmt.Errorf("cannot flush outcomes: %w", *e)
	}
	return nil
}

const maxBatch = 512

func (p *Publisher) run() {
	defer close(p.done)
	batch := make([]kafka.Message, 0, maxBatch)
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case o := <-p.ch:
			p.write(p.fill(p.add(batch[:0], &o)))
		case <-prune.C:
			p.prune()
		case <-p.stopping.Done():
			// Drain what is buffered, then stop.
			for {
				b := p.fill(batch[:0])
				if len(b) == 0 {
					return
				}
				p.write(b)
			}
		}
	}
}

// fill adds what is already buffered to batch, up to maxBatch.
func (p *Publisher) fill(batch []kafka.Message) []kafka.Message {
	for len(batch) < maxBatch {
		select {
		case o := <-p.ch:
			batch = p.add(batch, &o)
		default:
			return batch
		}
	}
	return batch
}

func (p *Publisher) add(batch []kafka.Message, o *outcomes.Outcome) []kafka.Message {
	v, err := outcomes.Encode(o)
	if err != nil {
		p.drop(o, err.Error())
		return batch
	}
	return append(batch, kafka.Message{Key: []byte(o.WebhookID), Value: v})
}

// write sends one batch, trying up to 4 times with backoff (waits of 100,
// 200, 400 ms; Close cuts a wait short, and then the batch gets one more try
// only if it had one so far); a batch that still fails is counted as dropped
// (the buffer keeps filling meanwhile, bounded), and the webhooks whose
// success it carried are marked failing again, so their next success is
// forwarded instead (Publish unmarked them when it queued it).
func (p *Publisher) write(batch []kafka.Message) {
	var err error
	tries := 0
	send := func() error {
		tries++
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		err = p.w.WriteMessages(ctx, batch...)
		return err
	}
	if backoff.Tries(p.stopping, 4, 100*time.Millisecond, time.Second, send, nil) != nil && tries == 1 {
		_ = send() // closing: one more try at most
	}
	if err == nil {
		p.Published.Add(len(batch))
		return
	}
	if p.closed.Load() {
		p.flushErr.Store(&err)
	}
	ms := p.now().UnixMilli()
	for _, m := range batch {
		if o, derr := outcomes.Decode(m.Value); derr == nil && o.Kind == outcomes.Success {
			p.shard(o.WebhookID).mark(o.WebhookID, ms)
		}
	}
	p.Dropped.Add(len(batch))
	n := p.Dropped.Load()
	p.dropLog.Error().Err(err).Int("batch", len(batch)).Int64("dropped_total", n).Msg("cannot write outcomes; batch dropped")
}

// syncLoop reads the failing set at start and every syncEvery until Close.
func (p *Publisher) syncLoop() {
	defer close(p.syncDone)
	ctx := p.stopping
	t := time.NewTicker(p.syncEvery)
	defer t.Stop()
	for {
		p.syncFailing(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// syncFailing marks every webhook in the coordinator's failing set.
func (p *Publisher) syncFailing(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ms := p.now().UnixMilli()
	var cursor uint64
	for {
		keys, next, err := p.rdb.ZScan(ctx, p.failingKey, cursor, "", 1000).Result()
		if err != nil {
			if ctx.Err() == nil || !errors.Is(err, context.Canceled) {
				p.log.Warn().Err(err).Msg("cannot read the failing set; successes after failures seen elsewhere may be filtered until the next try")
			}
			return
		}
		for i := 0; i < len(keys); i += 2 { // member, score pairs
			p.shard(keys[i]).mark(keys[i], ms)
		}
		if cursor = next; cursor == 0 {
			return
		}
	}
}

// prune forgets failures older than the remember period, so the memory is
// bounded by the webhooks that failed recently.
func (p *Publisher) prune() {
	cut := p.now().Add(-p.remember).UnixMilli()
	for i := range p.shards {
		sh := &p.shards[i]
		sh.mu.Lock()
		for id, at := range sh.m {
			if at < cut {
				delete(sh.m, id)
			}
		}
		sh.n.Store(int64(len(sh.m)))
		sh.mu.Unlock()
	}
}

// Failing reports whether the Publisher would forward the next first-attempt
// success of webhookID (for tests and debugging).
func (p *Publisher) Failing(webhookID string) bool {
	return p.shard(webhookID).marked(webhookID)
}
