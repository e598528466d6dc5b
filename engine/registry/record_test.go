package registry

import (
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// The bulk decoder must give what msgpack gives, for the records it reads
// itself and for those it hands to msgpack.
func TestBatchDecoderMatchesMsgpack(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	hooks := []Webhook{
		{ID: "wh_1", AppID: "app_1", AccountID: "acc-1", Event: "order.create", Address: "https://Hooks.Example.com/x", CreatedAt: at},
		{ID: "wh_2", AppID: "app_1", AccountID: "acc-1", Event: "order.create", Address: "http://127.0.0.1:9999/h/2", CreatedAt: at.Add(time.Nanosecond)},
		{ID: "wh_3", AppID: "app_2", AccountID: "", Event: "invoice.create", Address: "https://[::1]:8443/x"},
		{ID: "wh_4", AppID: "app_2", AccountID: "acc-2", Event: "order.create", Address: "https://user@example.com/x", CreatedAt: time.Unix(1<<35, 5)},
		{ID: "wh_5", AppID: "app_2", AccountID: "acc-3", Event: "order.create", Address: "https://example.com:/x", CreatedAt: time.Unix(1<<20, 0)},
		{ID: "wh_6", AppID: "app_2", AccountID: "acc-3", Event: "order.create", Address: "http://example.com?q=1"},
		{ID: "wh_7", AppID: "app_2", AccountID: "acc-3", Event: "order.create", Address: "not a url %zz"},
		{ID: "wh_8", AppID: "app_2", AccountID: "acc-3", Event: "order.create", Address: "https://example.com:8x/"},
	}
	var raws []string
	for i := range hooks {
		raw, err := msgpack.Marshal(&hooks[i])
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, string(raw))
	}
	// A record of another shape (an extra key): msgpack reads it. An
	// unreadable one, half a record that msgpack starts on, in between:
	// the next record must not inherit anything from it.
	extra, _ := msgpack.Marshal(map[string]any{"id": "wh_9", "app_id": "app_1", "event": "order.create", "address": "https://e.test/", "note": 1})
	broken := raws[0][:len(raws[0])-5]
	raws = append(raws[:3], append([]string{broken}, append(raws[3:], string(extra))...)...)
	got, bad := newBatchDecoder().decode(raws)
	if !reflect.DeepEqual(bad, []int{3}) {
		t.Fatalf("unreadable records %v, want [3]", bad)
	}
	raws = append(raws[:3], raws[4:]...)
	if len(got) != len(raws) {
		t.Fatalf("decoded %d webhooks, want %d", len(got), len(raws))
	}
	for i, raw := range raws {
		var want Webhook
		if err := msgpack.Unmarshal([]byte(raw), &want); err != nil {
			t.Fatal(err)
		}
		want.prepare()
		if !reflect.DeepEqual(got[i], want) {
			t.Errorf("record %d: decoded %+v, msgpack gives %+v", i, got[i], want)
		}
	}
}
