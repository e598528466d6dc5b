package shard

import (
	"bytes"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
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
