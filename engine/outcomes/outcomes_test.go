package outcomes

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 20, 1, 0, 0, 0, time.UTC)

func TestDecodeRejectsBadRecords(t *testing.T) {
	for name, raw := range map[string][]byte{
		"garbage":    []byte("\xc1\xc1"),
		"no webhook": mustEncode(t, &Outcome{Kind: Failure}),
		"bad kind":   mustEncode(t, &Outcome{Kind: 9, WebhookID: "wh_1"}),
	} {
		if _, err := Decode(raw); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	good := &Outcome{Kind: Failure, WebhookID: "wh_1", Status: 502, Error: "bad gateway", Attempt: 2, At: t0}
	got, err := Decode(mustEncode(t, good))
	if err != nil || got.Status != 502 || got.Attempt != 2 || !got.At.Equal(t0) || got.Kind.String() != "failure" {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
}

func mustEncode(t *testing.T, o *Outcome) []byte {
	t.Helper()
	b, err := Encode(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
