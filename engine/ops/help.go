package ops

import (
	"bytes"
	"io"
)

// Help describes every geckohook metric family, for the "# HELP" lines of
// /metrics (the library writes them without text). A family missing here
// keeps a bare "# HELP" line.
var Help = map[string]string{
	// Dispatcher.
	"geckohook_events_total":                 "Events read from the events topic.",
	"geckohook_dead_letters_total":           "Events written to the dead-letter topic.",
	"geckohook_deliveries_total":             "Deliveries by outcome (failure includes those deferred without an attempt; dropped: webhook deleted before sending).",
	"geckohook_retries_scheduled_total":      "Failed deliveries written to the Redis retry queues.",
	"geckohook_retries_claimed_total":        "Deliveries claimed from the Redis retry queues for another attempt.",
	"geckohook_deliveries_dead_total":        "Deliveries moved to a dead set after their last retry.",
	"geckohook_shards":                       "Partitions this process holds.",
	"geckohook_attempt_duration_seconds":     "Duration of one HTTP delivery attempt, by outcome (success, failure, gone).",
	"geckohook_delivery_latency_seconds":     "Time from the event's Kafka record timestamp to the receiver's answer, for first attempts the receiver answered.",
	"geckohook_consumer_lag":                 "Offsets not read yet, by topic and partition: a dispatcher's partitions as of their last fetch, the coordinator group's outcomes partitions as of its last lag check.",
	"geckohook_hosts_throttled":              "Webhook hosts held back by the dispatcher: concurrency cut by failures and not recovered, or no answer to attempts in flight for a second.",
	"geckohook_offset_commit_failures_total": "Dispatcher offset commits that failed; the next commit retries.",
	"geckohook_outcomes_total":               "Outcomes for failure tracking, by fate (published to Kafka, dropped: buffer full or write failed, filtered: success of a healthy webhook).",
	// Coordinator and mail.
	"geckohook_coordinator_outcomes_total":        "Outcome records applied (bad: unreadable, skipped).",
	"geckohook_webhooks_deleted_total":            "Webhooks deleted by the coordinator, by reason.",
	"geckohook_coordinator_caught_up":             "1 when the last lag check found every outcome applied.",
	"geckohook_coordinator_commit_failures_total": "Outcome offset commits that failed; they are retried with backoff until they succeed.",
	"geckohook_health_conflicts_total":            "Health updates re-read because another coordinator wrote first.",
	"geckohook_digests_total":                     "Daily digests by result (failed: tries that will be retried or given up).",
	"geckohook_digest_days_skipped_total":         "Mail days never mailed because their records expired before the coordinators' watermark reached them.",
	"geckohook_coordinator_watermark_age_seconds": "How far the coordinators' catch-up watermark is behind the clock (-1: none yet); the daily mail and the 3-day rule wait for it.",
	// Every role.
	"geckohook_api_requests_total":     "API requests answered, by route and status code.",
	"geckohook_retry_queue_deliveries": "Deliveries in the Redis retry queues of every shard, by state.",
	"geckohook_registry_applications":  "Applications in this process's copy of the registry.",
	"geckohook_registry_webhooks":      "Webhooks in this process's copy of the registry.",
	"geckohook_redis_up":               "1 when the last Redis ping of this process was answered.",
}

// writeWithHelp copies a page of Prometheus text to w, giving each bare
// "# HELP name" line its text from Help.
func writeWithHelp(w io.Writer, page []byte) {
	const tag = "# HELP "
	for len(page) > 0 {
		line, rest, _ := bytes.Cut(page, []byte{'\n'})
		page = rest
		if name, ok := bytes.CutPrefix(line, []byte(tag)); ok && bytes.IndexByte(name, ' ') < 0 {
			if text := Help[string(name)]; text != "" {
				_, _ = io.WriteString(w, tag+string(name)+" "+text+"\n")
				continue
			}
		}
		_, _ = w.Write(line)
		_, _ = w.Write([]byte{'\n'})
	}
}
