package shard

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
)

// A record whose body form is gone is quarantined, and its id is free
// again: the same delivery scheduled anew (a replay) is stored.
func TestQuarantineFreesTheID(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	rec := memRecord(42, memHooks(1)[0], t0, catalog.Default())
	// A body form of its own, never cached by this process.
	rec.Body = []byte(`{"object_id":100042,"event":"order.create","timestamp":1700000000,"resource_url":"https://quarantine.test/orders/100042.json"}`)
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, q.formsKey).Err(); err != nil {
		t.Fatal(err)
	}
	forms.Clear()
	// Listed meanwhile, the webhook's other deliveries still show.
	other := memRecord(45, rec.WebhookID, t0, catalog.Default())
	if err := q.Schedule(ctx, []Entry{{Rec: other, Due: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	st := NewStore(rdb, "gh:")
	if err := st.Register(ctx, memTopic, 0); err != nil {
		t.Fatal(err)
	}
	if list, err := st.List(ctx, rec.WebhookID, Scheduled, 10); err != nil || len(list) != 1 || list[0].ID != other.ID {
		t.Fatalf("listing beside an unreadable delivery: %d, %v; want the readable one", len(list), err)
	}
	recs, bad, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 10)
	if err != nil || len(recs) != 0 || len(bad) != 1 {
		t.Fatalf("claim: %d records, %d bad, %v; want the one bad", len(recs), len(bad), err)
	}
	if err := q.Quarantine(ctx, bad[0], t0); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.DeadLen(ctx); n != 1 {
		t.Fatalf("dead set holds %d, want the quarantined record", n)
	}
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	got, _, err := q.Get(ctx, rec.ID)
	if err != nil || string(got.Body) != string(rec.Body) {
		t.Fatalf("the delivery scheduled again after the quarantine: %+v %v", got, err)
	}
}

// A shard with nothing scheduled keeps no body forms; the next delivery
// of a form stores it again.
func TestEmptyShardDropsBodyForms(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	hook := memHooks(1)[0]
	rec := memRecord(1, hook, t0, catalog.Default())
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	recs, _, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("claim: %d, %v", len(recs), err)
	}
	if n, _ := rdb.Exists(ctx, q.formsKey).Result(); n != 1 {
		t.Fatal("body forms dropped while a delivery is claimed")
	}
	if err := q.Apply(ctx, []Op{{Kind: OpRemove, Rec: recs[0]}}); err != nil {
		t.Fatal(err)
	}
	// The webhook's earliest due time was the lease end: the claim after
	// it finds the webhook empty.
	if _, _, _, err := q.Claim(ctx, t0.Add(2*time.Minute), t0.Add(3*time.Minute), 10); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, q.formsKey, q.metaKey, q.ChunksKey, q.statesKey, q.tag+":qh").Result(); n != 0 {
		t.Fatalf("%d of the body forms, hook metadata, chunk index, hook states and webhook index keys left on an empty shard", n)
	}
	next := memRecord(2, hook, t0, catalog.Default())
	if err := q.Schedule(ctx, []Entry{{Rec: next, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	forms.Clear() // another process, which never saw the form
	got, _, err := q.Get(ctx, next.ID)
	if err != nil || string(got.Body) != string(next.Body) {
		t.Fatalf("after the forms were dropped: %+v %v", got, err)
	}
}

// beforeEach is a go-redis hook that runs before every command; its error
// fails the command, as a Redis that stops answering would.
type beforeEach func(ctx context.Context, cmd redis.Cmder) error

func (beforeEach) DialHook(next redis.DialHook) redis.DialHook { return next }
func (beforeEach) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (f beforeEach) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := f(ctx, cmd); err != nil {
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

// hooked is a second client of rdb's server with f before every command.
func hooked(t *testing.T, rdb *redis.Client, f beforeEach) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: rdb.Options().Addr})
	t.Cleanup(func() { c.Close() })
	c.AddHook(f)
	return c
}

