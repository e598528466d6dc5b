package contract

import (
	"errors"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/geckohook/geckohook/engine/catalog"
)

// decodeCorpus holds the tricky values FuzzDecodeEvent starts from: each
// corner where a hand-written JSON reader could part ways with
// encoding/json.
var decodeCorpus = []string{
	// The common shapes.
	`{"account_id":"acc1","event":"order.create","object_id":42,"timestamp":1700000000,"resource_url":"https://x.test/o/42"}`,
	` { "account_id" : 77 , "event" : "order.create" , "object_id" : 0 } `,
	`{"event":"order.create","object_id":42}`,
	`{"account_id":"a","event":"order.create","object_id":1,"resource_url":"https://x.test/?a=1&b=<2>"}`,
	// Escapes, in values and in keys.
	`{"account_id":"a\"b","event":"order.create","object_id":1}`,
	`{"account_id":"a\\b\/c","event":"order.create","object_id":1}`,
	`{"account_id":"\b\f\n\r\t","event":"order.create","object_id":1}`,
	`{"account_id":"a\u0041","event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order\u002ecreate","object_id":1}`,
	`{"\u0061ccount_id":"a","event":"order.create","object_id":1}`,
	`{"account_id":"a\u0000b","event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":1,"resource_url":"https:\/\/x.test\u2028"}`,
	`{"account_id":"a\x","event":"order.create","object_id":1}`,
	`{"account_id":"a\u00zz","event":"order.create","object_id":1}`,
	// Surrogate pairs, valid and lone.
	`{"account_id":"\ud83d\ude00","event":"order.create","object_id":1}`,
	`{"account_id":"\ud83d","event":"order.create","object_id":1}`,
	`{"account_id":"\ude00","event":"order.create","object_id":1}`,
	`{"account_id":"\ud83d\u0041","event":"order.create","object_id":1}`,
	`{"account_id":"\ude00\ud83d","event":"order.create","object_id":1}`,
	`{"account_id":"\uD83D\uDE00x","event":"order.create","object_id":1}`,
	"{\"account_id\":\"\U0001F600\",\"event\":\"order.create\",\"object_id\":1}",
	// Duplicate keys, and keys encoding/json matches without regard to case.
	`{"account_id":"a","event":"order.create","object_id":1,"object_id":2}`,
	`{"account_id":"a","account_id":"b","event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"nope.create","event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":1,"timestamp":5,"timestamp":null}`,
	`{"account_id":"a","event":"order.create","object_id":1,"resource_url":"u","resource_url":null}`,
	`{"account_id":"a","event":"order.create","object_id":1,"Event":"order.update"}`,
	`{"ACCOUNT_ID":"a","EVENT":"order.create","Object_Id":1}`,
	"{\"account_id\":\"a\",\"event\":\"order.create\",\"object_id\":1,\"time\u017ftamp\":3}",
	"{\"account_id\":\"a\",\"event\":\"order.create\",\"object_id\":1,\"re\u017fource_url\":\"u\"}",
	// Big numbers and exponent forms.
	`{"account_id":"a","event":"order.create","object_id":9223372036854775807}`,
	`{"account_id":"a","event":"order.create","object_id":9223372036854775808}`,
	`{"account_id":-9223372036854775808,"event":"order.create","object_id":1}`,
	`{"account_id":99999999999999999999,"event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":1,"timestamp":123456789012345678901234567890}`,
	`{"account_id":"a","event":"order.create","object_id":1e3}`,
	`{"account_id":"a","event":"order.create","object_id":1E3}`,
	`{"account_id":"a","event":"order.create","object_id":1e+3}`,
	`{"account_id":"a","event":"order.create","object_id":1.0}`,
	`{"account_id":1e3,"event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":1,"timestamp":1.5e9}`,
	`{"account_id":"a","event":"order.create","object_id":1e400}`,
	// Negative zero and leading zeros.
	`{"account_id":"a","event":"order.create","object_id":-0}`,
	`{"account_id":-0,"event":"order.create","object_id":1,"timestamp":-0}`,
	`{"account_id":"a","event":"order.create","object_id":-0.0}`,
	`{"account_id":"a","event":"order.create","object_id":01}`,
	`{"account_id":007,"event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":1,"timestamp":-01}`,
	`{"account_id":"a","event":"order.create","object_id":-}`,
	`{"account_id":"a","event":"order.create","object_id":+1}`,
	// Whitespace everywhere, and characters that are not JSON whitespace.
	"\t\n\r {\n\"account_id\"\t:\r\"a\"\n,\t\"event\" :\"order.create\" ,\"object_id\"\n:\n1\r}\n\t ",
	"{\"account_id\":\"a\",\"event\":\"order.create\",\"object_id\":1}\v",
	"{\"account_id\":\"a\",\"event\":\"order.create\",\"object_id\":1}\u00a0",
	"\ufeff{\"account_id\":\"a\",\"event\":\"order.create\",\"object_id\":1}",
	// Invalid UTF-8, raw control characters.
	"{\"account_id\":\"a\xff\",\"event\":\"order.create\",\"object_id\":1}",
	"{\"account_id\":\"\xc0\xaf\",\"event\":\"order.create\",\"object_id\":1}",
	"{\"account_id\":\"\xed\xa0\x80\",\"event\":\"order.create\",\"object_id\":1}",
	"{\"account_id\":\"\xe6\x97\",\"event\":\"order.create\",\"object_id\":1}",
	"{\"account_id\":\"a\",\"event\":\"order.create\",\"object_id\":1,\"x\xff\":1}",
	"{\"account_id\":\"a\",\"event\":\"order.create\",\"object_id\":1}\xff",
	"{\"account_id\":\"a\x00\",\"event\":\"order.create\",\"object_id\":1}",
	"{\"account_id\":\"a\x1f\",\"event\":\"order.create\",\"object_id\":1}",
	"{\"account_id\":\"a\x7f\",\"event\":\"order.create\",\"object_id\":1}",
	// Nulls and wrong types.
	`{"account_id":null,"event":"order.create","object_id":1}`,
	`{"account_id":"a","event":null,"object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":null}`,
	`{"account_id":"a","event":"order.create","object_id":1,"timestamp":null}`,
	`{"account_id":"a","event":"order.create","object_id":1,"resource_url":null}`,
	`{"account_id":true,"event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":"1"}`,
	`{"account_id":"a","event":1,"object_id":1}`,
	`null`, `true`, `1`, `"s"`, `[]`, `{}`, ``, ` `,
	// Nested objects and arrays.
	`{"account_id":{"a":1},"event":"order.create","object_id":1}`,
	`{"account_id":["a"],"event":"order.create","object_id":1}`,
	`{"account_id":"é","event":"order.create","object_id":1,"extra":[1,{"a":2}]}`,
	`{"account_id":"a","event":"order.create","object_id":1,"extra":{"object_id":5,"event":"x"}}`,
	`{"account_id":"a","event":"order.create","object_id":1,"extra":[[[[[[[[[[]]]]]]]]]]}`,
	// Trailing garbage and broken syntax.
	`{"account_id":"a","event":"order.create","object_id":1}x`,
	`{"account_id":"a","event":"order.create","object_id":1}}`,
	`{"account_id":"a","event":"order.create","object_id":1} {}`,
	`{"account_id":"a","event":"order.create","object_id":1},`,
	`{"account_id":"a","event":"order.create","object_id":1,}`,
	`{"account_id":"a","event":"order.create","object_id":1`,
	`{"account_id":"a","event":"order.create","object_id":1 2}`,
	`{"account_id":"a" "event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":1x}`,
	`{"account_id":"a","event":"order.create","object_id":1,"resource_url":"x}`,
	`{,"account_id":"a","event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id"1}`,
	// Lengths at and over the limits, empty strings, unknown events.
	`{"account_id":"","event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":1,"resource_url":""}`,
	`{"account_id":"` + strings.Repeat("a", 256) + `","event":"order.create","object_id":1}`,
	`{"account_id":"` + strings.Repeat("a", 257) + `","event":"order.create","object_id":1}`,
	`{"account_id":"` + strings.Repeat("é", 129) + `","event":"order.create","object_id":1}`,
	`{"account_id":"a","event":"order.create","object_id":1,"resource_url":"` + strings.Repeat("u", MaxFieldLen) + `"}`,
	`{"account_id":"a","event":"order.create","object_id":1,"resource_url":"` + strings.Repeat("u", MaxFieldLen+1) + `"}`,
	`{"account_id":"a","event":"nope.create","object_id":1}`,
	`{"account_id":"a","event":"Order.Create","object_id":1}`,
	`{"account_id":"a","event":"order.create ","object_id":1}`,
}

