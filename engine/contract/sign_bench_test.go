package contract

import "testing"

func BenchmarkSign(b *testing.B) {
	s := NewSigner("gecko-secret")
	body := []byte(seedBody)
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
	body := []byte(seedBody)
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
