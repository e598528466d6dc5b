package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/shard"
)

// beforeApply runs a function once, just before the first script that
// writes outcomes to the queue whose dead set is deadKey reaches Redis:
// after the writer read the leases it writes under.
type beforeApply struct {
	deadKey string
	armed   atomic.Pointer[func()]
	applies atomic.Int32 // scripts that wrote outcomes
}

func (h *beforeApply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *beforeApply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if (cmd.Name() != "evalsha" && cmd.Name() != "eval") || len(args) <= 4 || fmt.Sprint(args[4]) != h.deadKey {
			return next(ctx, cmd)
		}
		if f := h.armed.Swap(nil); f != nil {
			(*f)()
		}
		err := next(ctx, cmd)
		if err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT") {
			h.applies.Add(1)
		}
		return err
	}
}
func (h *beforeApply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A retry's outcome written just as the shard's own poller claims it
// again (it was made due while its attempt ran, as retry-now or DueBy
// do), or as the poller extends its lease, is written under the new
// lease: the delivery is not left claimed, to be sent again when that
// lease ends. The poller's claim of it under way when the outcome lands
// takes nothing. An outcome whose lease ran out, the delivery claimed by
// another process since, changes nothing and is logged.
func TestOutcomeRacingItsShardsClaimIsWritten(t *testing.T) {
	srv := testenv.Redis(t)
	ctx := context.Background()
	t0 := time.UnixMilli(1_700_000_000_000)
	const lease = 30 * time.Second
	cases := []struct {
		name string
		due  bool // made due while claimed
		// race runs between the writer's reading of the lease and its
		// write, given the shard and the queue on a client of its own;
		// it returns the records of a claim of the shard's still to be
		// taken, and the lease end another process holds (zero: none).
		race func(s *shardRun, q *shard.Queue) ([]*shard.Record, time.Time)
	}{
		{"claim under way", true, func(s *shardRun, q *shard.Queue) ([]*shard.Record, time.Time) {
			return claimFor(t, s, q, t0.Add(time.Second), lease), time.Time{}
		}},
		{"claim taken", true, func(s *shardRun, q *shard.Queue) ([]*shard.Record, time.Time) {
			takeAll(t, s, claimFor(t, s, q, t0.Add(time.Second), lease), t0.Add(time.Second+lease), false)
			return nil, time.Time{}
		}},
		{"extension under way", false, func(s *shardRun, q *shard.Queue) ([]*shard.Record, time.Time) {
			end := t0.Add(2 * lease)
			if err := q.Extend(ctx, s.claims.extending(end), end); err != nil {
				t.Fatal(err)
			}
			return nil, time.Time{}
		}},
		{"lease lost to another process", false, func(_ *shardRun, q *shard.Queue) ([]*shard.Record, time.Time) {
			at := t0.Add(lease + time.Second)
			if recs, _, _, err := q.Claim(ctx, at, at.Add(lease), 10); err != nil || len(recs) != 1 {
				t.Fatalf("another process's claim: %d records, %v", len(recs), err)
			}
			return nil, at.Add(lease)
		}},
		// The shard's next extension, after another process claimed the
		// delivery, moves nothing: the lease is still lost, and the
		// outcome must not be written again under the extension's end.
		{"lease lost to another process, then extended", false, func(s *shardRun, q *shard.Queue) ([]*shard.Record, time.Time) {
			at := t0.Add(lease + time.Second)
			if recs, _, _, err := q.Claim(ctx, at, at.Add(lease), 10); err != nil || len(recs) != 1 {
				t.Fatalf("another process's claim: %d records, %v", len(recs), err)
			}
			s.d = &Dispatcher{o: Options{Lease: lease, Now: func() time.Time { return at.Add(5 * time.Second) }}}
			s.extendLeases(ctx)
			return nil, at.Add(lease)
		}},
	}
	for p, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hook := &beforeApply{}
			rdb := srv.Client()
			rdb.AddHook(hook)
			var logs bytes.Buffer
			s := &shardRun{queue: shard.NewQueue(rdb, "gh:", "ev", p), log: zerolog.New(&logs), failLog: zerolog.New(&logs),
				claims: newClaims(4, ops.NewGauge(metrics.NewSet(), "geckohook_retries_in_flight"))}
			q := shard.NewQueue(srv.Client(), "gh:", "ev", p)
			hook.deadKey = q.DeadKey
			rec := &shard.Record{ID: "d1", WebhookID: "wh_1", Body: []byte("x"), Attempts: 1, FirstAttempt: t0, LastStatus: 500}
			if err := q.Schedule(ctx, []shard.Entry{{Rec: rec, Due: t0}}); err != nil {
				t.Fatal(err)
			}
			claimed := claimFor(t, s, q, t0, lease)
			takeAll(t, s, claimed, t0.Add(lease), true)
			if c.due {
				if n, err := q.DueBy(ctx, t0); err != nil || n != 1 {
					t.Fatalf("made %d due, %v; want the claimed one", n, err)
				}
			}

			var untaken []*shard.Record
			var other time.Time
			race := func() { untaken, other = c.race(s, q) }
			hook.armed.Store(&race)
			if !s.applyOps(ctx, []shard.Op{{Kind: shard.OpRemove, Rec: claimed[0]}}) {
				t.Fatal("the write gave up")
			}
			if hook.armed.Load() != nil {
				t.Fatal("the race never ran: the test tried nothing")
			}
			s.claims.done("d1") // the writer completes the delivery
			if untaken != nil {
				takeAll(t, s, untaken, t0.Add(time.Second+lease), false)
			}
			if s.claims.inFlight() != 0 {
				t.Fatalf("%d retries in flight, want none: the finished one was taken again", s.claims.inFlight())
			}

			_, due, err := q.Get(ctx, "d1")
			lost := strings.Contains(logs.String(), `"delivery":"d1"`)
			switch {
			case other.IsZero() && !errors.Is(err, shard.ErrNotFound):
				t.Fatalf("the delivery answered 2xx is still scheduled, due %v (%v): it would be sent again", due, err)
			case other.IsZero() && lost:
				t.Fatalf("an outcome written under the shard's own new lease was logged as lost: %s", logs.String())
			case !other.IsZero() && (err != nil || !due.Equal(other)):
				t.Fatalf("another process's claim: due %v (%v), want its lease end %v kept", due, err, other)
			case !other.IsZero() && !lost:
				t.Fatalf("a lost lease was not logged with the delivery id: %q", logs.String())
			}
			// Under the shard's own new lease the write is refused
			// once and made again; under a lost one, refused for good.
			if want := map[bool]int32{true: 2, false: 1}[other.IsZero()]; hook.applies.Load() != want {
				t.Fatalf("%d writes of the outcome, want %d", hook.applies.Load(), want)
			}
		})
	}
}

