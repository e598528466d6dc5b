package bench

import (
	"strconv"
	"testing"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
)

var (
	cat   = catalog.Default()
	value = []byte(`{"account_id":"acc-1","event":"fulfillments.create","object_id":1234567,"timestamp":1546272000}`)
)

// BenchmarkBodySignID is the per-delivery work between the registry lookup
// and the HTTP client: body (once per event), signature and delivery id.
func BenchmarkBodySignID(b *testing.B) {
	ev, _ := contract.DecodeEvent(value, nil, 0, cat)
	s := contract.NewSigner("gecko-secret")
	body := make([]byte, 0, 256)
	sig := make([]byte, 0, 64)
	id := make([]byte, 0, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body = contract.AppendBody(body[:0], &ev, "https://api.tradegecko.com", cat)
		sig = s.AppendSignature(sig[:0], body)
		id = contract.AppendDeliveryID(id[:0], "geckohook.events", 3, int64(i), "wh_1")
	}
}

func BenchmarkSignParallel(b *testing.B) {
	s := contract.NewSigner("gecko-secret")
	body := []byte(`{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		sig := make([]byte, 0, 64)
		for pb.Next() {
			sig = s.AppendSignature(sig[:0], body)
		}
	})
}

// BenchmarkRegistryMatch looks up webhooks and their applications among
// 20,000 registered ones (loaded from a real redis-server), as the fetch
// loop does for every event, from every core at once.
func BenchmarkRegistryMatch(b *testing.B) {
	const accounts = 2000
	names := cat.Names()
	reg := seededRegistry(b, testenv.Redis(b).Client(), accounts*10, func(i int) registry.Webhook {
		return registry.Webhook{AccountID: "acc-" + strconv.Itoa(i%accounts), Event: names[i/accounts], Address: "https://x.test/" + strconv.Itoa(i)}
	})
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		var targets []registry.Target // the fetch loop's scratch
		for pb.Next() {
			targets, _ = reg.MatchTargets(targets[:0], "acc-"+strconv.Itoa(i%accounts), names[(i/7)%10])
			if len(targets) != 1 || targets[0].App == nil {
				b.Fatal("no match")
			}
			i++
		}
	})
}

// BenchmarkClassify sorts attempt results into success, gone and failure,
// the decision after every attempt.
func BenchmarkClassify(b *testing.B) {
	statuses := []int{200, 204, 302, 410, 500, 503, 0}
	want := []contract.Outcome{contract.Success, contract.Success, contract.Success, contract.Gone, contract.Failure, contract.Failure, contract.Failure}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		k := i % len(statuses)
		if got := contract.Classify(statuses[k], nil); got != want[k] {
			b.Fatalf("status %d: %v, want %v", statuses[k], got, want[k])
		}
	}
}
