package dispatch

import (
	"bytes"
	"fmt"
	"sync/atomic"
)

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