// claimFor claims what s's queue has due at at, as s's poller does, and
// leaves the claim under way.
func claimFor(t *testing.T, s *shardRun, q *shard.Queue, at time.Time, lease time.Duration) []*shard.Record {
	t.Helper()
	s.claims.claiming(at.Add(lease))
	recs, _, _, err := q.Claim(context.Background(), at, at.Add(lease), 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("claim at %v: %d records, %v", at, len(recs), err)
	}
	return recs
}

// takeAll takes a claim's records under leaseEnd, as s's poller does, and
// settles the claim; want is what each take must report.
func takeAll(t *testing.T, s *shardRun, recs []*shard.Record, leaseEnd time.Time, want bool) {
	t.Helper()
	for _, rec := range recs {
		if got := s.claims.take(rec.Lease(leaseEnd)); got != want {
			t.Fatalf("take %s: %v, want %v", rec.ID, got, want)
		}
	}
	s.claims.settled()
}

// An extension that finds a lease lost (another process claimed the
// delivery once it ran out) leaves that lease as it was: an outcome
// written after it, under the lease the shard holds, changes nothing.
func TestExtensionKeepsALostLeaseLost(t *testing.T) {
	ctx := context.Background()
	t0 := time.UnixMilli(1_700_000_000_000)
	const lease = 30 * time.Second
	s, claimed, logs := leasedRetry(t, nil, t0, lease)
	q := s.queue
	// The lease runs out; another process claims the delivery.
	at := t0.Add(lease + time.Second)
	if other, _, _, err := q.Claim(ctx, at, at.Add(lease), 10); err != nil || len(other) != 1 {
		t.Fatalf("another process's claim: %d records, %v", len(other), err)
	}
	now := at.Add(5 * time.Second)
	s.d = &Dispatcher{o: Options{Lease: lease, Now: func() time.Time { return now }}}
	s.extendLeases(ctx)
	if l, _ := s.claims.lease("d1"); !l.End.Equal(t0.Add(lease)) {
		t.Fatalf("the lost lease now ends %v, want %v: the extension moved nothing", l.End, t0.Add(lease))
	}
	if !s.applyOps(ctx, []shard.Op{{Kind: shard.OpRemove, Rec: claimed}}) {
		t.Fatal("the write gave up")
	}
	if _, due, err := q.Get(ctx, "d1"); err != nil || !due.Equal(at.Add(lease)) {
		t.Fatalf("another process's claim: due %v (%v), want its lease end %v kept", due, err, at.Add(lease))
	}
	if !strings.Contains(logs.String(), `"delivery":"d1"`) {
		t.Fatalf("a lost lease was not logged with the delivery id: %q", logs.String())
	}
}

// lostScriptReply, once armed, fails on the client the next script match
// picks, after Redis ran it, as a reply lost to a timeout does.
type lostScriptReply struct {
	armed atomic.Bool
	match func(args []any) bool
}

// isExtension picks a script on one key (KEYS[1] only): a lease extension.
func isExtension(args []any) bool { return len(args) >= 3 && fmt.Sprint(args[2]) == "1" }

// isClaim picks a claim: a script on four keys, the fourth the metadata.
func isClaim(args []any) bool {
	return len(args) >= 5 && fmt.Sprint(args[2]) == "4" && strings.HasSuffix(fmt.Sprint(args[4]), ":hm")
}

