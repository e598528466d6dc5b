package contract

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/catalog"
)

const seedBody = `{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"}`

func TestBodyMatchesSeedExampleByteForByte(t *testing.T) {
	cat := catalog.Default()
	ev := Event{AccountID: "9", Event: "fulfillments.create", ObjectID: 1234567, Timestamp: 1546272000}
	got := string(AppendBody(nil, &ev, "https://api.tradegecko.com", cat))
	if got != seedBody {
		t.Fatalf("body from catalog\n got %s\nwant %s", got, seedBody)
	}
	ev.ResourceURL = "https://api.tradegecko.com/fulfillments/1234567.json"
	if got := string(AppendBody(nil, &ev, "https://ignored.example", cat)); got != seedBody {
		t.Fatalf("body with producer's resource_url\n got %s\nwant %s", got, seedBody)
	}
}

func TestBodyEscapesLikeRubyToJSON(t *testing.T) {
	cat := catalog.Default()
	f := func(url, want string) {
		t.Helper()
		ev := Event{Event: "order.create", ObjectID: 1, Timestamp: 2, ResourceURL: url}
		got := string(AppendBody(nil, &ev, "", cat))
		wantBody := `{"object_id":1,"event":"order.create","timestamp":2,"resource_url":` + want + `}`
		if got != wantBody {
			t.Errorf("resource_url %q\n got %s\nwant %s", url, got, wantBody)
		}
		// The body must be valid JSON that round-trips to the same value.
		var m map[string]any
		if err := json.Unmarshal([]byte(got), &m); err != nil {
			t.Errorf("body is not JSON: %v", err)
		} else if url != "\xff" && m["resource_url"] != url {
			t.Errorf("round trip gives %q, want %q", m["resource_url"], url)
		}
	}
	f("https://x.test/a?b=1&c=<d>", `"https://x.test/a?b=1&c=<d>"`) // no HTML escaping
	f(`https://x.test/"q"\p`, `"https://x.test/\"q\"\\p"`)
	f("tab\tnl\ncr\rbs\bff\f", `"tab\tnl\ncr\rbs\bff\f"`)
	f("ctl\x01\x1f\x7f", `"ctl\u0001\u001f`+"\x7f"+`"`) // Ruby: lowercase hex, DEL literal
	f("café/日本\u2028", `"café/日本`+"\u2028"+`"`)         // UTF-8 as is, U+2028 too
	f("\xff", "\"\ufffd\"")
}

func TestSignatureKnownVector(t *testing.T) {
	// printf '%s' "$body" | openssl dgst -sha256 -hmac gecko-secret -binary | base64
	const want = "AK5Ou/IZRsZIjJ37NlPFWIMXcTZa/Ph+MeF6V4HonE8="
	s := NewSigner("gecko-secret")
	if got := s.Sign([]byte(seedBody)); got != want {
		t.Fatalf("signature = %s, want %s", got, want)
	}
	// Pooled state must be reset between uses.
	if got := string(s.AppendSignature(nil, []byte(seedBody))); got != want {
		t.Fatalf("second signature = %s, want %s", got, want)
	}
	if !ValidSignature("gecko-secret", []byte(seedBody), []byte(want)) {
		t.Fatal("ValidSignature rejects a good signature")
	}
	if ValidSignature("other", []byte(seedBody), []byte(want)) {
		t.Fatal("ValidSignature accepts a signature under another secret")
	}
	if len(want) != SignatureLen || strings.Contains(want, "\n") {
		t.Fatalf("signature length %d, want %d with no newline", len(want), SignatureLen)
	}
}

func TestBodyAndSignAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; make test runs this without it")
	}
	cat := catalog.Default()
	ev := Event{Event: "fulfillments.create", ObjectID: 1234567, Timestamp: 1546272000}
	s := NewSigner("gecko-secret")
	body := make([]byte, 0, 512)
	sig := make([]byte, 0, 64)
	id := make([]byte, 0, 64)
	s.Sign([]byte(seedBody)) // warm the pool
	allocs := testing.AllocsPerRun(200, func() {
		body = AppendBody(body[:0], &ev, "https://api.tradegecko.com", cat)
		sig = s.AppendSignature(sig[:0], body)
		id = AppendDeliveryID(id[:0], "geckohook.events", 3, 1234, "wh_1")
	})
	if allocs != 0 {
		t.Fatalf("body + signature + delivery id allocate %.1f times per event, want 0", allocs)
	}
}

