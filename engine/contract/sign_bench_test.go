package contract

import "testing"

// signBody is a delivery body as geckohook sends it.
const signBody = `{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"}`

func BenchmarkSign(b *testing.B) {
	s := NewSigner("gecko-secret")
	body := []byte(signBody)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		sig := make([]byte, 0, SignatureLen)
		for pb.Next() {
			sig = s.AppendSignature(sig[:0], body)
		}
	})
}

func BenchmarkStandardSign(b *testing.B) {
	s := NewSigner("gecko-secret")
	body := []byte(signBody)
	id := []byte(DeliveryID("geckohook.events", 3, 1234, "wh_1"))
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		var buf [2 * 64]byte
		for pb.Next() {
			_ = s.AppendStandardSignature(buf[:0], id, 1546272000, body)
		}
	})
}
