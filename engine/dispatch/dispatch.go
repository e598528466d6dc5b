// Package dispatch is the dispatcher role: it joins the events topic's
// consumer group, runs one shard per assigned partition (fetch, decode, fan
// out to the registry's webhooks, send through a shared worker pool, schedule
// failures into the shard's Redis retry queue, dead-letter bad input), and
// commits each partition's offset up to its lowest unfinished event.
package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/publish"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// Options configure a Dispatcher. Zero values mean the defaults in brackets.
type Options struct {
	Brokers  []string
	Topic    string // events topic ("geckohook.events")
	DLQTopic string // dead-letter topic ("geckohook.events.dlq")
	Group    string // consumer group ("geckohook-dispatchers")

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
	// MaxRetries before a delivery is dead (0: 25, Sidekiq's default;
	// negative: none, every failure is dead at once).
	MaxRetries int
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
	if o.MaxRetries == 0 {
		o.MaxRetries = contract.DefaultMaxRetries
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
		o.Log.Warn().Dur("drain_timeout", o.DrainTimeout).Dur("cut_to", limit).
			Msg("drain timeout must stay below the group's session and rebalance timeouts")
		o.DrainTimeout = max(limit, time.Second)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.IntN
	}
}

// Stats are cumulative counters of a Dispatcher.
type Stats struct {
	Events, DeadLettered, Delivered, Failed, Gone, Dropped, Scheduled atomic.Int64
	// Retried counts deliveries claimed from the retry queues; Dead those
	// that failed their last retry.
	Retried, Dead atomic.Int64
	// Shards is the number of partitions this process holds right now.
	Shards atomic.Int64
}

// WriteMetrics appends the dispatcher's counters in Prometheus text format.
func (d *Dispatcher) WriteMetrics(b *bytes.Buffer) {
	counter := func(name, help string, series ...string) {
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name)
		for _, s := range series {
			b.WriteString(s)
		}
	}
	st := &d.Stats
	counter("geckohook_events_total", "Events read from the events topic.",
		fmt.Sprintf("geckohook_events_total %d\n", st.Events.Load()))
	counter("geckohook_dead_letters_total", "Events written to the dead-letter topic.",
		fmt.Sprintf("geckohook_dead_letters_total %d\n", st.DeadLettered.Load()))
	counter("geckohook_deliveries_total", "Deliveries by outcome (failure includes those deferred without an attempt; dropped: webhook deleted before sending).",
		fmt.Sprintf("geckohook_deliveries_total{outcome=\"success\"} %d\n", st.Delivered.Load()),
		fmt.Sprintf("geckohook_deliveries_total{outcome=\"failure\"} %d\n", st.Failed.Load()),
		fmt.Sprintf("geckohook_deliveries_total{outcome=\"gone\"} %d\n", st.Gone.Load()),
		fmt.Sprintf("geckohook_deliveries_total{outcome=\"dropped\"} %d\n", st.Dropped.Load()))
	counter("geckohook_retries_scheduled_total", "Failed deliveries written to the Redis retry queues.",
		fmt.Sprintf("geckohook_retries_scheduled_total %d\n", st.Scheduled.Load()))
	counter("geckohook_retries_claimed_total", "Deliveries claimed from the Redis retry queues for another attempt.",
		fmt.Sprintf("geckohook_retries_claimed_total %d\n", st.Retried.Load()))
	counter("geckohook_deliveries_dead_total", "Deliveries moved to a dead set after their last retry.",
		fmt.Sprintf("geckohook_deliveries_dead_total %d\n", st.Dead.Load()))
	fmt.Fprintf(b, "# HELP geckohook_shards Partitions this process holds.\n# TYPE geckohook_shards gauge\ngeckohook_shards %d\n", st.Shards.Load())
}

// Dispatcher consumes the events topic and delivers webhooks.
type Dispatcher struct {
	o     Options
	work  chan *delivery
	hosts *hostGate
	dlq   *kafka.Writer
	store *shard.Store
	Stats Stats

	commitMu sync.Mutex // serialises offset commits on the group connection
}

// New returns a Dispatcher; Run starts it.
func New(o Options) *Dispatcher {
	o.defaults()
	dlq := kafkaio.NewWriter(o.Brokers, o.DLQTopic)
	dlq.Balancer = &kafka.Hash{}
	return &Dispatcher{o: o, work: make(chan *delivery, o.Workers), hosts: newHostGate(o.Sender.MaxConnsPerHost(), o.StallAfter, time.Now), dlq: dlq,
		store: shard.NewStore(o.Redis, o.RedisPrefix)}
}

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
	for i := 0; i < d.o.Workers; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for dl := range d.work {
				d.deliver(dl)
			}
		}()
	}

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

	var shards sync.WaitGroup
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
	// Closing the group ends the generation; shards drain and commit.
	if err := group.Close(); err != nil && !errors.Is(err, kafka.ErrGroupClosed) {
		d.o.Log.Warn().Err(err).Msg("closing consumer group")
	}
	shards.Wait()
	close(drained)
	close(d.work)
	workers.Wait()
	if err := d.dlq.Close(); err != nil {
		d.o.Log.Warn().Err(err).Msg("closing dead-letter writer")
	}
	return nil
}

func (d *Dispatcher) commit(gen *kafka.Generation, partition int, offset int64) error {
	d.commitMu.Lock()
	defer d.commitMu.Unlock()
	return gen.CommitOffsets(map[string]map[int]int64{d.o.Topic: {partition: offset}})
}
