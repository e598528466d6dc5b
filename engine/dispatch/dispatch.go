// Package dispatch is the dispatcher role: it joins the events topic's
// consumer group and runs one shard per assigned partition, delivering
// each event to every matching webhook through a shared worker pool, and
// commits each partition's offset up to its lowest unfinished event.
//
// Where each step lives:
//   - fetch.go: the partition's fetch loop (its reader, asking through
//     the process's shared fetch session; the window).
//   - fanout.go: decoding an event, matching webhooks, building the body.
//   - attempt.go: the worker's turn: host gate, the HTTP attempt, and its
//     classification (the worker does no Redis I/O).
//   - delivery.go: concluding a turn with the decision of package retry
//     (publish, complete, or hand to the writer).
//   - writer.go: the shard's one writer: 410 deletions, retry-queue
//     writes, what they make true (dead, gone), then completion.
//   - poller.go and claims.go: claiming due retries under a lease.
//   - deadletter.go, commit.go: the dead-letter topic and offset commits.
//   - shard.go: a shard's goroutines, their owner and their stop path.
//   - hosts.go: per-host concurrency limits (AIMD) and overflow.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/publish"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/retry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// Options configure a Dispatcher. Zero values mean the defaults in brackets.
type Options struct {
	Brokers  []string
	Topic    string // events topic ("geckohook.events")
	DLQTopic string // dead-letter topic ("geckohook.events.dlq")
	Group    string // consumer group ("geckohook-dispatchers")
	// Isolation of the events topic's reads (read_committed: records of
	// aborted transactions are never delivered).
	Isolation kafkaio.Isolation

	Registry     *registry.Registry
	Catalog      *catalog.Catalog // (catalog.Default())
	Sender       *sender.Sender
	Redis        redis.UniversalClient
	RedisPrefix  string // ("gh:")
	ResourceBase string // ("https://api.tradegecko.com")

	// Outcomes receives failures, recoveries, 410s and dead deliveries for
	// the coordinator (nil: not published).
	Outcomes *publish.Publisher

	// Workers send deliveries for every shard of this process (1024). A
	// worker is held for the length of one attempt.
	Workers int
	// SlowAttempt: an attempt slower than this counts against its host's
	// health like a timeout (2s).
	SlowAttempt time.Duration
	// StallAfter: a host with attempts in flight and no answer for this
	// long stops queueing more than its limit; the rest is retried later
	// (1s).
	StallAfter time.Duration
	// Window bounds unfinished deliveries per shard (4096).
	Window int
	// MaxRetries before a delivery is dead; 0: none, every failure is
	// dead at once. There is no default here: the binary's --max-retries
	// gives Sidekiq's 25 (contract.DefaultMaxRetries).
	MaxRetries int
	// MaxRetryAfter caps the wait a receiver's Retry-After (on a 429 or
	// 503) can add beyond the retry schedule (6h).
	MaxRetryAfter time.Duration
	// Lease: how long a claimed retry stays out of the queue before it comes
	// back for any owner (60s). It must outlast an attempt (the request
	// timeout) plus the wait behind its host's limit; a process that dies
	// mid-attempt gives its claims back when it runs out.
	Lease time.Duration
	// PollEvery is the longest a shard's retry poller sleeps between looks
	// at its queue (1s); it sleeps less when something is due sooner.
	PollEvery time.Duration
	// RetryWindow bounds claimed retries in flight per shard (1024).
	RetryWindow int
	// DeadRetention and DeadMax bound each shard's dead set: deliveries
	// dead longer than DeadRetention, and the oldest beyond DeadMax, are
	// dropped when new ones die (180 days and 10,000, Sidekiq's defaults).
	DeadRetention time.Duration
	DeadMax       int
	// CommitEvery is how often each shard commits its offset (500ms).
	CommitEvery time.Duration
	// GoneDeleteTimeout bounds one try at deleting a webhook that
	// answered 410 Gone (5s); a try that times out is tried again.
	GoneDeleteTimeout time.Duration
	// DrainTimeout bounds how long a revoked shard waits for its in-flight
	// deliveries before it commits and returns (15s: the request timeout
	// + 5s). kafka-go stops heartbeats when a generation ends, so it is cut
	// to 3s below the session and rebalance timeouts: a longer drain would
	// get the member evicted and its final commit refused.
	DrainTimeout time.Duration
	// SessionTimeout of the group member (30s): how long a crashed process
	// keeps its partitions. RebalanceTimeout (30s).
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration

	// Metrics is the process's set; the dispatcher's metrics go in it
	// (nil: a set of its own).
	Metrics *metrics.Set

	Log  zerolog.Logger
	Now  func() time.Time // clock (time.Now)
	Rand func(int) int    // uniform in [0, n) (math/rand/v2.IntN)
}

