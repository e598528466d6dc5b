package shard

import (
	"reflect"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/catalog"
)

// Any bytes in a webhook's ZSET decode without a panic, and a member that
// decodes comes back as the same record once encoded again.
func FuzzDecodeMember(f *testing.F) {
	q := NewQueue(nil, "gh:", memTopic, 4)
	t0 := time.UnixMilli(1_700_000_000_123).UTC()
	hook := memHooks(1)[0]
	rec := memRecord(7, hook, t0, catalog.Default())
	rec.LastError = "connection: dial tcp 10.0.0.1:443: connect: connection refused"
	member, form := q.memberOf(rec)
	if form == nil {
		f.Fatal("the starting record's body has no form")
	}
	known := map[string]bodyForm{form.ref(): *form}
	lookup := func(ref string) (bodyForm, bool) { f, ok := known[ref]; return f, ok }
	meta := hookMeta{rec.AppID, rec.AccountID}
	f.Add([]byte(member))
	raw := *rec
	raw.ID, raw.Body = "other-id", []byte(`{"a":1}`)
	m2, _ := q.memberOf(&raw)
	f.Add([]byte(m2))
	f.Add([]byte{memberVersion, 0xff, 10, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := q.decodeMember(string(b), hook, lookup, meta)
		if err != nil {
			return
		}
		again, _ := q.memberOf(got)
		back, err := q.decodeMember(again, hook, lookup, meta)
		if err != nil {
			t.Fatalf("a decoded record does not decode once encoded again: %v", err)
		}
		got.member, got.packed, back.member, back.packed = "", nil, "", nil
		if !reflect.DeepEqual(got, back) {
			t.Fatalf("round trip changed the record:\n got %+v\nback %+v", got, back)
		}
	})
}
