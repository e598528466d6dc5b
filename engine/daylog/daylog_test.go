package daylog

import (
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestEntryRoundTripsAndKeysShareTheDaySlot(t *testing.T) {
	at := time.Date(2026, 11, 20, 1, 0, 0, 0, time.UTC)
	raw, err := msgpack.Marshal(&Entry{WebhookID: "wh_1", AppID: "app_1", Failures: 3, LastFailure: at, Reason: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := Decode(raw)
	if err != nil || e.WebhookID != "wh_1" || e.Failures != 3 || !e.LastFailure.Equal(at) || e.Reason != "gone" {
		t.Fatalf("Decode = %+v, %v", e, err)
	}
	if _, err := Decode([]byte{0xc1}); err == nil {
		t.Fatal("Decode accepted a bad record")
	}
	k := Keys{Prefix: "gh:"}
	for _, got := range []string{k.Apps("2026-11-20"), k.Failing("2026-11-20", "app_1"), k.Deleted("2026-11-20", "app_1")} {
		if want := "gh:day:{2026-11-20}:"; len(got) < len(want) || got[:len(want)] != want {
			t.Errorf("key %q is not in the day's slot %s…", got, want)
		}
	}
}
