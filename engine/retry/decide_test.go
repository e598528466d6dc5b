package retry

import (
	"errors"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/outcomes"
)

var at = time.Unix(1_800_000_000, 0)

// top makes rand(k) return k-1, the longest wait Sidekiq's formula allows.
func top(n int) int { return n - 1 }

// sidekiq is the longest wait of retry n: n^4 + 15 + 10(n+1) - 1 seconds.
func sidekiq(n int) time.Duration {
	return time.Duration(n*n*n*n+15+10*(n+1)-1) * time.Second
}

// Every case of the delivery contract, from an answer (or its absence) to
// what is written, published and deleted.
func TestDecide(t *testing.T) {
	p := Policy{MaxRetries: 25, Rand: top}
	first := State{}
	retry3 := State{Queued: true, Attempts: 4, Retries: 3, FirstAttempt: at.Add(-time.Hour)}
	last := State{Queued: true, Attempts: 25, Retries: 24, FirstAttempt: at.Add(-time.Hour)}
	refused := errors.New("refused_target: address not allowed")
	timeout := errors.New("timeout: no answer within 10s")
	type turn struct {
		status int
		err    error
		result Result // when set, the turn had no attempt
	}
	for _, c := range []struct {
		name string
		p    Policy
		s    State
		turn turn
		want Decision
	}{
		{"2xx first", p, first, turn{status: 200}, Decision{Publish: outcomes.Success}},
		{"3xx first (redirects are never followed)", p, first, turn{status: 302}, Decision{Publish: outcomes.Success}},
		{"2xx on a retry", p, retry3, turn{status: 204}, Decision{Write: Remove, Publish: outcomes.Success}},
		{"410 first", p, first, turn{status: 410}, Decision{PublishWritten: outcomes.Gone, DeleteWebhook: true}},
		{"410 on a retry", p, retry3, turn{status: 410}, Decision{Write: Remove, PublishWritten: outcomes.Gone, DeleteWebhook: true}},
		{"4xx first", p, first, turn{status: 404}, Decision{Write: Schedule, At: at.Add(sidekiq(0)),
			State: State{Queued: true, Attempts: 1, FirstAttempt: at}, Publish: outcomes.Failure, Note: true}},
		{"5xx first", p, first, turn{status: 503}, Decision{Write: Schedule, At: at.Add(sidekiq(0)),
			State: State{Queued: true, Attempts: 1, FirstAttempt: at}, Publish: outcomes.Failure, Note: true}},
		{"timeout first", p, first, turn{err: timeout}, Decision{Write: Schedule, At: at.Add(sidekiq(0)),
			State: State{Queued: true, Attempts: 1, FirstAttempt: at}, Publish: outcomes.Failure, Note: true}},
		{"refused target first", p, first, turn{err: refused}, Decision{Write: Schedule, At: at.Add(sidekiq(0)),
			State: State{Queued: true, Attempts: 1, FirstAttempt: at}, Publish: outcomes.Failure, Note: true}},
		{"5xx on retry 3 schedules retry 4", p, retry3, turn{status: 500}, Decision{Write: Schedule, At: at.Add(sidekiq(4)),
			State: State{Queued: true, Attempts: 5, Retries: 4, FirstAttempt: retry3.FirstAttempt}, Publish: outcomes.Failure, Note: true}},
		{"last retry fails: dead", p, last, turn{status: 500}, Decision{Write: Kill, At: at,
			State:   State{Queued: true, Attempts: 26, Retries: 25, FirstAttempt: last.FirstAttempt},
			Publish: outcomes.Failure, PublishWritten: outcomes.Dead, Note: true}},
		{"saturated host first: deferred, no attempt", p, first, turn{result: Saturated}, Decision{Write: Schedule,
			At: at.Add(sidekiq(0)), State: State{Queued: true, Deferrals: 1, FirstAttempt: at}, Note: true}},
		{"saturated host on a retry: no retry spent", p, retry3, turn{result: Saturated}, Decision{Write: Schedule,
			At: at.Add(sidekiq(0)), State: State{Queued: true, Attempts: 4, Retries: 3, Deferrals: 1, FirstAttempt: retry3.FirstAttempt}}},
		{"saturated host, last retry: still no retry spent", p, last, turn{result: Saturated}, Decision{Write: Schedule,
			At: at.Add(sidekiq(0)), State: State{Queued: true, Attempts: 25, Retries: 24, Deferrals: 1, FirstAttempt: last.FirstAttempt}}},
		{"deleted webhook first", p, first, turn{result: Deleted}, Decision{}},
		{"deleted webhook on a retry", p, retry3, turn{result: Deleted}, Decision{Write: Remove}},
		{"malformed record", p, retry3, turn{result: Malformed}, Decision{Write: Kill, At: at, State: retry3, Note: true}},
		{"--max-retries 0: first failure dead", Policy{Rand: top}, first, turn{status: 500}, Decision{Write: Kill, At: at,
			State: State{Queued: true, Attempts: 1, FirstAttempt: at}, Publish: outcomes.Failure, PublishWritten: outcomes.Dead, Note: true}},
		{"--max-retries 0: a replayed dead delivery dies at its next failure", Policy{Rand: top}, State{Queued: true, Attempts: 26, FirstAttempt: at},
			turn{status: 500}, Decision{Write: Kill, At: at, State: State{Queued: true, Attempts: 27, Retries: 1, FirstAttempt: at},
				Publish: outcomes.Failure, PublishWritten: outcomes.Dead, Note: true}},
		{"--max-retries 0: a success is still delivered", Policy{Rand: top}, first, turn{status: 200}, Decision{Publish: outcomes.Success}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := c.turn.result
			if r == 0 {
				r = ResultOf(contract.Classify(c.turn.status, c.turn.err))
			}
			if got := c.p.Decide(c.s, Turn{Result: r, At: at}); got != c.want {
				t.Fatalf("Decide(%+v, %d)\n got %+v\nwant %+v", c.s, r, got, c.want)
			}
		})
	}
}