// A claim whose body form lookup Redis does not answer fails: the
// delivery is not taken for unreadable and quarantined, and the next
// claim after its lease delivers it.
func TestClaimKeepsARecordWhoseFormLookupFailed(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	rec := memRecord(43, memHooks(1)[0], t0, catalog.Default())
	rec.Body = []byte(`{"object_id":100043,"event":"order.create","timestamp":1700000000,"resource_url":"https://formlookup.test/orders/100043.json"}`)
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	forms.Clear() // another process, which never saw the form
	failing := hooked(t, rdb, func(_ context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); len(args) > 1 && cmd.Name() == "hget" && args[1] == q.formsKey {
			return errors.New("i/o timeout")
		}
		return nil
	})
	fq := NewQueue(failing, "gh:", memTopic, 0)
	recs, bad, _, err := fq.Claim(ctx, t0, t0.Add(time.Minute), 10)
	if err == nil || len(recs) != 0 || len(bad) != 0 {
		t.Fatalf("claim with the form lookup failing: %d records, %d bad, %v; want an error and none", len(recs), len(bad), err)
	}
	recs, bad, _, err = q.Claim(ctx, t0.Add(time.Minute), t0.Add(2*time.Minute), 10)
	if err != nil || len(bad) != 0 || len(recs) != 1 || string(recs[0].Body) != string(rec.Body) {
		t.Fatalf("claim after the lease: %d records, %d bad, %v; want the delivery", len(recs), len(bad), err)
	}
}

// A replay from the dead set into an empty shard stores the body forms
// its members refer to in the same step as the members.
func TestReviveStoresItsFormsWithItsMembers(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	rec := memRecord(44, memHooks(1)[0], t0, catalog.Default())
	rec.Body = []byte(`{"object_id":100044,"event":"order.create","timestamp":1700000000,"resource_url":"https://revive.test/orders/100044.json"}`)
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0, Dead: true}}); err != nil {
		t.Fatal(err)
	}
	// A claim on the empty shard may drop its forms between any two
	// calls.
	racing := hooked(t, rdb, func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "evalsha" || cmd.Name() == "eval" {
			return rdb.Del(ctx, q.formsKey).Err()
		}
		return nil
	})
	moved, err := NewQueue(racing, "gh:", memTopic, 0).Revive(ctx, []string{rec.ID}, t0)
	if err != nil || len(moved) != 1 {
		t.Fatalf("revive: %d moved, %v", len(moved), err)
	}
	forms.Clear() // another process, which never saw the form
	got, _, err := q.Get(ctx, rec.ID)
	if err != nil || string(got.Body) != string(rec.Body) {
		t.Fatalf("the revived delivery: %+v %v", got, err)
	}
}

// The body form cache of a process stays bounded whatever forms the
// producers make.
func TestFormCacheIsBounded(t *testing.T) {
	t.Cleanup(func() { forms.Clear(); formsSize.Store(0) })
	for i := range maxCachedForms + 10 {
		f := bodyForm{"order.create", "https://bounded.test/accounts/" + strconv.Itoa(i) + "/orders"}
		cacheForm(f.ref(), f.value())
	}
	n := 0
	forms.Range(func(any, any) bool { n++; return true })
	if n > maxCachedForms {
		t.Fatalf("%d body forms cached, want at most %d", n, maxCachedForms)
	}
}

// A quarantined record with an id of its own (not the derived one) frees
// that id too: the index holds nothing of it and the depth counts it no
// more.
func TestQuarantineFreesAStoredID(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	st := NewStore(rdb, "gh:")
	if err := st.Register(ctx, memTopic, 0); err != nil {
		t.Fatal(err)
	}
	t0 := time.UnixMilli(1_700_000_000_000)
	rec := memRecord(46, memHooks(1)[0], t0, catalog.Default())
	rec.ID = "recovery-46"
	rec.Body = []byte(`{"object_id":100046,"event":"order.create","timestamp":1700000000,"resource_url":"https://stored-id.test/orders/100046.json"}`)
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, q.formsKey).Err(); err != nil {
		t.Fatal(err)
	}
	forms.Clear()
	_, bad, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 10)
	if err != nil || len(bad) != 1 {
		t.Fatalf("claim: %d bad, %v; want the one", len(bad), err)
	}
	if err := q.Quarantine(ctx, bad[0], t0); err != nil {
		t.Fatal(err)
	}
	if scheduled, dead, err := st.Depth(ctx); err != nil || scheduled != 0 || dead != 1 {
		t.Fatalf("depth after the quarantine: %d scheduled, %d dead, %v; want 0 and 1", scheduled, dead, err)
	}
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	if got, _, err := q.Get(ctx, rec.ID); err != nil || string(got.Body) != string(rec.Body) {
		t.Fatalf("the delivery scheduled again after the quarantine: %+v %v", got, err)
	}
}

