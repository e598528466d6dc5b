package shard

import (
	"bytes"
	"context"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/embedded"
	"github.com/geckohook/geckohook/internal/testenv"
)

// Every record comes back from its member as it went in, whatever its id,
// body and error look like.
func TestMemberRoundTrip(t *testing.T) {
	q := NewQueue(nil, "gh:", memTopic, 4)
	cat := catalog.Default()
	t0 := time.UnixMilli(1_700_000_000_123).UTC()
	hook := memHooks(1)[0]
	base := func() *Record {
		r := memRecord(7, hook, t0, cat)
		r.Partition = 4
		r.ID = contract.DeliveryID(memTopic, 4, 7, hook)
		return r
	}
	escaped := contract.Event{Event: "order.create", ObjectID: -3, Timestamp: 12,
		ResourceURL: "https://x/\"quoted\"\\dir/é/-3.json"}
	cases := map[string]func(r *Record){
		"as a dispatcher writes it": func(*Record) {},
		"an id made otherwise":      func(r *Record) { r.ID = "d1" },
		"a body of another shape":   func(r *Record) { r.Body = []byte(`{"a":1}`) },
		"an empty body":             func(r *Record) { r.Body = nil },
		"a resource URL with escapes": func(r *Record) {
			r.Body = contract.AppendBody(nil, &escaped, "", nil)
		},
		"a resource URL of its own": func(r *Record) {
			r.Body = []byte(`{"object_id":1,"event":"order.create","timestamp":2,"resource_url":"https://elsewhere/x"}`)
		},
		"an event unlike the body's":   func(r *Record) { r.Event = "order.update" },
		"no attempt yet":               func(r *Record) { r.FirstAttempt, r.LastAttempt, r.Attempts = time.Time{}, time.Time{}, 0 },
		"a Retry-After wait":           func(r *Record) { r.RetryAfter, r.LastStatus, r.LastError = true, 429, "HTTP 429" },
		"an HTTP status without error": func(r *Record) { r.LastStatus, r.LastError = 503, "" },
		"a refused connection": func(r *Record) {
			r.LastStatus, r.LastError = 0, "connection: dial tcp 127.0.0.1:39123: connect: connection refused"
		},
		"deferred without an attempt": func(r *Record) {
			r.LastStatus, r.LastError, r.Deferrals = 0, hostSaturated, 1
		},
		"an error with control bytes": func(r *Record) { r.LastError = "timeout: \x01\x02 odd" },
		"deferrals and retries":       func(r *Record) { r.Attempts, r.Retries, r.Deferrals = 9, 8, 300 },
	}
	for name, change := range cases {
		want := base()
		change(want)
		member, form := q.memberOf(want)
		if form != nil {
			cacheForm(form.ref(), form.value())
		}
		got, err := q.decodeMember(member, hook, func(ref string) (bodyForm, bool) {
			f, ok := forms.Load(ref)
			if !ok {
				return bodyForm{}, false
			}
			return f.(bodyForm), true
		}, hookMeta{want.AppID, want.AccountID})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.ID != want.ID || got.WebhookID != want.WebhookID || got.AppID != want.AppID || got.AccountID != want.AccountID ||
			got.Event != want.Event || !bytes.Equal(got.Body, want.Body) || got.Attempts != want.Attempts ||
			got.Retries != want.Retries || got.Deferrals != want.Deferrals || got.RetryAfter != want.RetryAfter ||
			!got.FirstAttempt.Equal(want.FirstAttempt) || !got.LastAttempt.Equal(want.LastAttempt) ||
			got.LastStatus != want.LastStatus || got.LastError != want.LastError || got.Offset != want.Offset ||
			got.Topic != want.Topic || got.Partition != want.Partition {
			t.Fatalf("%s: decoded\n%+v\nwant\n%+v", name, got, want)
		}
		// Written back without a change, it is the same member.
		if again, _ := q.memberOf(got); again != member {
			t.Fatalf("%s: re-encoded member differs", name)
		}
	}
	if _, err := q.decodeMember("\x01", hook, nil, hookMeta{}); err == nil {
		t.Fatal("a truncated member decoded")
	}
}