// FuzzDecodeEvent checks the hand-written fast decoder against the
// encoding/json reference (decodeSlow) on the same bytes. They disagree
// when the fast path accepts a value (ok=true) and the reference refuses it
// or decodes another Event; the fast path declining (ok=false) is always
// allowed, since the reference then decides. It also checks that DecodeEvent
// gives the reference's answer, that every refusal is a *DecodeError, and
// that an accepted Event written back with AppendValue (as the API does)
// decodes to itself. `make fuzz` explores further; the corpus runs in every
// `go test`.
func FuzzDecodeEvent(f *testing.F) {
	for _, s := range decodeCorpus {
		f.Add([]byte(s), []byte("key-acc"), int64(5))
		f.Add([]byte(s), []byte(nil), int64(0))
	}
	f.Add([]byte(`{"event":"order.create","object_id":1}`), []byte(strings.Repeat("k", 257)), int64(5))
	f.Add([]byte(`{"event":"order.create","object_id":1}`), []byte("k\xff"), int64(-1))
	f.Add([]byte(`{"event":"order.create","object_id":1}`), []byte(strings.Repeat("k", 256)), int64(math.MaxInt64))
	cat := catalog.Default()
	f.Fuzz(func(t *testing.T, value, key []byte, recordTime int64) {
		slow, slowErr := decodeSlow(value, key, recordTime, cat)
		var de *DecodeError
		if slowErr != nil && !errors.As(slowErr, &de) {
			t.Fatalf("%q: reference error %T %v is not a *DecodeError", value, slowErr, slowErr)
		}
		fast, ok := decodeFast(value, key, recordTime, cat, nil)
		if ok {
			if slowErr != nil {
				t.Fatalf("fast path accepted %q (%+v) but the reference refuses it: %v", value, fast, slowErr)
			}
			if fast != slow {
				t.Fatalf("%q: fast %+v, reference %+v", value, fast, slow)
			}
		}
		got, err := DecodeEvent(value, key, recordTime, cat)
		if (err == nil) != (slowErr == nil) || got != slow || (err != nil && err.Error() != slowErr.Error()) {
			t.Fatalf("%q: DecodeEvent %+v, %v; reference %+v, %v", value, got, err, slow, slowErr)
		}
		if slowErr != nil || slow.Timestamp < 0 || !utf8.ValidString(slow.AccountID) {
			return
		}
		again := AppendValue(nil, &slow)
		back, err := DecodeEvent(again, nil, recordTime^1, cat)
		if err != nil || back != slow {
			t.Fatalf("%+v written as %s decodes to %+v, %v", slow, again, back, err)
		}
	})
}