// A member whose stored id cannot be read leaves no index entry behind
// when quarantined (the id is free again: the same delivery scheduled
// anew is stored), and the entry of another delivery of the same webhook
// and offset in the same chunk, whose id is the derived one, stays.
func TestQuarantineDropsTheEntryOfAnUnreadableStoredID(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	twin := memRecord(47, memHooks(1)[0], t0, catalog.Default())
	rec := memRecord(47, twin.WebhookID, t0, catalog.Default())
	rec.ID = "recovery-47"
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}, {Rec: twin, Due: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	stored, _, err := q.Get(ctx, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The member cut short inside its stored id.
	at := strings.Index(stored.member, rec.ID)
	if at < 0 {
		t.Fatal("the member does not store its id")
	}
	key := q.chunkKey(rec.WebhookID, stored.chunk)
	if err := rdb.ZRem(ctx, key, stored.member).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ZAdd(ctx, key, redis.Z{Score: ms(t0), Member: stored.member[:at+3]}).Err(); err != nil {
		t.Fatal(err)
	}
	_, bad, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 10)
	if err != nil || len(bad) != 1 {
		t.Fatalf("claim: %d bad, %v; want the one", len(bad), err)
	}
	if err := q.Quarantine(ctx, bad[0], t0); err != nil {
		t.Fatal(err)
	}
	pid := packedID(rec.ID)
	if v, err := rdb.HGet(ctx, q.indexKey(pid), pid).Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("the quarantined delivery's index entry is left: %q %v", v, err)
	}
	if got, due, err := q.Get(ctx, twin.ID); err != nil || got.ID != twin.ID || !due.Equal(t0.Add(time.Hour)) {
		t.Fatalf("the other delivery of the offset after the quarantine: %+v due %v %v", got, due, err)
	}
	if err := q.Schedule(ctx, []Entry{{Rec: rec, Due: t0}}); err != nil {
		t.Fatal(err)
	}
	if got, _, err := q.Get(ctx, rec.ID); err != nil || got.ID != rec.ID || string(got.Body) != string(rec.Body) {
		t.Fatalf("the delivery scheduled again after the quarantine: %+v %v", got, err)
	}
}