func TestDeliveryIDIsStableAndDistinct(t *testing.T) {
	a := DeliveryID("geckohook.events", 3, 1234, "wh_1")
	if a != DeliveryID("geckohook.events", 3, 1234, "wh_1") {
		t.Fatal("delivery id is not deterministic")
	}
	if len(a) != DeliveryIDLen || a[14] != '8' || strings.Count(a, "-") != 4 {
		t.Fatalf("delivery id %q is not a version-8 UUID", a)
	}
	seen := map[string]bool{a: true}
	for _, other := range []string{
		DeliveryID("geckohook.events", 3, 1235, "wh_1"),
		DeliveryID("geckohook.events", 4, 1234, "wh_1"),
		DeliveryID("geckohook.events", 3, 1234, "wh_2"),
		DeliveryID("other", 3, 1234, "wh_1"),
	} {
		if seen[other] {
			t.Fatalf("delivery id collision: %s", other)
		}
		seen[other] = true
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		status int
		err    error
		want   Outcome
	}{
		{200, nil, Success}, {201, nil, Success}, {204, nil, Success}, {301, nil, Success},
		{302, nil, Success}, {399, nil, Success}, {199, nil, Failure}, {100, nil, Failure},
		{400, nil, Failure}, {404, nil, Failure}, {409, nil, Failure}, {410, nil, Gone},
		{429, nil, Failure}, {500, nil, Failure}, {503, nil, Failure}, {0, nil, Failure},
		{200, errors.New("timeout"), Failure}, {410, errors.New("reset"), Failure},
	}
	for _, c := range cases {
		if got := Classify(c.status, c.err); got != c.want {
			t.Errorf("Classify(%d, %v) = %v, want %v", c.status, c.err, got, c.want)
		}
	}
}

func TestRetryDelayIsSidekiqBackoff(t *testing.T) {
	lowest := func(int) int { return 0 }
	for n := 0; n < DefaultMaxRetries; n++ {
		highest := func(k int) int {
			if k != 10*(n+1) {
				t.Fatalf("retry %d asked rand for [0,%d), want [0,%d)", n, k, 10*(n+1))
			}
			return k - 1
		}
		base := time.Duration(n*n*n*n+15) * time.Second
		if got := RetryDelay(n, lowest); got != base {
			t.Errorf("RetryDelay(%d) min = %v, want %v", n, got, base)
		}
		if got, want := RetryDelay(n, highest), base+time.Duration(10*(n+1)-1)*time.Second; got != want {
			t.Errorf("RetryDelay(%d) max = %v, want %v", n, got, want)
		}
	}
	// With real randomness the delay stays inside the bounds.
	for i := 0; i < 1000; i++ {
		d := RetryDelay(3, rand.IntN)
		if d < 96*time.Second || d >= 136*time.Second {
			t.Fatalf("RetryDelay(3) = %v out of [96s, 136s)", d)
		}
	}
	// 25 retries at their shortest add up to about 20 days, as Sidekiq says.
	var total time.Duration
	for n := 0; n < DefaultMaxRetries; n++ {
		total += RetryDelay(n, lowest)
	}
	if total < 20*24*time.Hour || total > 21*24*time.Hour {
		t.Fatalf("25 retries take %v, want about 20 days", total)
	}
	now := time.Unix(1000, 0)
	if _, err := NextAttempt(now, 25, 25, lowest); !errors.Is(err, ErrNoMoreRetries) {
		t.Fatalf("retry 25 of 25: err = %v, want ErrNoMoreRetries", err)
	}
	if at, err := NextAttempt(now, 0, 25, lowest); err != nil || !at.Equal(now.Add(15*time.Second)) {
		t.Fatalf("first retry at %v, %v; want now+15s", at, err)
	}
}