// A whole lifetime: retry n waits n^4 + 15 + rand(10(n+1)) s, the 25th
// retry's failure is dead.
func TestDecideFollowsSidekiqsSchedule(t *testing.T) {
	p := Policy{MaxRetries: contract.DefaultMaxRetries, Rand: top}
	d := p.Decide(State{}, Turn{Result: Failed, At: at})
	for n := 0; n < contract.DefaultMaxRetries; n++ {
		if d.Write != Schedule || !d.At.Equal(at.Add(sidekiq(n))) || d.State.Retries != n || d.State.Attempts != n+1 {
			t.Fatalf("before retry %d: %+v, want due %v", n, d, at.Add(sidekiq(n)))
		}
		d = p.Decide(d.State, Turn{Result: Failed, At: at})
	}
	if d.Write != Kill || d.PublishWritten != outcomes.Dead || d.State.Attempts != 26 {
		t.Fatalf("25th retry failed: %+v, want dead after 26 attempts", d)
	}
}

// Deferrals in a row wait like retries 0, 1, 2, ... (capped at retry 5)
// without spending one; an attempt starts the count again.
func TestDeferralsGrowAndReset(t *testing.T) {
	p := Policy{MaxRetries: 25, Rand: top}
	s := State{Queued: true, Attempts: 1, Retries: 2, FirstAttempt: at}
	for n := 1; n <= 30; n++ {
		d := p.Decide(s, Turn{Result: Saturated, At: at})
		m := min(n-1, maxDeferralStep)
		if d.Write != Schedule || !d.At.Equal(at.Add(sidekiq(m))) || d.State.Deferrals != n || d.State.Retries != 2 || d.State.Attempts != 1 {
			t.Fatalf("deferral %d: %+v, want due %v", n, d, at.Add(sidekiq(m)))
		}
		s = d.State
	}
	if d := p.Decide(s, Turn{Result: Failed, At: at}); d.State.Deferrals != 0 || d.State.Retries != 3 {
		t.Fatalf("an attempt after deferrals: %+v, want deferrals reset and retry 3", d.State)
	}
}

func BenchmarkDecide(b *testing.B) {
	p := Policy{MaxRetries: 25, Rand: top}
	s := State{Queued: true, Attempts: 4, Retries: 3, FirstAttempt: at}
	b.ReportAllocs()
	for b.Loop() {
		_ = p.Decide(s, Turn{Result: Failed, At: at})
	}
}

// A 429 or 503 with Retry-After: the later of Sidekiq's schedule and the
// receiver's ask, capped; a retry is spent either way.
func TestDecideHonoursRetryAfter(t *testing.T) {
	p := Policy{MaxRetries: 25, Rand: top, MaxRetryAfter: 6 * time.Hour}
	retry3 := State{Queued: true, Attempts: 4, Retries: 3, FirstAttempt: at}
	spent := State{Queued: true, Attempts: 5, Retries: 4, FirstAttempt: at}
	for _, c := range []struct {
		name       string
		p          Policy
		s          State
		retryAfter time.Duration
		due        time.Time
		asked      bool
	}{
		{"longer than the schedule", p, retry3, 2 * time.Hour, at.Add(2 * time.Hour), true},
		{"shorter than the schedule", p, retry3, time.Minute, at.Add(sidekiq(4)), false},
		{"capped", p, retry3, 30 * 24 * time.Hour, at.Add(6 * time.Hour), true},
		{"none", p, retry3, 0, at.Add(sidekiq(4)), false},
		{"ignored when the cap is 0", Policy{MaxRetries: 25, Rand: top}, retry3, 2 * time.Hour, at.Add(sidekiq(4)), false},
	} {
		d := c.p.Decide(c.s, Turn{Result: Failed, At: at, RetryAfter: c.retryAfter})
		if d.Write != Schedule || !d.At.Equal(c.due) || d.RetryAfter != c.asked || d.State != spent || d.Publish != outcomes.Failure {
			t.Errorf("%s: %+v, want due %v (retry after: %v) with a retry spent", c.name, d, c.due, c.asked)
		}
	}
	// The last retry still dies: Retry-After asks for time, not for retries.
	last := State{Queued: true, Attempts: 25, Retries: 24, FirstAttempt: at}
	if d := p.Decide(last, Turn{Result: Failed, At: at, RetryAfter: time.Hour}); d.Write != Kill {
		t.Errorf("last retry with Retry-After: %+v, want dead", d)
	}
}