// hostSaturated is the dispatcher's error text of a delivery deferred
// without an attempt (engine/dispatch): most of an outage's queue.
const hostSaturated = "host_saturated: host is not keeping up; deferred to the retry queue without an attempt"

// The members an outage writes (the sender's refused connections and
// timeouts, the dispatcher's deferrals, HTTP errors), at a large offset,
// object id and attempt count, fit Redis's compact sorted set encoding:
// zset-max-listpack-value is 64 bytes.
func TestOutageMembersFitListpack(t *testing.T) {
	q := NewQueue(nil, "gh:", memTopic, 4)
	cat := catalog.Default()
	t0 := time.UnixMilli(1_700_000_000_123).UTC()
	hook := memHooks(1)[0]
	for _, e := range []string{
		"connection: dial tcp 203.0.113.200:65535: connect: connection refused",
		"timeout: no answer within 10s: fasthttp: timeout",
		hostSaturated,
		"",
	} {
		r := memRecord(1<<40, hook, t0, cat)
		r.Partition, r.ID = 4, contract.DeliveryID(memTopic, 4, 1<<40, hook)
		r.Attempts, r.Retries, r.Deferrals, r.LastStatus, r.LastError = 25, 24, 30, 0, e
		r.LastAttempt = t0.Add(20 * 24 * time.Hour)
		if e == "" {
			r.LastStatus, r.LastError = 503, "HTTP 503"
		}
		if m, _ := q.memberOf(r); len(m) > 64 {
			t.Errorf("last error %q: member of %d bytes, want at most 64", e, len(m))
		}
	}
}

// A delivery is found by id whatever bytes its offset's varint has (glob
// specials, bytes outside ASCII), on redis-server and on the embedded
// Redis of `make run`; on redis-server the member pattern alone finds it.
func TestFindByIDAnyOffset(t *testing.T) {
	offsets := []int64{0, 21, 46, 100, 12345, 9_999_999, 1 << 62} // 21 and 46: '*' and '\' in the offset
	check := func(t *testing.T, rdb *redis.Client, exact bool) {
		ctx := context.Background()
		q := NewQueue(rdb, "gh:", memTopic, 0)
		t0 := time.UnixMilli(1_700_000_000_000)
		hook := memHooks(1)[0]
		var entries []Entry
		for _, off := range offsets {
			entries = append(entries, Entry{Rec: memRecord(int(off), hook, t0, catalog.Default()), Due: t0})
		}
		if err := q.Schedule(ctx, entries); err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			got, _, err := q.Get(ctx, e.Rec.ID)
			if err != nil || got.Offset != e.Rec.Offset {
				t.Fatalf("offset %d: %+v %v", e.Rec.Offset, got, err)
			}
			if !exact {
				continue
			}
			members, _, err := rdb.ZScan(ctx, q.chunkKey(hook, "0"), 0, memberPattern(e.Rec.Offset), 1000).Result()
			if err != nil || len(members) != 2 {
				t.Fatalf("offset %d: the pattern matched %d members (%v), want 1", e.Rec.Offset, len(members)/2, err)
			}
		}
	}
	t.Run("redis-server", func(t *testing.T) { check(t, testenv.Redis(t).Client(), true) })
	t.Run("embedded", func(t *testing.T) {
		m, err := embedded.StartRedis("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		check(t, rdb, false)
	})
}

// A delivery id in UUID text form (lowercase, as contract.DeliveryID
// writes it) packs to its 16 bytes; any other id, an uppercase UUID
// included, is its own index field.
func TestPackedID(t *testing.T) {
	derived := contract.DeliveryID("ev", 3, 42, "wh_1")
	raw, err := hex.DecodeString(strings.ReplaceAll(derived, "-", ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := packedID(derived); got != string(raw) {
		t.Fatalf("packedID(%q) = %x, want %x", derived, got, raw)
	}
	for _, id := range []string{
		strings.ToUpper(derived),
		derived[:35] + "g",
		derived[:8] + "x" + derived[9:],
		"d-000001",
		"",
		derived + "0",
	} {
		if got := packedID(id); got != id {
			t.Fatalf("packedID(%q) = %q, want the id as it is", id, got)
		}
	}
}