func TestFastDecodeCommonShapeAllocs(t *testing.T) {
	cat := catalog.Default()
	for _, v := range []string{
		`{"account_id":"acc-1","event":"fulfillments.create","object_id":1234567,"timestamp":1546272000}`,
		`{"account_id":"acc-1","event":"order.create","object_id":1,"resource_url":"https://x.test/1.json"}`,
		`{"account_id":42,"event":"order.create","object_id":1}`,
	} {
		if _, ok := decodeFast([]byte(v), nil, 1, cat, nil); !ok {
			t.Errorf("fast path refused %s", v)
		}
	}
	value := []byte(`{"account_id":"acc-1","event":"fulfillments.create","object_id":1234567,"timestamp":1546272000}`)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := DecodeEvent(value, nil, 0, cat); err != nil {
			t.Fatal(err)
		}
	})
	if !raceEnabled && allocs > 1 {
		t.Errorf("decoding the common shape allocates %.0f times, want 1 (the account id)", allocs)
	}
	// With an interner that knows the account, nothing; the account id
	// in every spelling the fast path takes goes through it.
	known := "acc-1"
	var asked []string
	intern := func(b []byte) string {
		asked = append(asked, string(b))
		if string(b) == known {
			return known
		}
		return string(b)
	}
	for _, c := range []struct{ value, key, want string }{
		{`{"account_id":"acc-1","event":"order.create","object_id":1}`, "", "acc-1"},
		{`{"account_id":42,"event":"order.create","object_id":1}`, "", "42"},
		{`{"event":"order.create","object_id":1}`, "acc-1", "acc-1"},
	} {
		asked = asked[:0]
		ev, err := DecodeEventInterned([]byte(c.value), []byte(c.key), 1, cat, intern)
		if err != nil || ev.AccountID != c.want || len(asked) != 1 || asked[0] != c.want {
			t.Errorf("%s (key %q): account %q, interner asked %q, %v", c.value, c.key, ev.AccountID, asked, err)
		}
	}
	quiet := func(b []byte) string {
		if string(b) == known {
			return known
		}
		return string(b)
	}
	allocs = testing.AllocsPerRun(100, func() {
		if _, err := DecodeEventInterned(value, nil, 0, cat, quiet); err != nil {
			t.Fatal(err)
		}
	})
	if !raceEnabled && allocs != 0 {
		t.Errorf("decoding the common shape of a known account allocates %.0f times, want 0", allocs)
	}
}

// BenchmarkDecode compares the fast path with the encoding/json reference
// on the common event shape.
func BenchmarkDecode(b *testing.B) {
	cat := catalog.Default()
	value := []byte(`{"account_id":"acc-1","event":"fulfillments.create","object_id":1234567,"timestamp":1546272000}`)
	for _, c := range []struct {
		name string
		fn   func() error
	}{
		{"fast", func() error { _, err := DecodeEvent(value, nil, 0, cat); return err }},
		{"encoding-json", func() error { _, err := decodeSlow(value, nil, 0, cat); return err }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if err := c.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