func (h *lostScriptReply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *lostScriptReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if (cmd.Name() != "evalsha" && cmd.Name() != "eval") || !h.match(cmd.Args()) {
			return next(ctx, cmd)
		}
		err := next(ctx, cmd)
		if err == nil && h.armed.Swap(false) {
			err = errors.New("i/o timeout")
			cmd.SetErr(err)
		}
		return err
	}
}
func (h *lostScriptReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// leasedRetry schedules one retry (d1) on a shard whose Redis client runs
// hook (if any), and claims and takes it under a lease from t0.
func leasedRetry(t *testing.T, hook redis.Hook, t0 time.Time, lease time.Duration) (*shardRun, *shard.Record, *bytes.Buffer) {
	t.Helper()
	rdb := testenv.Redis(t).Client()
	if hook != nil {
		rdb.AddHook(hook)
	}
	logs := &bytes.Buffer{}
	s := &shardRun{queue: shard.NewQueue(rdb, "gh:", "ev", 0), log: zerolog.New(logs), failLog: zerolog.New(logs),
		claims: newClaims(4, ops.NewGauge(metrics.NewSet(), "geckohook_retries_in_flight"))}
	rec := &shard.Record{ID: "d1", WebhookID: "wh_1", Body: []byte("x"), Attempts: 1, FirstAttempt: t0, LastStatus: 500}
	if err := s.queue.Schedule(context.Background(), []shard.Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	claimed := claimFor(t, s, s.queue, t0, lease)
	takeAll(t, s, claimed, t0.Add(lease), true)
	return s, claimed[0], logs
}

// An extension whose reply is lost may have moved the leases all the
// same: the poller's next claim and extension leave the shard holding
// them, and the outcome of the attempt applies.
func TestOutcomeAppliesAfterAnExtensionsReplyIsLost(t *testing.T) {
	ctx := context.Background()
	t0 := time.UnixMilli(1_700_000_000_000)
	const lease = 30 * time.Second
	hook := &lostScriptReply{match: isExtension}
	s, claimed, logs := leasedRetry(t, hook, t0, lease)
	q := s.queue
	now := t0.Add(10 * time.Second)
	s.d = &Dispatcher{o: Options{Lease: lease, Now: func() time.Time { return now }}}
	hook.armed.Store(true)
	s.extendLeases(ctx) // moves the lease, but the reply is lost
	if hook.armed.Load() {
		t.Fatal("no extension reply was lost: the test tried nothing")
	}
	// The poller claims next (nothing is due), then extends again.
	now = now.Add(time.Second)
	s.claims.claiming(now.Add(lease))
	if recs, _, _, err := q.Claim(ctx, now, now.Add(lease), 4); err != nil || len(recs) != 0 {
		t.Fatalf("claim: %d records, %v; want none", len(recs), err)
	}
	s.claims.settled()
	now = now.Add(10 * time.Second)
	s.extendLeases(ctx)
	if !s.applyOps(ctx, []shard.Op{{Kind: shard.OpRemove, Rec: claimed}}) {
		t.Fatal("the write gave up")
	}
	if _, due, err := q.Get(ctx, "d1"); !errors.Is(err, shard.ErrNotFound) {
		t.Fatalf("the delivery answered 2xx is still scheduled, due %v (%v): it would be sent again; log: %s", due, err, logs.String())
	}
}

// A claim whose reply is lost may have re-leased a retry in flight (made
// due while its attempt ran), which the claim tried again then does not
// return: the poller makes that lease known before it forgets the
// claim's, and the attempt's outcome applies instead of the delivery
// going out again when that lease ends.
func TestOutcomeAppliesAfterAClaimsReplyIsLost(t *testing.T) {
	ctx := context.Background()
	t0 := time.UnixMilli(1_700_000_000_000)
	const lease = 30 * time.Second
	hook := &lostScriptReply{match: isClaim}
	s, claimed, logs := leasedRetry(t, hook, t0, lease)
	q := s.queue
	if n, err := q.DueBy(ctx, t0); err != nil || n != 1 {
		t.Fatalf("made %d due, %v; want the claimed one", n, err)
	}
	now := t0.Add(time.Second)
	s.d = &Dispatcher{o: Options{Lease: lease, PollEvery: time.Hour, Now: func() time.Time { return now }}}
	hook.armed.Store(true)
	pctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { s.pollLoop(pctx); close(stopped) }()
	for deadline := time.Now().Add(10 * time.Second); s.claims.wakeAtMs.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the poller never finished its claim")
		}
	}
	cancel()
	<-stopped
	if hook.armed.Load() {
		t.Fatal("no claim reply was lost: the test tried nothing")
	}
	if !s.applyOps(ctx, []shard.Op{{Kind: shard.OpRemove, Rec: claimed}}) {
		t.Fatal("the write gave up")
	}
	if _, due, err := q.Get(ctx, "d1"); !errors.Is(err, shard.ErrNotFound) {
		t.Fatalf("the delivery answered 2xx is still scheduled, due %v (%v): it would be sent again; log: %s", due, err, logs.String())
	}
}
