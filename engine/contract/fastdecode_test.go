package contract

import (
	"testing"

	"github.com/geckohook/geckohook/engine/catalog"
)

// FuzzDecodeEvent checks the fast decoder against the encoding/json one:
// whatever the fast path accepts, the reference decodes to the same Event.
// `go test -fuzz FuzzDecodeEvent ./engine/contract` explores further; the
// seeds below run in every `go test`.
func FuzzDecodeEvent(f *testing.F) {
	seeds := []string{
		`{"account_id":"acc1","event":"order.create","object_id":42,"timestamp":1700000000,"resource_url":"https://x.test/o/42"}`,
		` { "account_id" : 77 , "event" : "order.create" , "object_id" : 0 } `,
		`{"event":"order.create","object_id":42}`,
		`{"account_id":"","event":"order.create","object_id":1}`,
		`{"account_id":"a","event":"order.create","object_id":-0}`,
		`{"account_id":"a","event":"order.create","object_id":01}`,
		`{"account_id":"a","event":"order.create","object_id":1e3}`,
		`{"account_id":"a","event":"order.create","object_id":9223372036854775808}`,
		`{"account_id":99999999999999999999,"event":"order.create","object_id":1}`,
		`{"account_id":"a","event":"order.create","object_id":1,"object_id":2}`,
		`{"account_id":"a","event":"order.create","object_id":1,"Event":"order.update"}`,
		`{"account_id":"a\u0041","event":"order.create","object_id":1}`,
		`{"account_id":"a","event":"order.create","object_id":1,"resource_url":""}`,
		`{"account_id":"a","event":"order.create","object_id":1,"timestamp":null}`,
		`{"account_id":"a","event":"order.create","object_id":1}x`,
		`{"account_id":"a","event":"order.create","object_id":1,}`,
		`{"account_id":"a","event":"nope.create","object_id":1}`,
		`{"account_id":"é","event":"order.create","object_id":1,"extra":[1,{"a":2}]}`,
		`{}`, `[]`, ``, `null`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), []byte("key-acc"), int64(5))
		f.Add([]byte(s), []byte(nil), int64(0))
	}
	cat := catalog.Default()
	f.Fuzz(func(t *testing.T, value, key []byte, recordTime int64) {
		fast, ok := decodeFast(value, key, recordTime, cat)
		if !ok {
			return
		}
		slow, err := decodeSlow(value, key, recordTime, cat)
		if err != nil {
			t.Fatalf("fast path accepted %q (%+v) but the reference rejects it: %v", value, fast, err)
		}
		if fast != slow {
			t.Fatalf("%q: fast %+v, reference %+v", value, fast, slow)
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
		if _, ok := decodeFast([]byte(v), nil, 1, cat); !ok {
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
