package shard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/embedded"
	"github.com/geckohook/geckohook/internal/testenv"
)

func TestQueueScheduleIsInsertIfAbsent(t *testing.T) {
	srv := testenv.Redis(t)
	ctx := context.Background()
	q := NewQueue(srv.Client(), "gh:", "geckohook.events", 3)
	if q.ChunksKey != "gh:{geckohook.events-3}:chunks" || q.chunkKey("wh_1", "0") != "gh:{geckohook.events-3}:q:wh_1:0" {
		t.Fatalf("keys %s %s do not follow the layout", q.ChunksKey, q.chunkKey("wh_1", "0"))
	}
	t0 := time.UnixMilli(1_700_000_000_000)
	rec := &Record{ID: "d1", WebhookID: "wh_1", Body: []byte(`{"a":1}`), Attempts: 1, FirstAttempt: t0, LastStatus: 500, LastError: "HTTP 500"}
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0.Add(20 * time.Second)}}); err != nil {
		t.Fatal(err)
	}
	// A replay of the same delivery must not reset the existing record.
	replay := *rec
	replay.Attempts, replay.LastStatus = 1, 503
	if err := q.Schedule(ctx, []Entry{{Rec: &replay, Due: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	got, due, err := q.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if got.LastStatus != 500 || string(got.Body) != `{"a":1}` || !got.FirstAttempt.Equal(t0) {
		t.Fatalf("record = %+v", got)
	}
	if !due.Equal(t0.Add(20 * time.Second)) {
		t.Fatalf("due %v, want %v", due, t0.Add(20*time.Second))
	}
	if n, _ := q.Len(ctx); n != 1 {
		t.Fatalf("queue length %d, want 1", n)
	}
	if err := q.Schedule(ctx, []Entry{{Rec: &Record{ID: "d2"}, Due: t0, Dead: true}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := q.GetDead(ctx, "d2"); err != nil {
		t.Fatalf("dead entry: %v", err)
	}
	if n, _ := q.Len(ctx); n != 1 {
		t.Fatalf("dead entry landed in the due set (len %d)", n)
	}
}

func TestQueueClaimLeaseOutcomesAndReplay(t *testing.T) {
	queueLife(t, testenv.Redis(t).Client())
}

// The embedded Redis of `make run` (miniredis, whose Lua is gopher-lua)
// runs the same scripts.
func TestQueueOnEmbeddedRedis(t *testing.T) {
	m, err := embedded.StartRedis("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	queueLife(t, rdb)
}

func queueLife(t *testing.T, rdb *redis.Client) {
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	st := NewStore(rdb, "gh:")
	if err := st.Register(ctx, "ev", 0); err != nil {
		t.Fatal(err)
	}
	t0 := time.UnixMilli(1_700_000_000_000)
	mk := func(id string) *Record {
		return &Record{ID: id, WebhookID: "wh_1", AppID: "app_1", Body: []byte(id), Attempts: 1, FirstAttempt: t0, LastStatus: 500}
	}
	if err := q.Schedule(ctx, []Entry{
		{Rec: mk("a"), Due: t0.Add(10 * time.Second)},
		{Rec: mk("b"), Due: t0.Add(20 * time.Second)},
		{Rec: mk("c"), Due: t0.Add(100 * time.Second)},
	}); err != nil {
		t.Fatal(err)
	}
	// ids names claimed records in id order (a claim takes those due at
	// one time in any order).
	ids := func(recs []*Record) string {
		slices.SortFunc(recs, func(a, b *Record) int { return strings.Compare(a.ID, b.ID) })
		var s string
		for _, r := range recs {
			s += r.ID
		}
		return s
	}
	lease := 30 * time.Second
	claim := func(at time.Time) ([]*Record, time.Time) {
		t.Helper()
		recs, bad, next, err := q.Claim(ctx, at, at.Add(lease), 10)
		if err != nil || len(bad) != 0 {
			t.Fatalf("claim: %v, bad records %v", err, bad)
		}
		return recs, next
	}

	recs, next := claim(t0)
	if len(recs) != 0 || !next.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("claim before anything is due: %q next %v", ids(recs), next)
	}
	recs, next = claim(t0.Add(25 * time.Second))
	if ids(recs) != "ab" || !next.Equal(t0.Add(55*time.Second)) {
		t.Fatalf("claim at +25s got %q next %v; want ab, next at the lease end +55s", ids(recs), next)
	}
	if string(recs[0].Body) != "a" || recs[0].LastStatus != 500 {
		t.Fatalf("claimed record %+v", recs[0])
	}
	if recs, _ = claim(t0.Add(50 * time.Second)); len(recs) != 0 {
		t.Fatalf("leased deliveries claimed again before the lease ended: %q", ids(recs))
	}
	// The claimer died: its lease runs out and the deliveries come back.
	recs, _ = claim(t0.Add(56 * time.Second))
	if ids(recs) != "ab" {
		t.Fatalf("after the lease ended got %q, want ab", ids(recs))
	}

	// a delivered; b failed again; c dies.
	b := recs[1]
	b.Attempts, b.Retries, b.LastStatus = 2, 1, 503
	c := mk("c")
	c.Deferrals = 3
	if err := q.Apply(ctx, []Op{
		{Kind: OpRemove, Rec: recs[0]},
		{Kind: OpReschedule, Rec: b, At: t0.Add(200 * time.Second)},
		{Kind: OpKill, Rec: c, At: t0.Add(60 * time.Second)},
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := q.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delivered a still stored: %v", err)
	}
	got, due, err := q.Get(ctx, "b")
	if err != nil || got.LastStatus != 503 || got.Retries != 1 || !due.Equal(t0.Add(200*time.Second)) {
		t.Fatalf("rescheduled b = %+v due %v err %v", got, due, err)
	}
	if _, died, err := q.GetDead(ctx, "c"); err != nil || !died.Equal(t0.Add(60*time.Second)) {
		t.Fatalf("dead c: died %v err %v", died, err)
	}
	if n, _ := q.Len(ctx); n != 1 {
		t.Fatalf("due set holds %d, want 1 (b)", n)
	}

	// The webhook's listing, both states, through the store.
	sched, err := st.List(ctx, "wh_1", Scheduled, 100)
	if err != nil || len(sched) != 1 || sched[0].ID != "b" || !sched[0].At.Equal(t0.Add(200*time.Second)) {
		t.Fatalf("scheduled list %+v err %v", sched, err)
	}
	dead, err := st.List(ctx, "wh_1", Dead, 100)
	if err != nil || len(dead) != 1 || dead[0].ID != "c" || dead[0].State != Dead {
		t.Fatalf("dead list %+v err %v", dead, err)
	}
	if other, _ := st.List(ctx, "wh_2", Scheduled, 100); len(other) != 0 {
		t.Fatalf("another webhook's list holds %d", len(other))
	}
	if depths, err := st.WebhookDepths(ctx, []string{"wh_1", "wh_2"}); err != nil || depths["wh_1"] != 2 || depths["wh_2"] != 0 {
		t.Fatalf("webhook depths %v err %v, want wh_1 2 (b scheduled, c dead) and wh_2 0", depths, err)
	}

	// Find by id, retry now, replay the dead.
	found, fq, err := st.Find(ctx, "c")
	if err != nil || found.State != Dead || fq.Shard != "ev-0" {
		t.Fatalf("find c: %+v err %v", found, err)
	}
	if found, fq, err := st.Find(ctx, "b"); err != nil || found.State != Scheduled || found.ID != "b" || fq.Shard != "ev-0" ||
		!found.At.Equal(t0.Add(200*time.Second)) || found.LastStatus != 503 {
		t.Fatalf("find b: %+v err %v", found, err)
	}
	if _, _, err := st.Find(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("find of an unknown id: %v", err)
	}
	now := t0.Add(70 * time.Second)
	bnow, _, err := q.Get(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := q.RetryNow(ctx, bnow, now); err != nil || !ok {
		t.Fatalf("retry now b: %v %v", ok, err)
	}
	if ok, _ := q.RetryNow(ctx, found.Record, now); ok {
		t.Fatal("retry now of a dead delivery must go through Revive")
	}
	n, err := st.ReviveWebhook(ctx, "wh_1", now)
	if err != nil || n != 1 {
		t.Fatalf("revived %d err %v, want 1", n, err)
	}
	recs, _ = claim(now)
	if ids(recs) != "bc" {
		t.Fatalf("after retry-now and replay, claim got %q, want bc", ids(recs))
	}
	if recs[1].Retries != 0 || recs[1].Deferrals != 0 || recs[1].Attempts != 1 {
		t.Fatalf("a replayed dead delivery starts its schedule again: %+v", recs[1])
	}
	if dl, _ := q.DeadLen(ctx); dl != 0 {
		t.Fatalf("dead set holds %d after replay", dl)
	}
	if dead, _ := st.List(ctx, "wh_1", Dead, 100); len(dead) != 0 {
		t.Fatalf("dead index still lists %d", len(dead))
	}
	// A stopping shard gives its unfinished claims back at once, by the
	// lease end it holds; a delivery whose outcome was written meanwhile
	// (its score is no longer that lease end) keeps its new due time.
	leaseEnd := now.Add(lease)
	c2 := recs[1]
	if err := q.Apply(ctx, []Op{{Kind: OpReschedule, Rec: c2, At: now.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	gone := mk("gone")
	gone.member, _ = q.memberOf(gone)
	stale := []Lease{recs[0].Lease(leaseEnd), recs[1].Lease(leaseEnd), gone.Lease(leaseEnd)}
	if held, err := q.ExtendHeld(ctx, stale, leaseEnd.Add(time.Minute)); err != nil || !slices.Equal(held, []int{0}) {
		t.Fatalf("extended leases %v (%v), want only b's, the first", held, err)
	}
	if _, due, _ := q.Get(ctx, "c"); !due.Equal(now.Add(time.Hour)) {
		t.Fatalf("an extension moved a written outcome: c due %v, want %v", due, now.Add(time.Hour))
	}
	if _, due, _ := q.Get(ctx, "b"); !due.Equal(leaseEnd.Add(time.Minute)) {
		t.Fatalf("b's lease not extended: due %v", due)
	}
	stale[0].End = leaseEnd.Add(time.Minute)
	if err := q.Release(ctx, stale, now); err != nil {
		t.Fatal(err)
	}
	if recs, _ = claim(now); ids(recs) != "b" {
		t.Fatalf("released claims: %q, want only b", ids(recs))
	}
	if n, _ := q.Len(ctx); n != 2 {
		t.Fatalf("release added an unknown id: due set holds %d", n)
	}

	// A record geckohook cannot read is claimed once and quarantined as it
	// is, without holding up the others.
	if err := rdb.ZAdd(ctx, q.chunkKey("wh_1", "0"), redis.Z{Score: 1, Member: "\xc1garbage"}).Err(); err != nil {
		t.Fatal(err)
	}
	good, bad, _, err := q.Claim(ctx, now.Add(2*time.Hour), now.Add(3*time.Hour), 10)
	if err != nil || len(bad) != 1 || bad[0].Hook != "wh_1" || ids(good) != "bc" {
		t.Fatalf("claim with an unreadable record: good %q bad %v err %v", ids(good), bad, err)
	}
	if err := q.Quarantine(ctx, bad[0], now); err != nil {
		t.Fatal(err)
	}
	if raw, err := rdb.HGet(ctx, q.DeadData, bad[0].ID()).Result(); err != nil || raw != "\xc1garbage" {
		t.Fatalf("quarantined bytes %q %v", raw, err)
	}
	if _, err := rdb.ZScore(ctx, q.chunkKey("wh_1", "0"), "\xc1garbage").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("quarantined record still due: %v", err)
	}
	if n, _ := q.Len(ctx); n != 2 {
		t.Fatalf("after the quarantine %d scheduled, want 2", n)
	}
}

func TestTrimDeadKeepsRetentionAndLength(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	st := NewStore(rdb, "gh:")
	if err := st.Register(ctx, "ev", 0); err != nil {
		t.Fatal(err)
	}
	t0 := time.UnixMilli(1_700_000_000_000)
	var ops []Op
	for i := 0; i < 600; i++ {
		rec := &Record{ID: fmt.Sprintf("d%03d", i), WebhookID: fmt.Sprintf("wh_%d", i%2), FirstAttempt: t0}
		ops = append(ops, Op{Kind: OpKill, Rec: rec, At: t0.Add(time.Duration(i) * time.Minute)})
	}
	if err := q.Apply(ctx, ops); err != nil {
		t.Fatal(err)
	}
	// Older than the cutoff: the first 100 go.
	n, err := q.TrimDead(ctx, t0.Add(100*time.Minute), 10000)
	if err != nil || n != 100 {
		t.Fatalf("trimmed %d by age (%v), want 100", n, err)
	}
	// Beyond the length: the oldest 450 of the 500 left go, over more than
	// one round of 500.
	n, err = q.TrimDead(ctx, t0, 50)
	if err != nil || n != 450 {
		t.Fatalf("trimmed %d by length (%v), want 450", n, err)
	}
	if l, _ := q.DeadLen(ctx); l != 50 {
		t.Fatalf("dead set holds %d, want 50", l)
	}
	if h, _ := rdb.HLen(ctx, q.DeadData).Result(); h != 50 {
		t.Fatalf("dead records left: %d, want 50", h)
	}
	var indexed int64
	for _, w := range []string{"wh_0", "wh_1"} {
		c, _ := rdb.ZCard(ctx, q.deadHookKey(w)).Result()
		indexed += c
	}
	if indexed != 50 {
		t.Fatalf("dead index entries left: %d, want 50", indexed)
	}
	if _, _, err := q.GetDead(ctx, "d549"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("d549 should be trimmed: %v", err)
	}
	if _, _, err := q.GetDead(ctx, "d550"); err != nil {
		t.Fatalf("d550 should be kept: %v", err)
	}
}

// A claimant whose lease ran out (another claimed the delivery since and
// wrote its outcome) changes nothing: no second record, no lost outcome.
func TestLateClaimantChangesNothing(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	rec := &Record{ID: "d1", WebhookID: "wh_1", Body: []byte("x"), Attempts: 1, FirstAttempt: t0, LastStatus: 500}
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	claim := func(at time.Time) *Record {
		t.Helper()
		recs, _, _, err := q.Claim(ctx, at, at.Add(30*time.Second), 10)
		if err != nil || len(recs) != 1 {
			t.Fatalf("claim at %v: %d records, %v", at, len(recs), err)
		}
		return recs[0]
	}
	late := claim(t0)
	first := claim(t0.Add(31 * time.Second)) // late's lease ran out
	first.Attempts, first.Retries = 2, 1
	if err := q.Apply(ctx, []Op{{Kind: OpReschedule, Rec: first, At: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []OpKind{OpReschedule, OpKill, OpRemove} {
		stale := *late
		stale.Attempts = 7
		if err := q.Apply(ctx, []Op{{Kind: kind, Rec: &stale, At: t0.Add(time.Minute)}}); err != nil {
			t.Fatal(err)
		}
		got, due, err := q.Get(ctx, "d1")
		if err != nil || got.Attempts != 2 || !due.Equal(t0.Add(time.Hour)) {
			t.Fatalf("after a late claimant's op %d: %+v due %v (%v), want the first claimant's outcome", kind, got, due, err)
		}
		if n, _ := q.Len(ctx); n != 1 {
			t.Fatalf("after a late claimant's op %d: %d scheduled, want 1", kind, n)
		}
		if n, _ := q.DeadLen(ctx); n != 0 {
			t.Fatalf("after a late claimant's op %d: %d dead, want 0", kind, n)
		}
	}
}

// A claimant whose lease ran out changes nothing while the next claimant's
// attempt is under way, though both hold the same member bytes (a claim
// only re-scores): the guard is the lease end the claim wrote. The
// current claimant's outcome applies, under its claim's lease end, an
// extension's, or one whose extension is pending.
func TestLateClaimantYieldsToTheCurrentClaim(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	lease := 30 * time.Second
	claim := func(at time.Time) *Record { t.Helper(); return claimOne(t, q, at, lease) }
	apply := func(op Op) {
		t.Helper()
		if err := q.Apply(ctx, []Op{op}); err != nil {
			t.Fatal(err)
		}
	}
	state := func() (*Record, time.Time) {
		t.Helper()
		got, due, err := q.Get(ctx, "d1")
		if err != nil {
			t.Fatal(err)
		}
		return got, due
	}
	for _, kind := range []OpKind{OpReschedule, OpKill, OpRemove} {
		rec := &Record{ID: "d1", WebhookID: "wh_1", Body: []byte("x"), Attempts: 1, FirstAttempt: t0, LastStatus: 500}
		if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
			t.Fatal(err)
		}
		late := claim(t0)
		now := t0.Add(lease + time.Second) // late's lease ran out
		current := claim(now)
		if late.member != current.member {
			t.Fatal("the two claims read different members: the case under test needs the same bytes")
		}
		late.Attempts = 7
		apply(Op{Kind: kind, Rec: late, At: t0.Add(time.Minute)})
		if got, due := state(); got.Attempts != 1 || !due.Equal(now.Add(lease)) {
			t.Fatalf("a late claimant's op %d changed the current claim: %+v due %v", kind, got, due)
		}
		if n, _ := q.DeadLen(ctx); n != 0 {
			t.Fatalf("a late claimant's op %d killed the delivery: %d dead", kind, n)
		}
		// The current claimant extends its lease; its outcome, under
		// the extended lease, applies.
		l := current.Lease(now.Add(lease))
		if err := q.Extend(ctx, []Lease{l}, now.Add(2*lease)); err != nil {
			t.Fatal(err)
		}
		stale := *current
		apply(Op{Kind: OpReschedule, Rec: &stale, At: now}) // the claim's end, passed by
		if _, due := state(); !due.Equal(now.Add(2 * lease)) {
			t.Fatalf("an op under a lease end an extension replaced applied: due %v", due)
		}
		l.End, l.Pending = now.Add(lease), now.Add(2*lease) // the extension's reply not in yet
		current.Attempts = 2
		apply(Op{Kind: kind, Rec: current, At: now.Add(time.Hour), Lease: l})
		switch got, due, err := q.Get(ctx, "d1"); kind {
		case OpReschedule:
			if err != nil || got.Attempts != 2 || !due.Equal(now.Add(time.Hour)) {
				t.Fatalf("the current claimant's reschedule: %+v due %v (%v)", got, due, err)
			}
			if err := q.Apply(ctx, []Op{{Kind: OpRemove, Rec: got}}); err != nil {
				t.Fatal(err)
			}
		default:
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("the current claimant's op %d left %+v (%v)", kind, got, err)
			}
		}
		if _, err := rdb.Del(ctx, q.DeadKey, q.DeadData, q.deadHookKey("wh_1")).Result(); err != nil {
			t.Fatal(err)
		}
	}
}

// A claim shares itself between the webhooks with deliveries due, so one
// webhook's backlog does not hold the others' retries back.
func TestClaimSharesBetweenWebhooks(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	var entries []Entry
	for i := 0; i < 30; i++ {
		hook := fmt.Sprintf("wh_%d", i%3)
		entries = append(entries, Entry{Rec: &Record{ID: fmt.Sprintf("d%02d", i), WebhookID: hook, FirstAttempt: t0}, Due: t0.Add(time.Duration(i) * time.Millisecond)})
	}
	if err := q.Schedule(ctx, entries); err != nil {
		t.Fatal(err)
	}
	recs, _, _, err := q.Claim(ctx, t0.Add(time.Second), t0.Add(time.Minute), 6)
	if err != nil || len(recs) != 6 {
		t.Fatalf("claimed %d, %v; want 6", len(recs), err)
	}
	per := map[string]int{}
	for _, r := range recs {
		per[r.WebhookID]++
	}
	if per["wh_0"] != 2 || per["wh_1"] != 2 || per["wh_2"] != 2 {
		t.Fatalf("claim per webhook %v, want 2 each", per)
	}
	// The rest comes out of the next claims, all of it.
	total := len(recs)
	for range 10 {
		more, _, _, err := q.Claim(ctx, t0.Add(time.Second), t0.Add(time.Minute), 6)
		if err != nil {
			t.Fatal(err)
		}
		total += len(more)
	}
	if total != 30 {
		t.Fatalf("claimed %d in all, want 30", total)
	}
}

// A webhook whose due chunks outnumber what a claim reads of the chunk
// index (four per delivery it may take) does not crowd another webhook
// out: each claim still shares itself between the two.
func TestClaimSharesWithAWebhookOfManyChunks(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	const n = 8
	var entries []Entry
	for i := 0; i < (4*n+1)*chunkSize; i++ {
		due := t0.Add(time.Duration(i%1000) * time.Millisecond)
		entries = append(entries, Entry{Rec: &Record{ID: fmt.Sprintf("big-%05d", i), WebhookID: "wh_big", FirstAttempt: t0}, Due: due})
	}
	entries = append(entries, Entry{Rec: &Record{ID: "small", WebhookID: "wh_small", FirstAttempt: t0}, Due: t0.Add(time.Hour)})
	if err := q.Schedule(ctx, entries); err != nil {
		t.Fatal(err)
	}
	// Chunks placed by a version without the webhook index get it from
	// the migration.
	if err := rdb.Del(ctx, q.tag+":qh").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Migrate(ctx, t0); err != nil {
		t.Fatal(err)
	}
	recs, _, _, err := q.Claim(ctx, t0.Add(2*time.Hour), t0.Add(3*time.Hour), n)
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, r := range recs {
		per[r.WebhookID]++
	}
	if per["wh_small"] != 1 || per["wh_big"] < n/2 {
		t.Fatalf("claim of %d per webhook %v, want wh_small's one and at least %d of wh_big's", n, per, n/2)
	}
	// The delivery claimed through the webhook index names its chunk like
	// the others, so its outcome applies: it is not sent again when the
	// lease ends.
	for _, r := range recs {
		if err := q.Apply(ctx, []Op{{Kind: OpRemove, Rec: r}}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := q.Get(ctx, r.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s of %s (chunk %q) still scheduled after its claimant removed it: %v", r.ID, r.WebhookID, r.chunk, err)
		}
	}
}

// A rescheduled record made outside a claim stores its body form in its
// own shard even when the process has the form cached: the cache spans
// every shard, and a member whose form its shard lacks cannot be read by
// another process.
func TestRescheduleStoresItsFormInItsShard(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 1)
	t0 := time.UnixMilli(1_700_000_000_000)
	body := []byte(`{"object_id":7,"event":"order.create","timestamp":1700000000,"resource_url":"https://api.tradegecko.com/orders/7.json"}`)
	rec := &Record{ID: "d1", WebhookID: "wh_1", Body: body, Attempts: 1, FirstAttempt: t0, LastStatus: 500}
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	recs, _, _, err := q.Claim(ctx, t0, t0.Add(30*time.Second), 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("claim: %d records, %v", len(recs), err)
	}
	// The shard loses its forms (as when they were dropped while it was
	// empty and this process still caches them).
	if err := rdb.Del(ctx, q.formsKey).Err(); err != nil {
		t.Fatal(err)
	}
	// A record made elsewhere (the API's retry now), not the one claimed.
	made := &Record{ID: "d1", WebhookID: "wh_1", Body: body, Attempts: 2, FirstAttempt: t0, LastStatus: 500}
	if err := q.Apply(ctx, []Op{{Kind: OpReschedule, Rec: made, At: t0.Add(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	if n, err := rdb.HLen(ctx, q.formsKey).Result(); err != nil || n != 1 {
		t.Fatalf("the shard holds %d body forms after the reschedule (%v), want 1", n, err)
	}
	forms.Clear() // another process: nothing cached
	formsSize.Store(0)
	recs, bad, _, err := q.Claim(ctx, t0.Add(2*time.Minute), t0.Add(3*time.Minute), 10)
	if err != nil || len(recs) != 1 || len(bad) != 0 {
		t.Fatalf("claim by a fresh process: %d records, %d unreadable, %v", len(recs), len(bad), err)
	}
	if string(recs[0].Body) != string(body) || recs[0].Attempts != 2 {
		t.Fatalf("claimed %q attempts %d, want the original body and 2 attempts", recs[0].Body, recs[0].Attempts)
	}
}

// A webhook's deliveries spread over several chunks, due in an order
// unlike the one they were queued in, are claimed earliest first across
// the chunks, and each claim still shares itself between the webhooks.
func TestClaimTakesEarliestAcrossChunks(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	const per = 3*chunkSize + 16 // 400: claims of 10 end even
	var entries []Entry
	for i := 0; i < per; i++ {
		for _, hook := range []string{"wh_a", "wh_b"} {
			due := t0.Add(time.Duration((i*7919)%per) * time.Second)
			entries = append(entries, Entry{Rec: &Record{ID: fmt.Sprintf("%s-%03d", hook, i), WebhookID: hook, FirstAttempt: t0}, Due: due})
		}
	}
	if err := q.Schedule(ctx, entries); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.ZCard(ctx, q.ChunksKey).Result(); n != 8 {
		t.Fatalf("%d chunks for two webhooks of %d deliveries, want 8", n, per)
	}
	due := map[string]time.Time{}
	for _, e := range entries {
		due[e.Rec.ID] = e.Due
	}
	next := map[string]time.Time{"wh_a": t0, "wh_b": t0}
	for claimed := 0; claimed < 2*per; {
		recs, _, _, err := q.Claim(ctx, t0.Add(time.Hour), t0.Add(2*time.Hour), 10)
		if err != nil || len(recs) != 10 {
			t.Fatalf("claim after %d: %d records, %v; want 10", claimed, len(recs), err)
		}
		got := map[string][]time.Time{}
		for _, r := range recs {
			got[r.WebhookID] = append(got[r.WebhookID], due[r.ID])
		}
		for hook, dues := range got {
			if len(dues) != 5 {
				t.Fatalf("claim after %d: %d of %s's, want 5 of each webhook", claimed, len(dues), hook)
			}
			slices.SortFunc(dues, func(a, b time.Time) int { return a.Compare(b) })
			for _, d := range dues {
				if !d.Equal(next[hook]) {
					t.Fatalf("claim after %d: %s's delivery due %v, want the earliest left, %v", claimed, hook, d, next[hook])
				}
				next[hook] = next[hook].Add(time.Second)
			}
		}
		claimed += len(recs)
	}
}

// A delivery made due while its claimant's attempt runs (retry-now, DueBy)
// is still that claimant's until another claim takes it: the claimant's
// outcome applies, so the delivery is not sent again. Once claimed again,
// the first claimant's outcome no longer applies.
func TestOutcomeAppliesToADeliveryMadeDueWhileClaimed(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	lease := 30 * time.Second
	schedule := func(id string) {
		t.Helper()
		rec := &Record{ID: id, WebhookID: "wh_1", Body: []byte("x"), Attempts: 1, FirstAttempt: t0, LastStatus: 500}
		if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
			t.Fatal(err)
		}
	}
	claim := func(at time.Time) *Record { t.Helper(); return claimOne(t, q, at, lease) }
	makeDue := func() {
		t.Helper()
		if n, err := q.DueBy(ctx, t0.Add(-time.Minute)); err != nil || n != 1 {
			t.Fatalf("made %d due, %v; want the claimed one", n, err)
		}
	}

	schedule("d1")
	first := claim(t0)
	makeDue()
	if err := q.Apply(ctx, []Op{{Kind: OpRemove, Rec: first}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := q.Get(ctx, "d1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the claimant's success left the delivery made due while it ran: %v", err)
	}

	schedule("d2")
	first = claim(t0)
	makeDue()
	second := claim(t0.Add(time.Second))
	if err := q.Apply(ctx, []Op{{Kind: OpRemove, Rec: first}}); err != nil {
		t.Fatal(err)
	}
	if _, due, err := q.Get(ctx, "d2"); err != nil || !due.Equal(second.Lease(t0.Add(time.Second+lease)).End) {
		t.Fatalf("the first claimant's outcome replaced the second claim: due %v, %v", due, err)
	}
}

// An op refused because its delivery was claimed again since its lease
// was read (made due while its attempt ran, then re-leased by a claim) is
// reported, and still names its member: applied again under the lease
// its claimant holds now, it takes effect. An op whose member is gone is
// not reported: no lease would change it.
func TestApplyReportsOpsALeaseRefused(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	lease := 30 * time.Second
	for _, id := range []string{"d1", "d2", "d3"} {
		rec := &Record{ID: id, WebhookID: "wh_1", Body: []byte("x"), Attempts: 1, FirstAttempt: t0, LastStatus: 500}
		if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
			t.Fatal(err)
		}
	}
	first, _, _, err := q.Claim(ctx, t0, t0.Add(lease), 10)
	if err != nil || len(first) != 3 {
		t.Fatalf("first claim: %d records, %v", len(first), err)
	}
	byID := map[string]*Record{}
	for _, rec := range first {
		byID[rec.ID] = rec
	}
	if n, err := q.DueBy(ctx, t0); err != nil || n != 3 {
		t.Fatalf("made %d due, %v", n, err)
	}
	again := t0.Add(time.Second)
	if recs, _, _, err := q.Claim(ctx, again, again.Add(lease), 10); err != nil || len(recs) != 3 {
		t.Fatalf("second claim: %d records, %v", len(recs), err)
	}
	if err := q.Apply(ctx, []Op{{Kind: OpRemove, Rec: byID["d3"], Lease: byID["d3"].Lease(again.Add(lease))}}); err != nil {
		t.Fatal(err)
	}
	pending := byID["d1"].Lease(t0.Add(lease))
	pending.Pending = again.Add(lease) // the second claim not recorded yet
	d2 := byID["d2"]
	d2.Attempts = 2
	refused, err := q.ApplyHeld(ctx, []Op{
		{Kind: OpRemove, Rec: byID["d1"], Lease: pending},
		{Kind: OpReschedule, Rec: d2, At: t0.Add(time.Hour), Lease: d2.Lease(t0.Add(lease))},
		{Kind: OpRemove, Rec: byID["d3"], Lease: byID["d3"].Lease(t0.Add(lease))},
	})
	if err != nil || !slices.Equal(refused, []int{1}) {
		t.Fatalf("refused %v (%v), want [1]: d2's lease is the first claim's", refused, err)
	}
	if _, _, err := q.Get(ctx, "d1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("d1, removed under a lease naming the pending claim: %v", err)
	}
	if got, due, err := q.Get(ctx, "d2"); err != nil || got.Attempts != 1 || !due.Equal(again.Add(lease)) {
		t.Fatalf("d2 after its refused op: %+v due %v (%v), want the second claim's lease", got, due, err)
	}
	refused, err = q.ApplyHeld(ctx, []Op{{Kind: OpReschedule, Rec: d2, At: t0.Add(time.Hour), Lease: d2.Lease(again.Add(lease))}})
	if err != nil || len(refused) != 0 {
		t.Fatalf("d2 under the second claim's lease: refused %v (%v)", refused, err)
	}
	if got, due, err := q.Get(ctx, "d2"); err != nil || got.Attempts != 2 || !due.Equal(t0.Add(time.Hour)) {
		t.Fatalf("d2 applied again: %+v due %v (%v), want its reschedule", got, due, err)
	}
	if n, _ := q.Len(ctx); n != 1 {
		t.Fatalf("%d scheduled, want 1 (d2)", n)
	}
}

// claimOne claims at at, under a lease of lease, the one delivery the
// test's queue has due.
func claimOne(t *testing.T, q *Queue, at time.Time, lease time.Duration) *Record {
	t.Helper()
	recs, _, _, err := q.Claim(context.Background(), at, at.Add(lease), 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("claim at %v: %d records, %v", at, len(recs), err)
	}
	return recs[0]
}

// Two ops of one batch on one delivery act as if they ran one by one: an
// op refused by its lease leaves the member to a later op whose lease
// holds it, and once an op changed it a later op finds its member gone.
func TestOpsOfOneBatchOnOneDeliveryApplyInOrder(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", "ev", 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	recs := []*Record{
		{ID: "d1", WebhookID: "wh_1", Body: []byte("x"), Attempts: 1, FirstAttempt: t0},
		{ID: "d2", WebhookID: "wh_1", Body: []byte("y"), Attempts: 1, FirstAttempt: t0},
	}
	if err := q.Schedule(ctx, []Entry{{Rec: recs[0], Due: t0}, {Rec: recs[1], Due: t0}}); err != nil {
		t.Fatal(err)
	}
	leaseEnd := t0.Add(time.Minute)
	claimed, _, _, err := q.Claim(ctx, t0, leaseEnd, 10)
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claimed %d, %v; want 2", len(claimed), err)
	}
	byID := map[string]*Record{claimed[0].ID: claimed[0], claimed[1].ID: claimed[1]}
	d1, d2 := byID["d1"], byID["d2"]
	stale := *d1 // a lease that ended before the claim's
	again := *d1
	again.Attempts = 2
	d2b := *d2
	err = q.Apply(ctx, []Op{
		{Kind: OpRemove, Rec: &stale, Lease: d1.Lease(t0.Add(time.Second))},
		{Kind: OpReschedule, Rec: &again, At: t0.Add(time.Hour), Lease: d1.Lease(leaseEnd)},
		{Kind: OpReschedule, Rec: d2, At: t0.Add(2 * time.Hour), Lease: d2.Lease(leaseEnd)},
		{Kind: OpRemove, Rec: &d2b, Lease: d2.Lease(leaseEnd)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, due, err := q.Get(ctx, "d1"); err != nil || got.Attempts != 2 || !due.Equal(t0.Add(time.Hour)) {
		t.Fatalf("d1: %+v due %v (%v); want the reschedule under its lease, not the refused removal", got, due, err)
	}
	if got, due, err := q.Get(ctx, "d2"); err != nil || !due.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("d2: %+v due %v (%v); want the first op's reschedule, the removal of its old member refused", got, due, err)
	}
	if n, _ := q.Len(ctx); n != 2 {
		t.Fatalf("%d scheduled, want 2", n)
	}
}