// A shard that is never empty does not keep the body forms of deliveries
// that left it: resource URLs that name an account or another id make a
// form per delivery, and the forms hash would grow without end. The next
// migration pass drops the forms no scheduled member refers to, and
// keeps those that one does, in chunks or in the layout before them.
func TestBusyShardDropsUnusedBodyForms(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	hooks := memHooks(2)
	cat := catalog.Default()
	withForm := func(e int, hook, prefix string) *Record {
		rec := memRecord(e, hook, t0, cat)
		ev := contract.Event{Event: "order.create", ObjectID: int64(100_000 + e), Timestamp: t0.Unix(),
			ResourceURL: prefix + "/" + strconv.Itoa(100_000+e) + ".json"}
		rec.Body = contract.AppendBody(nil, &ev, memBase, cat)
		return rec
	}
	// Kept: one far off in a chunk, one in the layout before chunks, and
	// one with a stored id (its form comes after the id in the member).
	keep := withForm(0, hooks[0], "https://keep.test/a")
	if err := q.Schedule(ctx, []Entry{{Rec: keep, Due: t0.Add(24 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	rawID := withForm(1, hooks[0], "https://keep.test/b")
	rawID.ID = "custom-delivery-id"
	if err := q.Schedule(ctx, []Entry{{Rec: rawID, Due: t0.Add(24 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	unchunked := withForm(2, hooks[1], "https://keep.test/c")
	unchunkedSchedule(t, rdb, q, unchunked, t0.Add(24*time.Hour))
	const passing = 1500
	var entries []Entry
	for e := 10; e < 10+passing; e++ {
		entries = append(entries, Entry{Rec: withForm(e, hooks[0], "https://shop.test/accounts/"+strconv.Itoa(e)+"/orders"), Due: t0})
	}
	if err := q.Schedule(ctx, entries); err != nil {
		t.Fatal(err)
	}
	for {
		recs, _, _, err := q.Claim(ctx, t0, t0.Add(time.Minute), 256)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		var ops []Op
		for _, r := range recs {
			ops = append(ops, Op{Kind: OpRemove, Rec: r})
		}
		if err := q.Apply(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Migrate(ctx, t0); err != nil {
		t.Fatal(err)
	}
	if n, err := rdb.HLen(ctx, q.formsKey).Result(); err != nil || n != 3 {
		t.Fatalf("%d body forms left (%v) after %d deliveries of their own form left a busy shard, want the 3 still referred to", n, err, passing)
	}
	forms.Clear() // another process, which never saw the forms
	for _, rec := range []*Record{keep, rawID, unchunked} {
		got, _, err := q.Get(ctx, rec.ID)
		if err != nil || string(got.Body) != string(rec.Body) {
			t.Fatalf("delivery %s after the unused forms were dropped: %+v %v", rec.ID, got, err)
		}
	}
}

// The sweep of unused body forms reads every scheduled member in one
// script, which holds Redis meanwhile: a shard of more than
// formSweepMaxChunks chunks keeps its forms until its backlog shrinks.
func TestBigBacklogWaitsToSweepBodyForms(t *testing.T) {
	rdb := testenv.Redis(t).Client()
	ctx := context.Background()
	q := NewQueue(rdb, "gh:", memTopic, 0)
	t0 := time.UnixMilli(1_700_000_000_000)
	hooks := memHooks(formSweepMaxChunks + 1)
	cat := catalog.Default()
	withForm := func(e int, hook string) *Record {
		rec := memRecord(e, hook, t0, cat)
		ev := contract.Event{Event: "order.create", ObjectID: int64(100_000 + e), Timestamp: t0.Unix(),
			ResourceURL: "https://shop.test/accounts/" + strconv.Itoa(e) + "/orders/" + strconv.Itoa(100_000+e) + ".json"}
		rec.Body = contract.AppendBody(nil, &ev, memBase, cat)
		return rec
	}
	// A chunk per webhook, each with a delivery of its own form; the last
	// one comes due first.
	var kept []Entry
	for i, hook := range hooks {
		due := t0.Add(24 * time.Hour)
		if i == len(hooks)-1 {
			due = t0.Add(time.Hour)
		}
		kept = append(kept, Entry{Rec: withForm(i, hook), Due: due})
	}
	if err := q.Schedule(ctx, kept); err != nil {
		t.Fatal(err)
	}
	// Unused forms past formSweepMin.
	extra := map[string]any{}
	for i := range formSweepMin {
		extra["unused-"+strconv.Itoa(i)] = "order.create\x00https://gone.test/" + strconv.Itoa(i)
	}
	if err := rdb.HSet(ctx, q.formsKey, extra).Err(); err != nil {
		t.Fatal(err)
	}
	formsLeft := func() int64 {
		t.Helper()
		if _, err := q.Migrate(ctx, t0); err != nil {
			t.Fatal(err)
		}
		n, err := rdb.HLen(ctx, q.formsKey).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n, want := formsLeft(), int64(len(hooks)+formSweepMin); n != want {
		t.Fatalf("%d body forms after a pass over %d chunks; want all %d kept until the backlog shrinks", n, len(hooks), want)
	}
	recs, _, _, err := q.Claim(ctx, t0.Add(time.Hour), t0.Add(time.Hour+time.Minute), 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("claim: %d, %v; want the one due", len(recs), err)
	}
	if err := q.Apply(ctx, []Op{{Kind: OpRemove, Rec: recs[0]}}); err != nil {
		t.Fatal(err)
	}
	if n, want := formsLeft(), int64(len(hooks)-1); n != want {
		t.Fatalf("%d body forms after a pass over %d chunks; want the %d still referred to", n, formSweepMaxChunks, want)
	}
}
