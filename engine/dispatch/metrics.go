package dispatch

import (
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/ops"
)

// Stats are cumulative counters of a Dispatcher, kept in its metrics set.
type Stats struct {
	// Events read from the events topic; DeadLettered: written to the
	// dead-letter topic.
	Events, DeadLettered ops.Counter
	// Deliveries by outcome: Failed includes those deferred without an
	// attempt; Dropped: webhook deleted before sending.
	Delivered, Failed, Gone, Dropped ops.Counter
	// Scheduled: failed deliveries written to the retry queues; Retried:
	// claimed from them; Dead: failed their last retry.
	Scheduled, Retried, Dead ops.Counter
	// CommitFailures: offset commits that failed (the next one retries).
	CommitFailures ops.Counter
	// FetchRequests: Fetch requests the process's shards shared;
	// FetchPartitions: the partitions asked in them, summed.
	FetchRequests, FetchPartitions ops.Counter
	// Shards is the number of partitions this process holds right now.
	Shards ops.Gauge
	// RetriesInFlight: retries claimed from the shards' queues and not yet
	// written back (at most RetryWindow per shard); pinned at that bound
	// while retries are overdue, the window is what holds the drain back.
	RetriesInFlight ops.Gauge
}

// instruments are the dispatcher's metrics beyond Stats.
type instruments struct {
	set *metrics.Set
	// attempt is the duration of one HTTP attempt, by contract.Outcome.
	attempt [contract.Failure + 1]*metrics.PrometheusHistogram
	// latency: the event's Kafka record time to the receiver's answer, on
	// first attempts.
	latency *metrics.PrometheusHistogram
}

// register puts the dispatcher's metrics in set.
func (d *Dispatcher) register(set *metrics.Set) {
	c := func(name string) ops.Counter { return ops.NewCounter(set, name) }
	d.Stats = Stats{
		Events:          c("geckohook_events_total"),
		DeadLettered:    c("geckohook_dead_letters_total"),
		Delivered:       c(`geckohook_deliveries_total{outcome="success"}`),
		Failed:          c(`geckohook_deliveries_total{outcome="failure"}`),
		Gone:            c(`geckohook_deliveries_total{outcome="gone"}`),
		Dropped:         c(`geckohook_deliveries_total{outcome="dropped"}`),
		Scheduled:       c("geckohook_retries_scheduled_total"),
		Retried:         c("geckohook_retries_claimed_total"),
		Dead:            c("geckohook_deliveries_dead_total"),
		CommitFailures:  c("geckohook_offset_commit_failures_total"),
		FetchRequests:   c("geckohook_fetch_requests_total"),
		FetchPartitions: c("geckohook_fetch_partitions_total"),
		Shards:          ops.NewGauge(set, "geckohook_shards"),
		RetriesInFlight: ops.NewGauge(set, "geckohook_retries_in_flight"),
	}
	d.m.set = set
	for _, o := range []contract.Outcome{contract.Success, contract.Failure, contract.Gone} {
		d.m.attempt[o] = set.NewPrometheusHistogramExt(`geckohook_attempt_duration_seconds{outcome="`+o.String()+`"}`, ops.DurationBuckets)
	}
	d.m.latency = set.NewPrometheusHistogramExt("geckohook_delivery_latency_seconds", ops.DurationBuckets)
	set.NewGauge("geckohook_hosts_throttled", func() float64 { return float64(d.hosts.throttled()) })
	set.NewGauge("geckohook_attempts_in_flight", func() float64 { return float64(d.hosts.inFlight()) })
}

// lagGauge registers the consumer lag of one of this process's partitions;
// the shard sets it after each fetch and unregisters it when it stops.
func (d *Dispatcher) lagGauge(partition int) (g *metrics.Gauge, name string) {
	name = `geckohook_consumer_lag{topic="` + d.o.Topic + `",partition="` + strconv.Itoa(partition) + `"}`
	return d.m.set.GetOrCreateGauge(name, nil), name
}

// observe records an attempt that took took and ended at answered: its
// duration by outcome and, for a first attempt the receiver answered, the
// time since the event was produced. It allocates nothing.
func (m *instruments) observe(dl *delivery, took time.Duration, answered time.Time) {
	if o := dl.res.Outcome; int(o) < len(m.attempt) && m.attempt[o] != nil {
		m.attempt[o].Update(took.Seconds())
	}
	if dl.produced != 0 && !dl.queued && dl.res.Status != 0 {
		m.latency.Update(float64(answered.UnixNano()-dl.produced) / 1e9)
	}
}