func (o *Options) defaults() {
	if o.Topic == "" {
		o.Topic = "geckohook.events"
	}
	if o.DLQTopic == "" {
		o.DLQTopic = o.Topic + ".dlq"
	}
	if o.Group == "" {
		o.Group = "geckohook-dispatchers"
	}
	if o.Catalog == nil {
		o.Catalog = catalog.Default()
	}
	if o.RedisPrefix == "" {
		o.RedisPrefix = contract.DefaultRedisPrefix
	}
	if o.ResourceBase == "" {
		o.ResourceBase = "https://api.tradegecko.com"
	}
	if o.Workers <= 0 {
		o.Workers = 1024
	}
	if o.SlowAttempt <= 0 {
		o.SlowAttempt = 2 * time.Second
	}
	if o.StallAfter <= 0 {
		o.StallAfter = time.Second
	}
	if o.Window <= 0 {
		o.Window = 4096
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = 6 * time.Hour
	}
	if o.Lease <= 0 {
		o.Lease = 60 * time.Second
	}
	if o.PollEvery <= 0 {
		o.PollEvery = time.Second
	}
	if o.RetryWindow <= 0 {
		o.RetryWindow = 1024
	}
	if o.DeadRetention <= 0 {
		o.DeadRetention = 180 * 24 * time.Hour
	}
	if o.DeadMax <= 0 {
		o.DeadMax = 10000
	}
	if o.CommitEvery <= 0 {
		o.CommitEvery = 500 * time.Millisecond
	}
	if o.GoneDeleteTimeout <= 0 {
		o.GoneDeleteTimeout = 5 * time.Second
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 15 * time.Second
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = 30 * time.Second
	}
	if o.RebalanceTimeout <= 0 {
		o.RebalanceTimeout = 30 * time.Second
	}
	if limit := min(o.SessionTimeout, o.RebalanceTimeout) - 3*time.Second; o.DrainTimeout > limit {
		o.Log.Warn().Dur("drain_timeout_ms", o.DrainTimeout).Dur("cut_to_ms", limit).
			Msg("drain timeout must stay below the group's session and rebalance timeouts")
		o.DrainTimeout = max(limit, time.Second)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.IntN
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
}

// Dispatcher consumes the events topic and delivers webhooks.
type Dispatcher struct {
	o      Options
	policy retry.Policy
	pool   *workerPool
	hosts  *hostGate
	dlq    *kafka.Writer
	store  *shard.Store
	// fetches fetches for every shard's reader: one request per broker
	// for the partitions assigned here.
	fetches *kafkaio.FetchSession

	Stats Stats
	m     instruments
	// grouped is true while Run's consumer group loop runs: the
	// dispatcher holds partitions or waits for an assignment.
	grouped atomic.Bool

	commitMu sync.Mutex // serialises offset commits on the group connection
	// handoffs carry admitted deliveries to the workers, and deferred ones
	// to their shard's writer, for feeders that stopped first (hand); Run
	// waits for them before closing the pool.
	handoffs sync.WaitGroup
}

// New returns a Dispatcher; Run starts it.
func New(o Options) *Dispatcher {
	o.defaults()
	dlq := kafkaio.NewWriter(o.Brokers, o.DLQTopic)
	dlq.Balancer = &kafka.Hash{}
	d := &Dispatcher{
		o:      o,
		policy: retry.Policy{MaxRetries: o.MaxRetries, Rand: o.Rand, MaxRetryAfter: o.MaxRetryAfter},
		hosts:  newHostGate(o.Sender.MaxConnsPerHost(), o.StallAfter, time.Now),
		dlq:    dlq,
		store:  shard.NewStore(o.Redis, o.RedisPrefix),
	}
	d.pool = newWorkerPool(o.Workers, d.deliver)
	d.register(o.Metrics)
	return d
}

// Grouped reports whether Run's consumer group loop is running: the
// dispatcher holds partitions or is waiting for an assignment (readiness).
func (d *Dispatcher) Grouped() bool { return d.grouped.Load() }

// Run consumes until ctx ends, then drains: every shard stops fetching,
// waits (up to DrainTimeout) for its in-flight deliveries to finish, commits
// its offset, and only then do the workers stop.
func (d *Dispatcher) Run(ctx context.Context) error {
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                d.o.Group,
		Brokers:           d.o.Brokers,
		Topics:            []string{d.o.Topic},
		StartOffset:       kafka.FirstOffset,
		SessionTimeout:    d.o.SessionTimeout,
		RebalanceTimeout:  d.o.RebalanceTimeout,
		HeartbeatInterval: d.o.SessionTimeout / 4,
		JoinGroupBackoff:  time.Second,
		// Partitions added to the topic start a new generation, so they
		// get shards without a restart.
		WatchPartitionChanges:  true,
		PartitionWatchInterval: 5 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("cannot join consumer group %s: %w", d.o.Group, err)
	}

	var workers sync.WaitGroup
	// The gate's ticker runs until the shards have drained: a stall during a
	// drain must still be shed.
	drained := make(chan struct{})
	workers.Add(1)
	go func() {
		defer workers.Done()
		sweep := time.NewTicker(time.Minute)
		defer sweep.Stop()
		stalls := time.NewTicker(max(d.o.StallAfter/2, 10*time.Millisecond))
		defer stalls.Stop()
		for {
			select {
			case <-drained:
				return
			case <-sweep.C:
				d.hosts.sweep()
			case <-stalls.C:
				for _, dl := range d.hosts.shedStalled() {
					d.overflow(dl)
				}
			}
		}
	}()

	d.fetches = kafkaio.NewFetchSession(kafkaio.SessionConfig{Brokers: d.o.Brokers, Topic: d.o.Topic,
		Isolation: d.o.Isolation, MinBytes: 1, MaxWait: 100 * time.Millisecond,
		Sent: func(partitions int) {
			d.Stats.FetchRequests.Inc()
			d.Stats.FetchPartitions.Add(partitions)
		}})
	var shards sync.WaitGroup
	d.grouped.Store(true)
	for {
		gen, err := group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				break
			}
			d.o.Log.Warn().Err(err).Msg("consumer group error; rejoining")
			continue
		}
		assigned := gen.Assignments[d.o.Topic]
		d.o.Log.Info().Int32("generation", gen.ID).Int("partitions", len(assigned)).Msg("partitions assigned")
		for _, a := range assigned {
			shards.Add(1)
			gen.Start(func(gctx context.Context) {
				defer shards.Done()
				d.runShard(gctx, gen, a)
			})
		}
	}
	d.grouped.Store(false)
	// Closing the group ends the generation; shards drain and commit.
	if err := group.Close(); err != nil && !errors.Is(err, kafka.ErrGroupClosed) {
		d.o.Log.Warn().Err(err).Msg("closing consumer group")
	}
	shards.Wait()
	d.fetches.Close()
	d.handoffs.Wait()
	close(drained)
	d.pool.close()
	workers.Wait()
	if err := d.dlq.Close(); err != nil {
		d.o.Log.Warn().Err(err).Msg("closing dead-letter writer")
	}
	return nil
}