func TestDecodeEvent(t *testing.T) {
	cat := catalog.Default()
	ev, err := DecodeEvent([]byte(`{"account_id":"acc1","event":"order.create","object_id":42,"timestamp":1700000000,"resource_url":"https://x.test/o/42"}`), nil, 5, cat)
	if err != nil || ev != (Event{AccountID: "acc1", Event: "order.create", ObjectID: 42, Timestamp: 1700000000, ResourceURL: "https://x.test/o/42"}) {
		t.Fatalf("full event: %+v, %v", ev, err)
	}
	ev, err = DecodeEvent([]byte(`{"account_id":77,"event":"order.create","object_id":42}`), nil, 5, cat)
	if err != nil || ev.AccountID != "77" || ev.Timestamp != 5 {
		t.Fatalf("numeric account, record time: %+v, %v", ev, err)
	}
	ev, err = DecodeEvent([]byte(`{"event":"order.create","object_id":42}`), []byte("key-acc"), 5, cat)
	if err != nil || ev.AccountID != "key-acc" {
		t.Fatalf("account from key: %+v, %v", ev, err)
	}
	bad := []struct{ value, reason string }{
		{`not json`, "invalid_json"},
		{`{"account_id":"a","event":"order.create","object_id":1`, "invalid_json"},
		{"{\"account_id\":\"a\xff\",\"event\":\"order.create\",\"object_id\":1}", "invalid_json"},
		{`{"event":"order.create","object_id":1}`, "missing_field"},
		{`{"account_id":"a","object_id":1}`, "missing_field"},
		{`{"account_id":"a","event":"order.create"}`, "missing_field"},
		{`{"account_id":"a","event":"order.deleted","object_id":1}`, "unknown_event"},
		{`{"account_id":"a","event":"order.create","object_id":"x"}`, "invalid_field"},
		{`{"account_id":"a","event":"order.create","object_id":1.5}`, "invalid_field"},
		{`{"account_id":"a","event":"order.create","object_id":-1}`, "invalid_field"},
		{`{"account_id":"a","event":"order.create","object_id":1,"timestamp":"now"}`, "invalid_field"},
		{`{"account_id":{},"event":"order.create","object_id":1}`, "invalid_field"},
		{`{"account_id":"","event":"order.create","object_id":1}`, "invalid_field"},
		{`{"account_id":"a","event":7,"object_id":1}`, "invalid_field"},
		{`{"account_id":"a","event":"order.create","object_id":1,"resource_url":{}}`, "invalid_field"},
		{`["a"]`, "invalid_json"},
	}
	for _, b := range bad {
		_, err := DecodeEvent([]byte(b.value), nil, 5, cat)
		var de *DecodeError
		if !errors.As(err, &de) || de.Reason != b.reason {
			t.Errorf("DecodeEvent(%q) = %v, want reason %s", b.value, err, b.reason)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 2 * time.Minute, true},
		{"0", 0, true},
		{"007", 7 * time.Second, true},
		{"99999999999999999999999", 365 * 24 * time.Hour, true},
		{"Tue, 01 Dec 2026 13:00:00 GMT", time.Hour, true},          // IMF-fixdate
		{"Tuesday, 01-Dec-26 12:00:30 GMT", 30 * time.Second, true}, // RFC 850
		{"Tue Dec  1 12:10:00 2026", 10 * time.Minute, true},        // asctime
		{"Tue, 01 Dec 2026 11:00:00 GMT", 0, true},                  // past
		{"", 0, false},
		{"-5", 0, false},
		{"1.5", 0, false},
		{" 120", 0, false},
		{"soon", 0, false},
	} {
		got, ok := ParseRetryAfter([]byte(c.in), now)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestAppendValueDecodesOnTheFastPath(t *testing.T) {
	cat := catalog.Default()
	ev := Event{AccountID: "acc-1", Event: "order.create", ObjectID: 7, Timestamp: 1546272000, ResourceURL: "https://x.test/o/7.json?a=1&b=<2>"}
	const want = `{"account_id":"acc-1","event":"order.create","object_id":7,"timestamp":1546272000,"resource_url":"https://x.test/o/7.json?a=1&b=<2>"}`
	if got := string(AppendValue(nil, &ev)); got != want {
		t.Fatalf("AppendValue\n got %s\nwant %s", got, want)
	}
	for _, e := range []Event{ev, {AccountID: "77", Event: "order.create", ObjectID: 0, Timestamp: 0}} {
		if got, ok := decodeFast(AppendValue(nil, &e), nil, 1, cat, nil); !ok || got != e {
			t.Errorf("%+v: fast path gives %+v, %v", e, got, ok)
		}
	}
	// A string that needs an escape takes the slow path, to the same Event.
	ev.AccountID = "a\"b\n"
	if got, err := DecodeEvent(AppendValue(nil, &ev), nil, 1, cat); err != nil || got != ev {
		t.Fatalf("%+v decodes to %+v, %v", ev, got, err)
	}
}
