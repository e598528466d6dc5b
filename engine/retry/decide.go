// Package retry decides, as pure code, what follows one delivery attempt:
// whether anything is written to the shard's retry queue (nothing, the
// record removed, another retry at a time, the dead set), which outcome is
// published for failure tracking, and whether the webhook is deleted. The
// dispatcher makes the attempt and carries the decision out; nothing here
// does I/O or reads a clock.
//
// The rules are the delivery contract's: a status 200-399 is delivered; a
// 410 Gone deletes the webhook; anything else is retried on Sidekiq's
// schedule (retry n waits n^4 + 15 + rand(10(n+1)) s) until MaxRetries,
// then the delivery is dead. A 429 or 503 with Retry-After only ever
// lengthens the wait the schedule gives (capped at MaxRetryAfter), and
// still spends a retry. Two cases spend no retry: a delivery deferred
// because its host is saturated (not attempted; the n-th deferral in a row
// waits like Sidekiq's retry n-1, capped at retry 5's 10m40s-11m40s), and
// one whose webhook was deleted meanwhile (dropped).
package retry

import (
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/outcomes"
)

// Result is what came of one turn of a delivery.
type Result uint8

// The results a delivery's turn can have.
const (
	// Delivered: the endpoint answered 200-399.
	Delivered Result = iota + 1
	// Gone: the endpoint answered 410 Gone.
	Gone
	// Failed: any other status, a timeout, a refused or reset connection,
	// a TLS error, or an address the outbound policy refused.
	Failed
	// Saturated: not attempted, its host is at its concurrency limit.
	Saturated
	// Deleted: not attempted, its webhook was deleted since.
	Deleted
	// Malformed: not attempted, a queued record geckohook cannot send.
	Malformed
)

// ResultOf maps a classified attempt to its Result.
func ResultOf(o contract.Outcome) Result {
	switch o {
	case contract.Success:
		return Delivered
	case contract.Gone:
		return Gone
	}
	return Failed
}

// Turn is how a delivery's turn ended.
type Turn struct {
	Result Result
	// At is when the turn ended (may be zero for Delivered and Deleted:
	// a healthy delivery reads no clock).
	At time.Time
	// RetryAfter is the wait a 429 or 503 asked for (0: none).
	RetryAfter time.Duration
}

// State is what the retry queue keeps of a delivery between attempts.
type State struct {
	// Queued: the delivery was claimed from the retry queue (false: its
	// first attempt, straight from Kafka, with nothing stored yet).
	Queued bool
	// Attempts made (1 after a failed first attempt; 0 if the first turn
	// was deferred).
	Attempts int
	// Retries taken from the queue: the n of Sidekiq's formula for the
	// next one.
	Retries int
	// Deferrals in a row since the last attempt.
	Deferrals int
	// FirstAttempt is when the first failure happened.
	FirstAttempt time.Time
}

// Write is what the retry queue must do with a delivery.
type Write uint8

// The writes a decision can ask for.
const (
	// Nothing: a first attempt needs no record (delivered, gone, or its
	// webhook deleted).
	Nothing Write = iota
	// Remove: a queued delivery is over; remove its record.
	Remove
	// Schedule the record (inserted on a first failure, updated on a
	// retry) due at Decision.At.
	Schedule
	// Kill: move the record to the dead set, dead since Decision.At.
	Kill
)

// Decision is what follows a turn.
type Decision struct {
	Write Write
	// At is when a Schedule is due, or when a Kill died.
	At time.Time
	// State is the record's state to store with Schedule or Kill (then
	// Queued).
	State State
	// Publish is the attempt's outcome, published at once (0: none).
	Publish outcomes.Kind
	// PublishWritten is published once the write is done: Dead after a
	// Kill that spent the last retry, Gone once the webhook's deletion is
	// done, and only by the turn whose delete removed it (0: none).
	PublishWritten outcomes.Kind
	// DeleteWebhook: the endpoint answered 410; delete the webhook.
	DeleteWebhook bool
	// RetryAfter: At was pushed back to the receiver's Retry-After.
	RetryAfter bool
	// Note: store this turn's time, status and error as the record's last
	// (every turn that is written, except a queued delivery's deferral,
	// which keeps the last attempt's).
	Note bool
}

// Policy holds the rules' settings.
type Policy struct {
	// MaxRetries before a delivery is dead; 0: none, a failure is dead at
	// once.
	MaxRetries int
	// Rand returns a uniform integer in [0, n), like math/rand/v2.IntN.
	Rand func(n int) int
	// MaxRetryAfter caps the wait a Retry-After can ask for; 0: Retry-After
	// is ignored.
	MaxRetryAfter time.Duration
}

// maxDeferralStep caps the deferral wait at Sidekiq's retry 5 (10m40s-11m40s): a host that comes back gets its backlog within minutes, and a
// dead one's is claimed at most every 11 minutes or so.
const maxDeferralStep = 5

// Deferral is how long the n-th deferral in a row (from 1) waits: as long as
// Sidekiq's retry n-1 (15-25 s, 16-35 s, 31-60 s, ...), at most retry 5's.
func Deferral(n int, randn func(int) int) time.Duration {
	return contract.RetryDelay(min(max(n-1, 0), maxDeferralStep), randn)
}

// Decide says what follows turn t of the delivery in state s.
func (p Policy) Decide(s State, t Turn) Decision {
	at := t.At
	switch t.Result {
	case Delivered:
		return Decision{Write: removeIf(s.Queued), Publish: outcomes.Success}
	case Gone:
		return Decision{Write: removeIf(s.Queued), PublishWritten: outcomes.Gone, DeleteWebhook: true}
	case Deleted:
		return Decision{Write: removeIf(s.Queued)}
	case Malformed:
		// Kept for inspection, never sent.
		return Decision{Write: Kill, At: at, State: s, Note: true}
	case Saturated:
		// A first turn's deferral is noted: it makes the record.
		note := !s.Queued
		s.Queued = true
		s.Deferrals++
		if s.FirstAttempt.IsZero() {
			s.FirstAttempt = at
		}
		return Decision{Write: Schedule, At: at.Add(Deferral(s.Deferrals, p.Rand)), State: s, Note: note}
	}
	// Failed: the first failure schedules retry 0, a retry's failure the
	// next one.
	n := 0
	if s.Queued {
		n = s.Retries + 1
		s.Retries++
	}
	s.Queued = true
	s.Attempts++
	s.Deferrals = 0
	if s.FirstAttempt.IsZero() {
		s.FirstAttempt = at
	}
	due, err := contract.NextAttempt(at, n, max(p.MaxRetries, 0), p.Rand)
	if err != nil {
		return Decision{Write: Kill, At: at, State: s, Publish: outcomes.Failure, PublishWritten: outcomes.Dead, Note: true}
	}
	d := Decision{Write: Schedule, At: due, State: s, Publish: outcomes.Failure, Note: true}
	if asked := at.Add(min(t.RetryAfter, p.MaxRetryAfter)); asked.After(due) {
		d.At, d.RetryAfter = asked, true
	}
	return d
}

func removeIf(queued bool) Write {
	if queued {
		return Remove
	}
	return Nothing
}
